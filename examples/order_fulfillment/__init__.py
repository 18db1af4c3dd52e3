"""The order-fulfilment saga: saga-orchestrator's worked example."""
