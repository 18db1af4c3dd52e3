"""Your own storage and event adapters: a dict-backed repository and idempotency store, a
publisher that prints each event as a JSON line, and a listener. Run it: python this_file.py"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO
from uuid import UUID

import anyio

from saga_orchestrator import (
    BaseSaga,
    SagaConflictError,
    SagaContext,
    SagaEvent,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
)
from saga_orchestrator.errors import SagaAlreadyExistsError
from saga_orchestrator.protocols import (
    EventPublisher,
    IdempotencyStore,
    SagaListener,
    SagaRepository,
    SagaStatusCounter,
)
from saga_orchestrator.serialization import decode_context
from saga_orchestrator.testing import ManualClock

# ---------------------------------------------------------------------- the adapters


# --8<-- [start:repository]
@dataclass
class _Row:
    saga_type: str
    correlation_id: str | None
    status: SagaStatus
    version: int
    state: str  # the JSON document the orchestrator serialized: store it verbatim


class DictSagaRepository:
    """A SagaRepository (and SagaStatusCounter) in a dict, creation order kept."""

    stores_events = False  # True only if create/update store `events` in the same write
    process_local = True  # no other process reads it: data classes in __main__ are fine

    def __init__(self) -> None:
        self._rows: dict[UUID, _Row] = {}
        self.writes = 0  # not part of the protocol: the demo below prints it

    async def create(
        self, context: SagaContext[Any], state: str, events: Sequence[SagaEvent] = ()
    ) -> None:
        if context.saga_id in self._rows:
            raise SagaAlreadyExistsError(context.saga_id)  # execute() relies on this type
        self._rows[context.saga_id] = _Row(
            context.saga_type, context.correlation_id, context.status, context.version, state
        )
        self.writes += 1

    async def update(
        self,
        context: SagaContext[Any],
        state: str,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        # Compare-and-set. A real store does it in one statement:
        #   UPDATE sagas SET ..., version = :new WHERE saga_id = :id AND version = :expected
        # and raises SagaConflictError when no row matched.
        row = self._rows.get(context.saga_id)
        if row is None or row.version != expected_version:
            raise SagaConflictError(context.saga_id, expected_version)
        row.status, row.version, row.state = context.status, context.version, state
        self.writes += 1

    async def get(self, saga_id: UUID) -> SagaContext[Any] | None:
        row = self._rows.get(saga_id)
        return decode_context(row.state) if row is not None else None  # a new object each time

    async def get_by_correlation_id(self, correlation_id: str) -> SagaContext[Any] | None:
        for row in reversed(self._rows.values()):  # the most recently created first
            if row.correlation_id == correlation_id:
                return decode_context(row.state)
        return None

    async def list_sagas(
        self,
        *,
        statuses: Collection[SagaStatus] | None = None,
        saga_type: str | None = None,
        limit: int = 1000,
    ) -> list[SagaContext[Any]]:
        found = [
            row
            for row in self._rows.values()  # oldest first
            if (statuses is None or row.status in statuses)
            and (saga_type is None or row.saga_type == saga_type)
        ]
        return [decode_context(row.state) for row in found[:limit]]

    async def count_by_status(
        self, statuses: Collection[SagaStatus]
    ) -> dict[tuple[str, SagaStatus], int]:
        counts = Counter((row.saga_type, row.status) for row in self._rows.values())
        return {key: n for key, n in counts.items() if key[1] in statuses}


# --8<-- [end:repository]


# --8<-- [start:store]
class DictIdempotencyStore:
    """An IdempotencyStore: the first value stored under a key wins."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def get(self, key: str) -> str | None:
        return self.values.get(key)

    async def put_if_absent(self, key: str, value: str) -> str:
        return self.values.setdefault(key, value)


# --8<-- [end:store]


# --8<-- [start:publisher]
class JsonLinesPublisher:
    """An EventPublisher writing one JSON object per event (stand-in for a message broker)."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        for event in events:
            document = {
                "event_id": str(event.event_id),  # consumers deduplicate redeliveries on it
                "type": event.type.value,
                "saga_id": str(event.saga_id),
                "sequence": event.sequence,  # per saga, gap-free
                "occurred_at": event.occurred_at.isoformat(),
                "step": event.step,
                "error": event.error,
            }
            print(json.dumps({k: v for k, v in document.items() if v is not None}), file=self.out)


# --8<-- [end:publisher]


# --8<-- [start:listener]
class TypeCounter:
    """A SagaListener: synchronous, called for every event; it must not raise."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    def on_event(self, event: SagaEvent) -> None:
        self.seen[event.type.value] += 1


# --8<-- [end:listener]


# ---------------------------------------------------------------------- a saga to run


# --8<-- [start:demo]
@dataclass
class RefundData:
    refund_id: UUID
    amount: Decimal
    credit_note: str | None = None


class AccountClosed(Exception):
    """A business answer: the step did not act."""

    refused = True  # a declared refusal: the step did nothing, so it is not undone


class RefundSaga(BaseSaga[RefundData]):
    saga_type = "refund"

    def define_steps(self) -> list[SagaStep[RefundData]]:
        return [
            SagaStep("issue_credit_note", self.issue, compensation=self.void),
            SagaStep("pay_out", self.pay_out),
        ]

    async def issue(self, data: RefundData) -> dict[str, Any]:
        return {"credit_note": "CN-0001"}

    async def void(self, data: RefundData) -> None:
        pass

    async def pay_out(self, data: RefundData) -> None:
        raise AccountClosed("account closed")


async def main() -> None:
    repository, store = DictSagaRepository(), DictIdempotencyStore()
    counter = TypeCounter()
    # The protocols are runtime-checkable: isinstance checks that the methods exist.
    assert isinstance(repository, SagaRepository)
    assert isinstance(repository, SagaStatusCounter)
    assert isinstance(store, IdempotencyStore)
    assert isinstance(JsonLinesPublisher(), EventPublisher)
    assert isinstance(counter, SagaListener)

    orchestrator = SagaOrchestrator(
        repository,
        JsonLinesPublisher(),
        store,
        listeners=[counter],
        clock=ManualClock(),  # fixed timestamps in this output
    )
    saga = RefundSaga(RefundData(UUID(int=7), Decimal("12.50")))
    saga.context.saga_id = UUID(int=1)
    result = await orchestrator.execute(saga)
    print(result.status.value, "-", result.error)
    print("listener saw:", dict(counter.seen))
    print("writes:", repository.writes, "- idempotency store:", store.values)
    print("counts:", await repository.count_by_status({SagaStatus.COMPENSATED}))

    # The same saga id again: its stored result comes back, nothing runs twice.
    again = RefundSaga(RefundData(UUID(int=7), Decimal("12.50")))
    again.context.saga_id = UUID(int=1)
    print("again:", (await orchestrator.execute(again)).status.value)

    # Compare-and-set: a write based on a stale version is refused and writes nothing.
    stored = await repository.get(UUID(int=1))
    assert stored is not None
    try:
        await repository.update(stored, "{}", expected_version=stored.version - 1)
    except SagaConflictError as exc:
        print("stale update:", exc)


if __name__ == "__main__":
    anyio.run(main)
# --8<-- [end:demo]
