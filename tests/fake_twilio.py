"""A fake Twilio REST API (Calls only) for driving the real twilio-python client.

Mocking the client would only prove that we call it the way we think it works;
serving Twilio's wire format over real HTTP proves that the worker copes with
what the library actually sends and how it actually parses answers (error
bodies become ``TwilioRestException``, list pages are discovered by key, etc.).

The server runs in a daemon thread with its own event loop so that both the
sync client (``requests``) and the async client (aiohttp, possibly on the test's
own loop) can talk to it without sharing a loop with it.

Call progress is computed from the monotonic clock on every read instead of
being driven by background tasks: that keeps a call's history a pure function
of (creation time, knobs snapshotted at creation, explicit updates), so tests
are deterministic and nothing has to be cancelled at shutdown.

Status callbacks are not emitted: ``StatusCallback``/``StatusCallbackEvent``
are only recorded on the call, because nothing under test consumes webhooks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

__all__ = ["OUTCOMES", "FakeCall", "FakeTwilio", "RecordedRequest"]

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "fake-auth-token"

#: Final statuses a created call may be scripted to reach on its own.
#: "canceled" is deliberately absent: on Twilio it only results from an update.
OUTCOMES = frozenset({"completed", "no-answer", "busy", "failed"})

_TERMINAL = frozenset({"completed", "no-answer", "busy", "failed", "canceled"})
_NANP = re.compile(r"^\+1(\d{3})(\d{3})(\d{4})$")
_SHUTDOWN_GRACE_S = 0.2
_TIME_FILTERS = ("StartTime", "StartTime>", "StartTime<", "EndTime", "EndTime>", "EndTime<")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it, so tests can assert on what was sent.

    ``status`` is the HTTP status answered, or 0 while (or if) no answer was
    ever sent -- which is how hung creates show up.
    """

    method: str
    path: str
    form: dict[str, list[str]]
    query: dict[str, list[str]]
    at: float
    status: int


@dataclass(frozen=True)
class FakeCall:
    """A snapshot of a call the provider knows about, taken when read."""

    sid: str
    to: str
    from_: str
    twiml: str | None
    status: str
    created_at: datetime
    created_monotonic: float
    url: str | None
    outcome: str
    answered_by: str | None
    status_callback: str | None
    status_callback_events: list[str]
    machine_detection: str | None


@dataclass(frozen=True)
class _ApiError:
    """A Twilio error in the legacy shape twilio-python turns into
    ``TwilioRestException(status, uri, msg, code)``.

    The body must not carry ``type``+``title``: the client would then parse it
    as an RFC 9457 problem and raise ``TwilioServiceException`` instead.
    """

    status: int
    code: int
    message: str

    def response(self, headers: Mapping[str, str] | None = None) -> web.Response:
        body = {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }
        return web.json_response(body, status=self.status, headers=headers)


@dataclass(frozen=True)
class _Moment:
    """What a call looks like at one instant; offsets are seconds since creation."""

    status: str
    start: float | None
    end: float | None
    duration: str | None
    updated: float
    answered_by: str | None


@dataclass
class _CallRecord:
    sid: str
    to: str
    from_: str
    twiml: str | None
    url: str | None
    created_mono: float
    created_wall: datetime
    # Snapshotted at creation so later knob changes never rewrite history.
    ring_s: float
    talk_s: float
    outcome: str
    answered_by: str | None
    status_callback: str | None
    status_callback_events: list[str]
    machine_detection: str | None
    frozen: _Moment | None = None

    def at(self, now_mono: float) -> _Moment:
        """Derive the state from elapsed time; an update freezes it for good,
        which is what guarantees the status never moves backwards."""
        if self.frozen is not None:
            return self.frozen
        t = now_mono - self.created_mono
        dial = self.ring_s / 2
        if t < dial:
            return _Moment("queued", None, None, None, 0.0, None)
        if t < self.ring_s:
            return _Moment("ringing", dial, None, None, dial, None)
        if self.outcome == "completed":
            hangup = self.ring_s + self.talk_s
            if t < hangup:
                return _Moment("in-progress", dial, None, None, self.ring_s, self.answered_by)
            duration = str(max(1, math.ceil(self.talk_s)))
            return _Moment("completed", dial, hangup, duration, hangup, self.answered_by)
        return _Moment(self.outcome, dial, self.ring_s, "0", self.ring_s, None)

    def wall(self, offset: float | None) -> datetime | None:
        if offset is None:
            return None
        return self.created_wall + timedelta(seconds=offset)


