"""A fake Twilio REST API (Calls only) for driving the real twilio-python client.

Mocking the client would only prove that we call it the way we think it works;
serving Twilio's wire format over real HTTP proves that the worker copes with
what the library actually sends and how it actually parses answers (error
bodies become ``TwilioRestException``, list pages are discovered by key, etc.).

The server runs in a daemon thread with its own event loop so that both the
sync client (``requests``) and the async client (aiohttp, possibly on the test's
own loop) can talk to it without sharing a loop with it.

Call progress is computed from the monotonic clock on every read: a call's
history is a pure function of (creation time, knobs snapshotted at creation,
explicit updates, and -- when it plays its TwiML -- the moment the play ended),
so tests are deterministic. Tasks on the fake's loop only *tell* the
application about that history, at the moments the clock reaches each state:

- **Status callbacks** (``StatusCallback`` + ``StatusCallbackEvent``, default
  ``completed`` only; ``StatusCallbackMethod`` default POST), signed with the
  auth token as Twilio signs them (testing/fake_twilio_webhooks.py). Parameters:
  ``CallSid AccountSid From To Called Caller CallStatus Direction ApiVersion
  CallbackSource=call-progress-events SequenceNumber`` (0, 1, 2... per call, in
  firing order) ``Timestamp`` (RFC 2822, when the event fired); on
  ``completed`` also ``CallDuration`` (seconds), ``Duration`` (billed minutes,
  rounded up: a guess, read CallDuration) and ``SipResponseCode`` (200
  completed, 486 busy, 487 no-answer and canceled, 404 failed: a guess at
  typical values); ``AnsweredBy`` once detection has decided, when
  ``MachineDetection`` was requested. ``CallStatus`` per event:
  ``initiated`` -> ``initiated`` (the state Twilio's support docs name between
  queued and ringing; the REST resource never shows it), ``ringing`` ->
  ``ringing``, ``answered`` -> ``in-progress``, ``completed`` -> the final
  status (completed, busy, no-answer, failed, canceled). A call ends with
  initiated+ringing (at ``ring_s``/2, when it leaves "queued"), then either
  the final callback at ``ring_s`` (not answered) or answered at ``ring_s``
  and completed when it hangs up; a call canceled while queued sends only
  completed. Knobs: delivery order, duplicates, sending (and awaiting)
  initiated+ringing before the create response; never a retry.
- **TwiML play** (``play_twiml``; testing/fake_twilio_play.py): an answered call
  plays its ``Twiml`` (or the TwiML its ``Url`` answers, fetched with ``Method``,
  signed) instead of lasting ``talk_s``; scripted keypresses land in a
  ``<Gather>`` only while it is active and are POSTed, signed, to its action;
  the call ends ``completed`` when the TwiML ends, on ``<Hangup/>``, or after
  "an application error has occurred" when the application fails a request.
- **Answering machine detection** (``MachineDetection`` Enable or
  DetectMessageEnd, ``AsyncAmd``, ``AsyncAmdStatusCallback``): whoever
  ``set_outcome`` says picks up, detection takes ``amd_detect_s`` (a machine
  under DetectMessageEnd: plus ``amd_greeting_s``, until the beep), and
  ``AnsweredBy`` then appears on the resource, in later callbacks and in
  Gather requests. Synchronous detection holds the TwiML until it decides; the
  ``answered`` callback fires at pickup, before AnsweredBy is known (a choice:
  Twilio documents AnsweredBy on the resource and the async callback only).
  Without MachineDetection nothing is reported, whoever picks up. A machine
  never presses keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import math
import random
import re
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Generic, TypeVar, cast, overload
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from testing.fake_twilio_play import (
    ApplicationError,
    Fetched,
    Player,
    PlayEvent,
    PlayTiming,
)
from testing.fake_twilio_webhooks import (
    CALLBACK_ORDERS,
    CallbackOutbox,
    CallbackPlan,
    OutgoingCallback,
    Webhook,
    WebhookSender,
    check_callback_order,
)

__all__ = [
    "ANSWERED_BY",
    "CALLBACK_ORDERS",
    "OUTCOMES",
    "ApplicationError",
    "FakeCall",
    "FakeTwilio",
    "PlayEvent",
    "RecordedRequest",
    "RequestCounts",
    "Webhook",
]

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "fake-auth-token"

#: Final statuses a created call may be scripted to reach on its own.
#: "canceled" is deliberately absent: on Twilio it only results from an update.
OUTCOMES = frozenset({"completed", "no-answer", "busy", "failed"})

_MACHINE_ENDS = ("machine_end_beep", "machine_end_silence", "machine_end_other")
#: What ``set_outcome(..., answered_by=...)`` may script: who picks up, in Twilio's
#: AnsweredBy words ("machine" is short for whichever machine value the call's
#: MachineDetection mode reports).
ANSWERED_BY = frozenset({"human", "unknown", "fax", "machine", "machine_start", *_MACHINE_ENDS})
_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
_EVENT_STATUS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress"}
_SIP_RESPONSE = {"completed": "200", "busy": "486", "no-answer": "487", "canceled": "487",
                 "failed": "404"}
_AMD_MODES = ("Enable", "DetectMessageEnd")
_DTMF = re.compile(r"^[0-9*#]+$")
_TERMINAL = frozenset({"completed", "no-answer", "busy", "failed", "canceled"})
_NANP = re.compile(r"^\+1(\d{3})(\d{3})(\d{4})$")
_CALLS_PATH = re.compile(r"/Accounts/[^/]+/Calls\.json$")
_CALL_PATH = re.compile(r"/Accounts/[^/]+/Calls/[^/]+\.json$")
_SHUTDOWN_GRACE_S = 0.2
# Where the create handler leaves the sid it made for the middleware's record
# (the handler runs in the middleware's task, so it shares its context).
_CREATED_SID: ContextVar[str | None] = ContextVar("fake_twilio_created_sid", default=None)
_TIME_FILTERS = ("StartTime", "StartTime>", "StartTime<", "EndTime", "EndTime>", "EndTime<")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it, so tests can assert on what was sent.

    ``status`` is the HTTP status answered, or 0 while (or if) no answer was
    ever sent -- which is how hung creates show up. ``sid`` is the call a
    fetch or update addressed, or the call a create made (None if it made none).
    """

    method: str
    path: str
    form: dict[str, list[str]]
    query: dict[str, list[str]]
    at: float
    status: int
    sid: str | None = None

    @property
    def kind(self) -> str:
        """``create``, ``list``, ``fetch``, ``update`` or ``other``."""
        if _CALLS_PATH.search(self.path):
            return "create" if self.method == "POST" else "list"
        if _CALL_PATH.search(self.path):
            return "update" if self.method == "POST" else "fetch"
        return "other"


