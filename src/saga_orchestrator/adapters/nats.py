"""NATS JetStream publisher: lifecycle events stored in a stream, deduplicated by event id.

Needs the ``nats`` extra (``pip install 'saga-orchestrator[nats]'``: nats-py) and asyncio.

Each event is one message on the subject ``"{subject_prefix}.{saga_type}.{event type}"``
(``saga.events.trip.saga.completed``), so consumers filter on ``saga.events.trip.>`` or
``saga.events.*.saga.completed``. The payload is the JSON document of
[`encode_event`][saga_orchestrator.events.encode_event] (read it back with
[`decode_event`][saga_orchestrator.events.decode_event]), and the header ``Nats-Msg-Id`` is the
event id: JetStream drops a message whose id it has stored within the stream's duplicate
window, so the relay's redeliveries after a lost acknowledgement are stored once. The header
``Nats-Expected-Stream`` makes a message that would land in another stream fail instead.

``publish`` sends a call's messages in order and returns once JetStream has acknowledged
every one (``PubAck``, checked in order).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.api import PubAck
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "saga_orchestrator.adapters.nats needs nats-py: pip install 'saga-orchestrator[nats]'"
    ) from exc

from ..events import SagaEvent, encode_event
from ._brokers import describe as _describe
from ._brokers import redact as _redact
from ._lifecycle import AsyncLifecycle

__all__ = ["NatsJetStreamPublisher", "NatsPublishError"]

_log = logging.getLogger(__name__)

_FAILURES = (nats.errors.Error, OSError)


class NatsPublishError(ConnectionError):
    """Publishing to NATS JetStream failed: the server could not be reached, the connection
    was lost before every message was acknowledged, or JetStream refused a message (no
    stream for its subject, say). Messages sent before the failure may be stored; sent again,
    they are dropped as duplicates within the stream's duplicate window. The next ``publish``
    call connects again."""


@dataclass(eq=False)
class _Link:
    """One connection, and whether it is lost."""

    client: Client = field(default_factory=Client)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    js: JetStreamContext | None = None
    last_error: Exception | None = None

    async def on_lost(self) -> None:
        self.lost.set()

    async def on_error(self, error: Exception) -> None:
        self.last_error = error  # nats-py's NoServersError does not say why
        _log.debug("NATS connection error: %s", _describe(error))

    @property
    def usable(self) -> bool:
        return self.js is not None and not self.lost.is_set() and self.client.is_connected


class NatsJetStreamPublisher(AsyncLifecycle):
    """An [`EventPublisher`][saga_orchestrator.protocols.EventPublisher] to a NATS JetStream
    stream, with deduplication by event id.

    Connects on first ``publish`` (or ``open()``/``async with``) and, with ``create_stream``,
    creates the stream if it does not exist (an existing stream is left as it is). Use it on
    one asyncio event loop. The client does not reconnect in the background: a ``publish``
    that fails raises [`NatsPublishError`][saga_orchestrator.adapters.nats.NatsPublishError]
    and drops the connection, and the next call connects again; nothing is retried inside the
    publisher (an [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] retries the same
    events, which JetStream then drops as duplicates if they were stored).

    Args:
        servers: a NATS URL (``nats://user:password@host:4222``, ``tls://`` for TLS), or
            several of one cluster.
        stream: the JetStream stream the messages must land in.
        subject_prefix: subjects are ``"{subject_prefix}.{saga_type}.{event type}"``.
        create_stream: create the stream (capturing ``"{subject_prefix}.>"``, file storage)
            on connecting if it does not exist.
        duplicate_window_seconds: the duplicate window of a stream created here: a
            redelivery within it is stored once. Longer than the longest broker outage you
            want redeliveries to be dropped across; consumers should still deduplicate on
            ``event_id``.
        connect_timeout_seconds: how long connecting (and creating the stream) may take
            before the publish fails.
        timeout_seconds: how long JetStream may take to acknowledge a call's messages.
    """

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        stream: str = "SAGA_EVENTS",
        subject_prefix: str = "saga.events",
        create_stream: bool = True,
        duplicate_window_seconds: float = 120.0,
        connect_timeout_seconds: float = 3.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        """Set up the publisher; it connects on first use."""
        if not subject_prefix or subject_prefix.endswith(".") or " " in subject_prefix:
            raise ValueError(f"subject_prefix must be a subject without spaces: {subject_prefix!r}")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        """The NATS server URLs."""
        self.stream = stream
        """The stream's name."""
        self.subject_prefix = subject_prefix
        """The first tokens of every subject."""
        self.create_stream = create_stream
        """Whether connecting creates a missing stream."""
        self.duplicate_window_seconds = duplicate_window_seconds
        """The duplicate window of a stream created here."""
        self.connect_timeout_seconds = connect_timeout_seconds
        """How long connecting may take."""
        self.timeout_seconds = timeout_seconds
        """How long acknowledgements may take."""
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None

    def subject_for(self, event: SagaEvent) -> str:
        """The subject ``event`` is published on."""
        return f"{self.subject_prefix}.{event.saga_type}.{event.type.value}"

    @property
    def _where(self) -> str:
        servers = ", ".join(_redact(server) for server in self.servers)
        return f"NATS at {servers} (stream {self.stream!r})"

    async def open(self) -> None:
        """Connect (and create the stream) now, otherwise done on first ``publish``.

        Raises [`NatsPublishError`][saga_orchestrator.adapters.nats.NatsPublishError] if the
        server cannot be reached or JetStream refuses.
        """
        await self._ready()

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        """Publish ``events`` in order and wait until JetStream acknowledged every one.

        A message JetStream already stored (same ``Nats-Msg-Id`` within the duplicate
        window) is acknowledged as a duplicate and not stored again. Raises
        [`NatsPublishError`][saga_orchestrator.adapters.nats.NatsPublishError] if the server
        cannot be reached, the connection is lost before every acknowledgement came, or
        JetStream refuses a message. The next call reconnects.
        """
        if not events:
            return
        link = await self._ready()
        assert link.js is not None
        futures: list[asyncio.Future[PubAck]] = []
        lost = asyncio.ensure_future(link.lost.wait())
        event = events[0]
        try:
            async with asyncio.timeout(self.timeout_seconds):
                for event in events:
                    futures.append(
                        await link.js.publish_async(
                            self.subject_for(event),
                            encode_event(event).encode(),
                            stream=self.stream,
                            headers={"Nats-Msg-Id": str(event.event_id)},
                        )
                    )
                for event, future in zip(events, futures, strict=True):
                    waiting: list[asyncio.Future[Any]] = [future, lost]
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if not future.done():
                        raise NatsPublishError(
                            f"{self._where}: connection lost before message {event.event_id}"
                            f" ({self.subject_for(event)}) was acknowledged;"
                            " the next publish reconnects"
                        )
                    future.result()
        except NatsPublishError:
            await self._discard(link)
            raise
        except (*_FAILURES, TimeoutError) as exc:
            await self._discard(link)
            if isinstance(exc, TimeoutError) and not isinstance(exc, nats.errors.Error):
                what = f"not acknowledged within {self.timeout_seconds} s"
            elif isinstance(exc, nats.js.errors.NoStreamResponseError):
                what = "not stored: no stream answered for its subject"
            else:
                what = f"failed ({_describe(exc)})"
            raise NatsPublishError(
                f"{self._where}: message {event.event_id} ({self.subject_for(event)}) {what};"
                " the next publish reconnects"
            ) from exc
        finally:
            lost.cancel()
            for future in futures:
                future.cancel()  # no-op once done; frees nats-py's pending slot otherwise

    async def _ready(self) -> _Link:
        """An open connection with its JetStream context, connecting first if need be."""
        link = self._link
        if link is not None and link.usable:
            return link
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            link = self._link
            if link is not None and link.usable:
                return link
            if link is not None:
                await self._discard(link)
            link = _Link()
            try:
                async with asyncio.timeout(self.connect_timeout_seconds):
                    await link.client.connect(
                        self.servers,
                        # nats-py takes whole seconds here; the timeout around bounds exactly.
                        connect_timeout=max(1, math.ceil(self.connect_timeout_seconds)),
                        # No background reconnection (publishes would queue up unseen while
                        # disconnected): a lost connection fails the publish, and the next
                        # publish connects again. Two quick attempts per server at most.
                        allow_reconnect=False,
                        max_reconnect_attempts=1,
                        reconnect_time_wait=0,
                        error_cb=link.on_error,
                        disconnected_cb=link.on_lost,
                        closed_cb=link.on_lost,
                        name="saga-orchestrator",
                    )
                    js = link.client.jetstream(timeout=self.timeout_seconds)
                    if self.create_stream:
                        await self._ensure_stream(js)
            except (*_FAILURES, TimeoutError) as exc:
                await self._discard(link)
                why = _describe(exc)
                if link.last_error is not None and link.last_error is not exc:
                    why += f" (last error: {_describe(link.last_error)})"
                raise NatsPublishError(
                    f"{self._where}: could not connect"
                    f"{' and check the stream' if self.create_stream else ''}: {why}"
                ) from exc
            link.js = js
            self._link = link
            return link

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        try:
            await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            # Two publishers racing here both succeed: adding an identical stream is a no-op.
            await js.add_stream(
                name=self.stream,
                subjects=[f"{self.subject_prefix}.>"],
                duplicate_window=self.duplicate_window_seconds,
            )

    async def _discard(self, link: _Link) -> None:
        """Forget ``link`` (if still current) and close it, quietly and briefly."""
        if self._link is link:
            self._link = None
        link.lost.set()
        try:
            async with asyncio.timeout(self.connect_timeout_seconds):
                await link.client.close()
        except Exception:  # a broken connection may fail to close cleanly: it is dropped
            pass

    async def close(self) -> None:
        """Close the connection (a broken one is dropped without error, within the connect
        timeout); publishing again reconnects."""
        if self._link is not None:
            await self._discard(self._link)
