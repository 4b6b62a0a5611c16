"""Stream ingest: the consumer-group reader that turns stream entries into alerts and call jobs.

One consumer per replica reads batches with XREADGROUP. A batch is validated, resolved,
deduplicated (one round trip) and expanded (``worker.fanout``); its entries are
acknowledged only after their rows are committed and their call jobs enqueued. The rows of
a batch's suppressed duplicates (a storm's thousand per batch, Postgres's slowest work in
it) are written while the next batch is read and expanded, and those entries acknowledged
when they are. Entries a dead consumer left pending are reclaimed with XAUTOCLAIM; an entry
delivered too many times becomes a dead letter instead of looping.

Postgres being down is survivable (the batch stays pending and is retried); Redis being down
is not: the consumer raises, and the process exits non-zero for its supervisor to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.exceptions

from worker import db, metrics
from worker.dead_letters import ingest_letter
from worker.entries import Entry, Fields, ParsedEvent, parse_event, parse_events
from worker.fanout import FanOut, RangNobody
from worker.logs import get_logger
from worker.models import AlertStatus, Duplicate, NewDeadLetter
from worker.outages import DATABASE_UNAVAILABLE, caused_by_the_data
from worker.services import Services

log = get_logger(__name__)


@dataclass
class _Recording:
    """A batch's suppressed triggers whose rows are being written (``task``)."""

    duplicates: list[Duplicate]
    entries: Sequence[Entry]  # the batch they came from
    task: asyncio.Task[None]

    def suppressed_entries(self) -> list[Entry]:
        ids = {d.stream_id for d in self.duplicates}
        return [e for e in self.entries if e.stream_id in ids]


@dataclass
class _Failures:
    """In-process failure counts of entries whose processing raised (not infrastructure)."""

    counts: dict[str, int] = field(default_factory=dict)

    def add(self, stream_id: str) -> int:
        self.counts[stream_id] = self.counts.get(stream_id, 0) + 1
        return self.counts[stream_id]

    def forget(self, stream_ids: Sequence[str]) -> None:
        for sid in stream_ids:
            self.counts.pop(sid, None)


