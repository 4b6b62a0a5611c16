"""Latency: XADD returning → the provider receiving the call's create POST, one event at a
time at 100 and at 10 events per second.

One replica, the fake Twilio (a thread in this process; both ends read the same monotonic
clock), ``dedup_window_s`` 0 so every event rings; the same worker process serves both
rates, 100 ev/s first, then (once its job queue is empty) 10 ev/s. Each event rings a person
of its own (a one-member group per event, its own number): one person is rung one call at a
time, so events to the same person would measure how long calls last, not the pipeline. The
merge window is 0 for the same reason: with the default (2 s), a new alert's first call
waits that long for other alerts to join it. Each event says its rate and number in its
message, which the POST carries, so every POST is
matched to its event. The first events of each rate warm connections up and are not counted.
Baseline, same run: a process doing only XREADGROUP → POST → XACK (``bench.raw_post``).

Where the time goes, from the worker's own log (wall clock, same machine): XADD → the alert
row is stored (``alert.created``: ingest and fan-out), then → the call job starts dialing
(``call.dialing``: the job queue's pick-up).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from bench.common import (
    Place,
    Processes,
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
_PROBE = re.compile(r"latency probe (\d+)-(\d+)")


@dataclass(frozen=True)
class Sent:
    # When the XADD was sent, on the clock the fake Twilio records with. Sent, not returned:
    # a fast consumer can POST before the producer has read XADD's reply, and a latency
    # measured from the reply came out negative for the raw baseline.
    monotonic: float
    wall: float  # the same moment on the clock of the worker's log


@dataclass(frozen=True)
class Phase:
    """One rate's events: when each was sent, and when its POST arrived (same index)."""

    rate: int
    sent: list[Sent]
    arrived: list[float]
    cpu_s: float  # the consumer's CPU from the first XADD until its follow-up jobs were done

    def latencies_ms(self) -> list[float]:
        return [(a - s.monotonic) * 1000
                for s, a in zip(self.sent[WARM_UP:], self.arrived[WARM_UP:], strict=True)]


def _count(rate: int, sizes: Sizes) -> int:
    return WARM_UP + max(2, round(rate * sizes.latency_s))


def _alert_id(rate: int, i: int) -> str:
    return f"lat-{rate}-{i}"


async def _fire_paced(place: Place, prefix: str, rate: int, count: int) -> list[Sent]:
    """XADD ``count`` events ``1/rate`` s apart; returns when each XADD was sent."""
    sent = []
    async with AlertProducer.from_url(place.redis_url, prefix=prefix) as producer:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at = Sent(time.monotonic(), time.time())
            await producer.fire(alert_id=_alert_id(rate, i), group=_group(rate, i),
                                message=f"latency probe {rate}-{i}", dedup_window_s=0)
            sent.append(sent_at)
    return sent


def _arrivals(fake: FakeTwilio, rate: int, count: int, check: Callable[[], None]) -> list[float]:
    arrived: dict[int, float] = {}

    def all_arrived() -> bool:
        for request in fake.creates():
            match = _PROBE.search(request.form.get("Twiml", [""])[0])
            if match and int(match[1]) == rate:
                arrived.setdefault(int(match[2]), request.at)
        return len(arrived) == count

    wait_until(all_arrived, 60 + count / 10, check, interval_s=0.2, what="every call's POST")
    return [arrived[i] for i in range(count)]


def _phases(place: Place, prefix: str, fake: FakeTwilio, sizes: Sizes, procs: Processes,
            settle: Callable[[], None]) -> list[Phase]:
    phases = []
    for rate in RATES:
        count = _count(rate, sizes)
        cpu_before = procs.cpu_s()
        sent = asyncio.run(_fire_paced(place, prefix, rate, count))
        arrived = _arrivals(fake, rate, count, procs.check_alive)
        settle()
        phases.append(Phase(rate, sent, arrived, procs.cpu_s() - cpu_before))
    return phases


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


