"""Fire alert events over voicealert's HTTP API, for services that should not hold Redis
credentials: the same ``fire``/``resolve``/``ack`` as :class:`producers.AlertProducer`, the same
:class:`~producers.ValidationError` before anything is sent, and an API token instead of a
Redis URL::

    async with HttpAlertProducer("https://alerts.example.com", token=TOKEN) as producer:
        stream_id = await producer.fire(alert_id="db-down", group="platform-oncall",
                                        message="Primary database is down")

The tenant is the token's: pass ``tenant`` only to be explicit (another tenant is refused).
Every request carries an ``Idempotency-Key`` (the ``event_id`` when given, else a random
one), so the producer retries a request that timed out, or was refused with 503 or 429,
without ever sending the same event twice: a retried event is processed once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from producers.validation import ValidationError, build_event
from schema import AlertEvent

#: Retry-After values above this are not waited for (the caller decides instead).
MAX_RETRY_WAIT_S = 10.0


class ProducerError(Exception):
    """The API did not accept the event: ``status`` (None when it could not be reached),
    its error message, and how long it asked to wait (``Retry-After``), if it did."""

    def __init__(self, status: int | None, message: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.retry_after_s = retry_after_s


class HttpAlertProducer:
    """Writes validated alert events through the HTTP API. Returns stream entry ids."""

    def __init__(self, base_url: str, *, token: str, timeout_s: float = 10.0,
                 retries: int = 2, session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries
        self._session = session
        self._owns_session = session is None

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
    ) -> str:
        event = build_event(
            alert_id=alert_id, group=group, message=message, tenant=tenant,
            dedup_window_s=dedup_window_s, mode=mode,
            metadata=dict(metadata) if metadata is not None else None, event_id=event_id,
        )
        return await self.send(event)

    async def resolve(
        self, *, alert_id: str, tenant: str | None = None, event_id: str | None = None
    ) -> str:
        event = build_event(alert_id=alert_id, tenant=tenant, action="resolve", event_id=event_id)
        body = {"tenant": event.tenant} if tenant is not None else None
        return await self._post(f"/v1/alerts/{quote(event.alert_id, safe='')}/resolve", body,
                                event.event_id)

    async def ack(
        self,
        *,
        alert_id: str,
        tenant: str | None = None,
        acknowledged_by: str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Acknowledge: someone is on it, calling stops. Returns the stream entry id."""
        event = build_event(alert_id=alert_id, tenant=tenant, action="ack",
                            acknowledged_by=acknowledged_by, event_id=event_id)
        given = (("tenant", event.tenant if tenant is not None else None),
                 ("acknowledged_by", event.acknowledged_by))
        body = {key: value for key, value in given if value is not None}
        return await self._post(f"/v1/alerts/{quote(event.alert_id, safe='')}/ack", body or None,
                                event.event_id)

    async def send(self, event: AlertEvent) -> str:
        """POST an event built by hand (fields left unset, the tenant included, are not sent:
        the server fills the defaults and the token's tenant)."""
        return await self._post("/v1/alerts", event.model_dump(mode="json", exclude_unset=True),
                                event.event_id)

    async def _post(self, path: str, body: dict[str, Any] | None, event_id: str | None) -> str:
        headers = {**self._headers, "Idempotency-Key": event_id or uuid.uuid4().hex}
        session = self._open_session()
        for attempt in range(self._retries + 1):
            last = attempt == self._retries
            try:
                async with session.post(self.base_url + path, json=body, headers=headers,
                                        timeout=self._timeout) as response:
                    answer = await _json_of(response)
            except (aiohttp.ClientError, TimeoutError) as exc:
                if last:
                    raise ProducerError(None, f"cannot reach {self.base_url}: "
                                              f"{type(exc).__name__} {exc}".strip()) from None
                await asyncio.sleep(0.5 * 2**attempt)
                continue
            if response.status == 202:
                return str(answer["stream_id"])
            error = _error_of(response.status, answer, response.headers.get("Retry-After"))
            if response.status == 400 and answer.get("errors"):
                first = answer["errors"][0]
                raise ValidationError(str(first["field"]), str(first["reason"]))
            wait = error.retry_after_s
            if last or response.status not in (429, 503) or (wait or 0) > MAX_RETRY_WAIT_S:
                raise error
            await asyncio.sleep(wait if wait is not None else 0.5 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def aclose(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpAlertProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _json_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        answer = await response.json(content_type=None)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def _error_of(status: int, answer: Mapping[str, Any], retry_after: str | None) -> ProducerError:
    try:
        wait = float(retry_after) if retry_after is not None else None
    except ValueError:
        wait = None
    return ProducerError(status, str(answer.get("error") or f"HTTP {status}"), wait)