@dataclass(frozen=True)
class RequestCounts:
    """The REST requests one call cost, as :meth:`FakeTwilio.request_counts` attributes them."""

    creates: int
    fetches: int
    updates: int
    lists: int

    @property
    def gets(self) -> int:
        """Every GET: fetches of the call plus list lookups of its number."""
        return self.fetches + self.lists


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
    async_amd: bool = False
    #: Who picked up (human or machine), whether or not detection was asked to tell.
    callee: str | None = None
    plays_twiml: bool = False


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


@dataclass(eq=False)  # a call is itself, whatever its fields say
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
    method: str = "POST"
    callee: str | None = None
    detect_s: float = 0.0
    async_amd: bool = False
    amd_callback: str | None = None
    amd_callback_method: str = "POST"
    status_callback_method: str = "POST"
    callbacks: CallbackPlan = field(default_factory=CallbackPlan)
    plays: bool = False
    timing: PlayTiming | None = None
    play_task: asyncio.Task[None] | None = None
    # What happens on the line, filled in by the fake's loop.
    fired: set[str] = field(default_factory=set)
    sequence: int = 0
    outbox: CallbackOutbox | None = None
    player: Player | None = None
    transcript: list[PlayEvent] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def play_offset(self) -> float:
        """When the TwiML starts: at pickup, or once synchronous detection decided."""
        waits = self.machine_detection is not None and not self.async_amd
        return self.ring_s + (self.detect_s if waits else 0.0)

    def answered_by_at(self, t: float) -> str | None:
        return self.answered_by if t >= self.ring_s + self.detect_s else None

    def at(self, now_mono: float) -> _Moment:
        """Derive the state from elapsed time; an update (or the end of the
        TwiML play) freezes it for good, which is what guarantees the status
        never moves backwards."""
        if self.frozen is not None:
            return self.frozen
        t = now_mono - self.created_mono
        dial = self.ring_s / 2
        if t < dial:
            return _Moment("queued", None, None, None, 0.0, None)
        if t < self.ring_s:
            return _Moment("ringing", dial, None, None, dial, None)
        if self.outcome == "completed":
            # A call playing TwiML lasts until the play ends and freezes it.
            hangup = math.inf if self.plays else self.ring_s + self.talk_s
            if t < hangup:
                return _Moment("in-progress", dial, None, None, self.ring_s, self.answered_by_at(t))
            duration = str(max(1, math.ceil(self.talk_s)))
            return _Moment("completed", dial, hangup, duration, hangup, self.answered_by)
        return _Moment(self.outcome, dial, self.ring_s, "0", self.ring_s, None)

    def hang_up(self, t: float) -> _Moment:
        """Freeze an answered call as completed at offset ``t``."""
        talked = str(max(1, math.ceil(t - self.ring_s)))
        dial = self.ring_s / 2
        self.frozen = _Moment("completed", dial, t, talked, t, self.answered_by_at(t))
        return self.frozen

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


