"""The ``place_call`` job: one call to one member, placed at most once on purpose.

Order matters: the attempt is written before the POST, so after a crash or an ambiguous
failure the next run knows a call may exist and looks it up at the provider before dialing
again. Permanent refusals are not retried; throttling and refused connections are retried
with backoff and jitter at a fresh rate-limit slot; ambiguous failures are retried only after
the lookup.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from arq import Retry

from worker import db, metrics
from worker.dead_letters import call_letter
from worker.jobs import holds_rate_slot, run_again_in
from worker.logs import bind_job, get_logger
from worker.models import (
    CALLING_STOPPED_ALERT_STATUSES,
    LIVE_PROVIDER_STATUSES,
    TERMINAL_CALL_STATUSES,
    CallJob,
    CallStatus,
    CallUpdate,
    LineClaim,
    StatusSource,
)
from worker.outcomes import after_line_change, record_provider_call, schedule_poll
from worker.providers import (
    AmbiguousProviderError,
    CallOptions,
    PermanentProviderError,
    ProviderCall,
    ProviderError,
    ThrottledProviderError,
)
from worker.retries import backoff_s
from worker.services import Services
from worker.twiml import alert_twiml, fits
from worker.webhook_urls import WebhookUrls

log = get_logger(__name__)

# Provider clocks and ours differ; the lookup window starts this much before our attempt.
LOOKUP_SLACK = timedelta(seconds=5)
#: A call waiting for its number looks again this often (a number is free within seconds of
#: its call ending).
LINE_RECHECK_S = 2.0
#: A run that takes a rate slot this close waits for it rather than being queued again.
SLOT_WAIT_S = 0.05
#: A call still live this long after it was placed no longer keeps its number from being
#: called: a page lasts a minute or two, and a second call beats a missed one.
LINE_STUCK_S = 900.0


async def place_call(ctx: dict[str, Any], call_id: int) -> str:
    s: Services = ctx["services"]
    call = await db.get_call(s.db, call_id)
    if call is None:
        log.warning("call.missing", call=call_id)
        return "missing"
    bound = log.bind(call=call.id, alert=call.alert, alert_id=call.alert_id, tenant=call.tenant)
    bind_job(alert=call.alert, alert_id=call.alert_id, tenant=call.tenant)
    if call.status in TERMINAL_CALL_STATUSES:
        return "already-ended"
    if call.merged_into is not None:
        return "merged"  # placed, and followed, as part of the call it was merged into
    # A sid on a 'dialing' row: the previous run was stopped between recording the sid and
    # the status. It is placed (the lookup would skip it as "known" and ring again).
    if call.status in LIVE_PROVIDER_STATUSES or call.provider_sid is not None:
        await schedule_poll(s, call.id, 0)  # placed before; make sure it is followed
        return "already-placed"
    if call.alert_status in CALLING_STOPPED_ALERT_STATUSES:
        if await db.advance_call(s.db, call.id, CallUpdate(
                status=CallStatus.CANCELED, source=StatusSource.CANCEL,
                error_message=f"alert {call.alert_status} before the call was placed")):
            metrics.call_ended(CallStatus.CANCELED)
        bound.info("call.canceled", reason=f"alert {call.alert_status}")
        return "canceled"
    now = datetime.now(UTC)
    if now - call.received_at > timedelta(seconds=s.settings.max_call_age_s):
        await _give_up(s, call, "stale", f"alert older than {s.settings.max_call_age_s:.0f}s; "
                       "a stale alert does not ring")
        return "stale"
    if call.status == CallStatus.DIALING:
        found = await _look_up_previous_attempt(s, call)
        if found is not None:
            await record_provider_call(s, call, found)
            bound.warning("call.adopted", sid=found.sid, status=found.status)
            return "adopted"
    # Retries are bounded in number here and in total age by the stale check above (an alert
    # older than max_call_age_s never rings), which also covers calls scheduled late by the
    # call rate, unlike an age counted from the call row's creation.
    if call.attempts >= s.settings.max_call_attempts:
        await _give_up(s, call, "exhausted",
                       f"no call placed after {call.attempts} attempts")
        return "exhausted"
    if not holds_rate_slot(ctx) and not await _take_slot(
            ctx, s, call, check_line=call.status == CallStatus.PENDING):
        return "waiting"
    if call.status == CallStatus.PENDING:
        claim = await _claim_line(s, call)
        if claim.kind in ("busy", "window"):
            # Looked at again soon: the number is being called, or other alerts may still
            # come and be spoken in the same call. That run is not at a rate slot.
            run_again_in(ctx, LINE_RECHECK_S if claim.kind == "busy" else claim.wait_s,
                         at_slot=False)
            return "waiting"
        if claim.attempt is None:
            return "merged"
        return await _dial(s, call, claim.attempt, claim.messages)
    retried = await db.start_attempt(s.db, call.id, StatusSource.WORKER)
    if retried is None:
        return "not-dialable"
    return await _dial(s, call, retried, await db.line_messages(s.db, call.id))


async def _take_slot(ctx: dict[str, Any], s: Services, call: CallJob, *,
                     check_line: bool) -> bool:
    """A run not at a rate slot of its own (it waited for its number, or was put back) takes
    one before it may dial: True when it may dial now; else it runs again at its slot (or,
    while its number is still in use, later, taking no slot yet)."""
    if check_line and await db.line_in_use(s.db, call.id, call.phone, stuck_s=LINE_STUCK_S):
        run_again_in(ctx, LINE_RECHECK_S, at_slot=False)
        return False
    wait_s = (await s.limiter.reserve(1))[0] / 1000 - time.time()
    if wait_s > SLOT_WAIT_S:
        run_again_in(ctx, wait_s)  # at the slot just reserved
        return False
    if wait_s > 0:
        await asyncio.sleep(wait_s)
    return True


async def _claim_line(s: Services, call: CallJob) -> LineClaim:
    """One ring at a time per number: take the number for this call, with the calls waiting
    for it that one call can speak (``db.claim_line``), or learn that it must wait."""
    urls = s.settings.webhook_urls
    gather = urls.gather(call.id) if urls else None

    def fitting(messages: list[str]) -> int:
        count = 1
        while count < len(messages) and fits(messages[: count + 1], speech=s.settings.speech,
                                             gather_action=gather):
            count += 1
        return count

    async with s.db.acquire() as conn:
        claim = await db.claim_line(
            conn, call.id, window_s=s.settings.merge_window_s, stuck_s=LINE_STUCK_S,
            max_age_s=s.settings.max_call_age_s, fitting=fitting, source=StatusSource.WORKER)
    if claim.merged:
        log.info("call.merged", call=call.id, alert=call.alert, merged=claim.merged,
                 to=call.phone)
    return claim


async def _look_up_previous_attempt(s: Services, call: CallJob) -> ProviderCall | None:
    """After an attempt that may have reached the provider: find the call it created.

    Raises Retry when the lookup itself fails: re-POSTing blind could ring twice.
    """
    since = (call.attempt_started_at or call.created_at) - LOOKUP_SLACK
    try:
        candidates = await s.provider.find_calls(to=call.phone, since=since.astimezone(UTC))
    except ProviderError as exc:
        log.warning("call.lookup_failed", call=call.id, error=str(exc))
        raise Retry(defer=backoff_s(call.attempts, base_s=s.settings.retry_base_s,
                                    cap_s=s.settings.retry_cap_s)) from exc
    for candidate in sorted(candidates, key=lambda c: c.created_at or since):
        if not await db.sid_is_known(s.db, candidate.sid):
            return candidate
    # Nothing found: the previous POST created no call we can see. Dialing again may still
    # ring twice if the provider's list lags; that is the duplicate we accept, and count.
    await db.count_possible_duplicate(s.db, call.id)
    log.warning("call.possible_duplicate", call=call.id, attempts=call.attempts)
    return None


async def _dial(s: Services, call: CallJob, attempt: int, messages: list[str]) -> str:
    """POST the call (the attempt is recorded already); it speaks ``messages``, its own
    alert's and those of every call merged in."""
    bound = log.bind(call=call.id, alert=call.alert, alert_id=call.alert_id)
    messages = messages or [call.message]
    metrics.dialing(call, attempt)
    bound.info("call.dialing", to=call.phone, attempt=attempt, alerts=len(messages))
    # The gate holds every 1 s window at the rate, whatever delayed or bunched the jobs.
    await s.limiter.admit_dial(f"{call.id}:{attempt}")
    started = time.monotonic()
    try:
        placed = await s.provider.create_call(
            to=call.phone, twiml=call_twiml(s, call.id, messages),
            options=call_options(s, call.id))
    except PermanentProviderError as exc:
        await _fail_permanently(s, call, attempt, exc)
        return "failed"
    except ThrottledProviderError as exc:
        await db.return_to_pending(s.db, call.id, exc.code, str(exc), StatusSource.WORKER)
        delay = await _retry_delay(s, attempt)
        bound.warning("call.throttled", code=exc.code, error=str(exc), retry_in_s=round(delay, 2))
        raise Retry(defer=delay) from exc
    except AmbiguousProviderError as exc:
        delay = await _retry_delay(s, attempt)  # a re-POST (after the lookup) takes a slot
        bound.warning("call.ambiguous", code=exc.code, error=str(exc),
                      retry_in_s=round(delay, 2))
        raise Retry(defer=delay) from exc
    bound.info("call.placed", sid=placed.sid, status=placed.status, attempt=attempt,
               provider_ms=round((time.monotonic() - started) * 1000, 1))
    await record_provider_call(s, call, placed)
    return "placed"


