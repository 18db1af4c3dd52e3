"""Retry policies and the rule that decides which errors are worth another attempt."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["DEFAULT_COMPENSATION_RETRY", "DEFAULT_RETRY", "RetryPolicy", "is_retryable"]


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
        """Check the fields; raises ``ValueError`` for an impossible policy."""
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_backoff_seconds < 0 or self.max_backoff_seconds < 0:
            raise ValueError("backoff seconds must be >= 0")
        if self.backoff_coefficient < 1:
            raise ValueError(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient}")
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
    ``PaymentDeclinedError`` of your own, is a business outcome and fails at once.
    """
    flag = getattr(error, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(error, TimeoutError | ConnectionError)


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
