"""The broker publishers (Redis Streams, RabbitMQ, NATS JetStream) against the real servers.

Every test runs on each broker the machine has (a missing one is skipped with the reason, or
fails under ``SAGA_REQUIRE_SERVICES=1``), under names of its own, and reads back what was
published with the broker's own client: ``XREAD``, a queue bound to the exchange, a JetStream
consumer. Connection loss is made with a TCP proxy that the test stops and starts again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from saga_orchestrator import InMemorySagaRepository, SagaOrchestrator
from saga_orchestrator.events import SagaEvent, encode_event
from tests.brokers import (
    BROKERS,
    Broker,
    NatsBroker,
    RabbitMQBroker,
    RedisBroker,
    SilentServer,
    by_saga,
    closed_port,
    open_broker,
    saga_events,
)
from tests.sagas import TripData, TripSaga

pytestmark = pytest.mark.anyio

LABELS = {"redis": "Redis", "rabbitmq": "RabbitMQ", "nats": "NATS"}
"""How each publisher's errors name the broker."""


@pytest.fixture
def anyio_backend() -> str:
    """The broker client libraries run on asyncio only."""
    return "asyncio"


@pytest.fixture(params=BROKERS)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A real broker, under names of this test's own, cleaned up afterwards."""
    async with open_broker(request.param) as found:
        yield found


@pytest.fixture
async def nats_broker() -> AsyncIterator[NatsBroker]:
    """The NATS server, under names of this test's own."""
    async with open_broker("nats") as found:
        assert isinstance(found, NatsBroker)
        yield found


@pytest.fixture
async def redis_broker() -> AsyncIterator[RedisBroker]:
    """The Redis server, under names of this test's own."""
    async with open_broker("redis") as found:
        assert isinstance(found, RedisBroker)
        yield found


@pytest.fixture
async def rabbitmq_broker() -> AsyncIterator[RabbitMQBroker]:
    """The RabbitMQ server, under names of this test's own."""
    async with open_broker("rabbitmq") as found:
        assert isinstance(found, RabbitMQBroker)
        yield found


def _check_metadata(broker: Broker, event: SagaEvent, metadata: dict[str, Any]) -> None:
    """The broker-specific parts of one message: ids, keys, headers."""
    if broker.name == "redis":
        assert metadata == {
            "event_id": str(event.event_id),
            "saga_id": str(event.saga_id),
            "type": event.type.value,
            "sequence": str(event.sequence),
            "event": encode_event(event),
        }
    elif broker.name == "rabbitmq":
        assert metadata["message_id"] == str(event.event_id)
        assert metadata["content_type"] == "application/json"
        assert metadata["delivery_mode"] == 2  # persistent
        assert metadata["routing_key"] == f"{event.saga_type}.{event.type.value}"
        assert metadata["type"] == event.type.value
        assert metadata["headers"]["saga_id"] == str(event.saga_id)
        assert metadata["headers"]["sequence"] == event.sequence
    else:
        assert isinstance(broker, NatsBroker)
        assert metadata["subject"] == (
            f"{broker.subject_prefix}.{event.saga_type}.{event.type.value}"
        )
        assert metadata["headers"]["Nats-Msg-Id"] == str(event.event_id)


async def test_consumer_gets_every_event_in_order(broker: Broker) -> None:
    """Events of several sagas, published in batches of different sizes, come out of the
    broker exactly as published: decoded equal, in order, each with its metadata."""
    events = saga_events(saga_count=5, events_per_saga=8)
    batches = [events[:1], events[1:4], events[4:14], events[14:]]
    async with broker.consume() as received, broker.publisher() as publisher:
        for batch in batches:
            await publisher.publish(batch)
        await publisher.publish([])  # nothing to do
        await received.wait_for_count(len(events))
    assert received.events == events
    assert by_saga(received.events) == {e.saga_id: list(range(1, 9)) for e in events}
    for event, metadata in zip(received.events, received.metadata, strict=True):
        _check_metadata(broker, event, metadata)


