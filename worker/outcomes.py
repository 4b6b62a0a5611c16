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

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from worker import db, metrics
from worker.jobs import call_ctx, run_again_delay, run_again_in
from worker.logs import bind_job, get_logger, job_scope
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
from worker.queue import (
    CANCEL_CALL,
    POLL_CALL,
    START_ROUND,
    ScheduledJob,
    chunk_job_id,
    enqueue_many,
)
from worker.services import Services, job_expiry_ms
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


async def schedule_polls(s: Services, call_ids: list[int]) -> None:
    """Follow calls placed together (a chunk): one poll job for all of them, at the cadence
    of ``schedule_poll``."""
    if len(call_ids) <= 1:
        for call_id in call_ids:
            await schedule_poll(s, call_id)
        return
    delay_s = safety_poll_s(s) if s.settings.callbacks else POLL_FIRST_S
    job = ScheduledJob(POLL_CALL, chunk_job_id(s.keys.prefix, "polls", call_ids),
                       (sorted(call_ids),), int((time.time() + delay_s) * 1000))
    await enqueue_many(s.redis, s.keys.queue, [job], expires_ms=job_expiry_ms(s.settings))


async def record_provider_call(s: Services, call: CallJob, placed: ProviderCall, *,
                               follow: list[int] | None = None) -> None:
    """Attach the provider's call to our row, follow it (its own poll job, or appended to
    ``follow`` to be polled with others), and cancel it if the alert was resolved or
    acknowledged while we were dialing."""
    alert_status = await db.record_provider_sid(s.db, call.id, placed.sid)
    await apply_status(s, call, placed, StatusSource.WORKER)
    await _after_recorded(s, call, placed, alert_status, follow)


async def _after_recorded(s: Services, call: CallJob, placed: ProviderCall,
                          alert_status: AlertStatus | None, follow: list[int] | None) -> None:
    # Stopped before the sid was on record: the cancel job of the resolve or ack saw none
    # (stopped after: that job finds the sid and cancels).
    stopped = alert_status in CALLING_STOPPED_ALERT_STATUSES
    if stopped and placed.status in UNANSWERED_CALL_STATUSES and (
            not await db.line_still_wanted(s.db, call.id)):
        await cancel_at_provider(s, call, placed.sid, StatusSource.CANCEL)
    if placed.status not in TERMINAL_CALL_STATUSES:
        if follow is None:
            await schedule_poll(s, call.id)
        else:
            follow.append(call.id)


@dataclass
class Decisions:
    """What calls polled together leave to decide: each alert once, after all of them
    (an alert's decision reads all its calls: one per call would read a large alert's calls
    once per call)."""

    alerts: set[int] = field(default_factory=set)
    lines: set[int] = field(default_factory=set)  # calls whose every alert is to decide

    async def take(self, s: Services, calls: dict[int, CallJob]) -> None:
        """Decide, the alerts side by side (an alert's decision is its own); each alert's
        lines name it as a job's do (its calls say which it is)."""
        alerts = self.alerts | set(await db.lines_alerts(s.db, sorted(self.lines)))
        named = {call.alert: call for call in calls.values()}

        async def decide(alert_pk: int) -> None:
            call = named.get(alert_pk)
            job_scope(alert=alert_pk, alert_id=call.alert_id if call else None,
                      tenant=call.tenant if call else None)
            await after_status_change(s, alert_pk)

        await asyncio.gather(*(decide(alert_pk) for alert_pk in sorted(alerts)))


async def record_provider_calls(
    s: Services, placed: list[tuple[CallJob, ProviderCall]], follow: list[int]
) -> None:
    """``record_provider_call`` for calls a chunk placed, recorded in one statement when
    the provider said no more than a status we know (as it does when it creates a call);
    the calls to follow are appended to ``follow``."""
    simple = [(call, observed) for call, observed in placed
              if _simple(observed) and not observed.answered_by]
    for call, observed in placed:
        if (call, observed) not in simple:
            _scope(call)
            await record_provider_call(s, call, observed, follow=follow)
    recorded = await db.record_observed_calls(
        s.db, [_observation(call, observed) for call, observed in simple], StatusSource.WORKER)
    for call, observed in simple:
        found = recorded.get(call.id)
        if found is None:
            continue  # the row is gone
        alert_status, alerts, _ = found
        _scope(call)
        status = provider_status(observed.status) or CallStatus.QUEUED
        await _after_advance(s, call, observed, status, alerts, learned=False)
        await _after_recorded(s, call, observed, alert_status, follow)


async def apply_status(
    s: Services, call: CallJob, observed: ProviderCall, source: StatusSource, *,
    decisions: Decisions | None = None,
) -> bool:
    """The provider's word about a call: a keypress it reports, who answered, the status;
    what it means for the alerts is decided now, or left in ``decisions``."""
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
    return await _after_advance(s, call, observed, status, alerts, learned=learned,
                                decisions=decisions)


async def _after_advance(
    s: Services, call: CallJob, observed: ProviderCall, status: CallStatus, alerts: list[int],
    *, learned: bool, decisions: Decisions | None = None,
) -> bool:
    """What a status update that changed ``alerts`` (their calls) means: counted, logged,
    decided (now or in ``decisions``), a machine dealt with."""
    changed = bool(alerts)
    if changed:
        metrics.call_ended(status, observed.answered_by)
        # Answered and ended are worth a line each; queued and ringing only when debugging.
        log.log(_STATUS_LEVELS.get(status, logging.INFO), "call.status",
                call=call.id, alert=call.alert, alert_id=call.alert_id, sid=observed.sid,
                status=status, duration_s=observed.duration_s,
                answered_by=observed.answered_by)
    if learned:
        if decisions is None:
            await after_line_change(s, call.id)
        else:
            decisions.lines.add(call.id)
    elif changed and status in DECISIVE_CALL_STATUSES:
        # Queued or ringing decides nothing (the call stays open and active); the alerts
        # come back from the update, not from reading the line again.
        if decisions is not None:
            decisions.alerts.update(alerts)
        for alert_pk in alerts if decisions is None else ():
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


