"""The dead-letter queue as an operator uses it: list, show, replay, purge (real CLI processes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import asyncpg

from producers import AlertProducer
from testing.fake_twilio import FakeTwilio
from tests.helpers import make_group, wait_for
from worker import db
from worker.config import Settings
from worker.models import DeadLetter, NewDeadLetter


async def voicealert(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # In a thread: the in-process worker shares this event loop, and a command that takes
    # seconds on a loaded machine would otherwise freeze it past its Redis read timeout.
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "worker", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def letters(conn: asyncpg.Connection) -> list[DeadLetter]:
    return await db.list_dead_letters(conn)


async def test_unknown_group_letter_replays_once_the_group_exists(
    settings: Settings, env: dict[str, str], db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    await start_worker()
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        await p.fire(alert_id="disk-full", group="storage", message="Disk is full",
                     event_id="evt-1")

    async def lettered() -> bool:
        return len(await letters(db_conn)) == 1

    await wait_for(lettered)
    letter = (await letters(db_conn))[0]
    assert (letter.source, letter.reason) == ("ingest", "unknown_group")

    listed = await voicealert(env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [d["id"] for d in json.loads(listed.stdout)] == [letter.id]
    shown = await voicealert(env, "dlq", "show", str(letter.id))
    assert json.loads(shown.stdout)["reason"] == "unknown_group"

    # Cause not fixed: replay refuses, says why, and leaves the letter replayable.
    refused = await voicealert(env, "dlq", "replay", str(letter.id))
    assert refused.returncode == 1
    assert "group 'storage'" in refused.stderr
    assert "does not exist" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert (await db.get_dead_letter(db_conn, letter.id)).replayed_at is None  # type: ignore[union-attr]
    assert fake_twilio.creates() == []

    await make_group(db_conn, "storage", ["+14155550142"])
    replayed = await voicealert(env, "dlq", "replay", str(letter.id))
    assert replayed.returncode == 0, replayed.stderr

    async def rang() -> bool:
        rows = await db.list_calls(db_conn, alert_id="disk-full")
        return len(rows) == 1 and rows[0].status == "completed"

    await wait_for(rang, 45, "the replayed call completed")  # a whole call, on a loaded machine
    assert [c.form["To"][0] for c in fake_twilio.creates()] == ["+14155550142"]

    # The alert's status follows its call's in the same job, a moment after the call row.
    async def answered() -> bool:
        status = await db_conn.fetchval("SELECT status FROM alerts WHERE alert_id = 'disk-full'")
        return bool(status == "answered")

    await wait_for(answered, what="the alert answered")

    again = await voicealert(env, "dlq", "replay", str(letter.id))
    assert again.returncode == 1
    assert "already replayed" in again.stderr


async def test_rejected_number_letter_replays_to_the_corrected_number(
    settings: Settings, env: dict[str, str], db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    fake_twilio.fail_number("+14155550199", code=21211)
    await make_group(db_conn, "ops", ["+14155550199"])
    await start_worker()
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        await p.fire(alert_id="api-5xx", group="ops", message="API errors")

    async def lettered() -> bool:
        return len(await letters(db_conn)) == 1

    await wait_for(lettered)
    letter = (await letters(db_conn))[0]
    assert (letter.source, letter.reason) == ("call", "provider_rejected")
    assert len(fake_twilio.creates()) == 1

    refused = await voicealert(env, "dlq", "replay", "--all")
    assert refused.returncode == 1
    assert "unchanged" in refused.stderr
    assert "+14155550199" not in refused.stderr  # masked

    await make_group(db_conn, "ops", ["+14155550100"])  # member0's number fixed
    replayed = await voicealert(env, "dlq", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert "1 replayed, 0 refused" in replayed.stdout

    async def rang() -> bool:
        rows = await db.list_calls(db_conn, alert_id="api-5xx")
        return [r.status for r in rows] == ["failed", "completed"]

    await wait_for(rang, 45, "the replayed call completed")  # a whole call, on a loaded machine
    assert [c.form["To"][0] for c in fake_twilio.creates()] == ["+14155550199", "+14155550100"]


async def test_purge_by_id_all_and_age(
    env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    await db.insert_dead_letters(db_conn, [
        NewDeadLetter(source="ingest", reason="invalid_json", error="x",
                         payload={"stream_id": f"1-{i}", "fields": {"event": "{"}},
                         letter_key=f"stream:1-{i}")
        for i in range(3)
    ])
    await db_conn.execute(
        "UPDATE dead_letters SET created_at = now() - interval '10 days'"
        " WHERE letter_key = 'stream:1-0'"
    )
    first = await voicealert(env, "dlq", "purge", "--older-than", "7d")
    assert (first.returncode, first.stdout.strip()) == (0, "purged 1 dead letter")
    remaining = await letters(db_conn)
    one = await voicealert(env, "dlq", "purge", str(remaining[0].id))
    assert one.returncode == 0
    missing = await voicealert(env, "dlq", "purge", str(remaining[0].id))
    assert missing.returncode == 2
    both = await voicealert(env, "dlq", "purge", "--all", "--older-than", "1d")
    assert both.returncode == 2
    rest = await voicealert(env, "dlq", "purge", "--all", "--yes")
    assert rest.stdout.strip() == "purged 1 dead letter"
    assert await letters(db_conn) == []


async def test_dlq_list_filters_by_source_and_since(
    env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    await db.insert_dead_letters(db_conn, [
        NewDeadLetter(source="ingest", reason="invalid_json", error="bad",
                         payload={"fields": {}}, letter_key="stream:1-0"),
    ])
    await db_conn.execute(
        "UPDATE dead_letters SET created_at = now() - interval '3 hours'"
    )
    await db.insert_dead_letters(db_conn, [
        NewDeadLetter(source="call", reason="exhausted", error="no call placed",
                         payload={"call_id": 1}, letter_key="call:1:3"),
    ])
    listed = await voicealert(env, "dlq", "list", "--source", "call", "--json")
    by_source = json.loads(listed.stdout)
    assert [d["reason"] for d in by_source] == ["exhausted"]
    recent = json.loads((await voicealert(env, "dlq", "list", "--since", "1h", "--json")).stdout)
    assert [d["reason"] for d in recent] == ["exhausted"]
    bad = await voicealert(env, "dlq", "list", "--since", "yesterday-ish")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1
