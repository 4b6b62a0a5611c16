"""XADD → provider request latency, tuned worker vs arq's default poll delay (baseline).

Each event is XADDed alone (0.3 s apart) to a one-member group; the latency is the time from
the XADD returning to the fake Twilio receiving the create POST (both clocks are this
process's monotonic clock: the fake runs in a thread here, the worker in its own process).

    .venv/bin/python -m bench.latency [--events 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bench.common import (
    BENCH_REDIS,
    fresh_state,
    percentile,
    set_group,
    worker_env,
    worker_processes,
)
from producers import AlertProducer
from testing.fake_twilio import FakeTwilio


async def fire_spaced(count: int) -> list[float]:
    sent = []
    async with AlertProducer.from_url(BENCH_REDIS) as producer:
        for i in range(count):
            await producer.fire(alert_id=f"lat-{i}", group="bench", message="latency probe",
                                dedup_window_s=0)
            sent.append(time.monotonic())
            await asyncio.sleep(0.3)
    return sent


def measure(label: str, events: int, **overrides: str) -> list[float]:
    fresh_state()
    set_group("bench", ["+14155550100"])
    with FakeTwilio() as fake, worker_processes(worker_env(fake, **overrides)):
        sent = asyncio.run(fire_spaced(events))
        deadline = time.monotonic() + 30
        while len(fake.creates()) < events and time.monotonic() < deadline:
            time.sleep(0.1)
        creates = fake.creates()
    if len(creates) < events:
        raise SystemExit(f"{label}: only {len(creates)} of {events} calls were placed")
    return [(c.at - s) * 1000 for c, s in zip(creates, sent, strict=False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=30)
    args = parser.parse_args()
    runs = {
        "voicealert (poll 0.05 s)": measure("tuned", args.events),
        "baseline: arq default poll 0.5 s": measure(
            "baseline", args.events, VOICEALERT_POLL_DELAY_S="0.5"
        ),
    }
    print(f"XADD → Twilio create POST, {args.events} events, ms")
    print(f"{'configuration':<36} {'p50':>7} {'p90':>7} {'max':>7} {'mean':>7}")
    for label, values in runs.items():
        print(f"{label:<36} {percentile(values, 0.5):7.1f} {percentile(values, 0.9):7.1f} "
              f"{max(values):7.1f} {statistics.mean(values):7.1f}")


if __name__ == "__main__":
    main()
