"""The requests the fake Twilio makes to the application, signed as Twilio signs them.

Every webhook (status callback, Gather action, TwiML fetch, ``<Redirect>``, async AMD
result) goes through :class:`WebhookSender`: form-encoded for POST, parameters in the query
for GET, an ``X-Twilio-Signature`` computed by twilio-python's own
``RequestValidator.compute_signature`` with the account's auth token (HMAC-SHA1 over the URL
exactly as the application gave it, then the POST parameters sorted by name), and an
``I-Twilio-Idempotency-Token`` that a duplicated delivery repeats. Nothing is retried (Twilio
retries no webhook unless the URL carries connection overrides); every attempt is recorded
as a :class:`Webhook` with the HTTP status the receiver answered, 0 when it never answered.

:class:`CallbackOutbox` is one call's status-callback queue: it delivers in order, reversed
or shuffled, each once or twice, one request at a time.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlencode

import aiohttp
from twilio.request_validator import RequestValidator
from yarl import URL

__all__ = [
    "CALLBACK_ORDERS",
    "CallbackOutbox",
    "CallbackPlan",
    "Webhook",
    "WebhookSender",
    "check_callback_order",
]

#: How a call's status callbacks reach the application: each at its moment ("in-order"),
#: or all held until the call ends and then sent newest first ("reversed") or in a seeded
#: random order ("shuffled").
CALLBACK_ORDERS = ("in-order", "reversed", "shuffled")
_USER_AGENT = "TwilioProxy/1.1"
_FINAL_EVENT = "completed"


def check_callback_order(order: str) -> None:
    if order not in CALLBACK_ORDERS:
        raise ValueError(f"order must be one of {list(CALLBACK_ORDERS)}, got {order!r}")


@dataclass(frozen=True)
class Webhook:
    """One request the fake made to the application, as sent and as answered.

    ``kind``: ``status`` (status callback), ``gather`` (a Gather's action), ``twiml`` (the
    call's ``Url``), ``redirect`` (a ``<Redirect>``) or ``amd`` (AsyncAmdStatusCallback).
    ``url`` is the URL requested (for GET, with the parameters in its query) and the one
    signed; ``params`` are the form parameters (for GET, the same ones, in the query).
    ``status`` is the receiver's HTTP status, 0 if it never answered (``error`` says why).
    ``event`` is the StatusCallbackEvent of a status callback (``initiated``, ``ringing``,
    ``answered``, ``completed``), None for other kinds; ``duplicate`` marks the second copy
    of a duplicated callback.
    """

    kind: str
    call_sid: str
    to: str
    method: str
    url: str
    params: dict[str, str]
    signature: str
    idempotency_token: str
    sent_at: float
    status: int
    error: str | None
    body: str
    content_type: str
    event: str | None = None
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def sequence_number(self) -> int | None:
        value = self.params.get("SequenceNumber")
        return None if value is None else int(value)


@dataclass(frozen=True)
class CallbackPlan:
    """How one call's status callbacks are delivered; snapshotted when the call is made."""

    order: str = "in-order"
    duplicates: bool = False
    before_create: bool = False


@dataclass(frozen=True)
class OutgoingCallback:
    """A status callback fired at an event, waiting for delivery."""

    event: str
    url: str
    method: str
    params: dict[str, str]
    token: str = field(default_factory=lambda: str(uuid.uuid4()))


class WebhookSender:
    """Signs and sends webhooks from the fake's event loop, recording each attempt."""

    def __init__(
        self,
        auth_token: str,
        timeout_s: Callable[[], float],
        record: Callable[[Webhook], None],
    ) -> None:
        self._validator = RequestValidator(auth_token)
        self._timeout_s = timeout_s
        self._record = record
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(trust_env=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def sign(self, url: str, params: dict[str, str]) -> str:
        return cast(str, self._validator.compute_signature(url, params))

    async def send(
        self,
        *,
        kind: str,
        call_sid: str,
        to: str,
        url: str,
        method: str,
        params: dict[str, str],
        token: str | None = None,
        event: str | None = None,
        duplicate: bool = False,
    ) -> Webhook:
        method = method.upper()
        if method == "GET":
            requested = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
            signature = self.sign(requested, {})
        else:
            method, requested = "POST", url
            signature = self.sign(url, params)
        token = token or str(uuid.uuid4())
        headers = {
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": token,
            "User-Agent": _USER_AGENT,
        }
        sent_at = time.monotonic()
        status, body, content_type, error = 0, "", "", None
        try:
            if self._session is None:
                raise RuntimeError("the webhook sender is closed")
            # encoded=True: on the wire exactly the URL that was signed, not
            # yarl's re-quoting of it.
            async with self._session.request(
                method,
                URL(requested, encoded=True),
                data=params if method == "POST" else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s()),
            ) as response:
                body = await response.text(errors="replace")
                status, content_type = response.status, response.content_type
        except (aiohttp.ClientError, TimeoutError, ValueError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        webhook = Webhook(
            kind=kind,
            call_sid=call_sid,
            to=to,
            method=method,
            url=requested,
            params=dict(params),
            signature=signature,
            idempotency_token=token,
            sent_at=sent_at,
            status=status,
            error=error,
            body=body,
            content_type=content_type,
            event=event,
            duplicate=duplicate,
        )
        self._record(webhook)
        return webhook


class CallbackOutbox:
    """One call's status callbacks, delivered one request at a time in the plan's order.

    In order, each callback leaves when its event fires. Reversed or shuffled, they are
    held until the final (``completed``) callback fires and then all leave in that order --
    the out-of-order arrival Twilio warns about ("there is no guarantee they will arrive in
    the same order"), made certain. ``deliver_now`` bypasses the queue for callbacks that
    must be sent, and awaited, before the create response is returned.
    """

    def __init__(
        self,
        plan: CallbackPlan,
        rng: random.Random,
        send: Callable[[OutgoingCallback, bool], Awaitable[None]],
        track: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self._plan = plan
        self._rng = rng
        self._send = send
        self._track = track
        self._held: list[OutgoingCallback] = []
        self._queue: asyncio.Queue[tuple[OutgoingCallback, bool]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def post(self, callback: OutgoingCallback) -> None:
        if self._plan.order == "in-order":
            self._enqueue([callback])
            return
        self._held.append(callback)
        if callback.event == _FINAL_EVENT:
            batch, self._held = self._held, []
            if self._plan.order == "reversed":
                batch.reverse()
            else:
                self._rng.shuffle(batch)
            self._enqueue(batch)

    async def deliver_now(self, callback: OutgoingCallback) -> None:
        for copy in self._copies(callback):
            await self._send(*copy)

    def _copies(self, callback: OutgoingCallback) -> list[tuple[OutgoingCallback, bool]]:
        copies = [(callback, False)]
        if self._plan.duplicates:
            copies.append((callback, True))
        return copies

    def _enqueue(self, batch: list[OutgoingCallback]) -> None:
        for callback in batch:
            for copy in self._copies(callback):
                self._queue.put_nowait(copy)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._drain())
            self._track(self._worker)

    async def _drain(self) -> None:
        while True:
            callback, duplicate = await self._queue.get()
            await self._send(callback, duplicate)