_T = TypeVar("_T")


class _Knob(Generic[_T]):
    """A behaviour knob readable/settable from the test thread while the server
    thread reads it; values live on the instance under its lock so ``reset()``
    can restore every default in one go."""

    def __init__(self, default: _T, check: Callable[[_T], None] | None = None) -> None:
        self.default = default
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type[Any] | None = None) -> _Knob[_T]: ...

    @overload
    def __get__(self, obj: FakeTwilio, objtype: type[Any] | None = None) -> _T: ...

    def __get__(self, obj: FakeTwilio | None, objtype: type[Any] | None = None) -> _T | _Knob[_T]:
        if obj is None:
            return self
        with obj._lock:
            return cast(_T, obj._knobs.get(self.name, self.default))

    def __set__(self, obj: FakeTwilio, value: _T) -> None:
        if self.check is not None:
            self.check(value)
        with obj._lock:
            obj._knobs[self.name] = value


def _check_outcome(outcome: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, got {outcome!r}")


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be within [0, 1], got {rate!r}")


def _check_seconds(seconds: float) -> None:
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds!r}")


def _rfc2822(moment: datetime | None) -> str | None:
    # Twilio writes "Tue, 31 Aug 2010 20:36:28 +0000"; the client parses only
    # to whole seconds.
    return None if moment is None else format_datetime(moment)


def _formatted(number: str) -> str:
    match = _NANP.match(number)
    if match is None:
        return number
    area, exchange, line = match.groups()
    return f"({area}) {exchange}-{line}"


def _multi(data: Mapping[str, Any]) -> dict[str, list[str]]:
    """Flatten a MultiDict keeping repeats, since Twilio takes repeated keys
    (e.g. StatusCallbackEvent) as lists."""
    out: dict[str, list[str]] = {}
    items: Any = data.items()
    for key, value in items:
        if isinstance(value, str):
            out.setdefault(key, []).append(value)
    return out


async def _form(request: web.Request) -> dict[str, list[str]]:
    # aiohttp caches the parsed body, so the middleware and the handler can
    # both ask for it.
    return _multi(await request.post())


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        login, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (login, password) if sep else None


def _first(data: dict[str, list[str]], key: str) -> str | None:
    values = data.get(key)
    return values[0] if values else None


class _TimeFilter:
    """A StartTime/EndTime bound as the client serialises it.

    twilio-python sends datetimes as ``%Y-%m-%dT%H:%M:%SZ`` (seconds truncated,
    naive datetimes sent as if UTC) and dates as ``YYYY-MM-DD``; Twilio's docs
    only promise the date form. A date compares by UTC day, a datetime by whole
    second; both bounds are inclusive ("on or after" / "on or before").
    """

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self.day: date | None = None
        self.second: datetime | None = None
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            self.day = date.fromisoformat(raw)
            return
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        self.second = parsed.astimezone(UTC).replace(microsecond=0)

    def _compare(self, moment: datetime) -> int:
        """-1, 0 or 1 as ``moment`` falls before, within or after the bound."""
        moment = moment.astimezone(UTC)
        if self.day is not None:
            mine_day = moment.date()
            return (mine_day > self.day) - (mine_day < self.day)
        assert self.second is not None
        mine = moment.replace(microsecond=0)
        return (mine > self.second) - (mine < self.second)

    def on_or_after(self, moment: datetime) -> bool:
        return self._compare(moment) >= 0

    def on_or_before(self, moment: datetime) -> bool:
        return self._compare(moment) <= 0

    def same(self, moment: datetime) -> bool:
        return self._compare(moment) == 0


