"""Fan-out: one event to a 1,000-member group, every call placed as fast as the worker can.

One replica, the simulated provider, the call rate raised out of the way
(``VOICEALERT_CALLS_PER_SECOND`` 10,000: its 0.1 ms spacing is far below anything else here),
and no merge window (``VOICEALERT_MERGE_WINDOW_S`` 0, as in the latency benchmark: the 2 s a
new alert's calls deliberately wait for other alerts to the same people is not a cost of
placing them, and would be most of the figure).
The figure is members / (XADD → the last call has its provider sid). Baseline, same run: a
plain arq worker (``bench.arq_noop``: max_jobs 50, poll 0.05 s) running as many no-op jobs,
enqueued in one round trip; its figure is jobs / (enqueue → queue empty).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

import asyncpg
import redis.asyncio

from bench.arq_noop import NOOP
from bench.common import (
    Place,
    Processes,
    async_wait_until,
    phones,
    processes,
    wait_until,
    workers,
)
from bench.figures import Benchmark, Figure, Goal, Sample, Sizes
from schema import AlertEvent
from worker.queue import ScheduledJob, enqueue_many

GROUP = "fanout"
CALLS_PER_SECOND = "10000"


@dataclass(frozen=True)
class Placed:
    per_s: float
    cpu_ms_each: float  # the worker's CPU per call (or per no-op job)


async def _fire_and_wait(place: Place, members: int, procs: Processes) -> Placed:
    client = redis.asyncio.Redis.from_url(place.redis_url)
    conn = await asyncpg.connect(place.database_url, timeout=10)
    event = AlertEvent(alert_id="fanout", group=GROUP, message="Everyone: the site is down")

    async def placed() -> bool:
        count = await conn.fetchval("SELECT count(*) FROM calls WHERE provider_sid IS NOT NULL")
        return bool(count == members)

    try:
        started, cpu_before = time.monotonic(), procs.cpu_s()
        await client.xadd(place.keys.events, event.to_entry())
        finished = await async_wait_until(placed, 300, procs.check_alive, interval_s=0.005,
                                          what="every call to be placed")
        cpu = procs.cpu_s() - cpu_before
        return Placed(members / (finished - started), cpu / members * 1000)
    finally:
        await conn.close()
        await client.aclose()


def voicealert_rate(place: Place, members: int) -> Placed:
    place.reset()
    place.set_group(GROUP, phones(members))
    env = place.worker_env(VOICEALERT_CALLS_PER_SECOND=CALLS_PER_SECOND,
                           VOICEALERT_MERGE_WINDOW_S="0")
    with workers(place, env, 1, label="fanout") as procs:
        return asyncio.run(_fire_and_wait(place, members, procs))


async def _enqueue_and_wait(place: Place, queue: str, jobs: int, procs: Processes) -> Placed:
    client = redis.asyncio.Redis.from_url(place.redis_url)

    async def empty() -> bool:
        return bool(await client.zcard(queue) == 0)

    try:
        now_ms = int(time.time() * 1000)
        scheduled = [ScheduledJob(NOOP, f"{place.prefix}noop:{i}", (i,), now_ms)
                     for i in range(jobs)]
        started, cpu_before = time.monotonic(), procs.cpu_s()
        await enqueue_many(client, queue, scheduled, expires_ms=600_000)
        finished = await async_wait_until(empty, 300, procs.check_alive, interval_s=0.005,
                                          what="the no-op jobs")
        cpu = procs.cpu_s() - cpu_before
        return Placed(jobs / (finished - started), cpu / jobs * 1000)
    finally:
        await client.aclose()


def arq_rate(place: Place, jobs: int) -> Placed:
    place.delete_keys()
    queue = f"{place.prefix}noop-queue"
    env = place.worker_env()
    with processes([([sys.executable, "-m", "bench.arq_noop", queue], env)], "arq-noop") as procs:
        client = place.client()
        wait_until(lambda: bool(client.exists(f"{queue}:health-check")), 60, procs.check_alive,
                   what="the arq worker to start")
        client.close()
        return asyncio.run(_enqueue_and_wait(place, queue, jobs, procs))


def figures(sizes: Sizes) -> list[Figure]:
    baseline = "arq no-op jobs, max_jobs 50, poll 0.05 s"
    return [
        Figure("fanout", f"fan-out: {sizes.fanout_members:,} members, simulated provider, "
               "no rate limit", "calls/s", baseline, Goal(0.8)),
        Figure("fanout_cpu", "the same, worker CPU per call (per job for arq)", "ms", baseline,
               None),
    ]


def run(place: Place, sizes: Sizes) -> dict[str, Sample]:
    baseline = arq_rate(place, sizes.fanout_members)
    ours = voicealert_rate(place, sizes.fanout_members)
    return {
        "fanout": Sample(ours.per_s, baseline.per_s),
        "fanout_cpu": Sample(ours.cpu_ms_each, baseline.cpu_ms_each),
    }


BENCHMARK = Benchmark("fanout", "one event to a large group vs arq no-op jobs", figures, run)
