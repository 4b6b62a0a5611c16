"""Alert storms: how fast workers absorb a burst of events with one alert_id.

``storm``: a backlog of N identical triggers (one alert_id, a 5-member group) is written to
the stream, then one replica starts; the figure is N / (first delivery → every entry
acknowledged). The first event rings the group, every other one is a counted duplicate: the
run checks both. Baseline, same run: the same backlog drained by a loop of raw
XREADGROUP(COUNT 100) + XACK (redis-py asyncio, this process).

``scaleout``: the same storm absorbed by two replicas against one.

``rss``: a worker's peak resident memory (VmHWM) through a storm against its memory idle.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis
import redis.asyncio

from bench.common import (
    Place,
    backlog,
    fill_stream,
    group_state,
    phones,
    usage,
    wait_until,
    workers,
)
from bench.figures import Benchmark, Figure, Goal, Sample, Sizes
from schema import AlertEvent

GROUP = "storm"
MEMBERS = 5
RAW_READ_COUNT = 100


def storm_payload() -> bytes:
    event = AlertEvent(alert_id="storm", group=GROUP, message="Everything is on fire")
    return event.to_entry()["event"].encode()


def _prepare(place: Place, events: int) -> redis.Redis:
    """A fresh database with the group, and a stream holding the whole storm."""
    place.reset()
    place.set_group(GROUP, phones(MEMBERS))
    client = place.client()
    keys = place.keys
    client.xgroup_create(keys.events, keys.consumer_group, id="0", mkstream=True)
    fill_stream(client, keys.events, [storm_payload()] * events)
    return client


def _check_outcome(place: Place, events: int) -> None:
    """The storm rang the group once and counted every other event as a duplicate."""
    calls = asyncio.run(place.fetchval("SELECT count(*) FROM calls"))
    duplicates = asyncio.run(place.fetchval("SELECT coalesce(sum(duplicates), 0) FROM alerts"))
    if (calls, duplicates) != (MEMBERS, events - 1):
        raise RuntimeError(f"storm of {events}: {calls} calls (want {MEMBERS}), "
                           f"{duplicates} duplicates (want {events - 1})")


@dataclass(frozen=True)
class Absorbed:
    events_per_s: float
    cpu_us_per_event: float  # of the consumer processes, together


def absorb(place: Place, events: int, replicas: int) -> Absorbed:
    """How fast ``replicas`` real workers absorb a backlog of ``events``, and their CPU."""
    client = _prepare(place, events)
    keys = place.keys
    env = place.worker_env()
    with workers(place, env, replicas, label=f"storm-{replicas}", wait=False) as procs:
        # The clock starts at the first delivery, not at the process start.
        started = wait_until(
            lambda: group_state(client, keys.events, keys.consumer_group)[0] < events,
            60, procs.check_alive, interval_s=0.002, what="the first read")
        cpu_before = procs.cpu_s()
        finished = wait_until(lambda: backlog(client, keys.events, keys.consumer_group) == 0,
                              600, procs.check_alive, interval_s=0.01, what="the storm")
        cpu = procs.cpu_s() - cpu_before
    client.close()
    _check_outcome(place, events)
    return Absorbed(events / (finished - started), cpu / events * 1e6)


async def _raw_drain(place: Place, stream: str, group: str, events: int) -> Absorbed:
    client = redis.asyncio.Redis.from_url(place.redis_url)
    try:
        started, cpu_before = time.perf_counter(), time.process_time()
        done = 0
        while done < events:
            response = await client.xreadgroup(group, "raw", {stream: ">"}, count=RAW_READ_COUNT)
            ids = [entry_id for _stream, entries in response for entry_id, _fields in entries]
            await client.xack(stream, group, *ids)
            done += len(ids)
        cpu = time.process_time() - cpu_before
        return Absorbed(events / (time.perf_counter() - started), cpu / events * 1e6)
    finally:
        await client.aclose()


def raw_absorb(place: Place, events: int) -> Absorbed:
    """The same backlog drained by raw XREADGROUP + XACK: what Redis and the client allow."""
    place.delete_keys()
    client = place.client()
    stream = f"{place.prefix}raw:events"
    client.xgroup_create(stream, "raw", id="0", mkstream=True)
    fill_stream(client, stream, [storm_payload()] * events)
    client.close()
    absorbed = asyncio.run(_raw_drain(place, stream, "raw", events))
    place.delete_keys()
    return absorbed


def storm_figures(sizes: Sizes) -> list[Figure]:
    baseline = f"raw XREADGROUP({RAW_READ_COUNT})+XACK"
    return [
        Figure("storm", f"storm: {sizes.storm_events:,} events, one alert_id, one replica",
               "ev/s", baseline, Goal(0.25)),
        # Not a goal of its own: what the storm figure costs, less sensitive than a rate to
        # whatever else runs on the machine.
        Figure("storm_cpu", "the same, worker CPU per event", "µs", baseline, None),
    ]


def run_storm(place: Place, sizes: Sizes) -> dict[str, Sample]:
    raw = raw_absorb(place, sizes.storm_events)
    ours = absorb(place, sizes.storm_events, 1)
    return {
        "storm": Sample(ours.events_per_s, raw.events_per_s),
        "storm_cpu": Sample(ours.cpu_us_per_event, raw.cpu_us_per_event),
    }


def scaleout_figures(sizes: Sizes) -> list[Figure]:
    return [Figure("scaleout", f"scale-out: storm of {sizes.scaleout_events:,} events, "
                   "2 replicas", "ev/s", "the same storm, 1 replica", Goal(1.7))]


def run_scaleout(place: Place, sizes: Sizes) -> dict[str, Sample]:
    one = absorb(place, sizes.scaleout_events, 1)
    two = absorb(place, sizes.scaleout_events, 2)
    return {"scaleout": Sample(two.events_per_s, one.events_per_s)}


def rss_figures(sizes: Sizes) -> list[Figure]:
    return [Figure("rss", f"worker peak RSS, storm of {sizes.rss_events:,} events", "MiB",
                   "the same worker idle", Goal(150, "value", at_most=True))]


def run_rss(place: Place, sizes: Sizes) -> dict[str, Sample]:
    place.reset()
    place.set_group(GROUP, phones(MEMBERS))
    keys = place.keys
    client = place.client()
    with workers(place, place.worker_env(), 1, label="rss") as procs:
        time.sleep(sizes.settle_s)  # pools opened, first polls done
        idle = usage(procs.pids[0]).rss_kib
        fill_stream(client, keys.events, [storm_payload()] * sizes.rss_events)
        wait_until(lambda: backlog(client, keys.events, keys.consumer_group) == 0, 900,
                   procs.check_alive, interval_s=0.05, what="the storm")
        peak = usage(procs.pids[0]).peak_rss_kib
    client.close()
    return {"rss": Sample(peak / 1024, idle / 1024)}


STORM = Benchmark("storm", "one replica absorbs a storm, vs raw XREADGROUP+XACK",
                  storm_figures, run_storm)
SCALEOUT = Benchmark("scaleout", "a storm absorbed by 2 replicas vs 1", scaleout_figures,
                     run_scaleout)
RSS = Benchmark("rss", "worker peak memory through a storm vs idle", rss_figures, run_rss)

