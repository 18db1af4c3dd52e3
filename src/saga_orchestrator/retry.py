"""Retry policies and the rule that decides which errors are worth another attempt."""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_COMPENSATION_RETRY",
    "DEFAULT_RETRY",
    "RetryPolicy",
    "is_refusal",
    "is_retryable",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently a step (or a compensation) is attempted.

    The delay before attempt ``n + 1`` is
    ``min(initial_backoff_seconds * backoff_coefficient ** (n - 1), max_backoff_seconds)``,
    then reduced by a random fraction of up to ``jitter_ratio`` so that many sagas failing
    together do not retry in lockstep.
    """

    max_attempts: int = 3
    """Attempts in total, the first included. ``1`` means no retry."""
    initial_backoff_seconds: float = 0.1
    """Delay before the second attempt."""
    backoff_coefficient: float = 2.0
    """Factor by which the delay grows after each failed attempt."""
    max_backoff_seconds: float = 10.0
    """Upper bound of any single delay."""
    jitter_ratio: float = 0.2
    """Up to this fraction of each delay is removed at random (0 disables jitter)."""
    retryable_errors: tuple[type[BaseException], ...] = field(default=())
    """Extra exception types to retry, on top of [`is_retryable`][]'s defaults."""
    non_retryable_errors: tuple[type[BaseException], ...] = field(default=())
    """Exception types never to retry, even where the defaults would."""

    def __post_init__(self) -> None:
        """Check the fields; raises ``ValueError`` for an impossible policy (a count below 1,
        a negative, NaN or infinite number of seconds, ...)."""
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValueError(f"max_attempts must be an integer, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("initial_backoff_seconds", "max_backoff_seconds", "backoff_coefficient"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.initial_backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError("backoff seconds must be >= 0")
        if self.backoff_coefficient < 1:
            raise ValueError(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient}")
        if isinstance(self.jitter_ratio, bool) or not isinstance(self.jitter_ratio, int | float):
            raise ValueError(f"jitter_ratio must be a number, got {self.jitter_ratio!r}")
        if not 0 <= self.jitter_ratio <= 1:
            raise ValueError(f"jitter_ratio must be within [0, 1], got {self.jitter_ratio}")

    def backoff_seconds(self, failed_attempt: int, *, rng: random.Random | None = None) -> float:
        """The delay to wait after attempt number ``failed_attempt`` (1-based) failed."""
        exponent = max(failed_attempt - 1, 0)
        # Cap the exponent: the delay saturates long before 2**64 anyway.
        base = self.initial_backoff_seconds * self.backoff_coefficient ** min(exponent, 64)
        delay = min(base, self.max_backoff_seconds)
        if self.jitter_ratio and delay:
            delay -= delay * self.jitter_ratio * (rng or random).random()
        return delay

    def should_retry(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt under this policy."""
        if self.non_retryable_errors and isinstance(error, self.non_retryable_errors):
            return False
        if self.retryable_errors and isinstance(error, self.retryable_errors):
            return True
        return is_retryable(error)


def is_retryable(error: BaseException) -> bool:
    """The default rule: timeouts, connection errors and errors marked ``retryable``.

    An exception with a boolean ``retryable`` attribute decides for itself (every
    [`SagaError`][saga_orchestrator.errors.SagaError] has one). Anything else, such as a
    ``PaymentDeclinedError`` or a ``KeyError``, fails the step at once. Whether that step is
    then compensated is another question, answered by [`is_refusal`][].
    """
    flag = getattr(error, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(error, TimeoutError | ConnectionError)


def is_refusal(error: BaseException, declared: Collection[type[BaseException]] = ()) -> bool:
    """Whether ``error`` is a declared *refusal*: proof that the failed step did not act.

    True when ``error`` is an instance of one of the ``declared`` types (a step's
    ``SagaStep.refusals``), or carries a ``refused`` attribute that is ``True`` (every
    [`StepRefusedError`][saga_orchestrator.errors.StepRefusedError] does; so can an exception
    class of your own). Everything else (a programming error, a timeout, a lost connection,
    an error of unknown meaning) may have happened after the step's effect, so the step is
    compensated.
    """
    if declared and isinstance(error, tuple(declared)):
        return True
    return getattr(error, "refused", None) is True


DEFAULT_RETRY = RetryPolicy()
"""Forward steps: 3 attempts, 0.1 s then 0.2 s apart (minus jitter)."""

DEFAULT_COMPENSATION_RETRY = RetryPolicy(
    max_attempts=10,
    initial_backoff_seconds=0.2,
    backoff_coefficient=2.0,
    max_backoff_seconds=30.0,
)
"""Compensations retry every error, far more persistently: 10 attempts, waiting 0.2 s
doubling to 30 s between them (at most about 80 s in all, less with jitter)."""
