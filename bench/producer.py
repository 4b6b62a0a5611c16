"""``AlertProducer.fire_many`` against raw pipelined XADD of the bytes it writes.

Events are mappings, as a service passes them, each with its own alert_id, in batches of
``producer_batch`` per ``fire_many`` call. The baseline pipelines, in the same batches and
over the same kind of client (redis-py asyncio), XADDs of exactly the bytes the producer
wrote: what is left between them is validation, cleaning and serialisation. Two messages:
a short one (the event is 156 bytes with every default written out) and 245 characters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio

from bench.common import Place
from bench.figures import Benchmark, Figure, Goal, Sample, Sizes
from producers import AlertProducer
from schema import AlertEvent

SHORT_MESSAGE = "Disk 91% full!"
LONG_MESSAGE = (
    "Primary database db-1 in eu-west-1 has stopped accepting writes: replication lag on "
    "both replicas is above 30 seconds, the connection pool is exhausted and the checkout "
    "service is returning errors to customers. Follow the runbook wiki/dbfailover"
)


VARIANTS = {"producer_short": SHORT_MESSAGE, "producer_long": LONG_MESSAGE}


def events(count: int, message: str) -> list[dict[str, Any]]:
    return [
        {"alert_id": f"h{i:05d}", "group": "oncall", "message": message}
        for i in range(count)
    ]


def figures(sizes: Sizes) -> list[Figure]:
    goal = Goal(0.5)
    baseline = "raw pipelined XADD of the same bytes"
    return [
        Figure("producer_short",
               f"AlertProducer.fire_many, {sizes.producer_events:,} events with a "
               f"{len(SHORT_MESSAGE)}-character message (156 bytes with defaults), "
               f"{sizes.producer_batch:,} per call", "ev/s", baseline, goal),
        Figure("producer_long",
               f"the same with a {len(LONG_MESSAGE)}-character message", "ev/s", baseline,
               goal),
    ]


async def _measure(place: Place, sizes: Sizes, message: str) -> Sample:
    mappings = events(sizes.producer_events, message)
    batch = sizes.producer_batch
    batches = [mappings[i:i + batch] for i in range(0, len(mappings), batch)]
    # Exactly the bytes fire_many writes, computed outside the timing.
    payloads = [AlertEvent.model_validate(m).to_entry()["event"].encode() for m in mappings]
    raw_batches = [payloads[i:i + batch] for i in range(0, len(payloads), batch)]
    stream = place.keys.events
    client = redis.asyncio.Redis.from_url(place.redis_url)
    producer = AlertProducer(client, prefix=place.prefix)

    async def raw(chunk: Sequence[bytes]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for payload in chunk:
                pipe.xadd(stream, {"event": payload})
            await pipe.execute()

    try:
        await raw(raw_batches[0])  # warm-up: connection, first commands
        await producer.fire_many(batches[0])
        # Batch by batch in turn, so that both see the same load from whatever else runs on
        # the machine.
        raw_s = fire_s = 0.0
        for raw_batch, fire_batch in zip(raw_batches, batches, strict=True):
            started = time.perf_counter()
            await raw(raw_batch)
            raw_s += time.perf_counter() - started
            started = time.perf_counter()
            await producer.fire_many(fire_batch)
            fire_s += time.perf_counter() - started
    finally:
        await client.unlink(stream)
        await client.aclose()
    return Sample(len(mappings) / fire_s, len(mappings) / raw_s)


def run(place: Place, sizes: Sizes) -> dict[str, Sample]:
    place.delete_keys()
    return {key: asyncio.run(_measure(place, sizes, message))
            for key, message in VARIANTS.items()}


BENCHMARK = Benchmark(
    "producer", "AlertProducer.fire_many vs raw pipelined XADD of the same bytes", figures, run
)
