"""The sweeper: Postgres is the record, and Redis is made to agree with it.

Redis holds what is in motion (queued and deferred jobs, dedup locks, the consumer group);
Postgres holds what must happen. When Redis restarts without persistence or is flushed, or
a job is lost some other way, Postgres still has every call not ended. So every
``VOICEALERT_SWEEP_INTERVAL_S`` one replica (whichever takes the lock) compares the two and
re-creates what is missing:

- a ``pending`` call of a parallel alert: its place_call job, re-queued at a free slot of
  the call rate (counted as ``place``);
- a ``dialing`` call: its place_call job, which looks the attempt up at the provider before
  any new POST (``redial``);
- a ``queued``, ``ringing`` or ``in-progress`` call: its poll_call job, now (``follow``);
- an alert waiting for its next round: its start_round job, at ``next_round_at`` (``round``);
- an open alert with nothing in motion (a sequential alert whose next member was never
  scheduled; calls all ended but not decided): the decision, taken again (``decide``);
- an alert within its dedup window: its dedup lock, for what is left of it (``dedup_lock``).

Which job should follow a call is decided in one place (``expected_job``), to extend when a
new kind of work appears; a call placed or followed by a chunk job (worker/jobs.py) has that
job instead, read from the chunk's id in the queue (``queue.chunked_calls``). Every repair
is idempotent: job ids are call ids (an existing job is not queued twice) and decisions are
recomputed from the rows. A row that changed within
the last seconds may have its job about to be queued (rows are written, then jobs), and a
``dialing`` call within a job's in-progress lifetime may be dialing on a replica right now
(a second run could POST again): those wait for a later sweep.

Each repair is logged (``sweeper.repaired`` with counts) and counted
(``voicealert_sweeper_repairs``). The consumer group is recreated by the stream consumer
itself when Redis answers NOGROUP (worker/ingest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

from worker import db, metrics
from worker.jobs import IN_PROGRESS_MARGIN_S
from worker.logs import get_logger
from worker.models import CallStatus, OpenAlert, UnfinishedCall
from worker.outages import DATABASE_UNAVAILABLE, REDIS_UNAVAILABLE
from worker.outcomes import after_status_change
from worker.queue import POLL_CALL, START_ROUND, chunked_calls, job_id, live_jobs
from worker.services import Services

log = get_logger(__name__)

#: A row this fresh may have its job about to be queued by whoever wrote it.
FRESH_S = 2.0
#: The first sweep of a replica comes this soon (or after the interval, if shorter).
FIRST_SWEEP_S = 5.0


def expected_job(call: UnfinishedCall) -> str | None:
    """The kind of job (``job_id``'s kind) that should be following ``call``; None when its
    alert's decision brings it (a sequential call waiting for its turn) or another row's job
    carries it (a call merged into another)."""
    if call.merged_into is not None:
        return None
    if call.status == CallStatus.PENDING:
        return None if call.mode == "sequential" else "call"
    if call.status == CallStatus.DIALING:
        return "call"
    return "poll"


def settled_after_s(call: UnfinishedCall, job_timeout_s: float) -> float:
    """How long a call must have stayed unchanged before a missing job is believed lost."""
    if call.status == CallStatus.DIALING:
        # arq's in-progress key lives this long: a run may still be dialing it.
        return job_timeout_s + IN_PROGRESS_MARGIN_S
    return FRESH_S


class Sweeper:
    """Runs beside the stream consumer in every replica; sweeps when it takes the lock."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        interval = self.s.settings.sweep_interval_s
        wait = min(interval, FIRST_SWEEP_S)  # a replica starting may follow a lost Redis
        while not self._stopping.is_set():
            # Jitter: replicas started together do not all reach for the lock at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(),
                                       wait * random.uniform(0.8, 1.2))  # noqa: S311
            wait = interval
            if self._stopping.is_set():
                return
            try:
                if await self._take_turn():
                    await self.sweep()
            except (*DATABASE_UNAVAILABLE, *REDIS_UNAVAILABLE) as exc:
                log.warning("sweeper.unavailable", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug here must not stop the replica's other work
                log.error("sweeper.failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)

    async def _take_turn(self) -> bool:
        """One replica per interval: the lock expires before the next one is due."""
        ttl_ms = max(1, int(self.s.settings.sweep_interval_s * 800))
        return bool(await self.s.redis.set(self.s.keys.sweeper_lock,
                                           self.s.settings.consumer_name, nx=True, px=ttl_ms))

    async def sweep(self) -> Counter[str]:
        """One comparison of Postgres with Redis, repairing what is missing; returns what it
        repaired, by kind."""
        repaired: Counter[str] = Counter()
        await self._calls(repaired)
        await self._alerts(repaired)
        await self._dedup_locks(repaired)
        repaired = +repaired  # only what was repaired
        if repaired:
            log.warning("sweeper.repaired", **repaired)
            metrics.sweeper_repaired(repaired)
        return repaired

    async def _calls(self, repaired: Counter[str]) -> None:
        wanted: dict[str, tuple[str, UnfinishedCall]] = {}
        timeout = self.s.settings.call_job_timeout_s
        for call in await db.unfinished_calls(self.s.db):
            kind = expected_job(call)
            if kind is not None and call.idle_s >= settled_after_s(call, timeout):
                wanted[job_id(self.s.keys.prefix, kind, call.id)] = (kind, call)
        live = await live_jobs(self.s.redis, list(wanted))
        # A call of a chunk job (placed or followed with others) has no job of its own.
        chunked = await self._chunked() if len(live) < len(wanted) else {}
        lost = [item for jid, item in wanted.items()
                if jid not in live and item[1].id not in chunked.get(item[0], ())]
        to_place = [call.id for kind, call in lost if kind == "call"]
        if to_place:
            await self.s.schedule_calls(to_place)
        for kind, call in lost:
            if kind == "poll":
                await self.s.schedule(POLL_CALL, "poll", call.id, 0)
                repaired["follow"] += 1
            else:
                repaired["redial" if call.status == CallStatus.DIALING else "place"] += 1

    async def _alerts(self, repaired: Counter[str]) -> None:
        for alert in await db.open_alerts(self.s.db):
            if alert.idle_s < FRESH_S or alert.active:
                continue
            if alert.next_round_in_s is not None:
                if await self._round_lost(alert):
                    await self.s.schedule(START_ROUND, f"round-{alert.round + 1}", alert.id,
                                          max(0.0, alert.next_round_in_s))
                    repaired["round"] += 1
                continue
            pending = [job_id(self.s.keys.prefix, "call", c) for c in alert.pending]
            if not await live_jobs(self.s.redis, pending) and not (
                    set(alert.pending) & (await self._chunked())["call"]):
                await after_status_change(self.s, alert.id)
                repaired["decide"] += 1

    async def _chunked(self) -> dict[str, set[int]]:
        return await chunked_calls(self.s.redis, self.s.keys.queue, self.s.keys.prefix)

    async def _round_lost(self, alert: OpenAlert) -> bool:
        jid = job_id(self.s.keys.prefix, f"round-{alert.round + 1}", alert.id)
        return not await live_jobs(self.s.redis, [jid])

    async def _dedup_locks(self, repaired: Counter[str]) -> None:
        windows = await db.open_dedup_windows(self.s.db)
        if not windows:
            return
        async with self.s.redis.pipeline(transaction=False) as pipe:
            for w in windows:
                pipe.set(self.s.keys.dedup_lock(w.tenant, w.alert_id), w.owner, nx=True,
                         ex=w.remaining_s)
            results = await pipe.execute()
        repaired["dedup_lock"] += sum(1 for ok in results if ok)