def call_twiml(s: Services, call_id: int, messages: list[str]) -> str:
    """What the call says: the alerts, inside a Gather whose action is the web process when
    it is public (press 1 to acknowledge), else said twice with nothing to press."""
    urls = s.settings.webhook_urls
    return alert_twiml(messages, speech=s.settings.speech,
                       gather_action=urls.gather(call_id) if urls else None)


def call_options(s: Services, call_id: int) -> CallOptions:
    """Where the provider reports this call's progress (the web process, when public), and
    answering machine detection: asynchronous when its verdict can be posted to the web
    process, else holding the message until it has decided."""
    urls: WebhookUrls | None = s.settings.webhook_urls if s.settings.callbacks else None
    detection = s.settings.detection
    return CallOptions(
        status_callback=urls.status(call_id) if urls else None,
        machine_detection=detection,
        amd_callback=urls.amd(call_id) if urls and detection else None,
    )


async def _retry_delay(s: Services, attempt: int) -> float:
    """Backoff with full jitter, but never sooner than the next free slot of the call rate."""
    delay = backoff_s(attempt, base_s=s.settings.retry_base_s, cap_s=s.settings.retry_cap_s)
    slot_ms = (await s.limiter.reserve(1))[0]
    return max(delay, slot_ms / 1000 - time.time())


