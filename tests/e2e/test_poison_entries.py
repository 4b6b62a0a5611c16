"""One bad entry must never stop the pager (issue 7, item 1), under a real worker process.

Each poison entry that once crash-looped every replica (1,500-deep metadata, a 100,000-deep
array, a 5,000-digit number, NaN, 1e999, lone surrogates, a 1 MB event...), alone and inside
a batch of good events, and then a flood of 10,000 malformed entries of many kinds with 20
good events among them: the process never exits, every bad entry is lettered with its
reason, every good event rings once. The flood prints its figures (``pytest -s``).
"""

from __future__ import annotations

import time
from collections import Counter

import asyncpg
import redis.asyncio

from testing.fake_twilio import FakeTwilio
from testing.poison import POISON, Fields, good_event, malformed_entries
from tests.e2e.workers import SpawnWorker, WorkerProc
from tests.helpers import make_group, stream_drained, wait_for
from worker.config import Settings
from worker.keys import Keys

PHONE = "+14155550100"


async def xadd_all(client: redis.asyncio.Redis, stream: str, entries: list[Fields]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(entries), 500):
        async with client.pipeline(transaction=False) as pipe:
            for fields in entries[start:start + 500]:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            ids += [i.decode() for i in await pipe.execute()]
    return ids


async def letter_reasons(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch("SELECT letter_key, reason FROM dead_letters WHERE source = 'ingest'")
    return {r["letter_key"].removeprefix("stream:"): r["reason"] for r in rows}


def assert_never_crashed(worker: WorkerProc) -> None:
    assert worker.alive, f"the worker exited:\n{worker.log_tail()}"
    assert not worker.logged("ingest.crashed"), worker.log_tail()


async def test_poison_entries_alone_and_in_a_batch_stop_nothing_and_good_events_ring_once(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    await make_group(db_conn, "oncall", [PHONE])
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    stream = Keys(settings.redis_prefix).events
    try:
        # Written before the worker starts: its first read takes them as one batch.
        batch: list[Fields] = []
        for i, poison in enumerate(POISON):
            batch += [good_event(f"good-{i}"), poison.fields]
        batch_ids = await xadd_all(client, stream, batch)
        worker = await spawn_worker("poison").ready()
        expected = {sid: p.reason for sid, p in zip(batch_ids[1::2], POISON, strict=True)}

        async def lettered() -> bool:
            return set(await letter_reasons(db_conn)) >= set(expected)

        await wait_for(lettered, 20, "the batch's poison entries lettered")
        # Then each alone, the next one written once the previous is lettered.
        for poison in POISON:
            [sid] = await xadd_all(client, stream, [poison.fields])
            expected[sid] = poison.reason
            await wait_for(lettered, 10, f"{poison.name} lettered")
        await xadd_all(client, stream, [good_event("good-after")])

        async def every_good_event_rang() -> bool:
            return await placed_calls(db_conn) >= len(POISON) + 1

        await wait_for(every_good_event_rang, 20, "every good event's call")
        await wait_for(lambda: stream_drained(client, Keys(settings.redis_prefix)), 10,
                       "the stream drained")
    finally:
        await client.aclose()
    assert_never_crashed(worker)
    assert await letter_reasons(db_conn) == expected
    assert await placed_calls(db_conn) == len(POISON) + 1  # each good event once, nothing else
    assert len(fake_twilio.creates()) == await own_posts(db_conn)
    alerts = await db_conn.fetch("SELECT alert_id FROM alerts ORDER BY alert_id")
    assert sorted(r["alert_id"] for r in alerts) == sorted(
        [f"good-{i}" for i in range(len(POISON))] + ["good-after"])


async def placed_calls(db_conn: asyncpg.Connection) -> int:
    """Call rows at the provider: events for the same person may share one call (merged)."""
    return int(await db_conn.fetchval("SELECT count(*) FROM calls WHERE provider_sid IS NOT NULL"))


async def own_posts(db_conn: asyncpg.Connection) -> int:
    """The POSTs those rows needed: one per call not merged into another."""
    return int(await db_conn.fetchval(
        "SELECT count(*) FROM calls WHERE provider_sid IS NOT NULL AND merged_into IS NULL"))


FLOOD = 10_000
GOOD = 20


async def test_a_flood_of_ten_thousand_malformed_entries_is_drained_lettered_and_rings_all_good(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    await make_group(db_conn, "oncall", [PHONE])
    worker = await spawn_worker("flood").ready()
    bad = list(malformed_entries(FLOOD))
    entries: list[Fields] = []
    every = FLOOD // GOOD
    for i, fields in enumerate(bad):
        if i % every == every // 2:
            entries.append(good_event(f"good-{i // every}"))
        entries.append(fields)
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    keys = Keys(settings.redis_prefix)
    started = time.monotonic()
    try:
        ids = await xadd_all(client, keys.events, entries)
        await wait_for(lambda: stream_drained(client, keys), 90, "the flood drained")
        drained_s = time.monotonic() - started

        async def all_good_rang() -> bool:
            return await placed_calls(db_conn) >= GOOD

        await wait_for(all_good_rang, 20, "the good events' calls")
    finally:
        await client.aclose()
    assert_never_crashed(worker)
    good_ids = {sid for sid, fields in zip(ids, entries, strict=True)
                if fields in [good_event(f"good-{n}") for n in range(GOOD)]}
    reasons = await letter_reasons(db_conn)
    bad_ids = set(ids) - good_ids
    assert set(reasons) == bad_ids, "every malformed entry is lettered, and only those"
    assert "too_many_deliveries" not in reasons.values()
    assert await placed_calls(db_conn) == GOOD
    assert len(fake_twilio.creates()) == await own_posts(db_conn)
    rung = await db_conn.fetchval("SELECT count(DISTINCT alert_id) FROM alerts")
    assert rung == GOOD
    print(f"\n[flood] {FLOOD} malformed + {GOOD} good entries: drained in {drained_s:.1f}s, "
          f"{len(reasons)}/{FLOOD} lettered {dict(Counter(reasons.values()))}, "
          f"{rung}/{GOOD} rung, 0 crashes")
