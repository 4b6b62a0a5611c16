"""The global call rate across replicas: two workers, ``VOICEALERT_CALLS_PER_SECOND`` 10.

Events, each to its own 10-member group, are written at once, so both replicas hold call
jobs (distinct people: one ring at a time per person would merge or hold back calls to the
same people, and this measures the rate, not that); the fake
Twilio records when each create POST arrived. Figures: the mean rate from the first POST to
the last (baseline: the rate set), and the most POSTs in any 1 s window (goal: never more
than the rate set).
"""

from __future__ import annotations

import asyncio
import bisect
import math

from bench.common import Place, fake_twilio_env, phones, wait_until, workers
from bench.figures import Benchmark, Figure, Goal, Sample, Sizes
from producers import AlertProducer
from testing.fake_twilio import FakeTwilio

GROUP = "rate"
MEMBERS = 10
RATE = 10
REPLICAS = 2


def max_in_window(times: list[float], window_s: float = 1.0) -> int:
    """The most of ``times`` (sorted) in any half-open window ``[t, t + window_s)``."""
    return max((bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times)),
               default=0)


async def _fire(place: Place, events: int) -> None:
    async with AlertProducer.from_url(place.redis_url, prefix=place.prefix) as producer:
        await producer.fire_many([
            {"alert_id": f"rate-{i}", "group": f"{GROUP}-{i}", "message": "Rate probe",
             "dedup_window_s": 0}
            for i in range(events)
        ])


def run(place: Place, sizes: Sizes) -> dict[str, Sample]:
    place.reset()
    events = math.ceil(sizes.rate_calls / MEMBERS)
    for i in range(events):
        place.set_group(f"{GROUP}-{i}", phones(MEMBERS, start=i * MEMBERS))
    calls = events * MEMBERS
    with FakeTwilio() as fake:
        env = place.worker_env(**fake_twilio_env(fake), VOICEALERT_CALLS_PER_SECOND=str(RATE))
        with workers(place, env, REPLICAS, label="rate") as procs:
            asyncio.run(_fire(place, events))
            wait_until(lambda: len(fake.creates()) >= calls, 60 + calls / RATE,
                       procs.check_alive, interval_s=0.05, what="every call")
            times = sorted(r.at for r in fake.creates())
    mean = (len(times) - 1) / (times[-1] - times[0])
    return {
        "rate_mean": Sample(mean, RATE),
        "rate_max_window": Sample(max_in_window(times)),
    }


def figures(sizes: Sizes) -> list[Figure]:
    calls = math.ceil(sizes.rate_calls / MEMBERS) * MEMBERS
    return [
        Figure("rate_mean", f"call rate over {REPLICAS} replicas, {RATE}/s set ({calls} calls)",
               "calls/s", "the rate set", None),
        Figure("rate_max_window", "the same, most calls in any 1 s window", "calls", None,
               Goal(RATE, "value", at_most=True)),
    ]


BENCHMARK = Benchmark("rate", "the global call rate over two replicas", figures, run)
