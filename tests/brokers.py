"""Helpers for the broker publisher tests: the real servers, consumers, a TCP proxy.

Each broker is reached at a URL from the environment (``SAGA_TEST_REDIS_URL``,
``SAGA_TEST_AMQP_URL``, ``SAGA_TEST_NATS_URL``), localhost by default. A test that needs one
calls [`open_broker`][]: it skips, with the reason, when the client library is missing or the
server does not answer (and fails instead under ``SAGA_REQUIRE_SERVICES=1``). Every `Broker`
uses names of its own (stream, exchange, subjects) and removes what it created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID, uuid4

from saga_orchestrator.events import SagaEvent, SagaEventType, decode_event
from tests.conftest import service_unavailable

REDIS_URL = os.environ.get("SAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("SAGA_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("SAGA_TEST_NATS_URL", "nats://127.0.0.1:4222")

BROKERS = ["redis", "rabbitmq", "nats"]

CONSUME_TIMEOUT = 30.0
"""How long a consumer may take to see what was published (a bound, not a wait)."""


# -- events -------------------------------------------------------------------------------


def saga_events(saga_count: int, events_per_saga: int, saga_type: str = "trip") -> list[SagaEvent]:
    """Events of several sagas, interleaved round-robin, each saga's in sequence order."""
    kinds = [SagaEventType.SAGA_STARTED, SagaEventType.STEP_STARTED, SagaEventType.STEP_COMPLETED]
    start = datetime(2025, 1, 1, tzinfo=UTC)
    saga_ids = [uuid4() for _ in range(saga_count)]
    events = []
    for sequence in range(1, events_per_saga + 1):
        for number, saga_id in enumerate(saga_ids):
            events.append(
                SagaEvent(
                    type=kinds[sequence % len(kinds)],
                    saga_id=saga_id,
                    saga_type=saga_type,
                    sequence=sequence,
                    occurred_at=start + timedelta(seconds=sequence, microseconds=number),
                    step=None if sequence == 1 else f"step-{sequence}",
                    attempt=None if sequence == 1 else 1,
                    duration_seconds=None if sequence == 1 else 0.25 * sequence,
                    correlation_id=f"order-{number}",
                )
            )
    return events


def by_saga(events: list[SagaEvent]) -> dict[UUID, list[int]]:
    """Each saga's sequence numbers, in the order the events come in."""
    found: dict[UUID, list[int]] = {}
    for event in events:
        found.setdefault(event.saga_id, []).append(event.sequence)
    return found


# -- a TCP proxy we can take down ---------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to the broker; ``stop`` refuses new connections and cuts
    the open ones, ``start`` listens again on the same port."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.accepted = 0
        """Connections accepted so far (each reconnection of a client adds one)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port afterwards)."""
        assert self._server is None
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection (both sides) at once."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(upstream_writer)
            pipes = [
                asyncio.ensure_future(_pipe(reader, upstream_writer)),
                asyncio.ensure_future(_pipe(upstream_reader, writer)),
            ]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.wait(pipes)
        except OSError:
            pass
        finally:
            for side in (writer, upstream_writer):
                if side is not None:
                    self._writers.discard(side)
                    side.transport.abort()
                    with contextlib.suppress(Exception):
                        await side.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


