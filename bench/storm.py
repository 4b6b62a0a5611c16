"""An alert storm: N events with the same alert_id in one burst, to a 5-member group.

Measures how fast one replica absorbs the burst (every entry acknowledged) and how many calls
it places (5: the storm rings each member once). Baseline from the same run: the same worker
reading one entry per XREADGROUP (VOICEALERT_INGEST_BATCH=1), i.e. per-event processing as
an arq-job-per-event design would do it.

    .venv/bin/python -m bench.storm [--events 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import redis

from bench.common import BENCH_REDIS, fresh_state, set_group, worker_env, worker_processes
from producers import AlertProducer
from testing.fake_twilio import FakeTwilio

PHONES = [f"+1415555{i:04d}" for i in range(100, 105)]


async def burst(count: int) -> float:
    events = [
        {"alert_id": "storm", "group": "bench", "message": "Everything is on fire"}
        for _ in range(count)
    ]
    async with AlertProducer.from_url(BENCH_REDIS) as producer:
        started = time.monotonic()
        for i in range(0, count, 500):
            await producer.fire_many(events[i : i + 500])
    return started


def backlog(client: redis.Redis) -> int:
    groups: list[dict[str, Any]] = client.xinfo_groups("voicealert:events")  # type: ignore[assignment]
    if not groups:
        return -1
    group = groups[0]
    return int(group.get("lag") or 0) + int(group.get("pending") or 0)


def measure(events: int, **overrides: str) -> tuple[float, int]:
    fresh_state()
    set_group("bench", PHONES)
    client: redis.Redis = redis.Redis.from_url(BENCH_REDIS)
    with FakeTwilio() as fake, worker_processes(worker_env(fake, **overrides)):
        started = asyncio.run(burst(events))
        deadline = time.monotonic() + 300
        while backlog(client) != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # let the calls of the first event go out
        posts = len(fake.creates())
    return elapsed, posts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    runs = {
        "voicealert (batches of 100)": measure(args.events),
        "baseline: one entry per read": measure(args.events, VOICEALERT_INGEST_BATCH="1"),
    }
    print(f"storm: {args.events} events, same alert_id, 5-member group, one replica")
    print(f"{'configuration':<32} {'absorbed in s':>14} {'events/s':>10} {'calls':>6}")
    for label, (elapsed, posts) in runs.items():
        print(f"{label:<32} {elapsed:14.2f} {args.events / elapsed:10.0f} {posts:6d}")


if __name__ == "__main__":
    main()