class _Recording:
    """Publishes to ``inner`` and keeps, in order, what it accepted."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.events: list[SagaEvent] = []

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        await self.inner.publish(events)
        self.events.extend(events)


async def test_orchestrator_publishes_running_sagas(broker: Broker) -> None:
    """Sagas running concurrently publish through one publisher (concurrent ``publish``
    calls): the consumer gets every event the orchestrator published, each saga's in
    sequence order."""
    async with broker.consume() as received, broker.publisher() as publisher:
        recording = _Recording(publisher)
        orchestrator = SagaOrchestrator(InMemorySagaRepository(), recording)
        results = await asyncio.gather(
            *(orchestrator.execute(TripSaga(TripData())) for _ in range(8))
        )
        await received.wait_for_count(len(recording.events))
    assert all(result.succeeded for result in results)
    assert len(recording.events) == 8 * 8  # started, 3 x (step started, completed), completed
    assert sorted(received.events, key=_key) == sorted(recording.events, key=_key)
    for sequences in by_saga(received.events).values():
        assert sequences == list(range(1, 9))


def _key(event: SagaEvent) -> tuple[str, int]:
    return str(event.saga_id), event.sequence


async def test_nats_redelivery_is_stored_once(nats_broker: NatsBroker) -> None:
    """Publishing an event again (the relay after a lost acknowledgement) stores it once:
    JetStream drops it by its ``Nats-Msg-Id`` within the duplicate window."""
    events = saga_events(saga_count=2, events_per_saga=3)
    async with nats_broker.consume() as received, nats_broker.publisher() as publisher:
        await publisher.publish(events)
        await publisher.publish(events)  # the whole batch again
        await publisher.publish([events[2], events[2]])  # twice in one call
        assert await nats_broker.stored_count() == len(events)
        marker = saga_events(saga_count=1, events_per_saga=1)
        await publisher.publish(marker)  # the consumer has seen everything once it sees this
        await received.wait_for_count(len(events) + 1)
    assert received.events == events + marker


async def test_nats_subject_without_a_stream_fails(nats_broker: NatsBroker) -> None:
    """With ``create_stream=False`` and no stream for the subjects, JetStream stores
    nothing: ``publish`` raises instead of returning."""
    async with nats_broker.publisher(create_stream=False) as publisher:
        with pytest.raises(ConnectionError, match="no stream answered"):
            await publisher.publish(saga_events(saga_count=1, events_per_saga=1))


async def test_redis_stream_per_saga_type_and_trimming(redis_broker: RedisBroker) -> None:
    """``stream`` may be a function of the event (a stream per saga type here); ``maxlen``
    trims each stream, approximately (Redis trims whole nodes of entries); an ``XADD`` that
    Redis refuses (the key holds a string) fails the publish."""
    import redis.asyncio as aioredis

    from saga_orchestrator.events import decode_event

    prefix = redis_broker.stream
    trips = saga_events(saga_count=3, events_per_saga=2, saga_type="trip")
    orders = saga_events(saga_count=2, events_per_saga=2, saga_type="order")
    many = saga_events(saga_count=100, events_per_saga=6, saga_type="bulk")
    client = aioredis.Redis.from_url(redis_broker.url)
    try:
        async with redis_broker.publisher(
            stream=lambda event: f"{prefix}:{event.saga_type}"
        ) as publisher:
            await publisher.publish(trips + orders)
        for saga_type, events in (("trip", trips), ("order", orders)):
            entries = await client.xrange(f"{prefix}:{saga_type}")
            assert [decode_event(fields[b"event"]) for _, fields in entries] == events

        async with redis_broker.publisher(stream=f"{prefix}:bulk", maxlen=50) as publisher:
            for start in range(0, len(many), 100):
                await publisher.publish(many[start : start + 100])
        length = await client.xlen(f"{prefix}:bulk")
        assert 50 <= length < len(many)
        last = await client.xrevrange(f"{prefix}:bulk", count=1)
        assert decode_event(last[0][1][b"event"]) == many[-1]  # trimmed from the oldest end

        await client.set(f"{prefix}:trip", "not a stream")
        async with redis_broker.publisher(stream=f"{prefix}:trip") as publisher:
            with pytest.raises(ConnectionError, match=r"refused .*WRONGTYPE"):
                await publisher.publish(trips)
    finally:
        await client.delete(f"{prefix}:trip", f"{prefix}:order", f"{prefix}:bulk")
        await client.aclose()


async def test_rabbitmq_nack_and_unroutable_fail_the_publish(
    rabbitmq_broker: RabbitMQBroker,
) -> None:
    """A message the broker rejects (a full queue with ``reject-publish`` nacks it) fails the
    publish; with ``mandatory=True`` so does one no queue is bound for (returned)."""
    import aio_pika

    events = saga_events(saga_count=1, events_per_saga=3)
    async with rabbitmq_broker.publisher(mandatory=True) as publisher:
        with pytest.raises(ConnectionError, match="returned as unroutable"):
            await publisher.publish(events[:1])

        connection = await aio_pika.connect(rabbitmq_broker.url, timeout=5)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(
                exclusive=True,
                arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
            )
            await queue.bind(rabbitmq_broker.exchange, "#")
            await publisher.publish(events[:1])  # routed, and the queue had room
            with pytest.raises(ConnectionError, match=r"rejected \(nack\)") as raised:
                await publisher.publish(events[1:])
            assert str(events[1].event_id) in str(raised.value)
            await queue.purge()  # room again: the same publisher goes on
            await publisher.publish(events[1:2])
            assert await queue.get(timeout=5, fail=False) is not None
        finally:
            await connection.close()


async def test_unreachable_broker_fails_with_a_clear_error(broker: Broker) -> None:
    """Nothing listening: ``publish`` (and ``open``) raise the publisher's ConnectionError,
    naming the broker and the address, every time; nothing hangs."""
    port = closed_port()
    publisher = broker.publisher_at(port, connect_timeout_seconds=2)
    events = saga_events(saga_count=1, events_per_saga=2)
    for attempt in (publisher.publish(events), publisher.open(), publisher.publish(events)):
        with pytest.raises(ConnectionError) as raised:
            await attempt
        message = str(raised.value)
        assert type(raised.value).__name__.endswith("PublishError")
        assert LABELS[broker.name] in message
        assert f"127.0.0.1:{port}" in message
        assert "guest:guest" not in message  # no password in error messages
    await publisher.close()


async def test_silent_broker_fails_after_the_timeouts(broker: Broker) -> None:
    """A server that accepts connections and never answers: ``publish`` raises once the
    connect timeout has passed, instead of waiting forever."""
    async with SilentServer() as silent:
        publisher = broker.publisher_at(
            silent.port, connect_timeout_seconds=0.5, timeout_seconds=0.5
        )
        with pytest.raises(ConnectionError) as raised:
            await publisher.publish(saga_events(saga_count=1, events_per_saga=1))
        assert LABELS[broker.name] in str(raised.value)
        await publisher.close()


async def test_lost_connection_fails_publish_and_next_publish_reconnects(broker: Broker) -> None:
    """Through a proxy: publish; cut every connection and refuse new ones -> ``publish``
    raises (again while it is down); proxy back -> the next ``publish`` reconnects and
    succeeds. The consumer gets exactly the events of the successful publishes."""
    events = saga_events(saga_count=3, events_per_saga=6)
    before, during, after = events[:6], events[6:12], events[12:]
    async with broker.proxy() as proxy, broker.consume() as received:
        async with broker.publisher_at(proxy.port, connect_timeout_seconds=2) as publisher:
            await publisher.publish(before)
            connections = proxy.accepted
            await proxy.stop()
            for _ in range(2):
                with pytest.raises(ConnectionError) as raised:
                    await publisher.publish(during)
                assert LABELS[broker.name] in str(raised.value)
            await proxy.start()
            await publisher.publish(after)
            assert proxy.accepted > connections  # a new connection
        await received.wait_for_count(len(before) + len(after))
    assert received.events == before + after
