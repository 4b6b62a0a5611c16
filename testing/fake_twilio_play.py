"""The fake Twilio's TwiML player: what the callee hears, and where a keypress lands.

Time model. The player walks a document verb by verb on a *planned* clock: each verb
starts where the previous one ended. ``<Say>`` lasts its text's length times
``seconds_per_char`` (times ``loop``); ``<Pause length>``, ``<Play>`` (taken as one second
of audio: the fake cannot know a file's length) and a ``<Gather>``'s ``timeout`` are Twilio
seconds times ``time_scale``. Only a request to the application (a Gather's action, a
``<Redirect>``, the call's ``Url``) moves the plan, to the moment its answer arrived. The
player sleeps in real time to each planned moment, so the call's status and callbacks line
up with what is heard, while where a keypress lands depends on the plan alone, never on how
late the event loop woke up.

Keypresses are (moment, digits) pairs. One lands only in an active ``<Gather>`` that
accepts DTMF (``input`` contains ``dtmf``, the default): from the moment the Gather starts,
through its nested ``<Say>``/``<Play>``/``<Pause>`` (a key interrupts them: barge-in), until
``timeout`` after they end, or after the last key. Any other keypress -- during a ``<Say>``
outside a Gather, while the application is being asked for TwiML, after the call ended --
is ignored, as the keypad is on a real call, and logged as ``press-ignored``.

A Gather completes on ``numDigits`` digits, on its ``finishOnKey`` (default ``#``, not part
of ``Digits``) or on ``timeout`` after the last digit, and then requests its ``action``
(default: the current document's URL) with ``Digits`` and ``FinishedOnKey``. With no digit
-- a timeout, or the finish key pressed first -- Twilio requests nothing and goes on with the
verb after the Gather, unless ``actionOnEmptyResult="true"``, which requests the action with
an empty ``Digits``. The answer's TwiML replaces the document; verbs after the Gather are
never reached. An answer that is missing (refused, timed out), not 2xx, not XML
(``Content-Type`` without ``xml``: stricter than Twilio, which may read text/plain aloud) or
not a ``<Response>`` document is an *application error*: the callee hears "We are sorry, an
application error has occurred. Goodbye." and the call ends, as on Twilio.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit

__all__ = [
    "APPLICATION_ERROR",
    "ApplicationError",
    "Document",
    "Fetched",
    "PlayEvent",
    "PlayHost",
    "PlayTiming",
    "Player",
    "TwimlError",
]

APPLICATION_ERROR = "We are sorry, an application error has occurred. Goodbye."
# Twilio's debugger codes for what ends a call with the application-error message.
INVALID_URL = 11100
HTTP_RETRIEVAL_FAILURE = 11200
HTTP_CONNECTION_FAILURE = 11205
DOCUMENT_PARSE_FAILURE = 12100
INVALID_CONTENT_TYPE = 12300

_AUDIO = frozenset({"Say", "Play", "Pause"})
_PLAY_TWILIO_S = 1.0
_DEFAULT_GATHER_TIMEOUT = 5.0
# loop="0" means "until the call ends"; Twilio caps it at 1,000 repetitions.
_LOOP_FOREVER = 1000


class TwimlError(ValueError):
    """A document Twilio could not execute."""


@dataclass(frozen=True)
class PlayEvent:
    """One thing that happened on the line, ``at_s`` seconds after the TwiML started.

    ``kind``: ``say``/``play``/``pause`` (heard; an interrupted one says so in ``detail``),
    ``gather`` (one started), ``digits`` (a Gather completed with input), ``gather-timeout``
    (it fell through), ``press-ignored``, ``request`` (the application was asked for
    TwiML), ``application-error``, ``hangup`` (``<Hangup/>``), ``end`` (the TwiML ran
    out), ``skipped`` (a verb the fake does not model).
    """

    at_s: float
    kind: str
    detail: str


@dataclass(frozen=True)
class ApplicationError:
    """A call that ended on "an application error has occurred", and why (Twilio's code)."""

    call_sid: str
    to: str
    url: str | None
    code: int
    reason: str
    at_s: float


@dataclass(frozen=True)
class Fetched:
    """The application's answer to a request for TwiML; ``status`` 0: no answer."""

    status: int
    body: str
    content_type: str
    error: str | None


@dataclass(frozen=True)
class PlayTiming:
    seconds_per_char: float
    time_scale: float


class PlayHost(Protocol):
    """What the player needs from the call it plays on."""

    async def request(self, kind: str, url: str, method: str, extra: dict[str, str]) -> Fetched:
        """Send the call's signed webhook of this kind, with ``extra`` parameters."""
        ...

    def log(self, event: PlayEvent) -> None: ...

    def application_error(self, url: str | None, code: int, reason: str, at_s: float) -> None: ...


@dataclass(frozen=True)
class Document:
    """A parsed ``<Response>`` and the URL it came from (None for inline ``Twiml``)."""

    verbs: tuple[ET.Element, ...]
    url: str | None

    @classmethod
    def parse(cls, text: str, url: str | None) -> Document:
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise TwimlError(f"not XML: {exc}") from exc
        if root.tag != "Response":
            raise TwimlError(f"the root element is <{root.tag}>, not <Response>")
        return cls(tuple(root), url)

    def resolve(self, target: str | None) -> str | None:
        """The absolute URL a verb points at: its own if absolute, else relative to this
        document's URL (an empty one means the document itself). None if nothing to
        resolve against: Twilio documents no behaviour for a relative URL in inline
        ``Twiml``; the fake treats it as an invalid URL (an application error)."""
        target = (target or "").strip()
        if not target:
            return self.url
        if urlsplit(target).scheme in ("http", "https"):
            return target
        return None if self.url is None else urljoin(self.url, target)


@dataclass(frozen=True)
class _Press:
    when: float
    digits: str


def _number(raw: str | None, default: float) -> float:
    try:
        value = float(raw) if raw is not None else default
    except ValueError:
        return default
    return value if math.isfinite(value) and value >= 0 else default


def _loops(raw: str | None) -> int:
    try:
        count = int(raw) if raw is not None else 1
    except ValueError:
        return 1
    if count == 0:
        return _LOOP_FOREVER
    return count if count > 0 else 1


def _text(verb: ET.Element) -> str:
    return " ".join("".join(verb.itertext()).split())


def _describe(verb: ET.Element) -> str:
    if verb.tag == "Pause":
        return f"length={verb.get('length', '1')}"
    return _text(verb)


class Player:
    """Plays one call's TwiML; ``run`` returns the (planned) moment the call ends.

    ``start`` is the moment the call's TwiML started (pickup, or the end of synchronous
    answering machine detection), which transcript offsets count from; ``resume`` is
    where this player's plan begins when it takes over from another (a REST redirect).
    Keypress moments are absolute ``time.monotonic()`` values.
    """

    def __init__(
        self, host: PlayHost, timing: PlayTiming, start: float, *, resume: float | None = None
    ) -> None:
        self._host = host
        self._timing = timing
        self.start = start
        self._cursor = start if resume is None else resume
        self._pending: list[_Press] = []
        self._poke = asyncio.Event()

    def add_press(self, when: float, digits: str) -> None:
        """Script a keypress; call on the player's event loop."""
        bisect.insort(self._pending, _Press(when, digits), key=lambda press: press.when)
        self._poke.set()

    def take_presses(self) -> list[tuple[float, str]]:
        """Hand the presses still to come over to another player (a REST redirect)."""
        pending, self._pending = self._pending, []
        return [(press.when, press.digits) for press in pending]

    async def run(self, twiml: str | None, url: str | None, method: str) -> float:
        document: Document | None
        if twiml is not None:
            try:
                document = Document.parse(twiml, None)
            except TwimlError as exc:
                await self._fail(None, DOCUMENT_PARSE_FAILURE, str(exc))
                document = None
        else:
            document = await self._fetch("twiml", url, method, {})
        while document is not None:
            document = await self._play(document)
        self._ignore_before(math.inf, "the call had ended")
        return self._cursor

    # ------------------------------------------------------------------ verbs

    async def _play(self, document: Document) -> Document | None:
        self._ignore_before(self._cursor, "no TwiML was playing (waiting for the application)")
        for verb in document.verbs:
            if verb.tag in _AUDIO:
                await self._hear(verb)
            elif verb.tag == "Gather":
                submitted = await self._gather(verb)
                if submitted is not None:
                    digits, finished_on = submitted
                    extra = {"Digits": digits, "FinishedOnKey": finished_on}
                    action = document.resolve(verb.get("action"))
                    return await self._fetch("gather", action, verb.get("method", "POST"), extra)
            elif verb.tag == "Redirect":
                target = document.resolve(verb.text)
                return await self._fetch("redirect", target, verb.get("method", "POST"), {})
            elif verb.tag in ("Hangup", "Reject"):
                self._log("hangup", f"<{verb.tag}/>")
                return None
            else:
                self._log("skipped", f"<{verb.tag}> is not modelled by the fake")
        self._log("end", "the TwiML ran out")
        return None

    async def _hear(self, verb: ET.Element) -> None:
        end = self._cursor + self._duration(verb)
        self._log(verb.tag.lower(), _describe(verb))
        await self._sleep_until(end)
        self._ignore_before(end, f"no Gather was active (during <{verb.tag}>)")
        self._cursor = end

    async def _gather(self, verb: ET.Element) -> tuple[str, str] | None:
        """Collect digits; (Digits, FinishedOnKey) to submit, or None to fall through."""
        start = self._cursor
        spans: list[tuple[ET.Element, float, float]] = []
        for child in verb:
            if child.tag in _AUDIO:
                begin = spans[-1][2] if spans else start
                spans.append((child, begin, begin + self._duration(child)))
        timeout = _number(verb.get("timeout"), _DEFAULT_GATHER_TIMEOUT) * self._timing.time_scale
        num_digits = int(_number(verb.get("numDigits"), 0)) or None
        finish_key = verb.get("finishOnKey", "#")[:1]
        accepts_dtmf = "dtmf" in verb.get("input", "dtmf").split()
        self._log("gather", " ".join(f'{k}="{v}"' for k, v in sorted(verb.attrib.items())))
        deadline = (spans[-1][2] if spans else start) + timeout
        digits, finished_on, first_key_at, done = "", "", None, False
        while not done:
            press = self._pending[0] if self._pending else None
            if press is None or press.when > deadline:
                if await self._wait_until(deadline):
                    continue  # a keypress was scripted meanwhile: look again
                self._cursor = max(self._cursor, deadline)
                break
            if press.when > time.monotonic() and await self._wait_until(press.when):
                continue
            self._pending.remove(press)
            if not accepts_dtmf:
                self._log("press-ignored", f"{press.digits!r}: this Gather takes speech only",
                          at=press.when)
                continue
            first_key_at = press.when if first_key_at is None else first_key_at
            self._cursor = press.when
            for index, key in enumerate(press.digits):
                if finish_key and key == finish_key:
                    finished_on, done = key, True
                else:
                    digits += key
                    done = num_digits is not None and len(digits) >= num_digits
                if done:
                    if rest := press.digits[index + 1 :]:
                        self._log("press-ignored", f"{rest!r}: the Gather had completed",
                                  at=press.when)
                    break
            deadline = press.when + timeout
        for child, begin, end in spans:
            if first_key_at is not None and begin >= first_key_at:
                break
            cut = first_key_at is not None and first_key_at < end
            heard = _describe(child) + (" [interrupted by a keypress]" if cut else "")
            self._log(child.tag.lower(), heard, at=begin)
        action_on_empty = verb.get("actionOnEmptyResult", "false").lower() == "true"
        if digits or action_on_empty:
            ended_by = f", finished on {finished_on!r}" if finished_on else ""
            self._log("digits", f"{digits!r}{ended_by}")
            return digits, finished_on
        why = f"{finished_on!r} pressed before any digit" if finished_on else "no input"
        self._log("gather-timeout", f"{why}: on to the next verb")
        return None

    # ------------------------------------------------------------ requests

    async def _fetch(
        self, kind: str, url: str | None, method: str, extra: dict[str, str]
    ) -> Document | None:
        if url is None:
            await self._fail(None, INVALID_URL, f"no absolute URL for the {kind} request")
            return None
        method = "GET" if method.upper() == "GET" else "POST"
        self._log("request", f"{kind}: {method} {url}")
        fetched = await self._host.request(kind, url, method, extra)
        self._cursor = max(self._cursor, time.monotonic())
        if fetched.status == 0:
            failure = HTTP_CONNECTION_FAILURE, f"no answer: {fetched.error}"
        elif not 200 <= fetched.status < 300:
            failure = HTTP_RETRIEVAL_FAILURE, f"answered {fetched.status}"
        elif "xml" not in fetched.content_type:
            failure = INVALID_CONTENT_TYPE, f"Content-Type {fetched.content_type!r} is not XML"
        else:
            try:
                return Document.parse(fetched.body, url)
            except TwimlError as exc:
                failure = DOCUMENT_PARSE_FAILURE, str(exc)
        await self._fail(url, *failure)
        return None

    async def _fail(self, url: str | None, code: int, reason: str) -> None:
        self._host.application_error(url, code, reason, self._cursor - self.start)
        self._log("application-error", f"{code}: {reason}")
        self._log("say", APPLICATION_ERROR)
        end = self._cursor + len(APPLICATION_ERROR) * self._timing.seconds_per_char
        await self._sleep_until(end)
        self._cursor = end
        return None

    # ---------------------------------------------------------------- time

    def _duration(self, verb: ET.Element) -> float:
        if verb.tag == "Say":
            return len(_text(verb)) * self._timing.seconds_per_char * _loops(verb.get("loop"))
        if verb.tag == "Play":
            return _PLAY_TWILIO_S * self._timing.time_scale * _loops(verb.get("loop"))
        return _number(verb.get("length"), 1.0) * self._timing.time_scale

    def _ignore_before(self, moment: float, reason: str) -> None:
        while self._pending and self._pending[0].when < moment:
            press = self._pending.pop(0)
            self._log("press-ignored", f"{press.digits!r}: {reason}", at=press.when)

    def _log(self, kind: str, detail: str, *, at: float | None = None) -> None:
        moment = self._cursor if at is None else at
        self._host.log(PlayEvent(round(moment - self.start, 6), kind, detail))

    @staticmethod
    async def _sleep_until(moment: float) -> None:
        delay = moment - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _wait_until(self, moment: float) -> bool:
        """Sleep until ``moment``; True if a keypress was scripted before it came."""
        self._poke.clear()
        delay = moment - time.monotonic()
        if delay <= 0:
            return False
        try:
            await asyncio.wait_for(self._poke.wait(), delay)
        except TimeoutError:
            return False
        return True
