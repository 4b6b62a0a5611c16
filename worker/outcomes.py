"""Outcomes: following a placed call to its end, and what its end means for the alert.

Two ways to learn a call's progress. With webhooks (``VOICEALERT_PUBLIC_URL`` and Twilio),
the provider reports it to the web process (worker/webhooks.py), which records it and queues
a ``settle_call`` job here; a ``poll_call`` job still runs, rarely (every ring timeout +
margin), as a safety net for callbacks that never come. Without webhooks, ``poll_call`` runs
again at the cadence of ``poll_delay_s`` (a fresh job each round,
``worker.jobs.run_again_in``). Either way polling is bounded by the ring timeout plus a
margin while unanswered (and by a maximum call duration once answered). Status updates are
monotonic (``db.advance_call``). When a call's status changes, the alert's status is
recomputed and a sequential alert moves on to its next member.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from worker import db, metrics
from worker.jobs import run_again_in
from worker.logs import bind_job, get_logger
from worker.models import (
    CALLING_STOPPED_ALERT_STATUSES,
    DECISIVE_CALL_STATUSES,
    LIVE_PROVIDER_STATUSES,
    MACHINE_ANSWERS,
    TERMINAL_CALL_STATUSES,
    UNANSWERED_CALL_STATUSES,
    AlertProgress,
    AlertStatus,
    CallJob,
    CallStatus,
    CallUpdate,
    StatusSource,
    provider_status,
)
from worker.providers import PermanentProviderError, ProviderCall, ProviderError
from worker.queue import CANCEL_CALL, POLL_CALL, START_ROUND
from worker.services import Services
from worker.twiml import voicemail_twiml

log = get_logger(__name__)

POLL_FIRST_S = 0.5
_STATUS_LEVELS = {CallStatus.QUEUED: logging.DEBUG, CallStatus.RINGING: logging.DEBUG}
POLL_MAX_S = 2.0


def poll_delay_s(since_attempt_s: float) -> float:
    """How soon to poll a call again, given how long ago its attempt started: often while
    it is young (a quick answer or refusal shows at once), then every ``POLL_MAX_S``."""
    return min(POLL_MAX_S, max(POLL_FIRST_S, since_attempt_s / 4))


def safety_poll_s(s: Services) -> float:
    """With callbacks, how long between two polls of a call: by the ring timeout plus the
    margin an unanswered call must have ended, so one poll settles a lost callback."""
    return s.settings.ring_timeout_s + s.settings.poll_margin_s


def _next_poll_s(s: Services, since_attempt_s: float) -> float:
    return safety_poll_s(s) if s.settings.callbacks else poll_delay_s(since_attempt_s)


async def schedule_poll(s: Services, call_id: int, delay_s: float | None = None) -> None:
    """Follow a placed call: soon and often without callbacks, rarely with them."""
    if delay_s is None:
        delay_s = safety_poll_s(s) if s.settings.callbacks else POLL_FIRST_S
    await s.schedule(POLL_CALL, "poll", call_id, delay_s)


async def record_provider_call(s: Services, call: CallJob, placed: ProviderCall) -> None:
    """Attach the provider's call to our row, follow it, and cancel it if the alert was
    resolved or acknowledged while we were dialing."""
    alert_status = await db.record_provider_sid(s.db, call.id, placed.sid)
    await apply_status(s, call, placed, StatusSource.WORKER)
    # Stopped before the sid was on record: the cancel job of the resolve or ack saw none
    # (stopped after: that job finds the sid and cancels).
    stopped = alert_status in CALLING_STOPPED_ALERT_STATUSES
    if stopped and placed.status in UNANSWERED_CALL_STATUSES and (
            not await db.line_still_wanted(s.db, call.id)):
        await cancel_at_provider(s, call, placed.sid, StatusSource.CANCEL)
    if placed.status not in TERMINAL_CALL_STATUSES:
        await schedule_poll(s, call.id)


async def apply_status(
    s: Services, call: CallJob, observed: ProviderCall, source: StatusSource
) -> bool:
    """The provider's word about a call: a keypress it reports, who answered, the status."""
    if observed.digits == "1" and call.acknowledged_at is None:
        await acknowledge_from_provider(s, call)
    learned = bool(observed.answered_by) and await db.record_answered_by(
        s.db, call.id, observed.answered_by or "", observed.sid)
    status = provider_status(observed.status)
    if status is None:
        # A word we do not know: the provider has the call, and whether it ended is unknown.
        # It counts as queued (out of 'dialing') and is followed until a status we know, or
        # poll_call's age bound fails it with this word.
        log.warning("call.unknown_status", call=call.id, alert=call.alert, sid=observed.sid,
                    status=observed.status[:40])
        status = CallStatus.QUEUED
    alerts = await db.advance_line(s.db, call.id, CallUpdate(
        status=status,
        source=source,
        provider_sid=observed.sid,
        duration_s=observed.duration_s,
        answered_by=observed.answered_by,
    ))
    changed = bool(alerts)
    if changed:
        metrics.call_ended(status, observed.answered_by)
        # Answered and ended are worth a line each; queued and ringing only when debugging.
        log.log(_STATUS_LEVELS.get(status, logging.INFO), "call.status",
                call=call.id, alert=call.alert, alert_id=call.alert_id, sid=observed.sid,
                status=status, duration_s=observed.duration_s,
                answered_by=observed.answered_by)
    if learned:
        await after_line_change(s, call.id)
    elif changed and status in DECISIVE_CALL_STATUSES:
        # Queued or ringing decides nothing (the call stays open and active); the alerts
        # come back from the update, not from reading the line again.
        for alert_pk in alerts:
            await after_status_change(s, alert_pk)
    if learned and status == CallStatus.IN_PROGRESS and (
            observed.answered_by in MACHINE_ANSWERS):
        await answer_machine(s, call, observed.sid)
    return changed