async def poll_calls(ctx: dict[str, Any], call_ids: list[Any]) -> str:
    """Calls placed together, polled together: each as its own ``poll_call`` would, in
    one job that runs again, for the calls still to follow, as soon as the first of them
    is due; what the provider said about them recorded together (``apply_statuses``). A
    run that raised is run again whole (a poll is idempotent)."""
    s: Services = ctx["services"]
    ids = [int(cid) for cid in call_ids]
    calls = await db.get_calls(s.db, ids)
    owns = [call_ctx(ctx, holds_slot=True) for _ in ids]
    decisions = Decisions()
    fetched = await asyncio.gather(
        *(_fetch_one(own, s, cid, calls.get(cid)) for own, cid in zip(owns, ids, strict=True)),
        return_exceptions=True)
    observed = [(own, calls[cid], found)
                for own, cid, found in zip(owns, ids, fetched, strict=True)
                if isinstance(found, ProviderCall)]
    try:
        await apply_statuses(s, [(call, found) for _, call, found in observed],
                             StatusSource.POLL, decisions)
    finally:
        await decisions.take(s, calls)  # what was applied is decided, whatever raised
    followed = await asyncio.gather(
        *(_after_poll_one(own, s, call, found) for own, call, found in observed),
        return_exceptions=True)
    for result in (*fetched, *followed):
        if isinstance(result, BaseException):
            raise result
    again = [(cid, delay) for cid, own in zip(ids, owns, strict=True)
             if (delay := run_again_delay(own)) is not None]
    if again:
        run_again_in(ctx, min(delay for _, (delay, _) in again),
                     arg=[cid for cid, _ in again])
    return f"{len(again)} following"


async def apply_statuses(s: Services, observed: list[tuple[CallJob, ProviderCall]],
                         source: StatusSource, decisions: Decisions) -> None:
    """``apply_status`` for several calls: what the provider said recorded in one statement
    when it is a status we know, with who answered and how long (``db.record_observed_calls``);
    a keypress or a word we do not know goes through ``apply_status``."""
    simple = [(call, found) for call, found in observed if _simple(found)]
    for call, found in observed:
        if not _simple(found):
            _scope(call)
            await apply_status(s, call, found, source, decisions=decisions)
    recorded = await db.record_observed_calls(
        s.db, [_observation(call, found) for call, found in simple], source)
    for call, found in simple:
        if call.id in recorded:
            _scope(call)
            _, alerts, learned = recorded[call.id]
            await _after_advance(s, call, found, provider_status(found.status)
                                 or CallStatus.QUEUED, alerts, learned=learned,
                                 decisions=decisions)


def _scope(call: CallJob) -> None:
    """The log scope of one call of a chunk (a chunk job has none of its own)."""
    job_scope(call=call.id, alert=call.alert, alert_id=call.alert_id, tenant=call.tenant)


async def _fetch_one(ctx: dict[str, Any], s: Services, call_id: int,
                     call: CallJob | None) -> ProviderCall | str:
    job_scope(call=call_id)  # this task's own scope: its lines name its call
    return await _fetch(ctx, s, call)


async def _after_poll_one(ctx: dict[str, Any], s: Services, call: CallJob,
                          observed: ProviderCall) -> str:
    _scope(call)
    return await _after_poll(ctx, s, call, observed)


def _simple(observed: ProviderCall) -> bool:
    return observed.digits is None and provider_status(observed.status) is not None


def _observation(call: CallJob, observed: ProviderCall) -> db.Observation:
    return db.Observation(call.id, observed.sid, str(provider_status(observed.status)),
                          observed.answered_by, observed.duration_s)


async def poll_call(ctx: dict[str, Any], call_id: int) -> str:
    s: Services = ctx["services"]
    call = await db.get_call(s.db, call_id)
    found = await _fetch(ctx, s, call)
    if not isinstance(found, ProviderCall):
        return found
    assert call is not None
    await apply_status(s, call, found, StatusSource.POLL)
    return await _after_poll(ctx, s, call, found)


async def _fetch(ctx: dict[str, Any], s: Services, call: CallJob | None) -> ProviderCall | str:
    """A poll's look at the provider: what it says about the call, or why there is nothing
    more to do this round (the job's result)."""
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
    try:
        return await s.provider.fetch_call(call.provider_sid)
    except PermanentProviderError as exc:
        await _end_unknown(s, call, f"provider cannot find the call: {exc}")
        return "lost"
    except ProviderError as exc:
        log.warning("call.poll_failed", call=call.id, error=str(exc))
        run_again_in(ctx, _next_poll_s(s, _age(call).total_seconds()))
        return "poll-failed"


def _age(call: CallJob) -> timedelta:
    return datetime.now(UTC) - (call.attempt_started_at or call.created_at)


async def _after_poll(ctx: dict[str, Any], s: Services, call: CallJob,
                      observed: ProviderCall) -> str:
    """After what the provider said is applied: a call to hang up, one that took too long,
    or the next poll."""
    assert call.provider_sid is not None
    age = _age(call)
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
