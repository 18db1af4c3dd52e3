"""Redis Streams publisher: lifecycle events appended to streams with ``XADD``.

Needs the ``redis`` extra (``pip install 'saga-orchestrator[redis]'``: redis-py with its
asyncio client) and asyncio.

Each call of [`publish`][saga_orchestrator.adapters.redis.RedisStreamsPublisher.publish] sends
its events in one ``MULTI``/``EXEC`` transaction, so a batch is appended whole, in order,
with no other client's entries in between; the relay (or the orchestrator) calls ``publish``
in order and waits, so each saga's events are appended in ``sequence`` order. (Redis does
not roll a transaction back: should it refuse one ``XADD``, say because the key holds
another type, the others are still appended and ``publish`` raises.)

Every entry has the fields ``event_id``, ``saga_id``, ``type``, ``sequence`` and ``event``
(the JSON document of [`encode_event`][saga_orchestrator.events.encode_event]; read it back
with [`decode_event`][saga_orchestrator.events.decode_event]).

Delivery is at least once: a transaction whose reply was lost is sent again by the relay, and
its entries then appear twice (with new entry ids). Consumers deduplicate on ``event_id``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

try:
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError, ResponseError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "saga_orchestrator.adapters.redis needs redis-py: pip install 'saga-orchestrator[redis]'"
    ) from exc

from ..events import SagaEvent, encode_event
from ._brokers import describe as _describe
from ._brokers import redact as _redact
from ._lifecycle import AsyncLifecycle

__all__ = ["RedisPublishError", "RedisStreamsPublisher"]


class RedisPublishError(ConnectionError):
    """Publishing to Redis failed: it could not be reached, or the connection was lost, or
    it refused the transaction. Whether the events were appended is unknown; the next
    ``publish`` call connects again."""


class RedisStreamsPublisher(AsyncLifecycle):
    """An [`EventPublisher`][saga_orchestrator.protocols.EventPublisher] to Redis Streams.

    Connects on first ``publish`` (or ``open()``/``async with``). Use it on one asyncio event
    loop. A ``publish`` that fails raises
    [`RedisPublishError`][saga_orchestrator.adapters.redis.RedisPublishError] and drops the
    connections, so the next call reconnects; nothing is retried inside the publisher (an
    [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] retries the same events).

    Args:
        url: a redis-py URL (``redis://[:password@]host:6379/0``, ``rediss://`` for TLS).
        stream: the stream key, or a function of the event giving it (one stream per saga
            type, say).
        maxlen: trim each stream to about this many entries on every ``XADD``
            (``MAXLEN ~``, approximate so trimming stays cheap); ``None`` keeps everything.
        connect_timeout_seconds: how long connecting may take before the publish fails.
        timeout_seconds: how long Redis may take to answer a transaction.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        stream: str | Callable[[SagaEvent], str] = "saga-events",
        maxlen: int | None = None,
        connect_timeout_seconds: float = 3.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        """Set up the publisher; it connects on first use."""
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1 (or None), not {maxlen}")
        self.url = url
        """The Redis URL."""
        self.stream = stream
        """The stream key, or the function of the event that gives it."""
        self.maxlen = maxlen
        """Approximate length each stream is trimmed to, or ``None``."""
        self.connect_timeout_seconds = connect_timeout_seconds
        """How long connecting may take."""
        self.timeout_seconds = timeout_seconds
        """How long a transaction's reply may take."""
        self._client: aioredis.Redis | None = None

    def stream_for(self, event: SagaEvent) -> str:
        """The stream key ``event`` is appended to."""
        return self.stream if isinstance(self.stream, str) else self.stream(event)

    def _connect(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=self.connect_timeout_seconds,
                socket_timeout=self.timeout_seconds,
                # No retries inside redis-py: a retried EXEC could append a batch twice
                # behind the caller's back. The caller (the relay) decides.
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    async def open(self) -> None:
        """Connect now and check that Redis answers (otherwise done on first ``publish``).

        Raises [`RedisPublishError`][saga_orchestrator.adapters.redis.RedisPublishError] if
        it cannot be reached.
        """
        client = self._connect()
        try:
            async with asyncio.timeout(self._deadline()):
                await client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            await self._discard(client)
            raise RedisPublishError(
                f"Redis at {_redact(self.url)}: could not connect: {_describe(exc)}"
            ) from exc

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        """Append ``events`` to their streams in one ``MULTI``/``EXEC`` transaction.

        Returns once Redis has executed the transaction. Raises
        [`RedisPublishError`][saga_orchestrator.adapters.redis.RedisPublishError] if Redis
        cannot be reached or the connection is lost (the next call reconnects), or if it
        refuses an ``XADD``.
        """
        if not events:
            return
        client = self._connect()
        try:
            async with asyncio.timeout(self._deadline()), client.pipeline(transaction=True) as pipe:
                for event in events:
                    pipe.xadd(
                        self.stream_for(event),
                        {
                            "event_id": str(event.event_id),
                            "saga_id": str(event.saga_id),
                            "type": event.type.value,
                            "sequence": event.sequence,
                            "event": encode_event(event),
                        },
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                await pipe.execute()
        except ResponseError as exc:  # Redis answered: the connection is fine
            raise RedisPublishError(
                f"Redis at {_redact(self.url)}: XADD of {len(events)} event(s) refused"
                f" ({_describe(exc)})"
            ) from exc
        except (RedisError, OSError, TimeoutError) as exc:
            await self._discard(client)
            raise RedisPublishError(
                f"Redis at {_redact(self.url)}: XADD of {len(events)} event(s) failed"
                f" ({_describe(exc)}); the next publish reconnects"
            ) from exc

    def _deadline(self) -> float:
        # redis-py bounds each connect and each read; this bounds the whole call as well.
        return self.connect_timeout_seconds + self.timeout_seconds

    async def _discard(self, client: aioredis.Redis) -> None:
        """Forget ``client`` (if still current) and close its connections, quietly."""
        if self._client is client:
            self._client = None
        try:
            await client.aclose()
        except Exception:  # pragma: no cover - closing a broken client
            pass

    async def close(self) -> None:
        """Close the connections; publishing again reconnects."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