class StreamConsumer:
    def __init__(self, services: Services) -> None:
        self.s = services
        self.settings = services.settings
        self.stream = services.keys.events
        self.group = services.keys.consumer_group
        self.consumer = services.settings.consumer_name
        self.fanout = FanOut(services)
        self._stopping = asyncio.Event()
        self._backlog = True  # re-read our own pending entries first (after a restart too)
        self._failures = _Failures()
        self._last_reclaim = 0.0
        self._recording: _Recording | None = None

    def stop(self) -> None:
        """Stop reading; a batch being processed finishes first."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def ensure_group(self) -> None:
        try:
            # From id 0, not $: events written before the first worker ever started count.
            await self.s.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        await self.ensure_group()
        log.info("ingest.started", consumer=self.consumer, stream=self.stream)
        delay = 0.5
        while not self.stopping:
            try:
                await self.run_once()
                delay = 0.5
            except DATABASE_UNAVAILABLE as exc:
                log.warning("ingest.database_unavailable", error=f"{type(exc).__name__}: {exc}",
                            retry_in_s=delay)
                self._backlog = True
                await self._sleep(delay)
                delay = min(delay * 2, 10.0)
            except redis.exceptions.ResponseError as exc:
                if not _group_lost(exc):
                    raise
                # Redis lost its data (restarted without persistence, flushed): the stream
                # and the group are gone. Recreate them; the sweeper rebuilds the rest.
                log.error("ingest.group_recreated", error=str(exc), stream=self.stream)
                await self.ensure_group()
                self._backlog = True
        try:
            await self._settle()
        except DATABASE_UNAVAILABLE as exc:  # they stay pending, for a replica to reclaim
            log.warning("ingest.database_unavailable", error=f"{type(exc).__name__}: {exc}")
        log.info("ingest.stopped", consumer=self.consumer)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run_once(self) -> int:
        """Read and handle one batch; returns the number of entries handled."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_reclaim >= self.settings.reclaim_interval_s:
            self._last_reclaim = loop.time()
            await self.reclaim()
            await self.trim()
            await self.forget_departed_consumers()
        if self._backlog:
            await self._settle()  # re-reading our pending entries must not take those
        # While duplicates are being recorded, only take what is there: with nothing new,
        # finish them rather than wait for the next entry with them unacknowledged.
        entries = await self._read(wait=self._recording is None)
        if entries:
            await self.handle(entries, overlap=True)
        else:
            await self._settle()
        return len(entries)

    async def _read(self, *, wait: bool = True) -> list[Entry]:
        start = "0" if self._backlog else ">"
        response = await self.s.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self.settings.ingest_batch,
            block=self.settings.ingest_block_ms if wait and not self._backlog else None,
        )
        entries = [
            Entry(_text(sid), fields)  # redis-py built the dict; it is ours
            for _stream, items in response or []
            for sid, fields in items
            if fields is not None  # a pending entry trimmed from the stream
        ]
        if self._backlog and not entries:
            self._backlog = False
        return entries

    async def reclaim(self) -> None:
        """Take over entries idle too long in a dead (or stuck) consumer's pending list."""
        min_idle_ms = int(self.settings.reclaim_idle_s * 1000)
        claimed: list[Entry] = []
        cursor = "0-0"
        while True:
            cursor_raw, items, deleted = await self._autoclaim(min_idle_ms, cursor)
            cursor = _text(cursor_raw)
            claimed += [Entry(_text(sid), dict(f)) for sid, f in items if f is not None]
            if deleted:
                await self.s.redis.xack(self.stream, self.group, *deleted)
            if cursor == "0-0" or len(claimed) >= self.settings.ingest_batch:
                break
        if not claimed:
            return
        deliveries = await self._delivery_counts([e.stream_id for e in claimed])
        limit = self.settings.max_deliveries
        poison = [e for e in claimed if deliveries.get(e.stream_id, 1) > limit]
        if poison:
            await self.dead_letter_poison(poison, deliveries)
        retry = [e for e in claimed if e not in poison]
        log.info("ingest.reclaimed", count=len(claimed), poison=len(poison))
        if retry:
            await self.handle(retry)

    async def trim(self) -> int:
        """Drop entries that are both processed and older than the retention period.

        Without trimming the stream grows forever. Processed means older than every pending
        entry and than the group's last delivered id, so nothing unacknowledged is removed.
        """
        info = await self.s.redis.xinfo_groups(self.stream)
        ours = next((g for g in info if _text(g["name"]) == self.group), None)
        if ours is None:
            return 0
        floor = _stream_id_tuple(_text(ours["last-delivered-id"]))
        pending = await self.s.redis.xpending(self.stream, self.group)
        if pending and pending.get("min"):
            floor = min(floor, _stream_id_tuple(_text(pending["min"])))
        seconds, micros = await self.s.redis.time()
        horizon_ms = seconds * 1000 + micros // 1000 - int(self.settings.stream_retention_s * 1000)
        min_id = min(floor, (horizon_ms, 0))
        if min_id <= (0, 0):
            return 0
        removed = await self.s.redis.xtrim(
            self.stream, minid=f"{min_id[0]}-{min_id[1]}", approximate=False
        )
        return int(removed)

    async def forget_departed_consumers(self) -> None:
        """Each replica start is a new consumer name; remove names that left nothing pending
        and have been idle an hour, so XINFO CONSUMERS stays readable."""
        for consumer in await self.s.redis.xinfo_consumers(self.stream, self.group):
            name = _text(consumer["name"])
            if name != self.consumer and consumer["pending"] == 0 and consumer["idle"] > 3_600_000:
                await self.s.redis.xgroup_delconsumer(self.stream, self.group, name)

    async def _autoclaim(
        self, min_idle_ms: int, cursor: str
    ) -> tuple[bytes | str, list[tuple[bytes, Fields | None]], list[bytes]]:
        result = await self.s.redis.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_ms, cursor,
            count=self.settings.ingest_batch,
        )
        cursor_raw, items = result[0], result[1]
        deleted = result[2] if len(result) > 2 else []
        return cursor_raw, items, list(deleted)

    async def _delivery_counts(self, stream_ids: Sequence[str]) -> dict[str, int]:
        async with self.s.redis.pipeline(transaction=False) as pipe:
            for sid in stream_ids:
                pipe.xpending_range(self.stream, self.group, min=sid, max=sid, count=1)
            results = await pipe.execute()
        counts = {}
        for sid, rows in zip(stream_ids, results, strict=True):
            if rows:
                counts[sid] = int(rows[0]["times_delivered"])
        return counts

    async def dead_letter_poison(
        self, entries: Sequence[Entry], deliveries: dict[str, int]
    ) -> None:
        letters = [
            ingest_letter(
                e,
                reason="too_many_deliveries",
                error=f"delivered {deliveries.get(e.stream_id, 0)} times without completing",
                attempts=deliveries.get(e.stream_id, 0),
            )
            for e in entries
        ]
        await db.insert_dead_letters(self.s.db, letters)
        for entry in entries:
            await self._release_lock_of(entry)
            log.error("event.dead_lettered", stream_id=entry.stream_id,
                      reason="too_many_deliveries")
        await self.ack([e.stream_id for e in entries])

    async def _release_lock_of(self, entry: Entry) -> None:
        """Release the lock of an entry given up on, if it is an event that may hold one."""
        try:
            parsed = parse_event(entry)
        except Exception:  # invalid (it never took a lock), or a parser bug: nothing to free
            return
        await self._release_lock(parsed)

    async def _release_lock(self, parsed: ParsedEvent) -> None:
        """Release the event's dedup lock if it holds it: an event given up on must not
        suppress a corrected retry within its window."""
        event = parsed.event
        await self.s.dedup.release(event.tenant, event.alert_id, parsed.event_key)

    async def ack(self, stream_ids: Sequence[str]) -> None:
        if stream_ids:
            await self.s.redis.xack(self.stream, self.group, *stream_ids)
            self._failures.forget(stream_ids)

    async def handle(self, entries: Sequence[Entry], *, overlap: bool = False) -> None:
        """Validate, then expand; acknowledge what is durably done. With ``overlap``, the
        batch's duplicates are still being recorded when this returns (``_settle``).

        Nothing an entry contains may stop the batch: an unexpected exception (a bug, a value
        the database refuses) handles the batch again one entry at a time, and the entry that
        raises on its own is lettered as ``processing_failed``. What is not the entries' doing
        propagates (``caused_by_the_data``): Postgres unreachable is retried, Redis lost or a
        broken schema stops the process with the entries still pending."""
        try:
            await self._handle(entries, overlap=overlap)
        except DATABASE_UNAVAILABLE:
            # An outage is not the entries' fault: give back the delivery this attempt used,
            # or every retry during a long outage (backlog re-read, reclaim) would count
            # toward max_deliveries and good events would end as "too_many_deliveries".
            await self._return_deliveries(entries)
            raise
        except Exception as exc:
            if not caused_by_the_data(exc):
                raise
            if len(entries) > 1:
                log.warning("ingest.batch_failed", entries=len(entries),
                            error=f"{type(exc).__name__}: {exc}")
                for entry in entries:  # every step is idempotent: the done ones redo nothing
                    await self.handle([entry])
                return
            await self._letter_failed(entries[0], exc)

    async def _letter_failed(self, entry: Entry, exc: Exception) -> None:
        """Handling this entry alone raised: letter it and go on (it is the entry's doing)."""
        log.error("event.processing_failed", stream_id=entry.stream_id,
                  error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        # A letter is storable by construction: if this fails, the database is at fault,
        # and the error stops the consumer with the entry still pending.
        await db.insert_dead_letters(self.s.db, [ingest_letter(
            entry, reason="processing_failed", error=f"{type(exc).__name__}: {exc}")])
        await self._release_lock_of(entry)
        await self.ack([entry.stream_id])

    async def _return_deliveries(self, entries: Sequence[Entry]) -> None:
        counts = await self._delivery_counts([e.stream_id for e in entries])
        async with self.s.redis.pipeline(transaction=False) as pipe:
            for sid, count in counts.items():
                pipe.xclaim(self.stream, self.group, self.consumer, 0, [sid],
                            retrycount=max(count - 1, 1), justid=True)
            await pipe.execute()

    async def _record(self, duplicates: Sequence[Duplicate]) -> None:
        await db.record_duplicates(self.s.db, duplicates)
        _log_duplicates(duplicates)
        metrics.events_deduplicated(len(duplicates))

    async def _record_and_ack(
        self, duplicates: list[Duplicate], entries: Sequence[Entry], *, overlap: bool
    ) -> None:
        """Record a batch's duplicates, then acknowledge them; with ``overlap``, in a task
        that the next batch (or the next empty read) waits for."""
        await self._settle()  # one batch's duplicates at a time, acknowledged in order
        if not overlap:
            await self._record(duplicates)
            await self.ack([d.stream_id for d in duplicates])
            return
        task = asyncio.create_task(self._record(duplicates), name="record-duplicates")
        self._recording = _Recording(duplicates, entries, task)

    async def _settle(self) -> None:
        """Wait for the duplicates being recorded, and acknowledge them. Their failure is
        their batch's: an outage gives their deliveries back (to be read again) and
        propagates; an error of the data handles them one at a time (``handle``)."""
        recording, self._recording = self._recording, None
        if recording is None:
            return
        try:
            await recording.task
        except DATABASE_UNAVAILABLE:
            await self._return_deliveries(recording.suppressed_entries())
            self._backlog = True
            raise
        except Exception as exc:
            if not caused_by_the_data(exc):
                raise
            entries = recording.suppressed_entries()
            log.warning("ingest.batch_failed", entries=len(entries),
                        error=f"{type(exc).__name__}: {exc}")
            for entry in entries:
                await self.handle([entry])
            return
        await self.ack([d.stream_id for d in recording.duplicates])

    async def _handle(self, entries: Sequence[Entry], *, overlap: bool = False) -> None:
        valid: list[ParsedEvent] = []
        letters = []
        done: list[str] = []  # stream ids safe to acknowledge
        for entry, outcome in zip(entries, parse_events(entries), strict=True):
            if isinstance(outcome, ParsedEvent):
                valid.append(outcome)
                continue
            letters.append(ingest_letter(entry, reason=outcome.reason, error=outcome.error))
            done.append(entry.stream_id)
            log.warning("event.invalid", stream_id=entry.stream_id, reason=outcome.reason,
                        error=outcome.error[:500])
            metrics.event_invalid(outcome.reason)
        await db.insert_dead_letters(self.s.db, letters)
        metrics.events_ingested(p.event.action for p in valid)
        result = await self.fanout.expand(valid)
        await db.insert_dead_letters(
            self.s.db, [letter for r in result.rang_nobody if (letter := _rang_nobody_letter(r))]
        )
        done += result.done
        for failed in result.failed:
            entry = failed.event.entry
            count = self._failures.add(entry.stream_id)
            if count >= self.settings.max_deliveries:
                await db.insert_dead_letters(
                    self.s.db,
                    [ingest_letter(entry, reason="processing_failed", error=failed.error,
                                   attempts=count)],
                )
                await self._release_lock(failed.event)
                done.append(entry.stream_id)
            else:
                self._backlog = True
        await self.ack(done)
        if result.duplicates:
            await self._record_and_ack(result.duplicates, entries, overlap=overlap)


def _log_duplicates(duplicates: Sequence[Duplicate]) -> None:
    """One line per alert a batch's duplicates were suppressed for, not one per duplicate:
    a storm's lines were most of its cost. Each suppressed entry is on record in
    ``duplicate_events`` (``alerts show``); the line says how many, and the first and last."""
    by_owner: dict[tuple[str, str, str], list[Duplicate]] = {}
    for dup in duplicates:
        by_owner.setdefault((dup.tenant, dup.alert_id, dup.owner_key), []).append(dup)
    for (tenant, alert_id, owner_key), dups in by_owner.items():
        log.info("event.deduplicated", alert_id=alert_id, tenant=tenant,
                 stream_id=dups[0].stream_id, last_stream_id=dups[-1].stream_id,
                 count=len(dups), duplicate_of=owner_key)


def _rang_nobody_letter(rang: RangNobody) -> NewDeadLetter | None:
    """An unknown group is an operator's to fix (lettered, replayable once it exists); an
    empty group is recorded on its alert row only."""
    if rang.status != AlertStatus.UNKNOWN_GROUP:
        return None
    event = rang.event.event
    return ingest_letter(rang.event.entry, reason="unknown_group",
                         error=f"no group {event.group!r} in tenant {event.tenant!r}")


def _group_lost(exc: redis.exceptions.ResponseError) -> bool:
    """Whether Redis answered that the stream or its consumer group does not exist."""
    text = str(exc)
    # NOGROUP: reading a group that is gone; UNBLOCKED: the stream vanished under a blocked
    # read; "no such key": XINFO on a stream that is gone.
    return text.startswith(("NOGROUP", "UNBLOCKED")) or "no such key" in text


def _stream_id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
