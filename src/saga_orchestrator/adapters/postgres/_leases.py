"""Leases of the PostgreSQL saga repository: bookkeeping, the heartbeat, claiming and
releasing sagas, and the guard that stops a step before its lease can expire."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

import anyio
from psycopg import sql

from ...errors import SagaLeaseError
from ...serialization import decode_context
from ...state import SagaContext
from .._common import ACTIVE_STATUS_FILTER
from ._db import _Connection, _Database

logger = logging.getLogger("saga_orchestrator")


def stored_columns(journal: sql.Composable) -> sql.Composed:
    """SQL for the two columns a saga is read from, in the ``sagas`` row aliased ``s``: its
    ``state`` (the document written whole at ``snapshot_version``) and the patches of its
    journal written after that, in order."""
    return sql.SQL(
        "s.state, ARRAY(SELECT j.patch FROM {} AS j WHERE j.saga_id = s.saga_id"
        " AND j.version > s.snapshot_version AND j.patch IS NOT NULL ORDER BY j.version)"
    ).format(journal)


def decode_stored(state: str, patches: list[str] | None) -> SagaContext[Any]:
    """The context of a row read with ``stored_columns``."""
    return decode_context(state, patches=patches or ())


@dataclass(slots=True, eq=False)
class _Lease:
    epoch: int
    deadline: float  # event-loop time by which the lease must be renewed (less a margin)
    scopes: set[anyio.CancelScope] = field(default_factory=set)

    def extend(self, deadline: float) -> None:
        self.deadline = max(self.deadline, deadline)
        for scope in self.scopes:
            scope.deadline = self.deadline

    def lose(self) -> None:
        self.deadline = -math.inf
        for scope in self.scopes:
            scope.cancel()


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


class _LeaseHolder:
    """The lease half of ``PostgresSagaRepository``, which sets these attributes."""

    _db: _Database
    owner: str
    lease_seconds: float
    leases_lost: int
    _margin: float
    _heartbeat_seconds: float
    _leases: dict[UUID, _Lease]
    _heartbeat: asyncio.Task[None] | None

    if TYPE_CHECKING:

        def _channel(self, kind: str) -> str: ...

        async def mark_stranded(
            self, saga_id: UUID, reason: str, *, saga_version: int | None = None
        ) -> None: ...

    def _local_deadline(self, sent_at: float) -> float:
        return sent_at + self.lease_seconds - self._margin

    def _hold(self, saga_id: UUID, epoch: int, deadline: float) -> None:
        lease = self._leases.get(saga_id)
        if lease is None or lease.epoch != epoch:
            lease = self._leases[saga_id] = _Lease(epoch, deadline)
        else:
            lease.extend(deadline)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def _lose(self, saga_id: UUID) -> None:
        lease = self._leases.pop(saga_id, None)
        if lease is not None:
            self.leases_lost += 1
            logger.warning(
                "saga.lease.lost: saga %s (epoch %d) is no longer leased to %s",
                saga_id,
                lease.epoch,
                self.owner,
                extra={"event": "saga.lease.lost", "saga_id": str(saga_id)},
            )
            lease.lose()

    @property
    def held_leases(self) -> dict[UUID, int]:
        """The sagas this object holds leases on, with each lease's epoch."""
        return {saga_id: lease.epoch for saga_id, lease in self._leases.items()}

    async def _beat(self) -> None:
        """Renew every held lease, every third of ``lease_seconds``, in one statement."""
        loop = asyncio.get_running_loop()
        table = self._db.table("sagas")
        # Rows locked in key order, as the group-commit writer does: never a deadlock.
        renew = sql.SQL(
            "UPDATE {} AS s SET"
            " lease_expires_at = clock_timestamp() + %s * interval '1 second'"
            " FROM (SELECT saga_id FROM {} WHERE lease_owner = %s AND (saga_id, lease_epoch)"
            " IN (SELECT * FROM unnest(%s::uuid[], %s::bigint[])) ORDER BY saga_id FOR UPDATE)"
            " AS mine WHERE s.saga_id = mine.saga_id RETURNING s.saga_id"
        ).format(table, table)
        while self._leases:
            await asyncio.sleep(self._heartbeat_seconds)
            snapshot = [(saga_id, lease.epoch) for saga_id, lease in self._leases.items()]
            if not snapshot:
                break
            sent_at = loop.time()
            try:
                rows = await self._db.fetchall(
                    renew,
                    (
                        self.lease_seconds,
                        self.owner,
                        [saga_id for saga_id, _ in snapshot],
                        [epoch for _, epoch in snapshot],
                    ),
                )
            except Exception as exc:
                # The steps in flight stop on their own when their leases run out.
                logger.warning("saga.lease.heartbeat_failed: %s", exc)
                continue
            renewed = {row[0] for row in rows}
            for saga_id, epoch in snapshot:
                lease = self._leases.get(saga_id)
                if lease is None or lease.epoch != epoch:
                    continue  # released or re-taken meanwhile
                if saga_id in renewed:
                    lease.extend(self._local_deadline(sent_at))
                else:
                    self._lose(saga_id)

    @contextmanager
    def lease_guard(self, saga_id: UUID) -> Iterator[None]:
        """Cancel the body (a step's action or compensation) before this object's lease on
        the saga can expire, and raise ``SagaLeaseError`` then.

        Heartbeats push the deadline back while they succeed; if they fail (the database is
        unreachable) or find the lease taken over, the body is cancelled while the lease is
        still valid, so another process that takes the saga over never overlaps it. The
        orchestrator calls this around every action and compensation.

        The lease is checked once more before the body starts: a process that was frozen
        (SIGSTOP, a long GC pause, a suspended VM) past its lease's deadline raises
        ``SagaLeaseError`` here instead of calling the action at all.
        """
        lease = self._leases.get(saga_id)
        if lease is not None and asyncio.get_running_loop().time() >= lease.deadline:
            self._lose(saga_id)
            raise SagaLeaseError(
                saga_id,
                f"saga {saga_id}: {self.owner}'s lease ran out before the step could start; "
                "the step was not called",
            )
        scope = anyio.CancelScope(deadline=lease.deadline if lease is not None else math.inf)
        if lease is not None:
            lease.scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            if lease is not None:
                lease.scopes.discard(scope)
        if scope.cancelled_caught:
            self._lose(saga_id)
            raise SagaLeaseError(
                saga_id,
                f"saga {saga_id}: {self.owner} could not renew its lease in time; "
                "the running step was cancelled",
            )

    async def claim(
        self, limit: int, *, saga_types: Collection[str] | None = None
    ) -> list[SagaContext[Any]]:
        """Lease up to ``limit`` runnable sagas to this object and return them.

        Runnable: in flight, not leased (or the lease expired), and due (``run_after``).
        ``FOR UPDATE SKIP LOCKED`` lets concurrent claimers take different sagas without
        waiting for each other. A row that cannot be decoded here (its data class is not
        installed) is put back for a minute and logged.
        """
        if limit < 1:
            return []
        table = self._db.table("sagas")
        types = sql.SQL(" AND saga_type = ANY(%s)") if saga_types is not None else sql.SQL("")
        query = sql.SQL(
            "UPDATE {} AS s SET lease_owner = %s,"
            " lease_expires_at = clock_timestamp() + %s * interval '1 second',"
            " lease_epoch = s.lease_epoch + 1 FROM (SELECT saga_id FROM {}"
            f" WHERE {ACTIVE_STATUS_FILTER}"
            " AND (lease_owner IS NULL OR lease_expires_at < now())"
            " AND (run_after IS NULL OR run_after <= now()){}"
            " ORDER BY run_after NULLS FIRST, created_seq LIMIT %s FOR UPDATE SKIP LOCKED)"
            " AS due WHERE s.saga_id = due.saga_id RETURNING s.saga_id, s.lease_epoch, {}"
        ).format(table, table, types, stored_columns(self._db.table("saga_journal")))
        params: list[Any] = [self.owner, self.lease_seconds]
        if saga_types is not None:
            params.append(list(saga_types))
        params.append(int(limit))
        sent_at = asyncio.get_running_loop().time()

        async def fn(connection: _Connection) -> list[Any]:
            cursor = await connection.execute(query, params)
            rows: list[Any] = await cursor.fetchall()
            return rows

        claimed: list[SagaContext[Any]] = []
        for saga_id, epoch, state, patches in await self._db.read(fn):
            self._hold(saga_id, epoch, self._local_deadline(sent_at))
            try:
                claimed.append(decode_stored(state, patches))
            except Exception as exc:
                logger.exception(
                    "saga.claim.undecodable: saga %s is put back for a minute",
                    saga_id,
                    extra={"event": "saga.claim.undecodable", "saga_id": str(saga_id)},
                )
                try:
                    await self.mark_stranded(saga_id, f"unreadable: {exc}")
                except Exception as mark_exc:  # the log says it already
                    logger.warning("saga.stranded.mark_failed: saga %s: %s", saga_id, mark_exc)
                await self.release(saga_id, delay_seconds=60.0)
        return claimed

    async def release(self, saga_id: UUID, *, delay_seconds: float = 0.0) -> bool:
        """Give up this object's lease on the saga, so any worker can pick it up (after
        ``delay_seconds``, if later than its own timer). Returns whether it was still held.
        """
        lease = self._leases.pop(saga_id, None)
        if lease is None:
            return False
        query = sql.SQL(
            "UPDATE {} SET lease_owner = NULL, lease_expires_at = NULL, run_after ="
            " CASE WHEN %s > 0 THEN greatest(coalesce(run_after, now()),"
            " clock_timestamp() + %s * interval '1 second') ELSE run_after END"
            " WHERE saga_id = %s AND lease_owner = %s AND lease_epoch = %s"
        ).format(self._db.table("sagas"))
        params = (delay_seconds, delay_seconds, saga_id, self.owner, lease.epoch)
        channel = self._channel("ready")

        async def op(connection: _Connection) -> bool:
            cursor = await connection.execute(query, params)
            await connection.execute("SELECT pg_notify(%s, '')", (channel,))
            return bool(cursor.rowcount == 1)

        released: bool = await self._db.write(("sagas", str(saga_id)), op)
        return released

    async def release_all(self) -> int:
        """Release every lease this object holds (at shutdown); return how many."""
        count = 0
        for saga_id in list(self._leases):
            try:
                count += await self.release(saga_id)
            except Exception as exc:  # they expire on their own
                logger.warning("saga.lease.release_failed: saga %s: %s", saga_id, exc)
        return count