def _check_positive(value: float) -> None:
    if not value > 0:
        raise ValueError(f"value must be > 0, got {value!r}")


def _check_message_end(value: str) -> None:
    if value not in _MACHINE_ENDS:
        raise ValueError(f"amd_message_end must be one of {list(_MACHINE_ENDS)}, got {value!r}")


def _check_answered_by(value: str | None) -> None:
    if value is not None and value not in ANSWERED_BY:
        raise ValueError(f"answered_by must be one of {sorted(ANSWERED_BY)}, got {value!r}")


def _detection(scripted: str | None, mode: str | None, message_end: str) -> tuple[str, str | None]:
    """Who picks up (``human`` or ``machine``), and the AnsweredBy Twilio reports.

    ``unknown`` (detection could not decide) is a person who may press keys; a fax is a
    machine. DetectMessageEnd reports a machine only once its greeting ended, as one of
    the machine_end_* values (a scripted machine_start becomes ``message_end``); Enable
    reports any machine as machine_start.
    """
    said = scripted or "human"
    is_machine = said.startswith("machine") or said == "fax"
    callee = "machine" if is_machine else "human"
    if mode is None:
        return callee, None
    if not said.startswith("machine"):
        return callee, said
    if mode == "DetectMessageEnd":
        return callee, said if said in _MACHINE_ENDS else message_end
    return callee, "machine_start"


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

    Knobs (all times in real seconds unless said otherwise):

    - ``default_outcome``, ``ring_s`` (queued for the first half, then
      ringing), ``talk_s`` (how long an answered call lasts when it does not
      play its TwiML), and the create-failure knobs above.
    - ``play_twiml`` (False): answered calls play their TwiML; needed for
      :meth:`press`. ``seconds_per_char`` (0.001) is the speech rate of
      ``<Say>``; ``twiml_time_scale`` (0.05) turns TwiML seconds (``<Pause
      length>``, a Gather's ``timeout``, a ``<Play>``, taken as 1 s) into real
      seconds, so Twilio's default 5 s Gather timeout lasts 0.25 s.
    - ``amd_detect_s`` (0.05), ``amd_greeting_s`` (0.1) and
      ``amd_message_end`` ("machine_end_beep"): answering machine detection.
    - ``callback_order`` ("in-order", "reversed" or "shuffled"),
      ``callback_duplicates`` (each status callback sent twice),
      ``callbacks_before_create`` (initiated+ringing sent, and answered, before
      the create response is); :meth:`set_callbacks` overrides them per number.
      ``webhook_timeout_s`` (5.0): how long any webhook may take to answer.

    Scripts: :meth:`set_outcome` (how a number's calls end, who picks up),
    :meth:`fail_number`, :meth:`set_callbacks`, :meth:`press`. Records:
    :attr:`requests`, :meth:`creates`, :meth:`requests_of`,
    :meth:`request_counts` (REST requests per call), :meth:`created_calls`,
    :meth:`webhooks` / :meth:`status_callbacks` / :meth:`gather_requests`
    (what was sent to the application and how it answered),
    :meth:`application_errors`, :meth:`transcript` and :meth:`spoken` (what
    happened on a call's line). :meth:`reset` forgets all of it.
    """

    default_outcome: _Knob[str] = _Knob("completed", _check_outcome)
    ring_s: _Knob[float] = _Knob(0.2, _check_seconds)
    talk_s: _Knob[float] = _Knob(0.3, _check_seconds)
    create_delay_s: _Knob[float] = _Knob(0.0, _check_seconds)
    hang_creates: _Knob[bool] = _Knob(False)
    error_rate_5xx: _Knob[float] = _Knob(0.0, _check_rate)
    error_rate_429: _Knob[float] = _Knob(0.0, _check_rate)
    create_on_5xx: _Knob[bool] = _Knob(True)
    play_twiml: _Knob[bool] = _Knob(False)
    seconds_per_char: _Knob[float] = _Knob(0.001, _check_seconds)
    twiml_time_scale: _Knob[float] = _Knob(0.05, _check_seconds)
    amd_detect_s: _Knob[float] = _Knob(0.05, _check_seconds)
    amd_greeting_s: _Knob[float] = _Knob(0.1, _check_seconds)
    amd_message_end: _Knob[str] = _Knob("machine_end_beep", _check_message_end)
    callback_order: _Knob[str] = _Knob("in-order", check_callback_order)
    callback_duplicates: _Knob[bool] = _Knob(False)
    callbacks_before_create: _Knob[bool] = _Knob(False)
    webhook_timeout_s: _Knob[float] = _Knob(5.0, _check_positive)

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
        self._reported: dict[str, str] = {}
        self._next_failures: dict[str, list[_ApiError]] = {}
        self._requests: list[RecordedRequest] = []
        self._calls: dict[str, _CallRecord] = {}
        self._callback_overrides: dict[str, dict[str, object]] = {}
        self._presses: dict[str, list[_ScriptedPress]] = {}
        self._webhooks: list[Webhook] = []
        self._application_errors: list[ApplicationError] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Separate streams: minting sids must not shift the injected-error
        # sequence, so a seed reproduces the same failures whatever else runs.
        self._error_rng = random.Random(seed)
        self._sid_rng = random.Random(f"sids:{seed}")
        self._callback_rng = random.Random(f"callbacks:{seed}")
        self._sender = WebhookSender(
            auth_token, lambda: self.webhook_timeout_s, self._record_webhook
        )
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
        await self._sender.open()

    async def _close(self) -> None:
        with self._lock:
            tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._sender.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --------------------------------------------------------------- knobs

    def set_outcome(self, phone: str, outcome: str, *, answered_by: str | None = None) -> None:
        """Script how calls to ``phone`` end, and who picks up an answered one.

        ``answered_by`` is one of :data:`ANSWERED_BY` (default: a human). It is
        reported as AnsweredBy only when the call asked for MachineDetection,
        in the words of that mode (see :func:`_detection`), but a machine never
        presses keys either way: ``set_outcome(p, "completed",
        answered_by="machine")``.
        """
        _check_outcome(outcome)
        _check_answered_by(answered_by)
        with self._lock:
            self._outcomes[phone] = (outcome, answered_by)

    def set_callbacks(
        self,
        phone: str,
        *,
        order: str | None = None,
        duplicates: bool | None = None,
        before_create: bool | None = None,
    ) -> None:
        """Override the callback knobs for calls to ``phone`` made from now on, e.g.
        ``set_callbacks(p, order="reversed", duplicates=True)``; None keeps the global
        knob."""
        if order is not None:
            check_callback_order(order)
        with self._lock:
            overrides = self._callback_overrides.setdefault(phone, {})
            for name, value in (
                ("order", order), ("duplicates", duplicates), ("before_create", before_create)
            ):
                if value is not None:
                    overrides[name] = value

    def press(
        self, phone: str, digits: str = "1", *, at_s: float = 0.0, every_call: bool = False
    ) -> None:
        """Script the person at ``phone`` pressing ``digits`` (all at once), ``at_s``
        seconds after their call's TwiML started playing (pickup, or the end of
        synchronous detection): ``press("+14155550100", "1", at_s=0.05)``.

        The press belongs to the call to ``phone`` now playing, else to the next
        one a human answers (every one with ``every_call``); it counts only if a
        ``<Gather>`` is active at that moment (see testing/fake_twilio_play.py).
        A press scripted for a moment already past lands now.
        """
        if not digits or not _DTMF.match(digits):
            raise ValueError(f"digits must be 0-9, * or #, got {digits!r}")
        _check_seconds(at_s)
        if not self.play_twiml:
            raise RuntimeError("calls do not play their TwiML: set play_twiml = True first")
        with self._lock:
            live = [
                record for record in self._calls.values()
                if record.to == phone and record.callee == "human"
                and record.player is not None and record.frozen is None
            ]
            if live and self._loop is not None:
                player = live[-1].player
                assert player is not None
                when = max(player.start + at_s, time.monotonic())
                self._loop.call_soon_threadsafe(player.add_press, when, digits)
                if not every_call:
                    return
            self._presses.setdefault(phone, []).append(_ScriptedPress(digits, at_s, every_call))

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

    def fail_next_creates(self, phone: str, answers: list[tuple[int, int, str]]) -> None:
        """Answer the next creates to ``phone`` with these Twilio errors, one each, in
        order, ``(http_status, code, message)``, creating no call; then create as usual."""
        with self._lock:
            self._next_failures.setdefault(phone, []).extend(
                _ApiError(status, code, message) for status, code, message in answers)

    def report_status(self, phone: str, status: str | None) -> None:
        """Make the REST resource of calls to ``phone`` (create answer, fetch, list,
        update) say ``status`` whatever the call is doing, e.g. a word Twilio does not
        document; None goes back to the call's real status. Callbacks are unchanged."""
        with self._lock:
            if status is None:
                self._reported.pop(phone, None)
            else:
                self._reported[phone] = status

    def reset(self) -> None:
        """Forget calls, records and knob changes, and rewind the error RNG so
        the next test sees the same injected-failure sequence as a fresh fake.
        The sid stream is not rewound so no sid is ever handed out twice."""
        with self._lock:
            self._knobs.clear()
            self._outcomes.clear()
            self._failures.clear()
            self._reported.clear()
            self._next_failures.clear()
            self._requests.clear()
            self._calls.clear()
            self._callback_overrides.clear()
            self._presses.clear()
            self._webhooks.clear()
            self._application_errors.clear()
            self._error_rng = random.Random(self.seed)
            self._callback_rng = random.Random(f"callbacks:{self.seed}")
            tasks, loop = list(self._tasks), self._loop
        if loop is not None:
            for task in tasks:
                loop.call_soon_threadsafe(task.cancel)

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

    def requests_of(
        self, kind: str, *, to: str | None = None, sid: str | None = None
    ) -> list[RecordedRequest]:
        """REST requests of one kind (create, list, fetch, update) in arrival order,
        optionally about one number (a create's or list's ``To``, a fetched or updated
        call's number) or one call: ``requests_of("fetch", sid=call.sid)``."""
        with self._lock:
            numbers = {record.sid: record.to for record in self._calls.values()}
            requests = [_copy_request(r) for r in self._requests if r.kind == kind]
        if sid is not None:
            requests = [r for r in requests if r.sid == sid]
        if to is not None:
            requests = [r for r in requests if _number_of(r, numbers) == to]
        return requests

    def request_counts(self) -> dict[str, RequestCounts]:
        """What each call cost at the REST API, by call sid in creation order:
        ``max(c.gets for c in fake.request_counts().values())``.

        Fetches and updates count by the sid they address. Creates and list
        lookups name a number, not a call, so they go to the call to that number
        they surround: creates to a call from just after the previous call to
        the number was made up to its own (retries and refusals included), list
        lookups from its creation until the next call to the number is made.
        """
        with self._lock:
            calls = list(self._calls.values())
            requests = list(self._requests)
        by_number: dict[str, list[_CallRecord]] = {}
        for record in calls:
            by_number.setdefault(record.to, []).append(record)
        counts: dict[str, RequestCounts] = {}
        for record in calls:
            siblings = by_number[record.to]
            index = siblings.index(record)
            since = siblings[index - 1].created_mono if index else -math.inf
            until = siblings[index + 1].created_mono if index + 1 < len(siblings) else math.inf
            tally = {"create": 0, "fetch": 0, "update": 0, "list": 0}
            for request in requests:
                kind = request.kind
                if kind in ("fetch", "update"):
                    mine = request.sid == record.sid
                elif kind == "create":
                    mine = request.form.get("To") == [record.to] and (
                        since < request.at <= record.created_mono
                    )
                elif kind == "list":
                    mine = request.query.get("To") == [record.to] and (
                        record.created_mono <= request.at < until
                    )
                else:
                    mine = False
                tally[kind] += mine
            counts[record.sid] = RequestCounts(
                creates=tally["create"], fetches=tally["fetch"], updates=tally["update"],
                lists=tally["list"],
            )
        return counts

    def webhooks(
        self, kind: str | None = None, *, to: str | None = None, sid: str | None = None
    ) -> list[Webhook]:
        """Every request the fake made to the application, in the order answers came
        back (or failed), optionally of one kind (status, gather, twiml, redirect, amd)
        for one number or call."""
        with self._lock:
            hooks = list(self._webhooks)
        return [
            hook for hook in hooks
            if (kind is None or hook.kind == kind)
            and (to is None or hook.to == to)
            and (sid is None or hook.call_sid == sid)
        ]

    def status_callbacks(self, *, to: str | None = None, sid: str | None = None) -> list[Webhook]:
        """Status callbacks sent: ``[(w.event, w.status) for w in fake.status_callbacks(to=p)]``."""
        return self.webhooks("status", to=to, sid=sid)

    def gather_requests(self, *, to: str | None = None, sid: str | None = None) -> list[Webhook]:
        """Gather action requests sent: ``w.params["Digits"]``, and ``w.body``, the TwiML
        the application answered (which the call then played)."""
        return self.webhooks("gather", to=to, sid=sid)

    def application_errors(
        self, *, to: str | None = None, sid: str | None = None
    ) -> list[ApplicationError]:
        """Calls that ended on "an application error has occurred": assert ``== []``."""
        with self._lock:
            errors = list(self._application_errors)
        return [
            error for error in errors
            if (to is None or error.to == to) and (sid is None or error.call_sid == sid)
        ]

    def transcript(self, sid: str) -> list[PlayEvent]:
        """What happened on one call's line while it played TwiML, in time order."""
        with self._lock:
            record = self._calls.get(sid)
            events = [] if record is None else list(record.transcript)
        return sorted(events, key=lambda event: event.at_s)

    def spoken(self, sid: str) -> list[str]:
        """The ``<Say>`` texts the callee heard, in order (an interrupted one is marked)."""
        return [event.detail for event in self.transcript(sid) if event.kind == "say"]

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
            _CREATED_SID.set(None)
            response = self._authenticate(request) or await handler(request)
            sid = _CREATED_SID.get() or request.match_info.get("sid")
            with self._lock:
                # Found by identity: reset() may have emptied the list meanwhile.
                for index, recorded in enumerate(self._requests):
                    if recorded is entry:
                        self._requests[index] = dataclasses.replace(
                            entry, status=response.status, sid=sid
                        )
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
        if record is not None:
            _CREATED_SID.set(record.sid)
            self._follow(record)
            if record.callbacks.before_create and record.outbox is not None:
                # Twilio dials while the answer is still on its way back. Both
                # fire now, so the call's own progress cannot send them again.
                early = [self._callback(record, event) for event in ("initiated", "ringing")]
                for callback in early:
                    if callback is not None:
                        await record.outbox.deliver_now(callback)
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
        if any(event not in _CALLBACK_EVENTS for event in form.get("StatusCallbackEvent", [])):
            return _ApiError(400, 21626, "Invalid 'StatusCallbackEvent'")
        detection = _first(form, "MachineDetection")
        if detection is not None and detection not in _AMD_MODES:
            # Twilio refuses other values; the error code here is a guess.
            return _ApiError(400, 20001, f"MachineDetection must be one of {list(_AMD_MODES)}")
        scripted = self._next_failures.get(to)
        if scripted:
            return scripted.pop(0)
        return self._failures.get(to)

    def _new_call(self, form: dict[str, list[str]], now: float) -> _CallRecord:
        to = _first(form, "To") or ""
        outcome, scripted = self._outcomes.get(to, (self.default_outcome, None))
        machine_detection = _first(form, "MachineDetection")
        callee: str | None = None
        answered_by: str | None = None
        detect_s = 0.0
        if outcome == "completed":
            callee, answered_by = _detection(scripted, machine_detection, self.amd_message_end)
            if machine_detection is not None:
                greeting = callee == "machine" and machine_detection == "DetectMessageEnd"
                detect_s = self.amd_detect_s + (self.amd_greeting_s if greeting else 0.0)
        status_callback = _first(form, "StatusCallback")
        overrides = self._callback_overrides.get(to, {})
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
            status_callback=status_callback,
            # Twilio's default when StatusCallback comes without events.
            status_callback_events=list(form.get("StatusCallbackEvent", ["completed"])),
            machine_detection=machine_detection,
            method=_method(_first(form, "Method")),
            callee=callee,
            detect_s=detect_s,
            async_amd=(_first(form, "AsyncAmd") or "").lower() == "true",
            amd_callback=_first(form, "AsyncAmdStatusCallback"),
            amd_callback_method=_method(_first(form, "AsyncAmdStatusCallbackMethod")),
            status_callback_method=_method(_first(form, "StatusCallbackMethod")),
            callbacks=CallbackPlan(
                order=cast(str, overrides.get("order", self.callback_order)),
                duplicates=cast(bool, overrides.get("duplicates", self.callback_duplicates)),
                before_create=cast(
                    bool, overrides.get("before_create", self.callbacks_before_create)
                ),
            ),
            plays=self.play_twiml and outcome == "completed",
            timing=PlayTiming(self.seconds_per_char, self.twiml_time_scale),
        )
        if status_callback is not None:
            record.outbox = CallbackOutbox(
                record.callbacks,
                self._callback_rng,
                functools.partial(self._deliver, record),
                self._track,
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
            ended = False
            if status is not None and moment.status in ("queued", "ringing"):
                # Both "canceled" and "completed" abort a call not yet answered.
                record.frozen = _Moment("canceled", moment.start, t, "0", t, None)
                ended = True
            elif status == "completed" and moment.status == "in-progress":
                record.hang_up(t)
                ended = True
            # "canceled" on an answered call is accepted and has no effect, as
            # Twilio documents for that status.
            if twiml is not None:
                record.twiml, record.url = twiml, None
            elif url is not None:
                record.url, record.twiml = url, None
            if url is not None:
                record.method = _method(_first(form, "Method"))
            if ended:
                self._stop(record)
                self._post(record, "completed")
            elif (twiml or url) and record.player is not None:
                self._redirect(record)
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

    # -------------------------------------------------------- call progress

    def _follow(self, record: _CallRecord) -> None:
        """Start telling the application about a new call, if anything will."""
        if record.outbox is not None or record.plays or record.amd_callback is not None:
            self._spawn(record, self._progress(record))

    def _track(self, task: asyncio.Task[None]) -> None:
        with self._lock:
            self._tasks.add(task)

        def forget(done: asyncio.Task[None]) -> None:
            with self._lock:
                self._tasks.discard(done)

        task.add_done_callback(forget)

    def _spawn(self, record: _CallRecord, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._track(task)
        with self._lock:
            record.tasks.add(task)
        task.add_done_callback(record.tasks.discard)

    def _stop(self, record: _CallRecord) -> None:
        """The call ended by an update: nothing more happens on its line."""
        current = asyncio.current_task()
        for task in list(record.tasks):
            if task is not current:
                task.cancel()

    async def _progress(self, record: _CallRecord) -> None:
        await _sleep_to(record, record.ring_s / 2)
        self._post(record, "initiated")
        self._post(record, "ringing")
        await _sleep_to(record, record.ring_s)
        if record.outcome != "completed":
            self._post(record, "completed")
            return
        self._post(record, "answered")
        if record.async_amd and record.amd_callback is not None:
            self._spawn(record, self._report_detection(record))
        if record.plays:
            await _sleep_to(record, record.play_offset)
            await self._play(record)
        else:
            await _sleep_to(record, record.ring_s + record.talk_s)
            self._post(record, "completed")

    async def _play(
        self, record: _CallRecord, handover: list[tuple[float, str]] | None = None
    ) -> None:
        """Play the call's TwiML to its end; a redirect (``handover``) plays from now."""
        with self._lock:
            assert record.timing is not None
            start = record.created_mono + record.play_offset
            resume = None if handover is None else time.monotonic()
            player = Player(_CallHost(self, record), record.timing, start, resume=resume)
            record.player = player
            record.play_task = asyncio.current_task()
            presses = [(start + p.at_s, p.digits) for p in self._claim_presses(record)]
            twiml, url, method = record.twiml, record.url, record.method
        for when, digits in [*(handover or []), *presses]:
            player.add_press(when, digits)
        end = await player.run(twiml, url, method)
        with self._lock:
            if record.frozen is not None:
                return  # hung up meanwhile by an update
            record.hang_up(end - record.created_mono)
        self._post(record, "completed")

    def _redirect(self, record: _CallRecord) -> None:
        """A REST update gave an answered call new TwiML: play it from now on."""
        player = record.player
        assert player is not None
        handover = player.take_presses()
        if record.play_task is not None:
            record.play_task.cancel()
        self._spawn(record, self._play(record, handover))

    def _claim_presses(self, record: _CallRecord) -> list[_ScriptedPress]:
        if record.callee != "human":
            return []
        scripted = self._presses.get(record.to, [])
        self._presses[record.to] = [press for press in scripted if press.every_call]
        return scripted

    async def _report_detection(self, record: _CallRecord) -> None:
        await _sleep_to(record, record.ring_s + record.detect_s)
        with self._lock:
            if record.frozen is not None or record.answered_by is None:
                return
            assert record.amd_callback is not None
            params = {
                "AccountSid": self.account_sid,
                "CallSid": record.sid,
                "AnsweredBy": record.answered_by,
                "MachineDetectionDuration": str(round(record.detect_s * 1000)),
            }
        await self._sender.send(
            kind="amd", call_sid=record.sid, to=record.to, url=record.amd_callback,
            method=record.amd_callback_method, params=params,
        )

    def _post(self, record: _CallRecord, event: str) -> None:
        callback = self._callback(record, event)
        if callback is not None and record.outbox is not None:
            record.outbox.post(callback)

    def _callback(self, record: _CallRecord, event: str) -> OutgoingCallback | None:
        """Fire ``event`` once; the callback to send, if the call asked for it."""
        with self._lock:
            if event in record.fired:
                return None
            record.fired.add(event)
            moment = record.at(time.monotonic())
            if event != "completed" and moment.status in _TERMINAL:
                return None  # ended by an update before it got this far
            if record.status_callback is None or event not in record.status_callback_events:
                return None
            params = self._call_params(record, _EVENT_STATUS.get(event, moment.status), moment)
            params["CallbackSource"] = "call-progress-events"
            params["SequenceNumber"] = str(record.sequence)
            params["Timestamp"] = format_datetime(datetime.now(UTC))
            record.sequence += 1
            if event == "completed":
                seconds = int(moment.duration or "0")
                params["CallDuration"] = str(seconds)
                params["Duration"] = str(math.ceil(seconds / 60))
                params["SipResponseCode"] = _SIP_RESPONSE[moment.status]
            return OutgoingCallback(
                event, record.status_callback, record.status_callback_method, params
            )

    async def _deliver(
        self, record: _CallRecord, callback: OutgoingCallback, duplicate: bool
    ) -> None:
        await self._sender.send(
            kind="status", call_sid=record.sid, to=record.to, url=callback.url,
            method=callback.method, params=callback.params, token=callback.token,
            event=callback.event, duplicate=duplicate,
        )

    def _call_params(
        self, record: _CallRecord, call_status: str, moment: _Moment
    ) -> dict[str, str]:
        """The parameters Twilio sends with every request about a call."""
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": record.sid,
            "CallStatus": call_status,
            "Called": record.to,
            "Caller": record.from_,
            "Direction": "outbound-api",
            "From": record.from_,
            "To": record.to,
        }
        if record.machine_detection is not None and moment.answered_by is not None:
            params["AnsweredBy"] = moment.answered_by
        return params

    def _record_webhook(self, webhook: Webhook) -> None:
        with self._lock:
            self._webhooks.append(webhook)

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
            "status": self._reported.get(record.to, moment.status),
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


class _CallHost:
    """One call's side of its TwiML play: signed requests, the transcript, errors."""

    def __init__(self, fake: FakeTwilio, record: _CallRecord) -> None:
        self._fake = fake
        self._record = record

    async def request(self, kind: str, url: str, method: str, extra: dict[str, str]) -> Fetched:
        record = self._record
        with self._fake._lock:
            moment = record.at(time.monotonic())
            params = self._fake._call_params(record, "in-progress", moment) | extra
        hook = await self._fake._sender.send(
            kind=kind, call_sid=record.sid, to=record.to, url=url, method=method, params=params
        )
        return Fetched(hook.status, hook.body, hook.content_type, hook.error)

    def log(self, event: PlayEvent) -> None:
        with self._fake._lock:
            self._record.transcript.append(event)

    def application_error(self, url: str | None, code: int, reason: str, at_s: float) -> None:
        error = ApplicationError(self._record.sid, self._record.to, url, code, reason, at_s)
        with self._fake._lock:
            self._fake._application_errors.append(error)


@dataclass(frozen=True)
class _ScriptedPress:
    digits: str
    at_s: float
    every_call: bool


async def _sleep_to(record: _CallRecord, offset: float) -> None:
    """Sleep until ``offset`` seconds after the call was created."""
    delay = record.created_mono + offset - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _method(raw: str | None) -> str:
    return "GET" if (raw or "").upper() == "GET" else "POST"


def _number_of(request: RecordedRequest, numbers: Mapping[str, str]) -> str | None:
    if request.kind == "create":
        return _first(request.form, "To")
    if request.kind == "list":
        return _first(request.query, "To")
    return numbers.get(request.sid or "")


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
        async_amd=record.async_amd,
        callee=record.callee,
        plays_twiml=record.plays,
    )
