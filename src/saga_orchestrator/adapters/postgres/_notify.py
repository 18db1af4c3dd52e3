"""LISTEN/NOTIFY for the PostgreSQL saga repository: wake waiting workers and waiters."""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

import psycopg
from psycopg import sql

from ._db import _backoff, _Database

logger = logging.getLogger("saga_orchestrator")


class _Notifier:
    """One LISTEN connection; reconnects, and wakes every waiter after a reconnect (a
    notification may have been missed meanwhile)."""

    def __init__(self, conninfo: str, *, ready: str, done: str) -> None:
        self.conninfo = conninfo
        self.ready_channel = ready
        self.done_channel = done
        self._ready = asyncio.Event()
        self._done: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while the LISTEN connection is up."""

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake_ready(self) -> None:
        self._ready.set()
        self._ready = asyncio.Event()

    def _wake_all(self) -> None:
        self._wake_ready()
        for event in self._done.values():
            event.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=10
                )
                async with connection:
                    for channel in (self.ready_channel, self.done_channel):
                        await connection.execute(
                            sql.SQL("LISTEN {}").format(sql.Identifier(channel))
                        )
                    attempt = 0
                    self.listening.set()
                    self._wake_all()
                    async for note in connection.notifies():
                        if note.channel == self.ready_channel:
                            self._wake_ready()
                        else:
                            event = self._done.get(note.payload)
                            if event is not None:
                                event.set()
            except psycopg.Error as exc:
                self.listening.clear()
                attempt += 1
                logger.warning("saga.postgres.listen_failed: %s; reconnecting", exc)
                await asyncio.sleep(_backoff(attempt))

    async def _wait(self, event: asyncio.Event, seconds: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def wait_ready(self, seconds: float) -> bool:
        return await self._wait(self._ready, seconds)

    async def wait_done(self, saga_id: str, seconds: float) -> bool:
        event = self._done.setdefault(saga_id, asyncio.Event())
        try:
            return await self._wait(event, seconds)
        finally:
            if self._done.get(saga_id) is event and not event.is_set():
                del self._done[saga_id]
            elif event.is_set():
                self._done.pop(saga_id, None)


class _Notifications:
    """The notification half of ``PostgresSagaRepository``, which sets these attributes."""

    _db: _Database
    _notifier: _Notifier | None

    def _channel(self, kind: str) -> str:
        return f"saga_orchestrator_{kind}:{self._db.schema}"[:63]

    def _notifications(self) -> _Notifier:
        if self._notifier is None:
            self._notifier = _Notifier(
                self._db.conninfo, ready=self._channel("ready"), done=self._channel("done")
            )
        self._notifier.start()
        return self._notifier

    async def wait_for_work(self, seconds: float) -> bool:
        """Wait until a saga is submitted or handed back (LISTEN/NOTIFY), at most
        ``seconds``; return whether notified. Workers poll as well, so a missed
        notification only delays."""
        return await self._notifications().wait_ready(seconds)

    async def wait_for_terminal(self, saga_id: UUID, seconds: float) -> bool:
        """Wait until a write makes ``saga_id`` terminal (LISTEN/NOTIFY), at most
        ``seconds``; return whether notified."""
        return await self._notifications().wait_done(str(saga_id), seconds)