class SilentServer:
    """Accepts TCP connections and never says anything: a broker that hangs."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilentServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await self._server.wait_closed()


def closed_port() -> int:
    """A local port nothing listens on (it was free a moment ago)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def with_address(url: str, host: str, port: int) -> str:
    """``url`` pointing at ``host:port`` instead, credentials and path kept."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


# -- what a consumer saw ------------------------------------------------------------------


@dataclass
class Received:
    """What a consumer got, in arrival order, with each message's broker metadata."""

    events: list[SagaEvent] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: SagaEvent, metadata: dict[str, Any]) -> None:
        self.events.append(event)
        self.metadata.append(metadata)
        self._arrived.set()

    async def wait_until(
        self, condition: Callable[[], bool], within: float = CONSUME_TIMEOUT
    ) -> None:
        """Wait, waking on each arrival, until ``condition()`` holds; fail after ``within``
        seconds."""
        try:
            async with asyncio.timeout(within):
                while not condition():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"consumer did not get there within {within} s ({len(self.events)} received)"
            ) from None

    async def wait_for_count(self, count: int, within: float = CONSUME_TIMEOUT) -> None:
        """Wait until at least ``count`` messages arrived."""
        await self.wait_until(lambda: len(self.events) >= count, within)

    async def wait_for_ids(self, ids: set[UUID], within: float = CONSUME_TIMEOUT) -> None:
        """Wait until every event id in ``ids`` arrived at least once."""
        seen: set[UUID] = set()
        checked = 0

        def done() -> bool:
            nonlocal checked
            seen.update(event.event_id for event in self.events[checked:])
            checked = len(self.events)
            return ids <= seen

        await self.wait_until(done, within)


# -- the brokers --------------------------------------------------------------------------


class Broker:
    """One real broker, under names of this test's own."""

    name: str
    url: str

    def __init__(self) -> None:
        self.tag = uuid4().hex[:12]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None, f"give the port in the URL: {self.url}"
        return port

    def proxy(self) -> TcpProxy:
        """A proxy to this broker (not started)."""
        return TcpProxy(self.host, self.port)

    def publisher(self, url: str | None = None, **options: Any) -> Any:
        """This broker's publisher under this test's names, at ``url`` (the broker's by
        default; a proxy's or a closed port's in the failure tests)."""
        raise NotImplementedError

    def publisher_at(self, port: int, **options: Any) -> Any:
        """The publisher, pointed at 127.0.0.1:``port``."""
        return self.publisher(with_address(self.url, "127.0.0.1", port), **options)

    def consume(self) -> contextlib.AbstractAsyncContextManager[Received]:
        """A consumer of everything this test's publishers publish, from before the first
        publish until the block ends."""
        raise NotImplementedError

    async def cleanup(self) -> None:
        """Remove what this test created on the broker."""


class RedisBroker(Broker):
    name = "redis"
    url = REDIS_URL

    def __init__(self) -> None:
        super().__init__()
        self.stream = f"saga-test-{self.tag}"

    def publisher(self, url: str | None = None, **options: Any) -> Any:
        from saga_orchestrator.adapters.redis import RedisStreamsPublisher

        options.setdefault("stream", self.stream)
        return RedisStreamsPublisher(url or self.url, **options)

    @contextlib.asynccontextmanager
    async def consume(self) -> AsyncIterator[Received]:
        import redis.asyncio as aioredis

        received = Received()
        client = aioredis.Redis.from_url(self.url)

        async def read() -> None:
            last = "0"
            while True:
                reply = await client.xread({self.stream: last}, block=1000, count=500)
                for _stream, entries in reply:
                    for entry_id, fields in entries:
                        last = entry_id
                        metadata = {key.decode(): value.decode() for key, value in fields.items()}
                        received.add(decode_event(fields[b"event"]), metadata)

        reader = asyncio.ensure_future(read())
        try:
            yield received
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            await client.aclose()

    async def cleanup(self) -> None:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url)
        try:
            await client.delete(self.stream)
        finally:
            await client.aclose()


class RabbitMQBroker(Broker):
    name = "rabbitmq"
    url = AMQP_URL

    def __init__(self) -> None:
        super().__init__()
        self.exchange = f"saga-test-{self.tag}"

    def publisher(self, url: str | None = None, **options: Any) -> Any:
        from saga_orchestrator.adapters.rabbitmq import RabbitMQPublisher

        options.setdefault("exchange", self.exchange)
        return RabbitMQPublisher(url or self.url, **options)

    @contextlib.asynccontextmanager
    async def consume(self) -> AsyncIterator[Received]:
        import aio_pika
        from aio_pika.abc import AbstractIncomingMessage

        received = Received()
        connection = await aio_pika.connect(self.url, timeout=5)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, "#")

            async def on_message(message: AbstractIncomingMessage) -> None:
                async with message.process():
                    received.add(
                        decode_event(message.body),
                        {
                            "message_id": message.message_id,
                            "content_type": message.content_type,
                            "delivery_mode": message.delivery_mode,
                            "routing_key": message.routing_key,
                            "type": message.type,
                            "headers": dict(message.headers),
                        },
                    )

            await queue.consume(on_message)
            yield received
        finally:
            await connection.close()

    async def cleanup(self) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url, timeout=5)
        try:
            channel = await connection.channel()
            await channel.exchange_delete(self.exchange)
        finally:
            await connection.close()


