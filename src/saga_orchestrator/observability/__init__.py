"""Observability listeners. Each lives in its own module, importing its heavy dependency
only there, so the core stays light:

- [`saga_orchestrator.observability.prometheus`][] (``pip install saga-orchestrator[prometheus]``)
- [`saga_orchestrator.observability.otel`][] (``pip install saga-orchestrator[otel]``)

Logging needs nothing: the orchestrator logs to the ``saga_orchestrator`` logger (INFO for
lifecycle events, WARNING for failures) with ``event``, ``saga_id``, ``saga_type`` and ``step``
on every record. It never configures handlers; your service does.
"""