async def _fail_permanently(
    s: Services, call: CallJob, attempt: int, exc: PermanentProviderError
) -> None:
    line = await _line(s, call)
    if await db.advance_call(s.db, call.id, CallUpdate(
            status=CallStatus.FAILED, source=StatusSource.WORKER, error_code=exc.code,
            error_message=str(exc))):
        metrics.call_ended(CallStatus.FAILED)
    await db.insert_dead_letters(s.db, [call_letter(
        each.id, attempt, reason="provider_rejected", error=f"{exc.code}: {exc}",
        payload=_letter_payload(each) | {"http_status": exc.http_status, "code": exc.code})
        for each in line])
    log.error("call.rejected", call=call.id, alert=call.alert, alert_id=call.alert_id,
              code=exc.code, error=str(exc), to=call.phone, merged=len(line) - 1)
    await after_line_change(s, call.id)


_GIVE_UP_EVENTS = {"stale": "call.stale", "exhausted": "call.exhausted"}


async def _give_up(
    s: Services, call: CallJob, reason: Literal["stale", "exhausted"], error: str
) -> None:
    line = await _line(s, call)
    changed = await db.advance_call(s.db, call.id, CallUpdate(
        status=CallStatus.FAILED, source=StatusSource.WORKER, error_message=error))
    if changed:
        metrics.call_ended(CallStatus.FAILED)
        await db.insert_dead_letters(s.db, [call_letter(
            each.id, each.attempts, reason=reason, error=error, payload=_letter_payload(each))
            for each in line])
        log.error(_GIVE_UP_EVENTS[reason], call=call.id, alert=call.alert, alert_id=call.alert_id,
                  error=error)
    await after_line_change(s, call.id)


async def _line(s: Services, call: CallJob) -> list[CallJob]:
    """The call and the calls merged into it: each alert gets its own dead letter."""
    merged = [await db.get_call(s.db, other) for other in await db.merged_calls(s.db, call.id)]
    return [call, *(m for m in merged if m is not None)]


def _letter_payload(call: CallJob) -> dict[str, Any]:
    return {
        "alert": call.alert,
        "alert_id": call.alert_id,
        "tenant": call.tenant,
        "member_name": call.member_name,
        "phone": call.phone,
        "position": call.position,
        "attempts": call.attempts,
    }