class FakeTwilio:
    """An in-process stand-in for api.twilio.com's Calls resource.

    Point a real client at it with ``client.api.base_url = fake.base_url``.
    Knobs may be changed while running; each create snapshots the ones that
    shape a call (outcome, ring_s, talk_s) so existing calls are unaffected.

    A create is decided in this order: a 429 roll (no call); the request's own
    validity (missing To/From/Twiml-or-Url, then ``fail_number``; no call); a
    5xx roll (a call exists iff ``create_on_5xx``); otherwise 201. Only then do
    ``hang_creates`` (never answer) and ``create_delay_s`` (answer late) apply,
    so a hung or slow create has already made its call if it was going to --
    the ambiguous case a worker must reconcile by listing calls.
    """

    default_outcome: _Knob[str] = _Knob("completed", _check_outcome)
    ring_s: _Knob[float] = _Knob(0.2, _check_seconds)
    talk_s: _Knob[float] = _Knob(0.3, _check_seconds)
    create_delay_s: _Knob[float] = _Knob(0.0, _check_seconds)
    hang_creates: _Knob[bool] = _Knob(False)
    error_rate_5xx: _Knob[float] = _Knob(0.0, _check_rate)
    error_rate_429: _Knob[float] = _Knob(0.0, _check_rate)
    create_on_5xx: _Knob[bool] = _Knob(True)

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        seed: int = 0,
        *,
        port: int = 0,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.seed = seed
        self._requested_port = port
        # Re-entrant so a handler can read several knobs as one consistent
        # snapshot while each knob read also takes the lock.
        self._lock = threading.RLock()
        self._knobs: dict[str, object] = {}
        self._outcomes: dict[str, tuple[str, str | None]] = {}
        self._failures: dict[str, _ApiError] = {}
        self._requests: list[RecordedRequest] = []
        self._calls: dict[str, _CallRecord] = {}
        # Separate streams: minting sids must not shift the injected-error
        # sequence, so a seed reproduces the same failures whatever else runs.
        self._error_rng = random.Random(seed)
        self._sid_rng = random.Random(f"sids:{seed}")
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ------------------------------------------------------------------ life

    def start(self) -> FakeTwilio:
        """Start serving; returns once the socket is listening so callers can
        use ``base_url`` immediately."""
        if self._thread is not None:
            raise RuntimeError("FakeTwilio already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # surfaced to start()'s caller
                failure.append(exc)
                loop.run_until_complete(self._close())
                loop.close()
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=serve, name="fake-twilio", daemon=True)
        self._loop = loop
        self._thread = thread
        thread.start()
        ready.wait()
        if failure:
            self._thread = None
            self._loop = None
            thread.join()
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving. Requests still held open (hung or delayed creates) are
        cut off, so their clients see a dropped connection, not an answer."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None
        self._port = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeTwilio is not running")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _open(self) -> None:
        app = web.Application(middlewares=[self._middleware()])
        calls = f"/{API_VERSION}/Accounts/{{account_sid}}/Calls"
        app.router.add_post(f"{calls}.json", self._create)
        app.router.add_get(f"{calls}.json", self._list)
        app.router.add_get(f"{calls}/{{sid}}.json", self._fetch)
        app.router.add_post(f"{calls}/{{sid}}.json", self._update)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        # A short grace period: hung handlers never finish on their own, and
        # aiohttp's default would hold stop() for a minute before cancelling.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_GRACE_S)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", self._requested_port)
        await site.start()
        self._port = int(runner.addresses[0][1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --------------------------------------------------------------- knobs

    def set_outcome(self, phone: str, outcome: str, *, answered_by: str | None = None) -> None:
        """Script how calls to ``phone`` end; ``answered_by`` overrides the
        machine-detection answer for answered calls."""
        _check_outcome(outcome)
        with self._lock:
            self._outcomes[phone] = (outcome, answered_by)

    def fail_number(
        self,
        phone: str,
        *,
        http_status: int = 400,
        code: int = 21211,
        message: str = "The 'To' number is not a valid phone number.",
    ) -> None:
        """Make every create to ``phone`` fail with this Twilio error and no call."""
        with self._lock:
            self._failures[phone] = _ApiError(http_status, code, message)

    def reset(self) -> None:
        """Forget calls, records and knob changes, and rewind the error RNG so
        the next test sees the same injected-failure sequence as a fresh fake.
        The sid stream is not rewound so no sid is ever handed out twice."""
        with self._lock:
            self._knobs.clear()
            self._outcomes.clear()
            self._failures.clear()
            self._requests.clear()
            self._calls.clear()
            self._error_rng = random.Random(self.seed)

    # ------------------------------------------------------------- records

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [_copy_request(r) for r in self._requests]

    def creates(self) -> list[RecordedRequest]:
        """Create POSTs in arrival order, including refused and hung ones."""
        with self._lock:
            return [_copy_request(r) for r in self._requests if _is_create(r)]

    def created_calls(self) -> list[FakeCall]:
        """Every call the provider holds, in creation order -- including ones
        whose create was answered with an error or never answered at all."""
        now = time.monotonic()
        with self._lock:
            return [_snapshot(call, now) for call in self._calls.values()]

    # ------------------------------------------------------------ handlers

    def _middleware(self) -> Middleware:
        @web.middleware
        async def record_and_authenticate(
            request: web.Request, handler: Handler
        ) -> web.StreamResponse:
            form = await _form(request) if request.method == "POST" else {}
            entry = RecordedRequest(
                method=request.method,
                path=request.path,
                form=form,
                query=_multi(request.query),
                at=time.monotonic(),
                status=0,
            )
            with self._lock:
                self._requests.append(entry)
            response = self._authenticate(request) or await handler(request)
            with self._lock:
                # Found by identity: reset() may have emptied the list meanwhile.
                for index, recorded in enumerate(self._requests):
                    if recorded is entry:
                        self._requests[index] = dataclasses.replace(entry, status=response.status)
                        break
            return response

        return record_and_authenticate

    def _authenticate(self, request: web.Request) -> web.Response | None:
        path_sid = request.match_info.get("account_sid", self.account_sid)
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials != (self.account_sid, self.auth_token) or path_sid != self.account_sid:
            error = _ApiError(401, 20003, "Authenticate")
            return error.response({"WWW-Authenticate": 'Basic realm="Twilio API"'})
        return None

    async def _unknown(self, request: web.Request) -> web.Response:
        return _not_found(request.path)

    async def _create(self, request: web.Request) -> web.Response:
        form = await _form(request)
        now = time.monotonic()
        with self._lock:
            delay = self.create_delay_s
            hang = self.hang_creates
            # Two draws per create whatever happens, so the failure sequence
            # depends only on how many creates arrived.
            roll, pick = self._error_rng.random(), self._error_rng.random()
            record: _CallRecord | None = None
            error: _ApiError | None
            if roll < self.error_rate_429:
                error = _ApiError(429, 20429, "Too Many Requests")
            else:
                error = self._refusal(form)
                if error is None:
                    injected_5xx = roll < self.error_rate_429 + self.error_rate_5xx
                    if not injected_5xx or self.create_on_5xx:
                        record = self._new_call(form, now)
                    if injected_5xx:
                        error = (
                            _ApiError(500, 20500, "An internal server error has occurred")
                            if pick < 0.5
                            else _ApiError(503, 20503, "Service Unavailable")
                        )
            # The answer reflects the instant of creation (always "queued"),
            # as Twilio's does, however long we then sit on it.
            body = None if record is None else self._resource(record, record.at(now))
        if hang:
            # The provider got the request (and made the call if it would
            # have) but the answer never comes; only stop() ends this.
            await asyncio.Event().wait()
        if delay > 0:
            await asyncio.sleep(delay)
        if error is not None:
            return error.response()
        assert body is not None
        return web.json_response(body, status=201)

    def _refusal(self, form: dict[str, list[str]]) -> _ApiError | None:
        to, from_ = _first(form, "To"), _first(form, "From")
        if not to:
            return _ApiError(400, 21201, "No 'To' number is specified")
        if not from_:
            return _ApiError(400, 21213, "No 'From' number is specified")
        if not (_first(form, "Twiml") or _first(form, "Url") or _first(form, "ApplicationSid")):
            return _ApiError(400, 21205, "Url parameter is required.")
        return self._failures.get(to)

    def _new_call(self, form: dict[str, list[str]], now: float) -> _CallRecord:
        to = _first(form, "To") or ""
        outcome, answered_by = self._outcomes.get(to, (self.default_outcome, None))
        machine_detection = _first(form, "MachineDetection")
        if outcome != "completed":
            answered_by = None
        elif answered_by is None and machine_detection:
            answered_by = "human"
        sid = f"CA{self._sid_rng.getrandbits(128):032x}"
        record = _CallRecord(
            sid=sid,
            to=to,
            from_=_first(form, "From") or "",
            twiml=_first(form, "Twiml"),
            url=_first(form, "Url"),
            created_mono=now,
            created_wall=datetime.now(UTC),
            ring_s=self.ring_s,
            talk_s=self.talk_s,
            outcome=outcome,
            answered_by=answered_by,
            status_callback=_first(form, "StatusCallback"),
            status_callback_events=list(form.get("StatusCallbackEvent", [])),
            machine_detection=machine_detection,
        )
        self._calls[sid] = record
        return record

    async def _fetch(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        with self._lock:
            record = self._calls.get(request.match_info["sid"])
            if record is None:
                return _not_found(request.path)
            return web.json_response(self._resource(record, record.at(now)))

    async def _update(self, request: web.Request) -> web.Response:
        form = await _form(request)
        status = _first(form, "Status")
        twiml, url = _first(form, "Twiml"), _first(form, "Url")
        now = time.monotonic()
        with self._lock:
            record = self._calls.get(request.match_info["sid"])
            if record is None:
                return _not_found(request.path)
            moment = record.at(now)
            if status not in (None, "canceled", "completed"):
                return _ApiError(
                    400, 20001, f"Status must be one of canceled, completed; got {status!r}"
                ).response()
            if moment.status in _TERMINAL and (status or twiml or url):
                # What Twilio answers when hanging up or redirecting a call
                # that has already ended.
                return _ApiError(400, 21220, "Call is not in-progress. Cannot redirect.").response()
            t = now - record.created_mono
            if status is not None and moment.status in ("queued", "ringing"):
                # Both "canceled" and "completed" abort a call not yet answered.
                record.frozen = _Moment("canceled", moment.start, t, "0", t, None)
            elif status == "completed" and moment.status == "in-progress":
                talked = str(max(1, math.ceil(t - record.ring_s)))
                record.frozen = _Moment("completed", moment.start, t, talked, t, moment.answered_by)
            # "canceled" on an answered call is accepted and has no effect, as
            # Twilio documents for that status.
            if twiml is not None:
                record.twiml, record.url = twiml, None
            elif url is not None:
                record.url, record.twiml = url, None
            return web.json_response(self._resource(record, record.at(now)))

    async def _list(self, request: web.Request) -> web.Response:
        query = _multi(request.query)
        try:
            filters = {
                key: _TimeFilter(value) for key in _TIME_FILTERS if (value := _first(query, key))
            }
            page_size = min(max(int(_first(query, "PageSize") or 50), 1), 1000)
            page = max(int(_first(query, "Page") or 0), 0)
        except ValueError as exc:
            return _ApiError(400, 20001, f"Invalid query parameter: {exc}").response()
        now = time.monotonic()
        with self._lock:
            matches = []
            for record in reversed(list(self._calls.values())):  # newest first
                moment = record.at(now)
                if _matches(record, moment, query, filters):
                    matches.append(self._resource(record, moment))
        start = page * page_size
        chunk = matches[start : start + page_size]
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls.json"
        keep = [
            (key, value)
            for key, values in query.items()
            if key not in ("Page", "PageSize", "PageToken")
            for value in values
        ]

        def page_uri(number: int) -> str:
            params = [*keep, ("PageSize", str(page_size)), ("Page", str(number))]
            return f"{base}?{urlencode(params)}"

        # Exactly one non-meta key ("calls"): twilio-python's Page finds the
        # records as the only key outside its META_KEYS set.
        body = {
            "calls": chunk,
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if start + page_size < len(matches) else None,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "page": page,
            "page_size": page_size,
            "start": start,
            "end": start + max(len(chunk) - 1, 0),
            "uri": page_uri(page),
        }
        return web.json_response(body)

    def _resource(self, record: _CallRecord, moment: _Moment) -> dict[str, Any]:
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{record.sid}"
        sub = {
            name: f"{base}/{path}.json"
            for name, path in (
                ("feedback", "Feedback"),
                ("notifications", "Notifications"),
                ("recordings", "Recordings"),
                ("streams", "Streams"),
                ("payments", "Payments"),
                ("user_defined_message_subscriptions", "UserDefinedMessageSubscriptions"),
                ("user_defined_messages", "UserDefinedMessages"),
                ("events", "Events"),
                ("siprec", "Siprec"),
                ("transcriptions", "Transcriptions"),
            )
        }
        sub["feedback_summaries"] = (
            f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/FeedbackSummary.json"
        )
        number_sid = hashlib.sha256(record.from_.encode()).hexdigest()[:32]
        return {
            "account_sid": self.account_sid,
            "annotation": None,
            "answered_by": moment.answered_by,
            "api_version": API_VERSION,
            "caller_name": None,
            "date_created": _rfc2822(record.created_wall),
            "date_updated": _rfc2822(record.wall(moment.updated)),
            "direction": "outbound-api",
            # Twilio sends duration as a string ("0", "12"), null until ended.
            "duration": moment.duration,
            "end_time": _rfc2822(record.wall(moment.end)),
            "forwarded_from": None,
            "from": record.from_,
            "from_formatted": _formatted(record.from_),
            "group_sid": None,
            "parent_call_sid": None,
            "phone_number_sid": f"PN{number_sid}",
            "price": None,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": record.sid,
            "start_time": _rfc2822(record.wall(moment.start)),
            "status": moment.status,
            "stir_verstat": None,
            "subresource_uris": sub,
            "to": record.to,
            "to_formatted": _formatted(record.to),
            "trunk_sid": None,
            "uri": f"{base}.json",
        }


def _matches(
    record: _CallRecord,
    moment: _Moment,
    query: dict[str, list[str]],
    filters: dict[str, _TimeFilter],
) -> bool:
    for key, actual in (("To", record.to), ("From", record.from_), ("Status", moment.status)):
        wanted = _first(query, key)
        if wanted is not None and wanted != actual:
            return False
    if _first(query, "ParentCallSid") is not None:
        return False  # every call here is a parent leg
    # Twilio leaves start_time null until a call is dialled, so a real
    # StartTime> query misses calls still queued. Here a null start_time falls
    # back to date_created, so a worker that just created a call can find it
    # again by time (e.g. after an ambiguous create) without racing the dialler.
    started = record.wall(moment.start) or record.created_wall
    ended = record.wall(moment.end)
    for key, bound in filters.items():
        moment_time = started if key.startswith("Start") else ended
        if moment_time is None:
            return False
        if key.endswith(">"):
            ok = bound.on_or_after(moment_time)
        elif key.endswith("<"):
            ok = bound.on_or_before(moment_time)
        else:
            ok = bound.same(moment_time)
        if not ok:
            return False
    return True


def _not_found(path: str) -> web.Response:
    return _ApiError(404, 20404, f"The requested resource {path} was not found").response()


def _is_create(request: RecordedRequest) -> bool:
    return request.method == "POST" and request.path.endswith("/Calls.json")


def _copy_request(request: RecordedRequest) -> RecordedRequest:
    return dataclasses.replace(
        request,
        form={k: list(v) for k, v in request.form.items()},
        query={k: list(v) for k, v in request.query.items()},
    )


def _snapshot(record: _CallRecord, now: float) -> FakeCall:
    moment = record.at(now)
    return FakeCall(
        sid=record.sid,
        to=record.to,
        from_=record.from_,
        twiml=record.twiml,
        status=moment.status,
        created_at=record.created_wall,
        created_monotonic=record.created_mono,
        url=record.url,
        outcome=record.outcome,
        answered_by=moment.answered_by,
        status_callback=record.status_callback,
        status_callback_events=list(record.status_callback_events),
        machine_detection=record.machine_detection,
    )