async def after_line_change(s: Services, call_id: int) -> None:
    """A call changed: decide again for every alert it speaks for (merged calls speak for
    several)."""
    for alert_pk in await db.line_alerts(s.db, call_id):
        await after_status_change(s, alert_pk)


async def acknowledge_from_provider(s: Services, call: CallJob) -> None:
    """The provider reported a 1 pressed on the call (the simulated provider's ``press-1``;
    Twilio posts it to the web process instead): the same as the Gather's keypress."""
    async with s.db.acquire() as conn:
        keypress = await db.acknowledge_call(conn, call.id)
    if keypress is None:
        return
    for live in keypress.to_cancel:
        await s.schedule(CANCEL_CALL, "cancel", live.id)
    log.info("call.acknowledged", call=call.id, alert=call.alert, member=keypress.member_name,
             alerts=keypress.acknowledged, calls_to_cancel=len(keypress.to_cancel))


async def answer_machine(s: Services, call: CallJob, sid: str) -> None:
    """An answering machine picked up (not an answer): leave it a short voicemail when
    ``VOICEALERT_VOICEMAIL`` says so, else hang up, so the call ends and the alert moves
    on at once."""
    try:
        if s.settings.voicemail:
            messages = await db.line_messages(s.db, call.id)
            await s.provider.speak(sid, voicemail_twiml(messages, s.settings.speech))
            log.info("call.voicemail_left", call=call.id, alert=call.alert, sid=sid)
        else:
            await s.provider.hang_up(sid)
            log.info("call.machine_hung_up", call=call.id, alert=call.alert, sid=sid)
    except ProviderError as exc:
        log.warning("call.machine_not_handled", call=call.id, sid=sid, error=str(exc))


async def check_answer(ctx: dict[str, Any], call_id: int) -> str:
    """Detection told the web process who answered (asynchronously, while the call goes on):
    what it means for the alert, and a machine is dealt with."""
    s: Services = ctx["services"]
    call = await db.get_call(s.db, call_id)
    if call is None:
        return "missing"
    await after_line_change(s, call.id)
    live = call.status not in TERMINAL_CALL_STATUSES and call.provider_sid is not None
    if live and call.answered_by in MACHINE_ANSWERS:
        assert call.provider_sid is not None
        await answer_machine(s, call, call.provider_sid)
        return "machine"
    return "settled"