def voicealert_phases(place: Place, sizes: Sizes) -> tuple[list[Phase], str]:
    """The phases, and the worker's log (read before its temporary directory goes)."""
    place.reset()
    asyncio.run(_one_person_groups(place, sizes))
    with FakeTwilio() as fake:
        env = place.worker_env(**fake_twilio_env(fake), VOICEALERT_CALLS_PER_SECOND="1000",
                               VOICEALERT_MERGE_WINDOW_S="0")
        with workers(place, env, 1, label="latency") as procs:
            client = place.client()

            def settle() -> None:
                # The calls' follow-up jobs are done: no job due or running (a job deferred
                # to later, such as an alert's next round, does not count).
                wait_until(lambda: _jobs_due(client, place.keys.queue) == 0, 120,
                           procs.check_alive, interval_s=0.05, what="the job queue to empty")

            phases = _phases(place, place.prefix, fake, sizes, procs, settle)
            client.close()
            log = procs.logs[0].read_text(errors="replace")
    return phases, log


def _jobs_due(client: redis.Redis, queue: str) -> int:
    """Jobs of arq's queue whose time has come (arq keeps a running job there too)."""
    due: int = client.zcount(queue, "-inf", int(time.time() * 1000))  # type: ignore[assignment]
    return due


def raw_phases(place: Place, sizes: Sizes) -> list[Phase]:
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
            return _phases(place, prefix, fake, sizes, procs, lambda: time.sleep(0.2))


def _logged_at(log: str, event: str) -> dict[str, float]:
    """alert_id → wall time of the worker's first log line ``event`` about it."""
    found: dict[str, float] = {}
    for line in log.splitlines():
        if f'"{event}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event and "alert_id" in record:
            when = datetime.datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
            found.setdefault(record["alert_id"], when.timestamp())
    return found


def breakdown_ms(phase: Phase, log: str) -> tuple[list[float], list[float]]:
    """(XADD → alert row stored, alert row → call job dialing) for each counted event."""
    created, dialing = _logged_at(log, "alert.created"), _logged_at(log, "call.dialing")
    ingest, pickup = [], []
    for i, sent in enumerate(phase.sent[WARM_UP:], start=WARM_UP):
        alert_id = _alert_id(phase.rate, i)
        ingest.append((created[alert_id] - sent.wall) * 1000)
        pickup.append((dialing[alert_id] - created[alert_id]) * 1000)
    return ingest, pickup


def figures(sizes: Sizes) -> list[Figure]:
    out = []
    baseline = "raw XADD→XREADGROUP→POST"
    for rate in RATES:
        events = _count(rate, sizes) - WARM_UP
        p50_goal = Goal(15 if rate == 100 else 10, "value", at_most=True)
        p99_goal = Goal(60, "value", at_most=True) if rate == 100 else None
        out += [
            Figure(f"latency_{rate}_p50",
                   f"latency XADD → provider POST at {rate} ev/s ({events:,} events), p50",
                   "ms", baseline, p50_goal),
            Figure(f"latency_{rate}_p99", f"the same at {rate} ev/s, p99", "ms", baseline,
                   p99_goal),
            Figure(f"latency_{rate}_ingest", f"at {rate} ev/s: XADD → alert row stored, p50",
                   "ms", None, None),
            Figure(f"latency_{rate}_pickup",
                   f"at {rate} ev/s: alert row → call job dialing, p50", "ms", None, None),
        ]
    out.append(Figure("latency_cpu", f"at {RATES[0]} ev/s: worker CPU per event (its alert, "
                      "call and follow-up jobs)", "ms", baseline, None))
    return out


def run(place: Place, sizes: Sizes) -> dict[str, Sample]:
    raw = {phase.rate: phase for phase in raw_phases(place, sizes)}
    phases, log = voicealert_phases(place, sizes)
    samples = {}
    for phase in phases:
        ours, theirs = phase.latencies_ms(), raw[phase.rate].latencies_ms()
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            samples[f"latency_{phase.rate}_{name}"] = Sample(percentile(ours, q),
                                                             percentile(theirs, q))
        ingest, pickup = breakdown_ms(phase, log)
        samples[f"latency_{phase.rate}_ingest"] = Sample(percentile(ingest, 0.5))
        samples[f"latency_{phase.rate}_pickup"] = Sample(percentile(pickup, 0.5))
    first, raw_first = phases[0], raw[RATES[0]]
    samples["latency_cpu"] = Sample(first.cpu_s / len(first.sent) * 1000,
                                    raw_first.cpu_s / len(raw_first.sent) * 1000)
    return samples


BENCHMARK = Benchmark("latency", "XADD → provider POST at 100 and 10 ev/s vs a raw consumer",
                      figures, run)
