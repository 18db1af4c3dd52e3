"""How users declare sagas: ``BaseSaga`` subclasses returning ``SagaStep``s."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar
from uuid import uuid4

from .errors import SagaDefinitionError, SagaDefinitionMismatchError
from .retry import RetryPolicy
from .state import SagaContext, StepState

__all__ = [
    "Action",
    "BaseSaga",
    "Compensation",
    "EventAcceptor",
    "SagaStep",
    "Wait",
    "default_correlation_id",
    "sleep_for",
    "sleep_until",
    "wait_for_event",
]

T = TypeVar("T")

Action = Callable[[T], Awaitable[Mapping[str, Any] | None]]
"""A forward step: receives the saga's data, returns fields to set on it (or ``None``)."""
Compensation = Callable[[T], Awaitable[None]]
"""Undoes a step's effect. Must tolerate having nothing to undo, and being run twice."""
EventAcceptor = Callable[[T, Mapping[str, Any]], Mapping[str, Any] | None]
"""Checks an event's payload against the saga's data and returns the data fields to set (or
``None``); raising rejects the event, which fails the wait step. A plain function (not
``async``), without side effects: it may run again after a crash."""


_NAME_LIMIT = 200


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SagaDefinitionError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > _NAME_LIMIT:
        raise SagaDefinitionError(f"{what} is longer than {_NAME_LIMIT} characters: {value!r}")
    return value


