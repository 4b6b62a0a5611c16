"""Fire alert events onto the voicealert stream.

Services call :class:`AlertProducer` (asyncio) or :class:`SyncAlertProducer`. Events are
validated against :class:`schema.AlertEvent` before anything is written, so a bad event
fails in the producer, with the field named, instead of becoming a dead letter.

Services that should not hold Redis credentials use :class:`HttpAlertProducer`: the same
``fire``/``resolve`` over the HTTP API, with an API token.

Producers in other languages need none of this: XADD one field, ``event``, holding the
JSON object described by ``schema/alert_event.schema.json`` (or POST it to ``/v1/alerts``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

import redis
import redis.asyncio

from producers.http import HttpAlertProducer, ProducerError
from producers.validation import ValidationError, build_event, build_events
from schema import AlertEvent

DEFAULT_PREFIX = "voicealert:"


def _stream_key(prefix: str) -> str:
    return f"{prefix}events"


def _decode(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


class AlertProducer:
    """Writes validated alert events to the stream. Returns stream entry ids."""

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._redis = client
        self._owns_client = False
        self.stream = _stream_key(prefix)

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, timeout_s: float = 5.0
    ) -> AlertProducer:
        """A producer with a client of its own, closed on exit; connecting and each command
        wait at most ``timeout_s`` (an unreachable Redis raises instead of hanging)."""
        client = redis.asyncio.Redis.from_url(url, socket_timeout=timeout_s,
                                              socket_connect_timeout=timeout_s)
        producer = cls(client, prefix=prefix)
        producer._owns_client = True
        return producer

    async def fire(
        self,
        *,
        alert_id: str,
        group: str,
        message: str,
        tenant: str | None = None,
        dedup_window_s: int | None = None,
        mode: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        rounds: int | None = None,
        round_delay_s: int | None = None,
    ) -> str:
        event = build_event(
            alert_id=alert_id,
            group=group,
            message=message,
            tenant=tenant,
            dedup_window_s=dedup_window_s,
            mode=mode,
            metadata=dict(metadata) if metadata is not None else None,
            event_id=event_id,
            rounds=rounds,
            round_delay_s=round_delay_s,
        )
        return await self.send(event)

    async def resolve(
        self, *, alert_id: str, tenant: str | None = None, event_id: str | None = None
    ) -> str:
        event = build_event(alert_id=alert_id, tenant=tenant, action="resolve", event_id=event_id)
        return await self.send(event)

    async def ack(
        self,
        *,
        alert_id: str,
        tenant: str | None = None,
        acknowledged_by: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Write one acknowledgement: someone is on it, calling stops. Returns the entry id."""
        event = build_event(alert_id=alert_id, tenant=tenant, action="ack",
                            acknowledged_by=acknowledged_by, event_id=event_id)
        return await self.send(event)

    async def send(self, event: AlertEvent) -> str:
        entry_id = await self._redis.xadd(self.stream, event.to_entry())  # type: ignore[arg-type]
        return _decode(entry_id)

    async def fire_many(self, events: Iterable[AlertEvent | Mapping[str, Any]]) -> list[str]:
        """Validate every event first, then write them all in one pipelined round trip:
        one invalid event means nothing is written."""
        validated = build_events(events)
        async with self._redis.pipeline(transaction=False) as pipe:
            for event in validated:
                pipe.xadd(self.stream, event.to_entry())  # type: ignore[arg-type]
            ids = await pipe.execute()
        return [_decode(i) for i in ids]

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()

    async def __aenter__(self) -> AlertProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class SyncAlertProducer:
    """The same API for code that is not async (each call runs its own short event loop)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._url = url
        self._prefix = prefix

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            async with AlertProducer.from_url(self._url, prefix=self._prefix) as producer:
                return await getattr(producer, method)(*args, **kwargs)

        return asyncio.run(call())

    def fire(self, **fields: Any) -> str:
        return str(self._run("fire", **fields))

    def fire_many(self, events: Iterable[AlertEvent | Mapping[str, Any]]) -> list[str]:
        return list(self._run("fire_many", list(events)))

    def resolve(self, **fields: Any) -> str:
        return str(self._run("resolve", **fields))

    def ack(self, **fields: Any) -> str:
        return str(self._run("ack", **fields))


__all__ = [
    "AlertEvent",
    "AlertProducer",
    "HttpAlertProducer",
    "ProducerError",
    "SyncAlertProducer",
    "ValidationError",
    "build_event",
    "build_events",
]
