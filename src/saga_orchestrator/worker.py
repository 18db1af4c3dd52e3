"""Workers: many processes running the stored sagas of one database, each saga in one at a time.

A [`SagaWorker`][saga_orchestrator.worker.SagaWorker] claims runnable sagas from a repository
with leases
([`PostgresSagaRepository`][saga_orchestrator.adapters.postgres.PostgresSagaRepository]) and
drives them with its orchestrator:

```python
repository = PostgresSagaRepository("postgresql://app@db/app")
orchestrator = SagaOrchestrator(repository)
orchestrator.register("order_fulfillment", OrderSaga.rebuild)
await SagaWorker(orchestrator, concurrency=32).run_until_signalled()
```

- **Runnable** means in flight, not leased to a live process, and due. New sagas
  (``orchestrator.submit``) and sagas handed back wake waiting workers at once through
  LISTEN/NOTIFY; every worker also polls, so a lost notification only delays.
- **Leases** are renewed by heartbeats while a saga runs. A worker that dies loses its sagas
  to the others when their leases expire; the step it was running counts as interrupted
  (possibly done) and is retried or compensated by the rules of the saga.
- **Durable timers.** A saga waiting longer than ``park_after_seconds`` (a retry backoff, its
  deadline, a ``sleep_for`` timer) is handed back with its wake-up time stored; whichever
  worker is free then resumes it.
- **Waits for events.** A saga reaching a ``wait_for_event`` step whose event has not come is
  handed back at once, due at its timeout; storing the event it waits for
  (``deliver_event``, from any process) makes it due now and notifies the workers.
- **Shutdown.** ``stop()`` (SIGTERM or SIGINT under ``run_until_signalled``) stops claiming,
  hands back the sagas that are waiting, lets running steps finish for up to
  ``shutdown_grace_seconds``, then cancels the rest and releases their leases, so no saga
  stays stuck until a lease expires.
- **Stranded sagas.** A claimed saga this worker cannot rebuild (no factory registered for
  its ``saga_type`` or its definition version, or the factory raised) is marked stranded
  (``saga-orchestrator list`` and ``saga_states{status="stranded"}`` show it) and put back
  for ``STRANDED_RETRY_SECONDS``, so that a worker that has its definition can take it.
"""

from __future__ import annotations

import logging
import signal
from typing import Any
from uuid import UUID

import anyio

from .errors import SagaConflictError, SagaLeaseError
from .orchestrator import DriveControl, SagaOrchestrator
from .outbox import OutboxRelay
from .protocols import LeasedSagaRepository
from .retry import RetryPolicy
from .state import SagaContext, SkippedSaga

__all__ = ["STRANDED_RETRY_SECONDS", "SagaWorker"]

logger = logging.getLogger("saga_orchestrator")

CLAIM_RETRY = RetryPolicy(
    max_attempts=1_000_000, initial_backoff_seconds=0.1, max_backoff_seconds=5.0, jitter_ratio=0.2
)
"""How long a worker waits before claiming again after a failed claim (the database is down):
the one backoff formula, ``RetryPolicy``'s."""

STRANDED_RETRY_SECONDS = 60.0
"""How long a saga this worker could not rebuild is put back before any worker retries it."""


