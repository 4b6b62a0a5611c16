"""The fake Twilio behaves as Twilio does towards the application: signed status callbacks
(in order, reversed, duplicated, before the create response), TwiML played with its
Gather, answering machine detection, hang-ups, and per-call request counts.

Calls are created with the real twilio client; the application is a tiny aiohttp receiver
on loopback that records what it got and answers what the test scripts. Signatures are
checked with twilio-python's own ``RequestValidator.validate``, as an application would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import VoiceResponse

from testing.fake_twilio import FakeTwilio
from testing.fake_twilio_play import APPLICATION_ERROR
from tests.helpers import wait_for

PHONE = "+14155550100"
OTHER = "+14155550101"
FROM = "+15005550006"
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]
INTRO = "This is an alert from voice alert. The primary database is down."  # 64 chars


@dataclass(frozen=True)
class Hit:
    path: str
    url: str
    method: str
    form: dict[str, str]
    headers: dict[str, str]
    at: float


class Receiver:
    """The application's side: records every webhook, answers what the test scripted
    (``answers[path] = (status, twiml)``; default 204, no body) after ``delay_s``."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.answers: dict[str, tuple[int, str]] = {}
        self.delay_s = 0.0
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        source = await request.post() if request.method == "POST" else request.query
        self.hits.append(Hit(
            path=request.path,
            # As the application rebuilds it: its public URL + the raw path and query.
            url=self.url(request.raw_path),
            method=request.method,
            form={key: str(value) for key, value in source.items()},
            headers=dict(request.headers),
            at=time.monotonic(),
        ))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, twiml = self.answers.get(request.path, (204, ""))
        if twiml:
            return web.Response(status=status, text=twiml, content_type="text/xml")
        return web.Response(status=status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = Receiver()
    await app.start()
    yield app
    await app.stop()


@pytest.fixture
async def client(fake_twilio: FakeTwilio) -> AsyncIterator[Any]:
    http = AsyncTwilioHttpClient(timeout=5)
    twilio = Client(
        fake_twilio.account_sid, fake_twilio.auth_token, http_client=http,
        environment={"VOICEALERT": "1"},
    )
    twilio.api.base_url = fake_twilio.base_url
    yield twilio
    await http.close()


def signed_by_twilio(fake: FakeTwilio, hit: Hit) -> bool:
    """What the application checks: the X-Twilio-Signature over the URL it was given."""
    validator = RequestValidator(fake.auth_token)
    params = hit.form if hit.method == "POST" else {}
    return bool(validator.validate(hit.url, params, hit.headers.get("X-Twilio-Signature", "")))


def closed_port_url(path: str) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def alert_twiml(action: str, *, before: str = INTRO, gather: str = "Press 1 to acknowledge.",
                **gather_attrs: Any) -> str:
    response = VoiceResponse()
    if before:
        response.say(before)
    options = {"num_digits": 1, **gather_attrs}
    with response.gather(action=action, **options) as prompt:
        prompt.say(gather)
    response.say("Goodbye.")
    return str(response.to_xml())


def twiml(*says: str, hangup: bool = False) -> str:
    response = VoiceResponse()
    for text in says:
        response.say(text)
    if hangup:
        response.hangup()
    return str(response.to_xml())


async def ended(client: Any, sid: str) -> str:
    call = await client.calls(sid).fetch_async()
    return str(call.status)


async def wait_until_ended(fake: FakeTwilio, sid: str, timeout: float = 5.0) -> str:  # noqa: ASYNC109
    async def done() -> bool:
        return any(c.sid == sid and c.status in ("completed", "canceled", "no-answer", "busy",
                                                 "failed") for c in fake.created_calls())

    await wait_for(done, timeout=timeout, what=f"call {sid} ended")
    return next(c.status for c in fake.created_calls() if c.sid == sid)


async def wait_for_hits(receiver: Receiver, path: str, count: int) -> list[Hit]:
    async def arrived() -> bool:
        return len(receiver.on(path)) >= count

    await wait_for(arrived, timeout=5, what=f"{count} requests on {path}")
    return receiver.on(path)


# ------------------------------------------------------------------ status callbacks


async def test_status_callbacks_are_signed_over_the_given_url_and_follow_the_call(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status?call=42"), status_callback_event=ALL_EVENTS,
    )
    hits = await wait_for_hits(receiver, "/status", 4)

    assert all(signed_by_twilio(fake_twilio, hit) for hit in hits)
    assert all(hit.url == receiver.url("/status?call=42") for hit in hits)
    forged = dataclasses.replace(hits[0], form={**hits[0].form, "CallStatus": "completed"})
    assert not signed_by_twilio(fake_twilio, forged)
    assert [h.form["CallStatus"] for h in hits] == [
        "initiated", "ringing", "in-progress", "completed"
    ]
    assert [h.form["SequenceNumber"] for h in hits] == ["0", "1", "2", "3"]
    first = hits[0].form
    assert first["CallSid"] == call.sid
    assert (first["AccountSid"], first["To"], first["From"]) == (
        fake_twilio.account_sid, PHONE, FROM
    )
    assert (first["Direction"], first["ApiVersion"], first["CallbackSource"]) == (
        "outbound-api", "2010-04-01", "call-progress-events"
    )
    stamps = [parsedate_to_datetime(h.form["Timestamp"]) for h in hits]
    assert stamps == sorted(stamps)
    final = hits[-1].form
    assert final["CallDuration"] == "1"
    assert final["SipResponseCode"] == "200"
    assert "CallDuration" not in hits[2].form
    assert "AnsweredBy" not in final  # no machine detection was asked for
    recorded = fake_twilio.status_callbacks(sid=call.sid)
    assert [(w.event, w.status) for w in recorded] == [(e, 204) for e in ALL_EVENTS]


async def test_status_callback_without_events_sends_only_completed_and_get_puts_params_in_query(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status"), status_callback_method="GET",
    )
    (hit,) = await wait_for_hits(receiver, "/status", 1)
    await asyncio.sleep(0.1)
    assert len(receiver.on("/status")) == 1
    assert hit.method == "GET"
    assert hit.form["CallStatus"] == "completed"
    assert signed_by_twilio(fake_twilio, hit)


async def test_unanswered_call_reports_its_final_status_without_answered(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.set_outcome(PHONE, "no-answer")
    await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    hits = await wait_for_hits(receiver, "/status", 3)
    await asyncio.sleep(0.1)
    assert [h.form["CallStatus"] for h in receiver.on("/status")] == [
        "initiated", "ringing", "no-answer"
    ]
    assert (hits[-1].form["CallDuration"], hits[-1].form["SipResponseCode"]) == ("0", "487")


async def test_reversed_callbacks_arrive_newest_first_once_the_call_ends(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.callback_order = "reversed"
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    hits = await wait_for_hits(receiver, "/status", 4)
    assert [h.form["CallStatus"] for h in hits] == [
        "completed", "in-progress", "ringing", "initiated"
    ]
    assert [h.form["SequenceNumber"] for h in hits] == ["3", "2", "1", "0"]
    assert hits[0].at >= fake_twilio.created_calls()[0].created_monotonic + 0.5  # ring + talk
    assert await ended(client, call.sid) == "completed"


async def test_per_number_override_shuffles_one_number_and_leaves_the_other_in_order(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.set_callbacks(PHONE, order="shuffled")
    for phone in (PHONE, OTHER):
        await client.calls.create_async(
            to=phone, from_=FROM, twiml=twiml("Hello."),
            status_callback=receiver.url(f"/status/{phone[-3:]}"),
            status_callback_event=ALL_EVENTS,
        )
    shuffled = await wait_for_hits(receiver, f"/status/{PHONE[-3:]}", 4)
    in_order = await wait_for_hits(receiver, f"/status/{OTHER[-3:]}", 4)
    assert sorted(h.form["SequenceNumber"] for h in shuffled) == ["0", "1", "2", "3"]
    assert [h.form["SequenceNumber"] for h in in_order] == ["0", "1", "2", "3"]
    # Seeded: the same permutation every run, and not the identity.
    assert [h.form["SequenceNumber"] for h in shuffled] != ["0", "1", "2", "3"]


async def test_duplicated_callbacks_are_each_sent_twice_with_one_idempotency_token(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.callback_duplicates = True
    await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    hits = await wait_for_hits(receiver, "/status", 8)
    assert [h.form["SequenceNumber"] for h in hits] == ["0", "0", "1", "1", "2", "2", "3", "3"]
    for first, second in zip(hits[::2], hits[1::2], strict=True):
        assert first.form == second.form
        token = first.headers["I-Twilio-Idempotency-Token"]
        assert token == second.headers["I-Twilio-Idempotency-Token"]
        assert signed_by_twilio(fake_twilio, second)
    assert [w.duplicate for w in fake_twilio.status_callbacks()] == [False, True] * 4


async def test_before_create_callbacks_are_answered_before_the_create_returns(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.callbacks_before_create = True
    fake_twilio.ring_s = 1.0  # answered comes long after the create returned
    receiver.delay_s = 0.1
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    returned = time.monotonic()
    assert call.status == "queued"  # the create answer still reflects creation
    early = receiver.on("/status")
    assert [h.form["CallStatus"] for h in early] == ["initiated", "ringing"]
    assert [w.status for w in fake_twilio.status_callbacks()] == [204, 204]  # both answered
    hits = await wait_for_hits(receiver, "/status", 4)
    assert [h.form["SequenceNumber"] for h in hits] == ["0", "1", "2", "3"]
    assert all(h.at > returned for h in hits[2:])


async def test_failing_or_unreachable_callback_targets_are_recorded_and_never_retried(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/status"] = (500, "")
    fake_twilio.webhook_timeout_s = 0.5
    refused = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    down = await client.calls.create_async(
        to=OTHER, from_=FROM, twiml=twiml("Hello."),
        status_callback=closed_port_url("/status"), status_callback_event=ALL_EVENTS,
    )
    for sid in (refused.sid, down.sid):
        await wait_until_ended(fake_twilio, sid)

    async def all_attempted() -> bool:
        return len(fake_twilio.status_callbacks()) == 8

    await wait_for(all_attempted, timeout=5, what="8 callback attempts")
    await asyncio.sleep(0.2)
    assert [w.status for w in fake_twilio.status_callbacks(sid=refused.sid)] == [500] * 4
    unreachable = fake_twilio.status_callbacks(sid=down.sid)
    assert [w.status for w in unreachable] == [0] * 4
    assert all(w.error for w in unreachable)
    assert len(receiver.on("/status")) == 4


async def test_invalid_status_callback_event_is_refused(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    with pytest.raises(TwilioRestException) as refused:
        await client.calls.create_async(
            to=PHONE, from_=FROM, twiml=twiml("Hello."),
            status_callback=receiver.url("/status"), status_callback_event=["answerd"],
        )
    assert (refused.value.status, refused.value.code) == (400, 21626)
    assert fake_twilio.created_calls() == []


# ------------------------------------------------------------------ hanging up


async def test_hanging_up_an_answered_call_stops_its_twiml_and_sends_completed(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.play_twiml = True
    response = VoiceResponse()
    response.say("Hello.")
    response.pause(length=100)  # 5 s at the default time scale
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=str(response.to_xml()),
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    await wait_for_hits(receiver, "/status", 3)

    async def pausing() -> bool:
        return [e.kind for e in fake_twilio.transcript(call.sid)] == ["say", "pause"]

    await wait_for(pausing, timeout=5, what="the pause to start")
    updated = await client.calls(call.sid).update_async(status="completed")
    assert updated.status == "completed"
    hits = await wait_for_hits(receiver, "/status", 4)
    assert hits[-1].form["CallStatus"] == "completed"
    assert hits[-1].form["CallDuration"] == "1"
    await asyncio.sleep(0.1)
    assert [e.kind for e in fake_twilio.transcript(call.sid)] == ["say", "pause"]  # never "end"
    with pytest.raises(TwilioRestException) as again:
        await client.calls(call.sid).update_async(status="completed")
    assert again.value.code == 21220


async def test_new_twiml_for_an_answered_call_plays_from_the_update_on(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.play_twiml = True
    response = VoiceResponse()
    response.pause(length=100)
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=str(response.to_xml()),
        status_callback=receiver.url("/status"),
    )

    async def pausing() -> bool:
        return [e.kind for e in fake_twilio.transcript(call.sid)] == ["pause"]

    await wait_for(pausing, timeout=5, what="the pause to start")
    await client.calls(call.sid).update_async(twiml=twiml("Redirected."))
    (hit,) = await wait_for_hits(receiver, "/status", 1)
    assert hit.form["CallStatus"] == "completed"
    assert fake_twilio.spoken(call.sid) == ["Redirected."]
    assert [e.kind for e in fake_twilio.transcript(call.sid)] == ["pause", "say", "end"]


async def test_canceling_a_ringing_call_sends_canceled_and_no_answered(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.ring_s = 2.0
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."),
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    await wait_for_hits(receiver, "/status", 2)
    await client.calls(call.sid).update_async(status="canceled")
    hits = await wait_for_hits(receiver, "/status", 3)
    assert [h.form["CallStatus"] for h in hits] == ["initiated", "ringing", "canceled"]
    assert await ended(client, call.sid) == "canceled"


# ------------------------------------------------------------------ TwiML and Gather


@pytest.fixture
def playing(fake_twilio: FakeTwilio) -> FakeTwilio:
    """Calls play their TwiML; the intro lasts 64 x 4 ms = 0.256 s, the Gather's prompt
    23 x 4 ms = 0.092 s, its timeout 5 x 0.05 = 0.25 s: it is active from 0.256 s to
    0.598 s after pickup."""
    fake_twilio.play_twiml = True
    fake_twilio.seconds_per_char = 0.004
    return fake_twilio


async def test_press_inside_the_gather_posts_signed_digits_and_plays_the_answer(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/gather"] = (200, twiml("Acknowledged. Thank you.", hangup=True))
    playing.press(PHONE, "1", at_s=0.3)
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=alert_twiml(receiver.url("/gather?call=7")),
    )
    (hit,) = await wait_for_hits(receiver, "/gather", 1)
    assert signed_by_twilio(playing, hit)
    assert hit.form["Digits"] == "1"
    assert hit.form["FinishedOnKey"] == ""
    assert (hit.form["CallSid"], hit.form["CallStatus"], hit.form["To"]) == (
        call.sid, "in-progress", PHONE
    )
    assert await wait_until_ended(playing, call.sid) == "completed"
    (request,) = playing.gather_requests(sid=call.sid)
    assert "Acknowledged. Thank you." in request.body
    assert playing.spoken(call.sid) == [
        INTRO, "Press 1 to acknowledge. [interrupted by a keypress]", "Acknowledged. Thank you."
    ]
    assert playing.application_errors() == []


async def test_press_while_a_say_outside_the_gather_plays_is_ignored(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    playing.press(PHONE, "1", at_s=0.1)
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=alert_twiml(receiver.url("/gather")),
    )
    assert await wait_until_ended(playing, call.sid) == "completed"
    assert receiver.on("/gather") == []
    transcript = playing.transcript(call.sid)
    assert [e.at_s for e in transcript if e.kind == "press-ignored"] == pytest.approx([0.1])
    assert [e.kind for e in transcript][-3:] == ["gather-timeout", "say", "end"]
    assert playing.spoken(call.sid)[-1] == "Goodbye."


async def test_press_during_the_first_sentence_counts_when_the_gather_wraps_the_message(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/gather"] = (200, twiml("Acknowledged.", hangup=True))
    playing.press(PHONE, "1", at_s=0.01)
    call = await client.calls.create_async(
        to=PHONE, from_=FROM,
        twiml=alert_twiml(receiver.url("/gather"), before="", gather=INTRO),
    )
    (hit,) = await wait_for_hits(receiver, "/gather", 1)
    assert hit.form["Digits"] == "1"
    assert await wait_until_ended(playing, call.sid) == "completed"


async def test_digits_until_the_finish_key_are_submitted_without_it(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/gather"] = (200, twiml("Thanks.", hangup=True))
    playing.press(PHONE, "12#", at_s=0.3)
    await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=alert_twiml(receiver.url("/gather"), num_digits=None),
    )
    (hit,) = await wait_for_hits(receiver, "/gather", 1)
    assert (hit.form["Digits"], hit.form["FinishedOnKey"]) == ("12", "#")


async def test_unreachable_or_failing_action_ends_the_call_on_an_application_error(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/gather"] = (500, "")
    for phone in (PHONE, OTHER):
        playing.press(phone, "1", at_s=0.3)
    down = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=alert_twiml(closed_port_url("/gather")),
    )
    failing = await client.calls.create_async(
        to=OTHER, from_=FROM, twiml=alert_twiml(receiver.url("/gather")),
    )
    for sid in (down.sid, failing.sid):
        assert await wait_until_ended(playing, sid) == "completed"
        assert playing.spoken(sid)[-1] == APPLICATION_ERROR
        assert "Goodbye." not in playing.spoken(sid)  # the rest of the TwiML is never reached
    assert [e.code for e in playing.application_errors(sid=down.sid)] == [11205]
    assert [e.code for e in playing.application_errors(sid=failing.sid)] == [11200]
    assert [w.status for w in playing.gather_requests(sid=failing.sid)] == [500]


async def test_gather_without_input_falls_through_unless_action_on_empty_result(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/gather"] = (200, twiml("Nothing pressed.", hangup=True))
    silent = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=alert_twiml(receiver.url("/gather")),
    )
    insisting = await client.calls.create_async(
        to=OTHER, from_=FROM,
        twiml=alert_twiml(receiver.url("/gather"), action_on_empty_result=True),
    )
    for sid in (silent.sid, insisting.sid):
        await wait_until_ended(playing, sid)
    assert playing.gather_requests(sid=silent.sid) == []
    assert playing.spoken(silent.sid)[-1] == "Goodbye."
    (empty,) = playing.gather_requests(sid=insisting.sid)
    assert empty.params["Digits"] == ""
    assert playing.spoken(insisting.sid)[-1] == "Nothing pressed."


async def test_twiml_from_url_is_fetched_signed_and_relative_actions_resolve_against_it(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/calls/twiml"] = (200, alert_twiml("gather?round=2"))
    receiver.answers["/calls/gather"] = (200, twiml("Acknowledged.", hangup=True))
    playing.press(PHONE, "1", at_s=0.3)
    call = await client.calls.create_async(to=PHONE, from_=FROM, url=receiver.url("/calls/twiml"))
    (fetch,) = await wait_for_hits(receiver, "/calls/twiml", 1)
    assert signed_by_twilio(playing, fetch)
    assert fetch.form["CallStatus"] == "in-progress"
    (hit,) = await wait_for_hits(receiver, "/calls/gather", 1)
    assert hit.url == receiver.url("/calls/gather?round=2")
    assert signed_by_twilio(playing, hit)
    assert await wait_until_ended(playing, call.sid) == "completed"


async def test_press_requires_calls_that_play_their_twiml(fake_twilio: FakeTwilio) -> None:
    with pytest.raises(RuntimeError, match="play_twiml"):
        fake_twilio.press(PHONE, "1")
    fake_twilio.play_twiml = True
    with pytest.raises(ValueError, match="digits"):
        fake_twilio.press(PHONE, "1a")


# ------------------------------------------------------------------ machine detection


async def test_machine_answer_is_reported_and_never_presses_a_key(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    playing.set_outcome(PHONE, "completed", answered_by="machine")
    playing.press(PHONE, "1", at_s=0.3)
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=alert_twiml(receiver.url("/gather")),
        machine_detection="Enable",
        status_callback=receiver.url("/status"), status_callback_event=ALL_EVENTS,
    )
    await wait_until_ended(playing, call.sid)
    hits = await wait_for_hits(receiver, "/status", 4)
    assert "AnsweredBy" not in hits[2].form  # answered fires at pickup, before detection
    assert hits[-1].form["AnsweredBy"] == "machine_start"
    assert (await client.calls(call.sid).fetch_async()).answered_by == "machine_start"
    assert receiver.on("/gather") == []
    assert playing.spoken(call.sid)[-1] == "Goodbye."  # the voicemail got the whole message


async def test_detect_message_end_reports_how_the_greeting_ended_and_plays_after_it(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    playing.set_outcome(PHONE, "completed", answered_by="machine")
    playing.amd_message_end = "machine_end_silence"
    receiver.answers["/twiml"] = (200, twiml("Please call us back."))
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, url=receiver.url("/twiml"), machine_detection="DetectMessageEnd",
    )
    (fetch,) = await wait_for_hits(receiver, "/twiml", 1)
    assert fetch.form["AnsweredBy"] == "machine_end_silence"
    (created,) = playing.created_calls()
    assert created.callee == "machine"
    # Picked up at ring_s (0.2 s); the TwiML waited for detection and the greeting (0.15 s).
    assert fetch.at - created.created_monotonic >= 0.35
    await wait_until_ended(playing, call.sid)
    fetched = await client.calls(call.sid).fetch_async()
    assert fetched.answered_by == "machine_end_silence"


async def test_human_answer_is_reported_in_the_gather_request(
    playing: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    receiver.answers["/gather"] = (200, twiml("Acknowledged.", hangup=True))
    playing.press(PHONE, "1", at_s=0.3)
    call = await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=alert_twiml(receiver.url("/gather")),
        machine_detection="Enable",
    )
    (hit,) = await wait_for_hits(receiver, "/gather", 1)
    assert hit.form["AnsweredBy"] == "human"
    await wait_until_ended(playing, call.sid)


async def test_async_detection_posts_its_result_to_the_amd_callback(
    fake_twilio: FakeTwilio, client: Any, receiver: Receiver,
) -> None:
    fake_twilio.set_outcome(PHONE, "completed", answered_by="machine_start")
    await client.calls.create_async(
        to=PHONE, from_=FROM, twiml=twiml("Hello."), machine_detection="Enable",
        async_amd="true", async_amd_status_callback=receiver.url("/amd"),
    )
    (hit,) = await wait_for_hits(receiver, "/amd", 1)
    assert signed_by_twilio(fake_twilio, hit)
    assert hit.form["AnsweredBy"] == "machine_start"
    assert hit.form["MachineDetectionDuration"] == "50"


async def test_without_machine_detection_nobody_is_reported(
    fake_twilio: FakeTwilio, client: Any,
) -> None:
    fake_twilio.set_outcome(PHONE, "completed", answered_by="machine")
    call = await client.calls.create_async(to=PHONE, from_=FROM, twiml=twiml("Hello."))
    await wait_until_ended(fake_twilio, call.sid)
    assert (await client.calls(call.sid).fetch_async()).answered_by is None


# ------------------------------------------------------------------ counting


async def test_request_counts_attribute_each_rest_request_to_its_call(
    fake_twilio: FakeTwilio, client: Any,
) -> None:
    fake_twilio.ring_s = 5.0
    fake_twilio.error_rate_429 = 1.0
    with pytest.raises(TwilioRestException):
        await client.calls.create_async(to=PHONE, from_=FROM, twiml=twiml("Hello."))
    fake_twilio.error_rate_429 = 0.0
    first = await client.calls.create_async(to=PHONE, from_=FROM, twiml=twiml("Hello."))
    for _ in range(2):
        await client.calls(first.sid).fetch_async()
    await client.calls.list_async(to=PHONE, limit=5)
    await client.calls(first.sid).update_async(status="canceled")
    second = await client.calls.create_async(to=PHONE, from_=FROM, twiml=twiml("Hello."))
    await client.calls(second.sid).fetch_async()

    counts = fake_twilio.request_counts()
    assert list(counts) == [first.sid, second.sid]
    one, two = counts[first.sid], counts[second.sid]
    assert (one.creates, one.fetches, one.lists, one.updates, one.gets) == (2, 2, 1, 1, 3)
    assert (two.creates, two.fetches, two.lists, two.updates, two.gets) == (1, 1, 0, 0, 1)
    assert len(fake_twilio.requests_of("fetch", to=PHONE)) == 3
    assert [r.sid for r in fake_twilio.requests_of("create")] == [None, first.sid, second.sid]
