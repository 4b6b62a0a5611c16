"""The real twilio client behind the :class:`CallProvider` protocol.

Traps avoided (the guarantee they keep: docs/contracts.md#delivery-guarantees): the async
client's own timeout is not honoured, so every request is wrapped in ``asyncio.wait_for``;
its ``max_retries`` re-POSTs on 5xx, so it is not used; ``environment`` is a non-empty
mapping without TWILIO_* keys (an empty dict is falsy and the client would fall back to
``os.environ``, where TWILIO_EDGE/REGION could rewrite the URL).

The twilio library builds every request (URL, form, headers, auth) and reads every answer;
only the last step, handing the request to aiohttp, is ours (``_HttpClient``), to leave out
what each request paid for nothing (see there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from worker.providers import (
    NO_OPTIONS,
    AmbiguousProviderError,
    CallOptions,
    PermanentProviderError,
    ProviderCall,
    ProviderError,
    ThrottledProviderError,
)

T = TypeVar("T")
_THROTTLE_CODES = frozenset({20429})


def classify(exc: BaseException) -> ProviderError:
    """Map what the twilio client raised to what we may do next."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, TwilioRestException):
        status, code = int(exc.status), exc.code
        message = str(exc.msg)
        if status == 429 or code in _THROTTLE_CODES:
            return ThrottledProviderError(message, code=code, http_status=status)
        if status >= 500:
            return AmbiguousProviderError(message, code=code, http_status=status)
        return PermanentProviderError(message, code=code, http_status=status)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Refused before a byte was sent: the call certainly does not exist.
        return ThrottledProviderError(f"connection refused: {exc.os_error}")
    if isinstance(exc, TimeoutError):
        return AmbiguousProviderError("provider request timed out")
    return AmbiguousProviderError(f"{type(exc).__name__}: {exc}")


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


def _to_call(instance: Any) -> ProviderCall:
    duration = instance.duration
    return ProviderCall(
        sid=str(instance.sid),
        status=str(instance.status),
        to=str(instance.to),
        created_at=_parse_time(instance.date_created),
        duration_s=int(duration) if duration not in (None, "") else None,
        answered_by=instance.answered_by or None,
    )


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """twilio's aiohttp client (one session, its connections kept alive), sending what the
    library built, without two things it did on every request for nothing here: formatting
    about ten log lines (the request, its headers, the answer's headers) that the ``twilio``
    logger, at WARNING, then drops; and keeping copies of the last request and answer for
    twilio's own tests. The ``BasicAuth`` of our one account is built once."""

    def __init__(self, *, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._auth: tuple[tuple[str, str], aiohttp.BasicAuth] | None = None

    def _basic_auth(self, auth: tuple[str, str]) -> aiohttp.BasicAuth:
        if self._auth is None or self._auth[0] != auth:
            self._auth = (auth, aiohttp.BasicAuth(login=auth[0], password=auth[1]))
        return self._auth[1]

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - twilio's signature (always None)
        allow_redirects: bool = False,
    ) -> Response:
        if timeout is not None and timeout <= 0:
            raise ValueError(timeout)
        assert self.session is not None  # pool_connections: built in __init__
        response = await self.session.request(
            method=method.upper(),
            url=url,
            params=params,
            data=data,
            headers=headers,
            auth=self._basic_auth(auth) if auth is not None else None,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        return Response(response.status, await response.text(), response.headers)


class TwilioProvider:
    name = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str,
        timeout_s: float,
        ring_timeout_s: int,
    ) -> None:
        # Built inside the running loop: aiohttp sessions belong to one loop.
        self._http = _HttpClient(timeout=timeout_s)
        self._client = Client(
            account_sid,
            auth_token,
            http_client=self._http,
            environment={"VOICEALERT": "1"},
        )
        self._client.api.base_url = base_url.rstrip("/")
        self._calls = self._client.api.v2010.accounts(account_sid).calls
        self._from = from_number
        self._timeout_s = timeout_s
        self._ring_timeout_s = ring_timeout_s

    async def _request(self, awaitable: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(awaitable, self._timeout_s)
        except Exception as exc:
            raise classify(exc) from exc

    async def create_call(
        self, *, to: str, twiml: str, options: CallOptions = NO_OPTIONS
    ) -> ProviderCall:
        kwargs: dict[str, Any] = {
            "to": to,
            "from_": self._from,
            "twiml": twiml,
            "timeout": self._ring_timeout_s,
        }
        if options.status_callback:
            kwargs["status_callback"] = options.status_callback
            kwargs["status_callback_method"] = "POST"
            kwargs["status_callback_event"] = ["initiated", "ringing", "answered", "completed"]
        if options.machine_detection:
            kwargs["machine_detection"] = options.machine_detection
            if options.amd_callback:
                # Asynchronous: the message starts at pickup (no silence for a person while
                # detection listens), and the verdict is posted to the web process.
                kwargs["async_amd"] = "true"
                kwargs["async_amd_status_callback"] = options.amd_callback
                kwargs["async_amd_status_callback_method"] = "POST"
        return _to_call(await self._request(self._calls.create_async(**kwargs)))

    async def fetch_call(self, sid: str) -> ProviderCall:
        return _to_call(await self._request(self._calls(sid).fetch_async()))

    async def find_calls(self, *, to: str, since: datetime) -> list[ProviderCall]:
        instances = await self._request(
            self._calls.list_async(to=to, start_time_after=since, limit=50)
        )
        found = [_to_call(i) for i in instances]
        return [c for c in found if c.created_at is None or c.created_at >= since]

    async def cancel_call(self, sid: str) -> ProviderCall:
        return _to_call(await self._request(self._calls(sid).update_async(status="canceled")))

    async def hang_up(self, sid: str) -> ProviderCall:
        return _to_call(await self._request(self._calls(sid).update_async(status="completed")))

    async def speak(self, sid: str, twiml: str) -> ProviderCall:
        return _to_call(await self._request(self._calls(sid).update_async(twiml=twiml)))

    async def aclose(self) -> None:
        await self._http.close()
