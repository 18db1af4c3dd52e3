"""The public surface is pinned: removing or renaming a name breaks users' code."""

import saga_orchestrator

EXPECTED = {
    "BaseSaga",
    "Clock",
    "Delivery",
    "DeliveryStatus",
    "EventPublisher",
    "IdempotencyStore",
    "InMemoryEventPublisher",
    "InMemoryIdempotencyStore",
    "InMemorySagaRepository",
    "InvalidEventError",
    "MainModuleDataWarning",
    "NonRetryableError",
    "OutboxRelay",
    "OutboxSource",
    "Phase",
    "RecoveryReport",
    "RetryPolicy",
    "RetryableError",
    "SQLiteIdempotencyStore",
    "SQLiteSagaRepository",
    "SagaAlreadyExistsError",
    "SagaConflictError",
    "SagaContext",
    "SagaDefinitionError",
    "SagaError",
    "SagaEvent",
    "SagaEventType",
    "SagaLeaseError",
    "SagaListener",
    "SagaOrchestrator",
    "SagaRegistry",
    "SagaRepository",
    "SagaResult",
    "SagaStatus",
    "SagaStep",
    "SagaWorker",
    "SerializationError",
    "SkippedSaga",
    "StepRefusedError",
    "StepRun",
    "StepState",
    "StepStatus",
    "UnknownSagaVersionError",
    "Wait",
    "current_step",
    "is_refusal",
    "sleep_for",
    "sleep_until",
    "wait_for_event",
}


def test_all_is_exactly_the_pinned_surface() -> None:
    """`__all__` lists exactly the pinned names, sorted, and each one resolves."""
    assert set(saga_orchestrator.__all__) == EXPECTED
    assert list(saga_orchestrator.__all__) == sorted(saga_orchestrator.__all__)
    for name in EXPECTED:
        assert getattr(saga_orchestrator, name) is not None


def test_spec_status_values_are_stable() -> None:
    """The spec's status values (stored and shown by the API) keep their spelling."""
    assert [s.value for s in saga_orchestrator.SagaStatus] == [
        "pending",
        "running",
        "compensating",
        "completed",
        "compensated",
        "failed",
    ]
    assert saga_orchestrator.StepStatus.COMPLETED.value == "completed"


def test_package_is_typed() -> None:
    """The wheel ships `py.typed`, so users' type checkers read our annotations."""
    from importlib.resources import files

    assert files("saga_orchestrator").joinpath("py.typed").is_file()
