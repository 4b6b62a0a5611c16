"""Fan-out: valid events → dedup decision → alert and call rows → place_call jobs.

Events of a batch are handled in stream order around resolves and acknowledgements (a
trigger and its resolve in one batch must not ring after the resolve). Triggers between two
of those are handled together: one query for their groups, one pipelined round trip for
their dedup locks, one rate-limit reservation and one enqueue for all their calls.

What fan-out cannot finish it reports back to the stream consumer (``FanOutResult``): events
whose processing raised, events that rang nobody (no such group, no members), and the
triggers its dedup locks suppressed. The consumer owns its entries, so it writes their dead
letters and duplicate rows, and acknowledges them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from schema import DEFAULT_ROUND_DELAY_S
from worker import db
from worker.dedup import LockRequest
from worker.entries import ParsedEvent
from worker.logs import get_logger
from worker.models import AlertStatus, CallStatus, Duplicate, Group, NewAlert, StatusSource
from worker.outages import caused_by_the_data
from worker.queue import CANCEL_CALL
from worker.services import Services

log = get_logger(__name__)


@dataclass(frozen=True)
class Failed:
    """An event whose processing raised: the consumer counts it and, past the limit,
    dead-letters it."""

    event: ParsedEvent
    error: str


@dataclass(frozen=True)
class RangNobody:
    """A trigger whose alert row records that nobody was rung, and why (its status)."""

    event: ParsedEvent
    status: AlertStatus  # unknown_group or empty_group


@dataclass
class FanOutResult:
    done: list[str] = field(default_factory=list)  # stream ids safe to acknowledge
    failed: list[Failed] = field(default_factory=list)
    rang_nobody: list[RangNobody] = field(default_factory=list)
    # Suppressed triggers: acknowledged once recorded (db.record_duplicates), which the
    # consumer may overlap with reading its next batch.
    duplicates: list[Duplicate] = field(default_factory=list)


@dataclass(frozen=True)
class _Accepted:
    parsed: ParsedEvent
    group: Group  # with members


class FanOut:
    def __init__(self, services: Services) -> None:
        self.s = services

    async def expand(self, events: Sequence[ParsedEvent]) -> FanOutResult:
        result = FanOutResult()
        run: list[ParsedEvent] = []
        for parsed in events:
            if parsed.event.is_trigger:
                run.append(parsed)
                continue
            await self._triggers(run, result)
            run = []
            if parsed.event.action == "ack":
                await self._acknowledge(parsed)
            else:
                await self._resolve(parsed)
            result.done.append(parsed.entry.stream_id)
        await self._triggers(run, result)
        return result

    async def _resolve(self, parsed: ParsedEvent) -> None:
        event = parsed.event
        live = await db.resolve_alert(self.s.db, event.tenant, event.alert_id, StatusSource.CANCEL)
        await self.s.dedup.clear(event.tenant, event.alert_id)
        for call in live:
            await self.s.schedule(CANCEL_CALL, "cancel", call.id)
        log.info("alert.resolved", alert_id=event.alert_id, tenant=event.tenant,
                 stream_id=parsed.entry.stream_id, calls_to_cancel=len(live))

    async def _acknowledge(self, parsed: ParsedEvent) -> None:
        """Someone is on it: stop calling (the dedup lock stays: a re-trigger within the
        window is the same incident)."""
        event = parsed.event
        live = await db.acknowledge_alert(self.s.db, event.tenant, event.alert_id,
                                          event.acknowledged_by, StatusSource.CANCEL)
        for call in live:
            await self.s.schedule(CANCEL_CALL, "cancel", call.id)
        log.info("alert.acknowledged", alert_id=event.alert_id, tenant=event.tenant,
                 acknowledged_by=event.acknowledged_by, stream_id=parsed.entry.stream_id,
                 calls_to_cancel=len(live))

    async def _triggers(self, events: Sequence[ParsedEvent], result: FanOutResult) -> None:
        if not events:
            return
        # Entries with one payload share its parsed event (parse_events): a storm's batch
        # is one event, looked up once.
        distinct = {id(p.event): p.event for p in events}
        groups = await db.get_groups(
            self.s.db, [(e.tenant, e.group or "") for e in distinct.values()]
        )
        group_of = {key: groups.get((e.tenant, e.group or "")) for key, e in distinct.items()}
        accepted: list[ParsedEvent] = []
        for parsed in events:
            group = group_of[id(parsed.event)]
            if group is None or not group.members:
                # Never takes the lock: an event that rings nobody must not suppress a retry.
                status = AlertStatus.UNKNOWN_GROUP if group is None else AlertStatus.EMPTY_GROUP
                await self._record_no_calls(parsed, status)
                result.rang_nobody.append(RangNobody(parsed, status))
                result.done.append(parsed.entry.stream_id)
            else:
                accepted.append(parsed)
        to_expand = [
            _Accepted(parsed, group)
            for parsed in await self._deduplicate(accepted, result)
            if (group := group_of[id(parsed.event)]) is not None
        ]
        call_ids: list[int] = []
        for item in to_expand:
            try:
                call_ids += await self._store(item)
            except Exception as exc:  # a bug or a constraint this event trips: count it
                if not caused_by_the_data(exc):
                    raise
                log.exception("event.processing_failed", stream_id=item.parsed.entry.stream_id,
                              alert_id=item.parsed.event.alert_id)
                result.failed.append(Failed(item.parsed, f"{type(exc).__name__}: {exc}"))
                continue
            result.done.append(item.parsed.entry.stream_id)
        # Nothing is dialed before the merge window has passed (claim_line), so the calls'
        # rate slots start there: at their slots they are placed, not told to wait.
        window_s = self.s.settings.merge_window_s
        added = await self.s.schedule_calls(
            call_ids, not_before_ms=int((time.time() + window_s) * 1000) if window_s else 0)
        if call_ids:
            log.debug("calls.enqueued", calls=len(call_ids), new_jobs=added)

    async def _deduplicate(
        self, accepted: Sequence[ParsedEvent], result: FanOutResult
    ) -> list[ParsedEvent]:
        """The accepted triggers that hold their dedup lock; the others go to
        ``result.duplicates``. Decided as if one at a time, in stream order: the first
        request for a lock may take it, every later one is acquired only if it is the
        holder (``DedupLock.holders``)."""
        firsts: dict[tuple[str, str], LockRequest] = {}
        for parsed in accepted:
            event = parsed.event
            if event.dedup_window_s > 0 and (event.tenant, event.alert_id) not in firsts:
                firsts[event.tenant, event.alert_id] = LockRequest(
                    event.tenant, event.alert_id, parsed.event_key, event.dedup_window_s)
        holders = await self.s.dedup.holders(list(firsts.values()))
        kept: list[ParsedEvent] = []
        for parsed in accepted:
            event = parsed.event
            windowed = event.dedup_window_s > 0
            holder = holders[event.tenant, event.alert_id] if windowed else None
            if holder is None or holder == parsed.event_key:
                kept.append(parsed)
            else:
                result.duplicates.append(Duplicate(
                    event.tenant, holder, parsed.entry.stream_id, event.alert_id, event.event_id
                ))
        return kept

    def _new_alert(
        self, parsed: ParsedEvent, status: AlertStatus, group: Group | None = None
    ) -> NewAlert:
        """The alert row of a trigger; its rounds are the event's, else its group's."""
        event = parsed.event
        rounds = event.rounds or (group.rounds if group else 1)
        delay = event.round_delay_s
        return NewAlert(
            tenant=event.tenant,
            alert_id=event.alert_id,
            event_key=parsed.event_key,
            group_name=event.group or "",
            message=event.message or "",
            mode=event.mode,
            status=status,
            dedup_window_s=event.dedup_window_s,
            metadata=dict(event.metadata),
            event_id=event.event_id,
            stream_id=parsed.entry.stream_id,
            rounds=rounds,
            round_delay_s=delay if delay is not None else (
                group.round_delay_s if group else DEFAULT_ROUND_DELAY_S),
        )

    async def _record_no_calls(self, parsed: ParsedEvent, status: AlertStatus) -> None:
        async with self.s.db.acquire() as conn:
            await db.create_alert(conn, self._new_alert(parsed, status), [], StatusSource.WORKER)
        unknown = status == AlertStatus.UNKNOWN_GROUP
        log.warning("alert.unknown_group" if unknown else "alert.empty_group",
                    alert_id=parsed.event.alert_id, tenant=parsed.event.tenant,
                    group=parsed.event.group, stream_id=parsed.entry.stream_id)

    async def _store(self, item: _Accepted) -> list[int]:
        """Rows for one event (idempotent) and the ids of the calls to place now."""
        parsed = item.parsed
        async with self.s.db.acquire() as conn:
            stored = await db.create_alert(
                conn, self._new_alert(parsed, AlertStatus.CALLING, item.group),
                list(item.group.members),
                StatusSource.WORKER,
            )
            if stored.status != AlertStatus.CALLING:
                return []
            if stored.mode == "parallel":
                ids = [c.id for c in stored.calls if c.status == CallStatus.PENDING]
            else:
                progress = await db.alert_progress(conn, stored.id)
                ids = [progress.next_pending] if progress and progress.next_pending else []
            if ids and self.s.settings.merge_window_s:
                # Due, and waiting out the window: other alerts' calls to the same people
                # that take the number first speak for these too.
                await db.mark_waiting(conn, ids)
        log.info("alert.created" if stored.created else "alert.redelivered", alert=stored.id,
                 alert_id=parsed.event.alert_id, tenant=parsed.event.tenant,
                 stream_id=parsed.entry.stream_id, calls=len(stored.calls), mode=stored.mode)
        return ids

