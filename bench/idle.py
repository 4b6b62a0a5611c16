"""Idle CPU: a worker with nothing to do, as a share of one core, measured from /proc over
``idle_s`` seconds once it has settled. Baseline, same run: a plain arq worker
(``bench.arq_noop``) polling at the same 0.05 s.
"""

from __future__ import annotations

import sys
import time

from bench.common import Place, Processes, processes, usage, wait_until, workers
from bench.figures import Benchmark, Figure, Goal, Sample, Sizes


def _cpu_percent(procs: Processes, sizes: Sizes) -> float:
    time.sleep(sizes.settle_s)
    pid = procs.pids[0]
    before = usage(pid).cpu_s
    time.sleep(sizes.idle_s)
    procs.check_alive()
    return (usage(pid).cpu_s - before) / sizes.idle_s * 100


def run(place: Place, sizes: Sizes) -> dict[str, Sample]:
    place.reset()
    queue = f"{place.prefix}noop-queue"
    argv = [sys.executable, "-m", "bench.arq_noop", queue]
    with processes([(argv, place.worker_env())], "idle-arq") as procs:
        client = place.client()
        wait_until(lambda: bool(client.exists(f"{queue}:health-check")), 60, procs.check_alive,
                   what="the arq worker to start")
        client.close()
        baseline = _cpu_percent(procs, sizes)
    with workers(place, place.worker_env(), 1, label="idle") as procs:
        ours = _cpu_percent(procs, sizes)
    return {"idle_cpu": Sample(ours, baseline)}


def figures(sizes: Sizes) -> list[Figure]:
    return [Figure("idle_cpu", f"idle worker CPU (no events, {sizes.idle_s:g} s)",
                   "% of a core", "arq worker idle, poll 0.05 s",
                   Goal(3, "value", at_most=True))]


BENCHMARK = Benchmark("idle", "a worker's CPU with nothing to do vs an idle arq worker",
                      figures, run)
