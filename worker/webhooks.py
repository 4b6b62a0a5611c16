"""Twilio's webhooks, served by the web process (``voicealert web``) under ``/twilio/``.

- ``POST /twilio/status?call=N``: status callbacks (initiated, ringing, answered,
  completed). Recorded at once (monotonic: a duplicate, a late or an out-of-order callback
  never moves a call back); what the change means for the alert is decided by a worker
  (a ``settle_call`` job), with every other decision about calls.
- ``POST /twilio/amd?call=N``: the answering machine detection result (asynchronous
  detection: the message plays meanwhile). Recorded once; a worker then hangs up on a machine
  or leaves it a voicemail (a ``check_answer`` job).
- ``POST /twilio/gather?call=N``: the digit pressed during the call's ``<Gather>``. A 1
  acknowledges every alert the call spoke (the keypress is in Postgres before the caller
  hears "Acknowledged"), and the other calls of those alerts are canceled or hung up (by
  ``cancel_call`` jobs). Any other key plays the message again.

Every request is verified with twilio's ``RequestValidator`` against
``VOICEALERT_PUBLIC_URL`` + path + query, the URL Twilio was given (so it holds behind a
proxy that rewrites the host): a missing or wrong ``X-Twilio-Signature`` is a 403 and changes
nothing. The ``call`` parameter is the call row's id, so a callback finds its row even before
the create response recorded the sid.

The Gather answers 200 with valid TwiML whatever happens, Postgres down included: on
Twilio, a failed action ends the call on "an application error has occurred".
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qsl

from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from worker import db, metrics
from worker.config import Settings
from worker.logs import get_logger
from worker.models import CallStatus, CallUpdate, StatusSource
from worker.outages import DATABASE_UNAVAILABLE, REDIS_UNAVAILABLE
from worker.queue import CANCEL_CALL, CHECK_ANSWER, SETTLE_CALL
from worker.services import schedule_job
from worker.twiml import (
    acknowledged_twiml,
    alert_twiml,
    empty_twiml,
    goodbye_twiml,
    not_recorded_twiml,
)
from worker.web_support import DB, REDIS, SETTINGS
from worker.webhook_urls import AMD_PATH, CALL_PARAMETER, GATHER_PATH, STATUS_PATH

log = get_logger(__name__)

#: Twilio sends about twenty parameters; a body with far more is not Twilio's.
MAX_FIELDS = 200
#: A webhook's own work is bounded well inside the 15 s Twilio waits for an answer.
WORK_TIMEOUT_S = 5.0
#: Twilio's CallStatus words, in ours. ``initiated`` (dialing has started) is not a status
#: of the call resource: it counts as queued.
CALLBACK_STATUSES = {"initiated": CallStatus.QUEUED} | {s.value: s for s in CallStatus}
_SID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_ANSWERED_BY = re.compile(r"^[a-z_]{1,40}$")


def add_routes(app: web.Application) -> None:
    app.router.add_post(STATUS_PATH, status_callback)
    app.router.add_post(GATHER_PATH, gather)
    app.router.add_post(AMD_PATH, amd_result)


# --- verification -------------------------------------------------------------------------


async def verified_params(request: web.Request) -> MultiDict[str]:
    """The form Twilio posted, once its signature checks out; else 403 (404 when webhooks
    are not configured: there is no URL to check against)."""
    settings = request.app[SETTINGS]
    if settings.public_url is None or settings.twilio_auth_token is None:
        raise web.HTTPNotFound(text="Twilio webhooks are off: VOICEALERT_PUBLIC_URL and "
                                    "TWILIO_AUTH_TOKEN must both be set")
    body = await request.read()
    try:
        params: MultiDict[str] | None = MultiDict(parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS))
    except (UnicodeDecodeError, ValueError):
        params = None
    signature = request.headers.get(SIGNATURE_HEADER, "")
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    url = settings.public_url + request.raw_path
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    if params is None or not signature or not validator.validate(url, params, signature,
                                                                 algorithm):
        log.warning("webhook.refused", path=request.path,
                    reason="no signature" if not signature else "signature does not match")
        raise web.HTTPForbidden(text="invalid Twilio signature")
    return params


def call_id_of(request: web.Request) -> int:
    """The call row a verified webhook is about (``?call=N`` in the URL we gave Twilio)."""
    values = request.query.getall(CALL_PARAMETER, [])
    if len(values) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        raise web.HTTPBadRequest(text=f"expected one '{CALL_PARAMETER}' parameter, a call id")
    return int(values[0])


def _xml(twiml: str) -> web.Response:
    return web.Response(text=twiml, content_type="text/xml")


def _int(value: str | None, *, bound: int) -> int | None:
    if value is None or not value.isdigit() or len(value) > 9:
        return None
    number = int(value)
    return number if number <= bound else None


def _matching(value: str | None, pattern: re.Pattern[str]) -> str | None:
    return value if value is not None and pattern.match(value) else None


# --- status callbacks ---------------------------------------------------------------------


async def status_callback(request: web.Request) -> web.Response:
    params = await verified_params(request)
    call_id = call_id_of(request)
    reported = params.get("CallStatus", "")
    status = CALLBACK_STATUSES.get(reported)
    if status is None:
        log.warning("callback.unknown_status", call=call_id, status=reported[:40])
        return _xml(empty_twiml())
    update = CallUpdate(
        status=status,
        source=StatusSource.CALLBACK,
        provider_sid=_matching(params.get("CallSid"), _SID),
        duration_s=_int(params.get("CallDuration"), bound=10_000_000),
        answered_by=_matching(params.get("AnsweredBy"), _ANSWERED_BY),
    )
    sequence = _int(params.get("SequenceNumber"), bound=1_000_000)
    settings, pool, redis = request.app[SETTINGS], request.app[DB], request.app[REDIS]
    try:
        async with asyncio.timeout(WORK_TIMEOUT_S):
            async with pool.acquire() as conn:
                changed = await db.apply_callback(conn, call_id, update, sequence)
            if changed:
                metrics.call_ended(status, update.answered_by)
                await schedule_job(redis, settings, SETTLE_CALL, f"settle-{status}", call_id)
    except (*DATABASE_UNAVAILABLE, *REDIS_UNAVAILABLE) as exc:
        # Twilio does not retry: the safety-net poll follows the call instead.
        log.error("callback.not_recorded", call=call_id, status=status,
                  error=f"{type(exc).__name__}: {exc}")
        raise web.HTTPServiceUnavailable(text="the callback could not be recorded") from None
    if changed is None:
        log.warning("callback.unknown_call", call=call_id, status=status)
    else:
        log.info("callback.status", call=call_id, sid=update.provider_sid, status=status,
                 sequence=sequence, answered_by=update.answered_by, changed=changed)
    return _xml(empty_twiml())


# --- answering machine detection ----------------------------------------------------------


async def amd_result(request: web.Request) -> web.Response:
    params = await verified_params(request)
    call_id = call_id_of(request)
    answered_by = _matching(params.get("AnsweredBy"), _ANSWERED_BY)
    if answered_by is None:
        log.warning("callback.no_answered_by", call=call_id)
        return _xml(empty_twiml())
    settings, pool, redis = request.app[SETTINGS], request.app[DB], request.app[REDIS]
    try:
        async with asyncio.timeout(WORK_TIMEOUT_S):
            learned = await db.record_answered_by(pool, call_id, answered_by,
                                                  _matching(params.get("CallSid"), _SID))
            if learned:
                await schedule_job(redis, settings, CHECK_ANSWER, "answer", call_id)
    except (*DATABASE_UNAVAILABLE, *REDIS_UNAVAILABLE) as exc:
        log.error("callback.not_recorded", call=call_id, answered_by=answered_by,
                  error=f"{type(exc).__name__}: {exc}")
        raise web.HTTPServiceUnavailable(text="the detection result could not be recorded") \
            from None
    log.info("callback.answered_by", call=call_id, answered_by=answered_by, learned=learned)
    return _xml(empty_twiml())


# --- the keypress -------------------------------------------------------------------------


async def gather(request: web.Request) -> web.Response:
    params = await verified_params(request)
    call_id = call_id_of(request)
    settings = request.app[SETTINGS]
    digits = params.get("Digits", "")
    try:
        async with asyncio.timeout(WORK_TIMEOUT_S):
            if digits == "1":
                return _xml(await _acknowledge(request, settings, call_id))
            return _xml(await _replay(request, settings, call_id))
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # anything: the caller must hear a sentence, not an error
        log.error("keypress.not_recorded", call=call_id, digits=digits[:8],
                  error=f"{type(exc).__name__}: {exc}")
        return _xml(not_recorded_twiml(settings.speech))


async def _acknowledge(request: web.Request, settings: Settings, call_id: int) -> str:
    async with request.app[DB].acquire() as conn:
        keypress = await db.acknowledge_call(conn, call_id)
    if keypress is None:
        log.warning("keypress.unknown_call", call=call_id)
        return goodbye_twiml(settings.speech)
    log.info("call.acknowledged", call=call_id, member=keypress.member_name,
             alerts=keypress.acknowledged, calls_to_cancel=len(keypress.to_cancel))
    try:
        for live in keypress.to_cancel:
            await schedule_job(request.app[REDIS], settings, CANCEL_CALL, "cancel", live.id)
    except REDIS_UNAVAILABLE as exc:
        # The acknowledgement is recorded: the other calls are hung up by their safety-net
        # poll (or ring out), and none is placed any more.
        log.error("keypress.cancel_not_queued", call=call_id,
                  error=f"{type(exc).__name__}: {exc}")
    return acknowledged_twiml(settings.speech)


async def _replay(request: web.Request, settings: Settings, call_id: int) -> str:
    """Any key but 1: the message again, with the same Gather."""
    messages = await db.line_messages(request.app[DB], call_id)
    urls = settings.webhook_urls
    if not messages or urls is None:
        return goodbye_twiml(settings.speech)
    return alert_twiml(messages, speech=settings.speech, gather_action=urls.gather(call_id))
