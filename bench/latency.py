"""Latency: XADD returning → the provider receiving the call's create POST, one event at a
time at 100 and at 10 events per second.

One replica, the fake Twilio (a thread in this process; both ends read the same monotonic
clock), ``dedup_window_s`` 0 so every event rings; the same worker process serves both
rates, 100 ev/s first. Each event rings a person of its own (a one-member group per event,
its own number): one person is rung one call at a time, so events to the same person would
measure how long calls last, not the pipeline. The merge window is 0 for the same reason:
with the default (2 s), a new alert's first call waits that long for others to join it.
Each event says its number in its message, which the POST carries, so every POST is matched
to its event. The first events of each rate warm connections up and are not counted.
Baseline, same run: a process doing only XREADGROUP → POST → XACK (``bench.raw_post``).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable

from bench.common import (
    Place,
    fake_twilio_env,
    percentile,
    phones,
    processes,
    wait_until,
    workers,
)
from bench.figures import Benchmark, Figure, Goal, Sample, Sizes
from producers import AlertProducer
from schema import Member
from testing.fake_twilio import FakeTwilio
from worker import db

GROUP = "latency"
WARM_UP = 3
RATES = (100, 10)
_PROBE = re.compile(r"latency probe (\d+)")


def _count(rate: int, sizes: Sizes) -> int:
    return WARM_UP + max(2, round(rate * sizes.latency_s))


async def _fire_paced(place: Place, prefix: str, rate: int, count: int) -> list[float]:
    """XADD ``count`` events ``1/rate`` s apart; returns when each XADD returned."""
    sent = []
    async with AlertProducer.from_url(place.redis_url, prefix=prefix) as producer:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.fire(alert_id=f"lat-{rate}-{i}", group=_group(rate, i),
                                message=f"latency probe {i}", dedup_window_s=0)
            sent.append(time.monotonic())
    return sent


def _latencies_ms(fake: FakeTwilio, sent: list[float], check: Callable[[], None]) -> list[float]:
    count = len(sent)
    wait_until(lambda: len(fake.creates()) >= count, 60 + count / 10, check,
               what="every call's POST")
    arrived: dict[int, float] = {}
    for request in fake.creates():
        match = _PROBE.search(request.form.get("Twiml", [""])[0])
        if match:
            arrived.setdefault(int(match[1]), request.at)
    return [(arrived[i] - sent[i]) * 1000 for i in range(WARM_UP, count)]


def _each_rate(place: Place, prefix: str, fake: FakeTwilio, sizes: Sizes,
               check: Callable[[], None]) -> dict[int, list[float]]:
    latencies = {}
    for rate in RATES:
        fake.reset()
        sent = asyncio.run(_fire_paced(place, prefix, rate, _count(rate, sizes)))
        latencies[rate] = _latencies_ms(fake, sent, check)
    return latencies


def _group(rate: int, index: int) -> str:
    return f"{GROUP}-{rate}-{index}"


async def _one_person_groups(place: Place, sizes: Sizes) -> None:
    """A one-member group per event, each with a number of its own."""
    conn = await db.connect(place.database_url)
    try:
        for rate in RATES:
            for index in range(_count(rate, sizes)):
                [phone] = phones(1, start=RATES.index(rate) * 50_000 + index)
                await db.upsert_group(conn, "default", _group(rate, index),
                                      [Member(name="m0", phone=phone)])
    finally:
        await conn.close()


def voicealert_latencies(place: Place, sizes: Sizes) -> dict[int, list[float]]:
    place.reset()
    asyncio.run(_one_person_groups(place, sizes))
    with FakeTwilio() as fake:
        env = place.worker_env(**fake_twilio_env(fake), VOICEALERT_CALLS_PER_SECOND="1000",
                               VOICEALERT_MERGE_WINDOW_S="0")
        with workers(place, env, 1, label="latency") as procs:
            return _each_rate(place, place.prefix, fake, sizes, procs.check_alive)


def raw_latencies(place: Place, sizes: Sizes) -> dict[int, list[float]]:
    place.delete_keys()
    prefix = f"{place.prefix}raw:"
    stream = f"{prefix}events"
    with FakeTwilio() as fake:
        env = place.worker_env(**fake_twilio_env(fake))
        argv = [sys.executable, "-m", "bench.raw_post", stream, fake.base_url]
        with processes([(argv, env)], "raw-post") as procs:
            client = place.client()
            wait_until(lambda: bool(client.exists(f"{stream}:ready")), 60, procs.check_alive,
                       what="the raw consumer")
            client.close()
            return _each_rate(place, prefix, fake, sizes, procs.check_alive)


def figures(sizes: Sizes) -> list[Figure]:
    out = []
    for rate in RATES:
        events = _count(rate, sizes) - WARM_UP
        baseline = "raw XADD→XREADGROUP→POST"
        p50_goal = Goal(15 if rate == 100 else 10, "value", at_most=True)
        p99_goal = Goal(60, "value", at_most=True) if rate == 100 else None
        out += [
            Figure(f"latency_{rate}_p50",
                   f"latency XADD → provider POST at {rate} ev/s ({events:,} events), p50",
                   "ms", baseline, p50_goal),
            Figure(f"latency_{rate}_p99", f"the same at {rate} ev/s, p99", "ms", baseline,
                   p99_goal),
        ]
    return out


def run(place: Place, sizes: Sizes) -> dict[str, Sample]:
    raw = raw_latencies(place, sizes)
    ours = voicealert_latencies(place, sizes)
    samples = {}
    for rate in RATES:
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            samples[f"latency_{rate}_{name}"] = Sample(percentile(ours[rate], q),
                                                       percentile(raw[rate], q))
    return samples


BENCHMARK = Benchmark("latency", "XADD → provider POST at 100 and 10 ev/s vs a raw consumer",
                      figures, run)
