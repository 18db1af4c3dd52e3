"""Durable sagas for Python services.

Subclass [`BaseSaga`][], return [`SagaStep`][]s from ``define_steps``, and run it with
[`SagaOrchestrator`][] on a repository (in-memory or SQLite built in, or your own
[`SagaRepository`][]). Every transition is recorded before the next action starts; a failed
step makes the completed ones compensate in reverse order; ``recover()`` resumes sagas after a
crash.
"""

import logging
from importlib.metadata import PackageNotFoundError, version

from .adapters import (
    InMemoryEventPublisher,
    InMemoryIdempotencyStore,
    InMemorySagaRepository,
    SQLiteIdempotencyStore,
    SQLiteSagaRepository,
)
from .definitions import BaseSaga, SagaStep, Wait, sleep_for, sleep_until, wait_for_event
from .errors import (
    InvalidEventError,
    MainModuleDataWarning,
    NonRetryableError,
    RetryableError,
    SagaAlreadyExistsError,
    SagaConflictError,
    SagaDefinitionError,
    SagaError,
    SagaLeaseError,
    SerializationError,
    StepRefusedError,
    UnknownSagaVersionError,
)
from .events import SagaEvent, SagaEventType
from .inbox import Delivery, DeliveryStatus
from .orchestrator import SagaOrchestrator
from .outbox import OutboxRelay
from .protocols import (
    Clock,
    EventPublisher,
    IdempotencyStore,
    OutboxSource,
    SagaListener,
    SagaRepository,
)
from .registry import SagaRegistry
from .retry import RetryPolicy, is_refusal
from .runtime import Phase, StepRun, current_step
from .state import (
    RecoveryReport,
    SagaContext,
    SagaResult,
    SagaStatus,
    SkippedSaga,
    StepState,
    StepStatus,
)
from .worker import SagaWorker

# A library never configures logging; this only keeps Python's last-resort handler quiet.
logging.getLogger("saga_orchestrator").addHandler(logging.NullHandler())

try:
    __version__ = version("saga-orchestrator")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
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
]
