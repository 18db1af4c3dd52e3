"""RabbitMQ publisher: lifecycle events to a topic exchange, with publisher confirms.

Needs the ``rabbitmq`` extra (``pip install 'saga-orchestrator[rabbitmq]'``: aio-pika) and
asyncio.

Each event is one persistent message on a durable topic exchange (declared when the publisher
connects), with routing key ``"{saga_type}.{event type}"`` by default (``trip.saga.completed``,
``trip.step.failed``), so consumers bind queues to ``trip.#`` or ``*.saga.completed``. The body
is the JSON document of [`encode_event`][saga_orchestrator.events.encode_event] (read it back
with [`decode_event`][saga_orchestrator.events.decode_event]); ``message_id`` is the event id,
``type`` the event type, and the headers carry ``saga_id``, ``saga_type`` and ``sequence``.

The channel runs in publisher-confirm mode: ``publish`` sends a call's messages in order, one
after the other on one channel (which RabbitMQ keeps in order in every queue), and returns
only once the broker has confirmed every one. Delivery is at least once: messages whose
confirmation was lost are sent again by the relay, with the same ``message_id``; consumers
deduplicate on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

try:
    import aio_pika
    import aiormq
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "saga_orchestrator.adapters.rabbitmq needs aio-pika: "
        "pip install 'saga-orchestrator[rabbitmq]'"
    ) from exc

from ..events import SagaEvent, encode_event
from ._brokers import describe as _describe
from ._brokers import redact as _redact
from ._lifecycle import AsyncLifecycle

__all__ = ["RabbitMQPublishError", "RabbitMQPublisher", "default_routing_key"]

# What a broken connection, a closed channel, a nack or a return raise in aio-pika/aiormq.
_FAILURES = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError)


class RabbitMQPublishError(ConnectionError):
    """Publishing to RabbitMQ failed: it could not be reached, the connection or channel was
    lost before every message was confirmed, or the broker rejected (nacked) a message or
    returned an unroutable one (with ``mandatory=True``). Messages sent before the failure
    may have been delivered. After a lost connection the next ``publish`` call connects
    again."""


def default_routing_key(event: SagaEvent) -> str:
    """``"{saga_type}.{event type}"``, for example ``"trip.saga.completed"``."""
    return f"{event.saga_type}.{event.type.value}"


class RabbitMQPublisher(AsyncLifecycle):
    """An [`EventPublisher`][saga_orchestrator.protocols.EventPublisher] to a RabbitMQ topic
    exchange, with publisher confirms and persistent messages.

    Connects on first ``publish`` (or ``open()``/``async with``) and declares the exchange
    (topic, durable); queues and their bindings are the consumers' business. Use it on one
    asyncio event loop. A ``publish`` that fails raises
    [`RabbitMQPublishError`][saga_orchestrator.adapters.rabbitmq.RabbitMQPublishError] and
    drops the connection, so the next call reconnects; nothing is retried inside the
    publisher (an [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] retries the same
    events).

    Args:
        url: an AMQP URL (``amqp://user:password@host:5672/vhost``, ``amqps://`` for TLS).
        exchange: the topic exchange's name.
        routing_key: a function of the event giving its routing key; by default
            [`default_routing_key`][saga_orchestrator.adapters.rabbitmq.default_routing_key]
            (``"{saga_type}.{event type}"``).
        mandatory: ask the broker to return messages that no queue is bound for, and fail
            the publish if one is. ``False`` (the default): such messages are dropped, as
            events nobody subscribed to.
        connect_timeout_seconds: how long connecting (TCP and the AMQP handshake, the channel
            and the exchange declaration) may take before the publish fails.
        timeout_seconds: how long the broker may take to confirm a call's messages.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: str = "saga-events",
        routing_key: Callable[[SagaEvent], str] = default_routing_key,
        mandatory: bool = False,
        connect_timeout_seconds: float = 3.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        """Set up the publisher; it connects on first use."""
        if not exchange:
            raise ValueError("exchange must be named (the default exchange is not a topic one)")
        self.url = url
        """The AMQP URL."""
        self.exchange = exchange
        """The topic exchange's name."""
        self.routing_key = routing_key
        """The function giving an event's routing key."""
        self.mandatory = mandatory
        """Whether an unroutable message fails the publish."""
        self.connect_timeout_seconds = connect_timeout_seconds
        """How long connecting may take."""
        self.timeout_seconds = timeout_seconds
        """How long confirmations may take."""
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connecting: asyncio.Lock | None = None

    def message_for(self, event: SagaEvent) -> aio_pika.Message:
        """The message ``event`` is published as."""
        return aio_pika.Message(
            encode_event(event).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(event.event_id),
            type=event.type.value,
            timestamp=event.occurred_at,
            headers={
                "saga_id": str(event.saga_id),
                "saga_type": event.saga_type,
                "sequence": event.sequence,
            },
        )

    async def open(self) -> None:
        """Connect and declare the exchange now (otherwise done on first ``publish``).

        Raises [`RabbitMQPublishError`][saga_orchestrator.adapters.rabbitmq.RabbitMQPublishError]
        if the broker cannot be reached or refuses.
        """
        await self._ready()

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        """Publish ``events`` in order and wait until the broker confirmed every one.

        Raises [`RabbitMQPublishError`][saga_orchestrator.adapters.rabbitmq.RabbitMQPublishError]
        if the broker cannot be reached, the connection is lost before every confirmation
        came, or a message is nacked (or returned, with ``mandatory``). The next call
        reconnects.
        """
        if not events:
            return
        exchange = await self._ready()
        connection = self._connection
        # Each publish takes the channel's lock (first come, first served) before it writes,
        # so tasks started in order put their messages on the wire in order; their
        # confirmations are then awaited together rather than one round trip each.
        tasks = [
            asyncio.ensure_future(
                exchange.publish(
                    self.message_for(event),
                    self.routing_key(event),
                    mandatory=self.mandatory,
                    timeout=self.timeout_seconds,
                )
            )
            for event in events
        ]
        try:
            async with asyncio.timeout(self.timeout_seconds):
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError as exc:
            await self._discard(connection)
            raise RabbitMQPublishError(
                f"RabbitMQ at {_redact(self.url)}: {len(events)} message(s) to exchange"
                f" {self.exchange!r} not confirmed within {self.timeout_seconds} s;"
                " the next publish reconnects"
            ) from exc
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, aiormq.exceptions.PublishError):
                    what = "was returned as unroutable"
                elif isinstance(outcome, aiormq.exceptions.DeliveryError):
                    what = "was rejected (nack)"
                else:  # the broker did not answer: the connection or channel is gone
                    what = "was not confirmed"
                    await self._discard(connection)
                raise RabbitMQPublishError(
                    f"RabbitMQ at {_redact(self.url)}: message {event.event_id}"
                    f" ({self.routing_key(event)!r}, exchange {self.exchange!r}) {what}:"
                    f" {_describe(outcome)}"
                ) from outcome

    async def _ready(self) -> AbstractExchange:
        """The exchange on an open channel, connecting first if need be."""
        exchange = self._usable_exchange()
        if exchange is not None:
            return exchange
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            exchange = self._usable_exchange()
            if exchange is not None:
                return exchange
            await self._discard(self._connection)
            connection: AbstractConnection | None = None
            try:
                async with asyncio.timeout(self.connect_timeout_seconds):
                    connection = await aio_pika.connect(
                        self.url, timeout=self.connect_timeout_seconds
                    )
                    channel = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                    exchange = await channel.declare_exchange(
                        self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
                    )
            except (*_FAILURES, TimeoutError) as exc:
                await self._discard(connection)
                raise RabbitMQPublishError(
                    f"RabbitMQ at {_redact(self.url)}: could not connect and declare exchange"
                    f" {self.exchange!r}: {_describe(exc)}"
                ) from exc
            self._connection, self._channel, self._exchange = connection, channel, exchange
            return exchange

    def _usable_exchange(self) -> AbstractExchange | None:
        connection, channel = self._connection, self._channel
        if connection is None or channel is None or connection.is_closed or channel.is_closed:
            return None
        return self._exchange

    async def _discard(self, connection: AbstractConnection | None) -> None:
        """Forget ``connection`` (if still current) and close it, quietly and briefly."""
        if connection is None:
            return
        if self._connection is connection:
            self._connection, self._channel, self._exchange = None, None, None
        try:
            async with asyncio.timeout(self.connect_timeout_seconds):
                await connection.close()
        except Exception:  # a broken connection may fail to close cleanly: it is dropped
            pass

    async def close(self) -> None:
        """Close the connection (a broken one is dropped without error, within the connect
        timeout); publishing again reconnects."""
        await self._discard(self._connection)
