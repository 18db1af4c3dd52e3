"""Recording transitions, a part of SagaOrchestrator: the write of each transition, then its
events (log, listeners, publisher)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from . import machine
from .errors import MainModuleDataWarning
from .events import SagaEvent, SagaEventType, event_id_for
from .protocols import (
    Clock,
    EventPublisher,
    IncrementalSagaRepository,
    LeasedSagaRepository,
    SagaListener,
    SagaRepository,
)
from .serialization import (
    _MAIN_MODULE_TYPES,
    StateChanges,
    encode_changes,
    encode_transition,
    main_module_warning,
    take_main_module_types,
)
from .state import SagaContext

logger = logging.getLogger("saga_orchestrator")


class _Recording:
    """Records transitions; the attributes are set by ``SagaOrchestrator.__init__``."""

    repository: SagaRepository
    event_publisher: EventPublisher | None
    clock: Clock
    listeners: list[SagaListener]
    _repository_stores_events: bool
    _process_local: bool
    _leases: LeasedSagaRepository | None
    _incremental: IncrementalSagaRepository | None

    async def _commit(
        self, context: SagaContext[Any], pending: machine.Transition, *, lease: bool = True
    ) -> None:
        now = pending.now if pending.now is not None else self.clock.now()
        context.updated_at = now
        expected = context.version
        first_sequence = context.event_sequence
        # Sequence numbers always advance; the event objects are built only when someone
        # consumes them (a listener, a publisher, or a repository with an outbox).
        events: list[SagaEvent] = []
        if (
            self.listeners
            or self.event_publisher is not None
            or self._repository_stores_events
            or logger.isEnabledFor(logging.INFO)
        ):
            saga_id = context.saga_id
            events = [
                SagaEvent(
                    saga_id=saga_id,
                    saga_type=context.saga_type,
                    correlation_id=context.correlation_id,
                    sequence=first_sequence + offset + 1,
                    occurred_at=now,
                    event_id=event_id_for(saga_id, first_sequence + offset + 1),
                    **item,
                )
                for offset, item in enumerate(pending.events)
            ]
        context.version = expected + 1
        context.event_sequence = first_sequence + len(pending.events)
        try:
            changes: StateChanges | None = None
            if self._incremental is not None:
                # A patch of what changed since the version this object last wrote; the whole
                # document the first time (or whenever what is stored is not known to be that).
                changes = encode_changes(
                    context, baseline=expected != 0 and context._rows_version == expected
                )
                state = changes.document or ""
            else:
                state = encode_transition(context)
            if _MAIN_MODULE_TYPES and not self._process_local:
                for cls in take_main_module_types():
                    warnings.warn(main_module_warning(cls), MainModuleDataWarning, stacklevel=2)
            if expected == 0 and not lease:
                assert self._leases is not None  # submit() checked
                await self._leases.create(context, state, events, lease=False)
            elif expected == 0:
                await self.repository.create(context, state, events)
            elif changes is not None:
                assert self._incremental is not None
                await self._incremental.update_changes(
                    context, changes, expected_version=expected, events=events
                )
            else:
                await self.repository.update(
                    context, state, expected_version=expected, events=events
                )
        except BaseException:
            context.version = expected
            context.event_sequence = first_sequence
            context._step_json = None  # what is stored is unknown now: encode it all next time
            context._rows_version = None
            context._written = None
            raise
        if changes is not None:
            context._rows_version = context.version
        await self._emit(events)

    async def _emit(self, events: Sequence[SagaEvent]) -> None:
        if not events:
            return
        if logger.isEnabledFor(logging.INFO):
            for event in events:
                _log_event(event)
        for listener in self.listeners:
            for event in events:
                try:
                    listener.on_event(event)
                except Exception:  # a broken listener must not break sagas
                    logger.exception("saga.listener.failed: %r", listener)
        if self.event_publisher is not None:
            try:
                await self.event_publisher.publish(events)
            except Exception:
                # The transition is recorded; without an outbox the event is lost, loudly.
                logger.exception(
                    "saga.event.publish_failed: %d events of saga %s",
                    len(events),
                    events[0].saga_id,
                )


def _log_event(event: SagaEvent) -> None:
    """One INFO record per lifecycle event, named `saga.<event type>`, ids in `extra`."""
    name = event.type.value if event.type.value.startswith("saga.") else f"saga.{event.type}"
    level = logging.WARNING if event.type is SagaEventType.SAGA_FAILED else logging.INFO
    logger.log(
        level,
        "%s: %s %s%s%s",
        name,
        event.saga_type,
        event.saga_id,
        f" {event.step}" if event.step else "",
        f" ({event.error})" if event.error else "",
        extra={
            "event": name,
            "saga_id": str(event.saga_id),
            "saga_type": event.saga_type,
            "step": event.step,
            "attempt": event.attempt,
            "sequence": event.sequence,
            "correlation_id": event.correlation_id,
        },
    )