def _check_seconds(step: str, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SagaDefinitionError(
            f"step {step!r}: {name} must be a number of seconds, got {value!r}", step=step
        )
    if not (value > 0 and math.isfinite(value)):
        raise SagaDefinitionError(
            f"step {step!r}: {name} must be a finite number > 0 (None for no limit), got {value}",
            step=step,
        )


@dataclass(frozen=True, slots=True)
class Wait(Generic[T]):
    """What a wait step waits for: an event addressed to the saga, or a time.

    Build wait steps with [`wait_for_event`][saga_orchestrator.definitions.wait_for_event],
    [`sleep_for`][saga_orchestrator.definitions.sleep_for] and
    [`sleep_until`][saga_orchestrator.definitions.sleep_until] rather than by hand.
    """

    event: str | None = None
    """The event's name (``"payment.captured"``); ``None`` for a timer."""
    timeout_seconds: float | None = None
    """An event wait: how long to wait before the step fails (``None``: no limit but the
    saga's deadline). A timer: how long to sleep."""
    until: Callable[[T], datetime] | None = None
    """A timer: the instant to sleep until, from the saga's data (a timezone-aware
    ``datetime``), computed when the wait begins."""
    accept: EventAcceptor[T] | None = None
    """An event wait: checks the payload and returns the data fields to set (see
    [`EventAcceptor`][saga_orchestrator.definitions.EventAcceptor]). ``None``: the payload's
    fields are set on the data as they are, as an action's result is."""

    @property
    def is_timer(self) -> bool:
        """Whether this waits for a time rather than an event."""
        return self.event is None

    def describe(self) -> str:
        """``event 'payment.captured'`` or ``a timer``, for messages."""
        return f"event {self.event!r}" if self.event is not None else "a timer"


@dataclass(frozen=True, slots=True)
class SagaStep(Generic[T]):
    """One step of a saga: an action and the compensation that undoes it."""

    name: str
    """Unique within the saga; part of the stored state and of idempotency keys."""
    action: Action[T]
    """The coroutine function that does the step (see [`Action`][])."""
    compensation: Compensation[T] | None = None
    """``None`` for a step with nothing to undo."""
    timeout_seconds: float | None = None
    """Per attempt. A timed-out attempt may still have acted, so it counts as possibly done."""
    retry: RetryPolicy | None = None
    """Forward retries; ``None`` uses the orchestrator's default."""
    compensation_retry: RetryPolicy | None = None
    """Compensation retries (every error is retried); ``None`` uses the orchestrator's default."""
    retriable: bool = False
    """A step after the pivot: retried until it succeeds, never compensated and never the
    cause of compensation. Retriable steps must come after every compensatable one."""
    compensation_timeout_seconds: float | None = None
    """Per compensation attempt; ``None`` uses ``timeout_seconds``. A compensation that times
    out is retried like any failed one, so a hung call cannot hold the saga forever."""
    refusals: tuple[type[BaseException], ...] = ()
    """Exception types that, raised by this step's action, are *refusals*: the service said no
    before doing anything, so the failed step is not compensated. Any other failure may have
    acted and is compensated. Exceptions marked ``refused = True`` (such as
    [`StepRefusedError`][saga_orchestrator.errors.StepRefusedError]) are refusals for every
    step; see [`is_refusal`][saga_orchestrator.retry.is_refusal]."""
    wait: Wait[T] | None = None
    """Makes this a *wait step* (its ``action`` is never called): the saga parks until the
    event arrives or the time comes. Build one with
    [`wait_for_event`][saga_orchestrator.definitions.wait_for_event],
    [`sleep_for`][saga_orchestrator.definitions.sleep_for] or
    [`sleep_until`][saga_orchestrator.definitions.sleep_until]."""

    def __post_init__(self) -> None:
        """Check the step as it is built.

        Raises [`SagaDefinitionError`][] for an empty or over-long name, an action or
        compensation that is not an ``async def`` function (or other coroutine function), a
        timeout that is not a positive finite number, or ``refusals`` that are not exception
        classes.
        """
        if not isinstance(self.name, str) or not self.name.strip():
            raise SagaDefinitionError(f"step name must be a non-empty string, got {self.name!r}")
        if len(self.name) > 200:
            raise SagaDefinitionError(f"step name is longer than 200 characters: {self.name!r}")
        _check_coroutine_function(self.name, "action", self.action)
        if self.compensation is not None:
            _check_coroutine_function(self.name, "compensation", self.compensation)
        for name in ("timeout_seconds", "compensation_timeout_seconds"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise SagaDefinitionError(
                    f"step {self.name!r}: {name} must be a number of seconds, got {value!r}",
                    step=self.name,
                )
            if not (value > 0 and math.isfinite(value)):
                raise SagaDefinitionError(
                    f"step {self.name!r}: {name} must be a finite number > 0 (None for no "
                    f"limit), got {value}",
                    step=self.name,
                )
        given: Any = self.refusals
        if isinstance(given, type):
            given = (given,)
        try:
            refusals: tuple[object, ...] = tuple(given)
        except TypeError:
            raise SagaDefinitionError(
                f"step {self.name!r}: refusals must be a tuple of exception classes, "
                f"got {self.refusals!r}",
                step=self.name,
            ) from None
        for kind in refusals:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise SagaDefinitionError(
                    f"step {self.name!r}: refusals must be exception classes, got {kind!r}",
                    step=self.name,
                )
        object.__setattr__(self, "refusals", refusals)
        if self.wait is not None:
            self._check_wait(self.wait)

    def _check_wait(self, wait: Wait[T]) -> None:
        name = self.name
        if not isinstance(wait, Wait):
            raise SagaDefinitionError(
                f"step {name!r}: wait must be a Wait, got {type(wait).__name__}", step=name
            )
        if wait.event is not None:
            _check_name(f"step {name!r}: the event name", wait.event)
            if wait.until is not None:
                raise SagaDefinitionError(
                    f"step {name!r}: an event wait takes timeout_seconds, not until", step=name
                )
            if self.retriable:
                raise SagaDefinitionError(
                    f"step {name!r}: a wait for an event cannot be retriable (it may time out)",
                    step=name,
                )
            if wait.accept is not None and not callable(wait.accept):
                raise SagaDefinitionError(f"step {name!r}: accept is not callable", step=name)
            if wait.accept is not None and _is_coroutine_function(wait.accept):
                raise SagaDefinitionError(
                    f"step {name!r}: accept must be a plain function, not `async def`", step=name
                )
        elif (wait.timeout_seconds is None) == (wait.until is None):
            raise SagaDefinitionError(
                f"step {name!r}: a timer needs exactly one of timeout_seconds (sleep_for) and "
                "until (sleep_until)",
                step=name,
            )
        elif wait.until is not None and not callable(wait.until):
            raise SagaDefinitionError(f"step {name!r}: until is not callable", step=name)
        if wait.timeout_seconds is not None:
            _check_seconds(name, "timeout_seconds", wait.timeout_seconds)
        if self.timeout_seconds is not None or self.retry is not None or self.refusals:
            raise SagaDefinitionError(
                f"step {name!r}: a wait step has no action, so no timeout_seconds, retry or "
                "refusals (the wait's own timeout is Wait.timeout_seconds)",
                step=name,
            )


async def _wait_step_action(data: Any) -> None:
    """The ``action`` of a wait step: never called (the engine waits instead)."""
    raise RuntimeError("a wait step's action is never called")


def wait_for_event(
    name: str,
    event: str,
    *,
    timeout_seconds: float | None = None,
    accept: EventAcceptor[T] | None = None,
    compensation: Compensation[T] | None = None,
    compensation_retry: RetryPolicy | None = None,
    compensation_timeout_seconds: float | None = None,
) -> SagaStep[T]:
    """A step that waits for the event ``event`` addressed to the saga
    ([`SagaOrchestrator.deliver_event`][saga_orchestrator.orchestrator.SagaOrchestrator.deliver_event]).

    The event's payload becomes fields of the saga's data (through ``accept``, if given), as
    an action's result does, and the saga goes on. An event delivered before the saga
    reaches the step is kept and consumed when it does. After ``timeout_seconds`` without
    the event (or at the saga's deadline), or if ``accept`` rejects the payload (raises), the
    step fails and the saga compensates the steps before it, last first. ``compensation``
    undoes what the step's event stands for, should a later step fail.

    Raises [`SagaDefinitionError`][saga_orchestrator.errors.SagaDefinitionError] for a bad
    name, event name or timeout.
    """
    return SagaStep(
        name,
        _wait_step_action,
        compensation=compensation,
        compensation_retry=compensation_retry,
        compensation_timeout_seconds=compensation_timeout_seconds,
        wait=Wait(event=event, timeout_seconds=timeout_seconds, accept=accept),
    )


def sleep_for(name: str, seconds: float, *, retriable: bool = False) -> SagaStep[T]:
    """A step that sleeps ``seconds`` (a durable timer: the saga is stored, and no task or
    lease holds it meanwhile). A saga's deadline ends the sleep and fails the step, unless
    ``retriable`` (after the pivot: the step then always completes)."""
    return SagaStep(
        name, _wait_step_action, retriable=retriable, wait=Wait(timeout_seconds=seconds)
    )


def sleep_until(
    name: str, until: Callable[[T], datetime], *, retriable: bool = False
) -> SagaStep[T]:
    """A step that sleeps until ``until(data)``, a timezone-aware instant computed when the
    step begins (an instant already past completes it at once). As ``sleep_for`` otherwise;
    ``until`` raising, or giving a naive ``datetime``, fails the step."""
    return SagaStep(name, _wait_step_action, retriable=retriable, wait=Wait(until=until))


def _is_coroutine_function(fn: object) -> bool:
    """Whether calling ``fn`` gives a coroutine: ``async def`` functions and methods, partials
    of them, and objects whose ``__call__`` is one (``AsyncMock`` included)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class's, not the instance's
    return call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def _check_coroutine_function(step: str, role: str, fn: object) -> None:
    if not callable(fn):
        raise SagaDefinitionError(f"step {step!r}: {role} is not callable", step=step)
    if not _is_coroutine_function(fn):
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        raise SagaDefinitionError(
            f"step {step!r}: {role} {name} is not a coroutine function; declare it with "
            f"`async def` (a plain function would run its effect, then fail when awaited)",
            step=step,
        )


_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def default_correlation_id(data: object) -> str | None:
    """The documented default correlation id of a saga's data.

    The data class's name, without a trailing ``Data``, in snake case, names a field:
    ``OrderData`` → ``order_id``. When the data has that field, and it is set, the
    correlation id is ``"order-{order_id}"`` (hyphens for underscores in the prefix).
    Otherwise there is none. Override ``BaseSaga.correlation_id`` to choose another.
    """
    name = type(data).__name__
    if name.endswith("Data") and len(name) > 4:
        name = name[:-4]
    prefix = _CAMEL_BOUNDARY.sub("_", name).lower()
    value = getattr(data, f"{prefix}_id", None)
    if value is None:
        return None
    return f"{prefix.replace('_', '-')}-{value}"


class BaseSaga(ABC, Generic[T]):
    """Subclass this, set ``saga_type``, and return the steps from ``define_steps``.

    Set your dependencies (services) on ``self`` *before* calling ``super().__init__(data)``,
    which builds ``self.context``.
    """

    saga_type: ClassVar[str]
    """Stable name of this kind of saga; stored with each saga and used for recovery."""
    saga_version: ClassVar[int] = 1
    """Version of this definition (an int >= 1), stored with each saga it starts. Bump it
    when you change the steps, and register the old definition beside the new one while
    sagas it started are in flight (``register(..., version=1)``; see "Upgrading")."""
    timeout_minutes: ClassVar[float | None] = None
    """Deadline from the saga's start; past it no forward step starts and the saga
    compensates. Stored as an absolute time, so it survives restarts."""

    context: SagaContext[T]
    """The saga's recorded state: its id (assign ``context.saga_id`` before executing to
    choose it), data, status and step records. The orchestrator advances it in place."""

    def __init__(self, data: T) -> None:
        saga_type = getattr(type(self), "saga_type", None)
        if not isinstance(saga_type, str) or not saga_type:
            raise SagaDefinitionError(
                f"{type(self).__qualname__} must set the class attribute saga_type to a "
                "non-empty string"
            )
        if not dataclasses.is_dataclass(data) or isinstance(data, type):
            raise SagaDefinitionError(
                f"{saga_type}: saga data must be a dataclass instance, got {type(data).__name__}"
            )
        timeout = type(self).timeout_minutes
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not (timeout > 0 and math.isfinite(timeout))
        ):
            raise SagaDefinitionError(
                f"{saga_type}: timeout_minutes must be a finite number > 0 (None for no "
                f"deadline), got {timeout!r}"
            )
        if timeout is not None:
            try:
                datetime.now(UTC) + timedelta(minutes=timeout)
            except OverflowError:
                raise SagaDefinitionError(
                    f"{saga_type}: timeout_minutes={timeout!r} puts the deadline past the year 9999"
                ) from None
        saga_version = type(self).saga_version
        if isinstance(saga_version, bool) or not isinstance(saga_version, int) or saga_version < 1:
            raise SagaDefinitionError(
                f"{saga_type}: saga_version must be an int >= 1, got {saga_version!r}"
            )
        self._steps = self._validated_steps(saga_type)
        now = datetime.now(UTC)
        self.context = SagaContext(
            saga_id=uuid4(),
            saga_type=saga_type,
            data=data,
            steps=[StepState(name=step.name) for step in self._steps],
            correlation_id=self.correlation_id(data),
            created_at=now,
            updated_at=now,
            saga_version=saga_version,
            _saga=self,
        )

    @abstractmethod
    def define_steps(self) -> list[SagaStep[T]]:
        """The steps, in the order they run."""

    def correlation_id(self, data: T) -> str | None:
        """A business key to find this saga by; override it to choose another.

        The default is [`default_correlation_id`][].
        """
        return default_correlation_id(data)

    @property
    def steps(self) -> tuple[SagaStep[T], ...]:
        """The validated steps of ``define_steps()``, in order."""
        return self._steps

    def step(self, name: str) -> SagaStep[T]:
        """The step called ``name``; raises ``KeyError`` if there is none."""
        for step in self._steps:
            if step.name == name:
                return step
        raise KeyError(f"saga {self.saga_type!r} has no step {name!r}")

    def attach(self, context: SagaContext[T]) -> None:
        """Adopt a stored context (recovery), checking that it matches this definition: the
        same ``saga_type``, ``saga_version`` and step names."""
        if context.saga_version != type(self).saga_version:
            raise SagaDefinitionMismatchError(
                f"stored saga {context.saga_id} ({context.saga_type}) was started by definition "
                f"version {context.saga_version}, but {type(self).__qualname__} is version "
                f"{type(self).saga_version}",
                saga_id=context.saga_id,
            )
        stored = [s.name for s in context.steps]
        defined = [s.name for s in self._steps]
        if stored != defined or context.saga_type != self.saga_type:
            raise SagaDefinitionMismatchError(
                f"stored saga {context.saga_id} ({context.saga_type}) has steps {stored}, "
                f"but {type(self).__qualname__} ({self.saga_type}) defines {defined}",
                saga_id=context.saga_id,
            )
        context._saga = self
        self.context = context

    def _validated_steps(self, saga_type: str) -> tuple[SagaStep[T], ...]:
        steps = self.define_steps()
        if not isinstance(steps, list | tuple) or not steps:
            raise SagaDefinitionError(f"{saga_type}: define_steps() must return a non-empty list")
        seen: set[str] = set()
        retriable_from: str | None = None
        for step in steps:
            if not isinstance(step, SagaStep):
                raise SagaDefinitionError(
                    f"{saga_type}: define_steps() returned {type(step).__name__}, not SagaStep"
                )
            if step.name in seen:
                raise SagaDefinitionError(f"{saga_type}: duplicate step name {step.name!r}")
            seen.add(step.name)
            if step.retriable:
                retriable_from = retriable_from or step.name
            elif retriable_from is not None:
                raise SagaDefinitionError(
                    f"{saga_type}: step {step.name!r} is compensatable but follows the "
                    f"retriable step {retriable_from!r}; retriable steps must come last"
                )
        return tuple(steps)