async def after_status_change(s: Services, alert_pk: int) -> None:
    """Recompute the alert's status; in sequential mode, ring the next member or stop.

    Without keypress acknowledgement a human answering stands in for it: the alert is
    ``answered`` and a sequential alert stops. With it, only a 1 (or an ack event) stops the
    calling: an answer without one moves a sequential alert on like a missed call."""
    progress = await db.alert_progress(s.db, alert_pk,
                                       detection=s.settings.detection is not None)
    if progress is None or progress.status in CALLING_STOPPED_ALERT_STATUSES:
        return
    keypress = s.settings.keypress_acknowledgement
    # Answered already (read with the progress): setting it again would change nothing.
    answered = progress.status == AlertStatus.ANSWERED
    if progress.answered and not keypress:
        if progress.mode == "sequential":
            metrics.calls_canceled(await db.cancel_pending_calls(
                s.db, alert_pk, "answered by an earlier member", StatusSource.WORKER))
        if not answered and await db.set_alert_status(s.db, alert_pk, AlertStatus.ANSWERED):
            log.info("alert.answered", alert=alert_pk)
        return
    if keypress and progress.on_the_line and not answered and await db.set_alert_status(
            s.db, alert_pk, AlertStatus.ANSWERED):
        log.info("alert.answered", alert=alert_pk)
    if progress.mode == "sequential" and progress.next_pending is not None:
        await s.schedule_calls([progress.next_pending])
        log.info("alert.escalated", alert=alert_pk, next_call=progress.next_pending)
        return
    if progress.open == 0:
        await _round_over(s, progress)


async def _round_over(s: Services, progress: AlertProgress) -> None:
    """Every call of the round ended and nobody acknowledged (nor, without keypresses,
    answered): another round after the round delay, or, after the last, ``unacknowledged``.
    An alert whose every call failed is ``failed`` at once: no round can ring anybody until
    an operator fixes what the dead letters say."""
    alert_pk = progress.id
    if progress.failed == progress.total:
        if await db.set_alert_status(s.db, alert_pk, AlertStatus.FAILED):
            log.warning("alert.failed", alert=alert_pk, calls=progress.total)
        return
    if progress.round < progress.rounds:
        due = await db.end_round(s.db, alert_pk, progress.round)
        if due is not None:
            delay = max(0.0, (due - datetime.now(UTC)).total_seconds())
            await s.schedule(START_ROUND, f"round-{progress.round + 1}", alert_pk, delay)
            if progress.next_round_at is None:
                log.info("alert.round_ended", alert=alert_pk, round=progress.round,
                         rounds=progress.rounds, next_round_in_s=round(delay, 1))
        return
    if await db.set_alert_status(s.db, alert_pk, AlertStatus.UNACKNOWLEDGED):
        log.error("alert.unacknowledged", alert=alert_pk, rounds=progress.rounds,
                  calls=progress.total)


async def start_round(ctx: dict[str, Any], alert_pk: int) -> str:
    """The round delay is over: call the alert's members again (parallel: all, at the call
    rate; sequential: the first). Durable: the job lives in Redis and ``next_round_at`` in
    Postgres, so a worker killed during the delay loses no round."""
    s: Services = ctx["services"]
    async with s.db.acquire() as conn:
        started = await db.start_next_round(conn, alert_pk)
    if started is None:
        return "no-round"
    if isinstance(started, float):
        run_again_in(ctx, started)
        return "not-due"
    if started.mode == "parallel":
        await s.schedule_calls(started.pending)
    else:
        await after_status_change(s, alert_pk)  # the first member, unless one is ringing
    if started.started:
        log.info("alert.round_started", alert=alert_pk, round=started.round,
                 calls=len(started.pending))
    return "started" if started.started else "resumed"


async def settle_call(ctx: dict[str, Any], call_id: int) -> str:
    """A status callback moved the call (the web process recorded it): what that means for
    its alert, decided here, with every other decision about calls."""
    s: Services = ctx["services"]
    call = await db.get_call(s.db, call_id)
    if call is None:
        return "missing"
    await after_line_change(s, call.id)
    return "settled"