class SagaWorker:
    """Claims and runs stored sagas until stopped.

    Args:
        orchestrator: drives the sagas; its repository must support leases (PostgreSQL), and
            its registry must know every ``saga_type`` this worker should run (the worker
            claims only those).
        concurrency: sagas driven at once.
        poll_interval_seconds: how often to look for work when no notification arrives.
        park_after_seconds: a saga that must wait longer than this is handed back with its
            wake-up time stored, instead of keeping its lease while it sleeps.
        shutdown_grace_seconds: after ``stop()``, how long running steps may take to finish
            before they are cancelled and their sagas handed back.
        relay: an [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] to run alongside (only
            one relay per database publishes at a time; the others stand by).
    """

    def __init__(
        self,
        orchestrator: SagaOrchestrator,
        *,
        concurrency: int = 16,
        poll_interval_seconds: float = 1.0,
        park_after_seconds: float = 1.0,
        shutdown_grace_seconds: float = 30.0,
        relay: OutboxRelay | None = None,
    ) -> None:
        repository = orchestrator.repository
        if not isinstance(repository, LeasedSagaRepository):
            missing = [
                name
                for name in ("claim", "release", "release_all", "wait_for_work", "lease_guard")
                if not callable(getattr(repository, name, None))
            ]
            raise TypeError(
                f"SagaWorker needs a repository with leases (LeasedSagaRepository, as "
                f"PostgresSagaRepository); {type(repository).__name__} has no "
                f"{', '.join(missing) or 'lease methods'}"
            )
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if not poll_interval_seconds > 0:  # 0 would claim and listen in a busy loop
            raise ValueError("poll_interval_seconds must be > 0")
        self.orchestrator = orchestrator
        """Drives the claimed sagas."""
        self.repository: LeasedSagaRepository = repository
        """The orchestrator's repository, which workers claim sagas from."""
        self.concurrency = concurrency
        """Sagas driven at once."""
        self.poll_interval_seconds = poll_interval_seconds
        """How often to look for work without a notification."""
        self.park_after_seconds = park_after_seconds
        """Waits longer than this hand the saga back."""
        self.shutdown_grace_seconds = shutdown_grace_seconds
        """How long running steps may take to finish after ``stop()``."""
        self.relay = relay
        """The outbox relay run alongside, if any."""
        self.running: set[UUID] = set()
        """The sagas being driven now."""
        self.claimed = 0
        """Sagas claimed since start."""
        self.finished = 0
        """Sagas driven to a terminal status."""
        self.parked = 0
        """Sagas handed back to wait for a stored time."""
        self.lost = 0
        """Sagas dropped because another process took them over (lease or version)."""
        self.stranded = 0
        """Claimed sagas this worker could not rebuild, marked stranded and put back."""
        self.handed_back = 0
        """Sagas released at shutdown, their running step cancelled."""
        self._stopping = False
        self._stopped = anyio.Event()
        self._wakeup = anyio.Event()
        self._started = anyio.Event()

    # ------------------------------------------------------------------ control

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping

    def stop(self) -> None:
        """Stop claiming, hand back waiting sagas, and let ``run`` return after the running
        steps finish (or ``shutdown_grace_seconds``). Safe to call more than once."""
        if not self._stopping:
            logger.info(
                "saga.worker.stopping: %d sagas running",
                len(self.running),
                extra={"event": "saga.worker.stopping"},
            )
        self._stopping = True
        self._stopped.set()
        self._wakeup.set()

    async def started(self) -> None:
        """Wait until ``run`` is claiming work."""
        await self._started.wait()

    async def run_until_signalled(self) -> None:
        """``run``, with SIGTERM and SIGINT calling ``stop()`` (main thread only)."""
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        logger.info("saga.worker.signal: %s", signal.Signals(signum).name)
                        self.stop()

            tg.start_soon(watch)
            await self.run()
            tg.cancel_scope.cancel()

    async def run(self) -> None:
        """Claim and drive sagas until ``stop()``; then shut down gracefully and return."""
        saga_types = sorted(self.orchestrator.registry.saga_types)
        control = DriveControl(self.park_after_seconds, lambda: self._stopping, self._stopped.wait)
        async with anyio.create_task_group() as services:
            if self.relay is not None:
                services.start_soon(self.relay.run)
            services.start_soon(self._listen)
            async with anyio.create_task_group() as drives:
                self._started.set()
                failures = 0
                while not self._stopping:
                    free = self.concurrency - len(self.running)
                    if free > 0:
                        try:
                            claimed = await self.repository.claim(free, saga_types=saga_types)
                            failures = 0
                        except Exception as exc:
                            failures += 1
                            logger.warning("saga.worker.claim_failed: %s", exc)
                            with anyio.move_on_after(CLAIM_RETRY.backoff_seconds(failures + 1)):
                                await self._wakeup_or_stop()
                            continue
                        for context in claimed:
                            self.claimed += 1
                            self.running.add(context.saga_id)
                            drives.start_soon(self._drive, context, control)
                        if len(claimed) == free:
                            continue  # there may be more
                    with anyio.move_on_after(self.poll_interval_seconds):
                        await self._wakeup_or_stop()
                # Stopping: waiting sagas park themselves; running steps get the grace period.
                with anyio.move_on_after(self.shutdown_grace_seconds):
                    while self.running:
                        await self._wakeup_or_stop(always=True)
                drives.cancel_scope.cancel()
            services.cancel_scope.cancel()
        released = await self.repository.release_all()
        logger.info(
            "saga.worker.stopped: %d claimed, %d finished, %d parked, %d lost, %d handed back"
            " (%d leases released)",
            self.claimed,
            self.finished,
            self.parked,
            self.lost,
            self.handed_back,
            released,
            extra={"event": "saga.worker.stopped"},
        )

    # ------------------------------------------------------------------ internals

    async def _wakeup_or_stop(self, *, always: bool = False) -> None:
        await self._wakeup.wait()
        self._wakeup = anyio.Event()
        if self._stopping and not always:
            self._wakeup.set()  # keep the stop visible to every wait

    async def _listen(self) -> None:
        while True:
            if await self.repository.wait_for_work(self.poll_interval_seconds):
                self._wakeup.set()

    async def _drive(self, context: SagaContext[Any], control: DriveControl) -> None:
        saga_id = context.saga_id
        try:
            result = await self.orchestrator.drive_claimed(context, control)
            if result is None:
                self.parked += 1
                await self.repository.release(saga_id)
            elif isinstance(result, SkippedSaga):
                # This process cannot rebuild it (no factory for its type or definition
                # version): marked stranded, put back for a minute for a worker that can.
                self.stranded += 1
                logger.warning(
                    "saga.worker.stranded: saga %s is put back for %.0f s: %s",
                    saga_id,
                    STRANDED_RETRY_SECONDS,
                    result.reason,
                    extra={"event": "saga.worker.stranded", "saga_id": str(saga_id)},
                )
                await self._release(saga_id, delay_seconds=STRANDED_RETRY_SECONDS)
            else:
                self.finished += 1
        except anyio.get_cancelled_exc_class():
            # Shutdown after the grace period: the running step counts as interrupted.
            self.handed_back += 1
            with anyio.CancelScope(shield=True):
                await self._release(saga_id)
            raise
        except SagaConflictError as exc:
            self.lost += 1
            if not isinstance(exc, SagaLeaseError):
                await self._release(saga_id)
            logger.warning("saga.worker.lost: %s", exc, extra={"saga_id": str(saga_id)})
        except Exception:
            logger.exception(
                "saga.worker.drive_failed: saga %s is handed back",
                saga_id,
                extra={"event": "saga.worker.drive_failed", "saga_id": str(saga_id)},
            )
            await self._release(saga_id, delay_seconds=self.poll_interval_seconds)
        finally:
            self.running.discard(saga_id)
            self._wakeup.set()

    async def _release(self, saga_id: UUID, *, delay_seconds: float = 0.0) -> None:
        try:
            await self.repository.release(saga_id, delay_seconds=delay_seconds)
        except Exception as exc:  # the lease expires on its own
            logger.warning("saga.lease.release_failed: saga %s: %s", saga_id, exc)
