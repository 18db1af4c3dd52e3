"""Fault injection for the example's services, from configuration.

    FaultConfig(transient_rate=0.05, reply_lost_rate=0.02, permanent_rate=0.01)

- transient: `ServiceUnavailableError` before the call takes effect (the library retries it);
- reply lost: the call takes effect, then `ServiceUnavailableError` (the retry must find the
  effect by its idempotency key rather than repeat it);
- permanent: `ServiceRejectedError` before the call takes effect (forward calls only, so
  that compensations can always finish);
- latency: a random delay of up to `latency_seconds` before each call;
- fail_operations: forward operations that are always refused (`ServiceRejectedError`), to
  take one compensation path on purpose, e.g. ``FaultConfig(fail_operations={"shipping.create"})``.
  Operation names: ``inventory.reserve``, ``payment.charge``, ``shipping.create``,
  ``notification.order_confirmed``; and ``payment.authorize`` (the asynchronous provider).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import anyio

from .errors import ServiceRejectedError, ServiceUnavailableError


@dataclass(frozen=True, kw_only=True)
class FaultConfig:
    transient_rate: float = 0.0
    """Probability that a call fails before acting, transiently."""
    reply_lost_rate: float = 0.0
    """Probability that a call acts and its reply is then lost."""
    permanent_rate: float = 0.0
    """Probability that a forward call is refused for good."""
    latency_seconds: float = 0.0
    """Upper bound of the random delay added to each call."""
    seed: int | None = None
    """Seed for reproducible runs."""
    fail_operations: frozenset[str] = frozenset()
    """Forward operations refused every time, before they act (compensations never are)."""

    def __post_init__(self) -> None:
        # Any iterable of names will do; stored as a frozenset so the config stays hashable.
        object.__setattr__(self, "fail_operations", frozenset(self.fail_operations))
        for name in ("transient_rate", "reply_lost_rate", "permanent_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be within [0, 1], got {value}")
        if not (math.isfinite(self.latency_seconds) and self.latency_seconds >= 0):
            raise ValueError(
                f"latency_seconds must be a finite number >= 0, got {self.latency_seconds}"
            )


class Faults:
    """Draws faults for service calls according to a `FaultConfig`."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(self.config.seed)
        self.injected: dict[str, int] = {}

    def _count(self, kind: str) -> None:
        self.injected[kind] = self.injected.get(kind, 0) + 1

    async def before(self, operation: str, *, compensating: bool = False) -> None:
        """Called before a service call acts: may delay it or make it fail."""
        config = self.config
        if config.latency_seconds:
            await anyio.sleep(self._rng.uniform(0, config.latency_seconds))
        if not compensating and operation in config.fail_operations:
            self._count("refused")
            raise ServiceRejectedError(f"{operation}: request rejected (injected, always)")
        if self._rng.random() < config.transient_rate:
            self._count("transient")
            raise ServiceUnavailableError(f"{operation}: service unavailable (injected)")
        if not compensating and self._rng.random() < config.permanent_rate:
            self._count("permanent")
            raise ServiceRejectedError(f"{operation}: request rejected (injected)")

    def after(self, operation: str) -> None:
        """Called after a service call acted: may lose its reply."""
        if self._rng.random() < self.config.reply_lost_rate:
            self._count("reply_lost")
            raise ServiceUnavailableError(f"{operation}: reply lost after the effect (injected)")