async def poll_call(ctx: dict[str, Any], call_id: int) -> str:
    s: Services = ctx["services"]
    call = await db.get_call(s.db, call_id)
    if call is not None and call.merged_into is not None:
        return "merged"  # followed as part of the call it was merged into
    if call is not None and call.status in TERMINAL_CALL_STATUSES:
        # Ended (a callback, or a run of this job stopped before deciding): decide again,
        # which is idempotent, in case the decision was lost.
        await after_line_change(s, call.id)
        return "ended"
    if call is None or call.provider_sid is None:
        return "nothing-to-follow"
    bind_job(alert=call.alert, alert_id=call.alert_id, tenant=call.tenant)
    started = call.attempt_started_at or call.created_at
    age = datetime.now(UTC) - started
    try:
        observed = await s.provider.fetch_call(call.provider_sid)
    except PermanentProviderError as exc:
        await _end_unknown(s, call, f"provider cannot find the call: {exc}")
        return "lost"
    except ProviderError as exc:
        log.warning("call.poll_failed", call=call.id, error=str(exc))
        run_again_in(ctx, _next_poll_s(s, age.total_seconds()))
        return "poll-failed"
    await apply_status(s, call, observed, StatusSource.POLL)
    # An unknown word leaves the call where we last knew it (at least queued).
    status = provider_status(observed.status) or (
        call.status if call.status in LIVE_PROVIDER_STATUSES else CallStatus.QUEUED)
    if status in TERMINAL_CALL_STATUSES:
        return status
    if call.alert_status in CALLING_STOPPED_ALERT_STATUSES and (
            status in UNANSWERED_CALL_STATUSES) and (
            not await db.line_still_wanted(s.db, call.id)):
        # Resolved or acknowledged, and its cancel job was lost: hang it up now.
        await cancel_at_provider(s, call, call.provider_sid, StatusSource.CANCEL)
    limit = (
        s.settings.ring_timeout_s + s.settings.poll_margin_s
        if status in UNANSWERED_CALL_STATUSES
        else s.settings.max_call_duration_s
    )
    if age > timedelta(seconds=limit):
        await cancel_at_provider(s, call, call.provider_sid, StatusSource.POLL)
        said = "" if provider_status(observed.status) else (
            f"provider status {observed.status[:40]!r}; ")
        await _end_unknown(
            s, call, f"{said}no final status from the provider within {limit:.0f}s")
        return "timed-out"
    run_again_in(ctx, _next_poll_s(s, age.total_seconds()))
    return "following"


async def _end_unknown(s: Services, call: CallJob, reason: str) -> None:
    """poll_call gives up on a call the provider lost or never ended."""
    if await db.advance_call(s.db, call.id, CallUpdate(
            status=CallStatus.FAILED, source=StatusSource.POLL, error_message=reason)):
        metrics.call_ended(CallStatus.FAILED)
        log.error("call.lost", call=call.id, alert=call.alert, error=reason)
        await after_line_change(s, call.id)


async def cancel_at_provider(
    s: Services, call: CallJob, sid: str, source: StatusSource
) -> None:
    try:
        observed = await s.provider.cancel_call(sid)
    except ProviderError as exc:
        log.warning("call.cancel_failed", call=call.id, sid=sid, error=str(exc))
        return
    await apply_status(s, call, observed, source)
    log.info("call.cancel_requested", call=call.id, sid=sid, status=observed.status)


async def cancel_call(ctx: dict[str, Any], call_id: int) -> str:
    """After a resolve or an acknowledgement: cancel a call already at the provider and not
    yet answered."""
    s: Services = ctx["services"]
    call = await db.get_call(s.db, call_id)
    if call is not None and call.merged_into is not None:
        call = await db.get_call(s.db, call.merged_into)  # the call that was placed
    if call is None or call.status in TERMINAL_CALL_STATUSES:
        return "nothing-to-cancel"
    bind_job(alert=call.alert, alert_id=call.alert_id, tenant=call.tenant)
    if await db.line_still_wanted(s.db, call.id):
        # A merged call also speaks for an alert still being called: it goes on.
        return "still-wanted"
    if call.provider_sid is None:
        # Still dialing: place_call cancels it once the provider answers with a sid. Look
        # again while that POST may still be in flight (a job lasts at most its timeout).
        started = call.attempt_started_at or call.created_at
        if datetime.now(UTC) - started < timedelta(seconds=s.settings.call_job_timeout_s + 5):
            run_again_in(ctx, 0.5)
            return "waiting-for-sid"
        return "no-sid"
    await cancel_at_provider(s, call, call.provider_sid, StatusSource.CANCEL)
    return "canceled"