class NatsBroker(Broker):
    name = "nats"
    url = NATS_URL

    def __init__(self) -> None:
        super().__init__()
        self.stream = f"SAGA_TEST_{self.tag}"
        self.subject_prefix = f"saga-test.{self.tag}"

    def publisher(self, url: str | None = None, **options: Any) -> Any:
        from saga_orchestrator.adapters.nats import NatsJetStreamPublisher

        options.setdefault("stream", self.stream)
        options.setdefault("subject_prefix", self.subject_prefix)
        return NatsJetStreamPublisher(url or self.url, **options)

    async def _client(self) -> Any:
        return await _nats_connect(self.url)

    @contextlib.asynccontextmanager
    async def consume(self) -> AsyncIterator[Received]:
        from nats.aio.msg import Msg

        received = Received()
        client = await self._client()
        try:
            js = client.jetstream()
            # The stream as the publisher would create it, so that the consumer exists first.
            await js.add_stream(
                name=self.stream, subjects=[f"{self.subject_prefix}.>"], duplicate_window=120
            )

            async def on_message(message: Msg) -> None:
                received.add(
                    decode_event(message.data),
                    {"subject": message.subject, "headers": dict(message.headers or {})},
                )

            await js.subscribe(
                f"{self.subject_prefix}.>", stream=self.stream, cb=on_message, ordered_consumer=True
            )
            yield received
        finally:
            await client.close()

    async def stored_count(self) -> int:
        """How many messages the stream holds."""
        client = await self._client()
        try:
            info = await client.jetstream().stream_info(self.stream)
            return int(info.state.messages)
        finally:
            await client.close()

    async def cleanup(self) -> None:
        import nats.js.errors

        client = await self._client()
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await client.jetstream().delete_stream(self.stream)
        finally:
            await client.close()


async def _nats_connect(url: str) -> Any:
    import nats

    async def quiet(error: Exception) -> None:
        pass

    # One quick attempt (nats-py retries forever with max_reconnect_attempts=0, and waits
    # reconnect_time_wait between attempts).
    return await nats.connect(
        url,
        connect_timeout=5,
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0,
        error_cb=quiet,
    )


_BROKERS: dict[str, type[Broker]] = {
    "redis": RedisBroker,
    "rabbitmq": RabbitMQBroker,
    "nats": NatsBroker,
}


async def _check(name: str) -> None:
    """Skip (or fail, under SAGA_REQUIRE_SERVICES=1) unless the library and server are there."""
    try:
        if name == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
            try:
                await client.ping()
            finally:
                await client.aclose()
        elif name == "rabbitmq":
            import aio_pika

            connection = await aio_pika.connect(AMQP_URL, timeout=5)
            await connection.close()
        else:
            client = await _nats_connect(NATS_URL)
            try:
                await client.jetstream().account_info()
            finally:
                await client.close()
    except ImportError as exc:
        service_unavailable(f"{name}: client library not installed (the {name} extra): {exc}")
    except Exception as exc:
        url = {"redis": REDIS_URL, "rabbitmq": AMQP_URL, "nats": NATS_URL}[name]
        service_unavailable(f"{name} unreachable at {url}: {type(exc).__name__}: {exc}")


@contextlib.asynccontextmanager
async def open_broker(name: str) -> AsyncIterator[Broker]:
    """The broker ``name``, checked to answer, with names of its own; cleaned up after."""
    await _check(name)
    broker = _BROKERS[name]()
    try:
        yield broker
    finally:
        await broker.cleanup()
