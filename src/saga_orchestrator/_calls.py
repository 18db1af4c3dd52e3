"""Calling user code, a part of SagaOrchestrator: one attempt of an action or a compensation
(interceptors, timeout, lease guard, idempotency replay), its failure classified and its result
checked."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import anyio

from . import machine
from ._recording import _Recording
from .definitions import SagaStep
from .errors import (
    InvalidStepResultError,
    SagaLeaseError,
    SerializationError,
    UnknownSagaTypeError,
)
from .protocols import IdempotencyStore, StepInterceptor
from .retry import RetryPolicy, is_refusal
from .runtime import Phase, StepRun, _current, _PendingRun
from .serialization import dumps, encode_value, loads
from .state import SagaContext, StepState

logger = logging.getLogger("saga_orchestrator")
_NO_GUARD = nullcontext()  # stateless: one for every call without a lease


@dataclass(slots=True)
class _Outcome:
    """How a call of user code went, and how long it took (for events and metrics)."""

    failure: machine.Failure | None
    seconds: float


def _describe(error: BaseException) -> str:
    message = str(error)
    if isinstance(error, UnknownSagaTypeError):  # its message says it all
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class _Calls(_Recording):
    """Calls user code; the attributes are set by ``SagaOrchestrator.__init__``."""

    idempotency_store: IdempotencyStore | None
    default_retry: RetryPolicy
    interceptors: list[StepInterceptor]

    async def _attempt(
        self, context: SagaContext[Any], step: SagaStep[Any], state: StepState
    ) -> _Outcome:
        """One attempt of a forward step, idempotency replay included; result applied."""
        store = self.idempotency_store
        key = f"{context.saga_id_text}:{step.name}"  # context.idempotency_key, without lookup
        if store is not None:
            cached = await store.get(key)
            if cached is not None:
                _apply(context, self._check_result(context, step.name, loads(cached)))
                return _Outcome(None, 0.0)
        result_box: list[Any] = []

        async def action(data: Any) -> None:
            result_box.append(await step.action(data))

        called = await self._call_guarded(context, step, Phase.ACTION, state.attempts, action)
        if called.failure is not None:
            return called
        result = result_box[0]
        try:
            checked = self._check_result(context, step.name, result)
            if store is not None:
                encoded = dumps(checked, f"{step.name} result")
                stored = await store.put_if_absent(key, encoded)
                if stored != encoded:  # another run recorded this step first: theirs stands
                    checked = self._check_result(context, step.name, loads(stored))
            _apply(context, checked)
        except (InvalidStepResultError, SerializationError) as exc:
            # The action ran, so its effect may exist: compensate it, do not retry it.
            failure = machine.Failure(text=_describe(exc), retryable=False, effect_possible=True)
            return _Outcome(failure, called.seconds)
        return called

    async def _call_guarded(
        self,
        context: SagaContext[Any],
        step: SagaStep[Any],
        phase: Phase,
        attempt: int,
        fn: Callable[[Any], Awaitable[Any]],
    ) -> _Outcome:
        pending = _PendingRun(
            context.saga_id, context.saga_type, step.name, phase, attempt, context.version
        )
        timeout = step.timeout_seconds
        if phase is Phase.COMPENSATION and step.compensation_timeout_seconds is not None:
            timeout = step.compensation_timeout_seconds
        if phase is Phase.ACTION and context.deadline is not None and not step.retriable:
            remaining = (context.deadline - self.clock.now()).total_seconds()
            timeout = remaining if timeout is None else min(timeout, remaining)
        data = context.data
        call: Callable[[], Awaitable[Any]] = lambda: fn(data)  # noqa: E731
        if self.interceptors:
            run = pending.build()
            for interceptor in reversed(self.interceptors):
                call = _wrap(interceptor, run, call)
        token = _current.set(pending)
        # A repository with leases cancels a step before its lease can expire.
        guard = self._leases.lease_guard(context.saga_id) if self._leases is not None else _NO_GUARD
        started = time.perf_counter()
        try:
            with guard:  # raises SagaLeaseError if the lease runs out first
                if timeout is None:
                    await call()
                else:
                    with anyio.fail_after(max(timeout, 0.0)):
                        await call()
        except SagaLeaseError:
            raise
        except Exception as exc:
            seconds = time.perf_counter() - started
            policy = (step.retry or self.default_retry) if phase is Phase.ACTION else None
            retryable = policy.should_retry(exc) if policy is not None else True
            timed_out = isinstance(exc, TimeoutError) and timeout is not None
            text = f"TimeoutError: no result within {timeout:g}s" if timed_out else _describe(exc)
            event = "saga.step.failed" if phase is Phase.ACTION else "saga.compensation.failed"
            logger.warning(
                "%s: %s %s attempt %d: %s",
                event,
                context.saga_type,
                step.name,
                attempt,
                text,
                extra={
                    "event": event,
                    "saga_id": str(context.saga_id),
                    "saga_type": context.saga_type,
                    "step": step.name,
                    "attempt": attempt,
                },
            )
            # Only a declared refusal proves that the step did not act. After anything else (a
            # timeout, a lost connection, a bug after the charge) nobody knows, so the step
            # counts as possibly done and is compensated.
            effect_possible = (
                phase is Phase.COMPENSATION or timed_out or not is_refusal(exc, step.refusals)
            )
            failure = machine.Failure(
                text=text, retryable=retryable, effect_possible=effect_possible
            )
            return _Outcome(failure, seconds)
        finally:
            _current.reset(token)
        return _Outcome(None, time.perf_counter() - started)

    def _check_result(
        self, context: SagaContext[Any], step: str, result: Any, *, source: str = "result"
    ) -> dict[str, Any]:
        if result is None:
            return {}
        returned = "returned" if source == "result" else "received an event with"
        if not isinstance(result, Mapping):
            raise InvalidStepResultError(
                f"step {step!r} {returned} {type(result).__name__}; "
                "an action returns a dict of data fields to set, or None",
                saga_id=context.saga_id,
                step=step,
            )
        fields = getattr(type(context.data), "__dataclass_fields__", {})
        checked: dict[str, Any] = {}
        for key, value in result.items():
            if key not in fields:
                raise InvalidStepResultError(
                    f"step {step!r} {returned} unknown field {key!r}; "
                    f"{type(context.data).__name__} has {sorted(fields)}",
                    saga_id=context.saga_id,
                    step=step,
                )
            encode_value(value, f"{step} {source}[{key!r}]")
            checked[key] = value
        return checked

    async def _attempt_unrecorded(
        self, context: SagaContext[Any], definition: SagaStep[Any], state: StepState
    ) -> bool:
        """``SagaOrchestrator._execute_step``'s attempts, with retries, outside of any recorded
        run; returns whether the step succeeded."""
        policy = definition.retry or self.default_retry
        while True:
            machine.unrecorded_attempt_start(state)
            failure = (await self._attempt(context, definition, state)).failure
            final = (
                failure is None or not failure.retryable or state.attempts >= policy.max_attempts
            )
            machine.unrecorded_attempt_end(state, failure, final=final)
            if failure is None or final:
                return failure is None
            await self.clock.sleep(policy.backoff_seconds(state.attempts))


def _apply(context: SagaContext[Any], checked: Mapping[str, Any]) -> None:
    for key, value in checked.items():
        setattr(context.data, key, value)


def _wrap(
    interceptor: StepInterceptor, run: StepRun, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    return lambda: interceptor(run, inner)
