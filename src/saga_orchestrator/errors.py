"""The exception hierarchy: one root, structured fields, retryability on the error.

Everything the library raises derives from [`SagaError`][saga_orchestrator.errors.SagaError].
Errors raised by *your* step actions are not wrapped: the orchestrator classifies them (see
[`is_retryable`][saga_orchestrator.retry.is_retryable] and
[`is_refusal`][saga_orchestrator.retry.is_refusal]) and records ``"ExceptionType: message"``
as the step's error.
"""

from __future__ import annotations

from uuid import UUID

__all__ = [
    "InvalidEventError",
    "InvalidStepResultError",
    "MainModuleDataWarning",
    "NonRetryableError",
    "RetryableError",
    "SagaAlreadyExistsError",
    "SagaConflictError",
    "SagaDefinitionError",
    "SagaDefinitionMismatchError",
    "SagaError",
    "SagaLeaseError",
    "SagaNotFoundError",
    "SagaStateError",
    "SerializationError",
    "StepRefusedError",
    "UnknownSagaTypeError",
    "UnknownSagaVersionError",
]


class SagaError(Exception):
    """Root of every error raised by saga-orchestrator.

    Args:
        message: what went wrong, for people; also ``str(error)``.
        saga_id: the saga concerned, when there is one.
        step: the step concerned, when there is one.
        retryable: overrides the class's ``retryable`` for this instance.
    """

    retryable: bool = False
    """Whether trying the same operation again may succeed. The orchestrator's default retry
    rule reads it, on your own exceptions too (see
    [`is_retryable`][saga_orchestrator.retry.is_retryable])."""

    def __init__(
        self,
        message: str,
        *,
        saga_id: UUID | None = None,
        step: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        """The message, as given."""
        self.saga_id = saga_id
        """The saga concerned, when there is one."""
        self.step = step
        """The step concerned, when there is one."""
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        """The message, without the class name or the structured fields."""
        return self.message


class RetryableError(SagaError):
    """Raise from a step action for a transient failure that a later attempt may fix."""

    retryable = True
    """Retried within the step's [`RetryPolicy`][saga_orchestrator.retry.RetryPolicy] (unless
    its ``non_retryable_errors`` lists the class)."""


class NonRetryableError(SagaError):
    """Raise from a step action for a failure that another attempt cannot fix: fails at once.

    It says nothing about whether the step acted, so the step is still compensated. For "the
    service said no and did nothing" raise
    [`StepRefusedError`][saga_orchestrator.errors.StepRefusedError].
    """

    retryable = False
    """Not retried (unless a policy's ``retryable_errors`` lists the class): the step fails at
    once and, since it may have acted, is compensated."""


class StepRefusedError(NonRetryableError):
    """Raise from a step action (or derive your service's errors from it) for a *refusal*: a
    business answer given before anything was done, such as a declined card or stock that
    is not there.

    A refusal is the only failure that proves a step did not act, so a step that fails with
    one is not compensated. Any other failure may have acted (a bug after the charge, a lost
    reply), so its step is compensated. An exception of your own can declare itself a refusal
    without deriving from this class, with a ``refused = True`` class attribute, and a step
    can list refusals of its own in ``SagaStep(refusals=...)``; see
    [`is_refusal`][saga_orchestrator.retry.is_refusal].
    """

    refused = True
    """The marker the orchestrator reads: the step did not act."""


class SagaDefinitionError(SagaError, TypeError):
    """A saga class or its steps are declared wrongly (empty steps, duplicate names, ...)."""


class SagaDefinitionMismatchError(SagaError):
    """A stored saga's steps differ from its class's current ``define_steps()``.

    Raised instead of guessing: resuming a saga on a changed definition could skip or repeat a
    step. Finish old sagas on the old code, or give the new definition a new ``saga_type``.
    """


class SerializationError(SagaError, TypeError):
    """A value cannot be stored so that it reads back exactly; nothing was written."""


class InvalidStepResultError(SagaError, TypeError):
    """A step action returned something that cannot be applied to the saga's data."""


class SagaConflictError(SagaError):
    """Another orchestrator advanced this saga first (its stored version moved on).

    The orchestrator that gets this stops driving the saga without side effects of its own;
    the saga carries on wherever the winner takes it.

    Args:
        saga_id: the saga whose stored version moved on.
        expected_version: the version this orchestrator expected to replace.
    """

    retryable = False
    """Not retried: the other orchestrator owns the saga now."""

    def __init__(self, saga_id: UUID, expected_version: int) -> None:
        super().__init__(
            f"saga {saga_id} was changed by another orchestrator "
            f"(expected stored version {expected_version}); this one stopped driving it",
            saga_id=saga_id,
        )
        self.expected_version = expected_version
        """The stored version this orchestrator expected to replace."""


class SagaAlreadyExistsError(SagaError):
    """A saga with this id is already stored.

    Args:
        saga_id: the id that is taken.
    """

    def __init__(self, saga_id: UUID) -> None:
        super().__init__(f"saga {saga_id} already exists", saga_id=saga_id)


class SagaNotFoundError(SagaError, LookupError):
    """No saga with this id is stored.

    Args:
        saga_id: the id that was looked up.
    """

    def __init__(self, saga_id: UUID | None = None, *, correlation_id: str | None = None) -> None:
        if saga_id is None and correlation_id is not None:
            super().__init__(f"no saga with correlation id {correlation_id!r}")
        else:
            super().__init__(f"no saga with id {saga_id}", saga_id=saga_id)
        self.correlation_id = correlation_id
        """The correlation id that was looked up, if the saga was looked up by it."""


class SagaStateError(SagaError):
    """The requested operation does not apply to the saga in its current status."""


class InvalidEventError(SagaError, ValueError):
    """An event given to ``SagaOrchestrator.deliver_event`` cannot be delivered as given: a
    bad name or id, a payload that is not a mapping of storable values, no saga or two ways
    of addressing one, or an event its saga's definition never waits for. Nothing was
    stored."""


class UnknownSagaTypeError(SagaError, LookupError):
    """No factory is registered for a stored saga's ``saga_type``, so it cannot be rebuilt."""


class UnknownSagaVersionError(UnknownSagaTypeError):
    """Factories are registered for the stored saga's ``saga_type``, but none builds its
    definition version (``SagaContext.saga_version``): register the old definition beside
    the new one until its sagas are finished (see "Upgrading")."""


class MainModuleDataWarning(UserWarning):
    """A saga's data (or a value in it) is a class defined in ``__main__``, the script being
    run. It is stored as ``__main__:Name``, which no other process can import: ``recover()``
    in another script, a worker and the CLI could not read the saga. Define the class in a
    module and import it. Warned when such a value is first stored (at ``execute()``)."""


class SagaLeaseError(SagaConflictError):
    """Another process holds this saga's lease, or this process lost it.

    Raised by a repository with leases (PostgreSQL) when a write is refused because the saga
    is leased to someone else: either a live process holds it, or this process's lease
    expired and another took the saga over. The process that gets it stops driving the saga
    without side effects of its own; the lease holder carries on. A step that was running
    when the lease was lost is cancelled first, so it never runs in two places at once.

    Args:
        saga_id: the saga.
        message: who holds the lease, or how it was lost.
    """

    def __init__(self, saga_id: UUID, message: str) -> None:
        SagaError.__init__(self, message, saga_id=saga_id)
        self.expected_version = -1
        """Not a version mismatch: always -1."""
