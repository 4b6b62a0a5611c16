"""`voicealert status` against a real worker, Redis and Postgres: idle, a call backlog, a storm,
services unreachable (closed ports: the shared servers are never stopped). The dead-replica
case, with real processes, is tests/e2e/test_probes.py."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import asyncpg
import redis.asyncio
from aiohttp.test_utils import TestClient, TestServer

from testing.fake_twilio import FakeTwilio
from tests.helpers import fire, free_port, make_group, run_cli, wait_for
from worker import health
from worker.config import Settings, load_settings
from worker.keys import Keys
from worker.migrate import load_migrations
from worker.ratelimit import DIAL_MARGIN_MS
from worker.web import create_app


def phones(count: int) -> list[str]:
    return [f"+1415555{i:04d}" for i in range(100, 100 + count)]


async def live_replicas(settings: Settings) -> int:
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        return sum(r.alive for r in await health.replicas(client, Keys(settings.redis_prefix)))
    finally:
        await client.aclose()


async def place_call_jobs(settings: Settings) -> health.JobCounts:
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        return (await health.job_counts(client, Keys(settings.redis_prefix)))["place_call"]
    finally:
        await client.aclose()


async def test_status_of_an_idle_system_with_a_live_worker_is_healthy_and_exits_0(
    env: dict[str, str], settings: Settings, start_worker: Any,
) -> None:
    await start_worker()
    await wait_for(lambda: _positive(live_replicas(settings)), what="the worker's heartbeat")

    screen = await run_cli(env, "status")
    assert screen.code == 0, screen.stdout + screen.stderr
    assert screen.stdout.startswith("voicealert: healthy")
    for expected in ("replicas     1 alive", "jobs         none queued",
                     "call rate    200/s, free now", "dead letters none waiting",
                     "migrations   current"):
        assert expected in screen.stdout, screen.stdout
    document = await run_cli(env, "status", "--json")
    assert document.code == 0
    snapshot = json.loads(document.stdout)
    assert (snapshot["state"], snapshot["problems"]) == ("healthy", [])
    [replica] = snapshot["replicas"]
    assert (replica["consumer"], replica["alive"]) == (settings.consumer_name, True)
    assert snapshot["stream"]["group_exists"] is True


#: One slot of the call-rate schedule at 1 call/s: the second and the dial margin.
SLOT_AT_ONE_PER_SECOND_S = (1000 + DIAL_MARGIN_MS) / 1000


async def _positive(count: Any) -> bool:
    return bool(await count)


async def test_status_with_twenty_calls_waiting_at_one_per_second_says_the_last_rings_in_20s(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    slow = {**env, "VOICEALERT_CALLS_PER_SECOND": "1"}
    settings = load_settings(slow)
    await make_group(db_conn, phones=phones(20))
    await start_worker(settings)
    fired_at = time.monotonic()
    await fire(settings, alert_id="storm")

    async def scheduled() -> bool:
        counts = await place_call_jobs(settings)
        return counts.deferred + counts.running + counts.waiting + len(fake_twilio.creates()) >= 20

    await wait_for(scheduled, what="20 call jobs scheduled")
    result = await run_cli(slow, "status", "--json")
    assert result.stdout, result.stderr
    snapshot = json.loads(result.stdout)
    # 20 slots at 1/s (each 1 s and the dial margin's share, worker/ratelimit.py) from the
    # fan-out on: the schedule is free 20 slots after the fan-out, less the time that passed
    # before this command read it (seconds on a loaded machine).
    slot_s = SLOT_AT_ONE_PER_SECOND_S
    elapsed = time.monotonic() - fired_at
    free_in_s = snapshot["rate"]["free_in_s"]
    assert 20 * slot_s - elapsed - 0.5 <= free_in_s <= 20 * slot_s + 0.5, snapshot["rate"]
    calls = snapshot["jobs"]["place_call"]
    assert calls["deferred"] >= 16, calls
    assert 19 * slot_s - elapsed - 0.5 <= calls["last_due_in_s"] <= 19 * slot_s + 0.5, calls
    assert result.code == 0, snapshot["problems"]  # 20 s of backlog is not yet "degraded"

    screen = await run_cli(slow, "status")
    booked = re.search(r"call rate    1/s, booked ([0-9.]+)s ahead", screen.stdout)
    last = re.search(r"the last waiting call rings in ([0-9.]+)s", screen.stdout)
    assert booked, screen.stdout
    assert last, screen.stdout
    elapsed = time.monotonic() - fired_at
    assert 20 * slot_s - elapsed - 0.5 <= float(booked[1]) <= free_in_s, screen.stdout
    assert 19 * slot_s - elapsed - 0.5 <= float(last[1]) <= calls["last_due_in_s"], screen.stdout


async def test_status_of_a_storm_booked_beyond_a_minute_exits_1_naming_the_call_rate_line(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    slow = {**env, "VOICEALERT_CALLS_PER_SECOND": "1"}
    settings = load_settings(slow)
    await make_group(db_conn, phones=phones(75))
    await start_worker(settings)
    fired_at = time.monotonic()
    await fire(settings, alert_id="storm")

    async def booked() -> bool:
        return (await place_call_jobs(settings)).deferred >= 70

    await wait_for(booked, what="75 call jobs scheduled")
    result = await run_cli(slow, "status")
    assert result.code == 1, result.stdout
    headline, problem = result.stdout.splitlines()[:2]
    assert headline.startswith("voicealert: DEGRADED (1 problem)")
    # 75 slots at 1/s: booked 75 slots ahead, less the time before this command read it.
    ahead = re.match(r"  ! call rate: booked (\d+)s ahead", problem)
    assert ahead, problem
    booked_s = 75 * SLOT_AT_ONE_PER_SECOND_S
    assert booked_s - (time.monotonic() - fired_at) - 1 <= int(ahead[1]) <= booked_s + 1, problem
    assert any(line.startswith("! call rate") for line in result.stdout.splitlines())


async def test_status_exits_2_with_one_line_when_redis_is_unreachable(
    env: dict[str, str],
) -> None:
    closed = free_port()
    result = await run_cli({**env, "REDIS_URL": f"redis://:pw-SECRET@127.0.0.1:{closed}/0"},
                           "status")
    assert result.code == 2
    line = result.error_line
    assert line.startswith(f"voicealert: cannot reach Redis at redis://:***@127.0.0.1:{closed}/0")
    assert "pw-SECRET" not in result.stdout + result.stderr
    assert result.stdout == ""


async def test_status_exits_2_with_one_line_when_postgres_is_unreachable(
    env: dict[str, str],
) -> None:
    closed = free_port()
    result = await run_cli({**env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/x"},
                           "status")
    assert result.code == 2
    assert result.error_line.startswith(
        f"voicealert: cannot reach Postgres at postgresql://postgres@127.0.0.1:{closed}/x")
    as_json = await run_cli({**env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{closed}/x"},
                            "status", "--json")
    assert as_json.code == 2
    assert json.loads(as_json.stdout)["state"] == "unreachable"


async def test_readyz_is_503_while_a_migration_of_this_code_is_not_applied(
    settings: Settings, db_conn: asyncpg.Connection
) -> None:
    async with TestClient(TestServer(create_app(settings))) as client:
        ready = await client.get("/readyz")
        assert (ready.status, (await ready.json())["checks"]["migrations"]) == (200, "ok")
        latest = load_migrations()[-1]
        await db_conn.execute("DELETE FROM schema_migrations WHERE version = $1", latest.version)
        response = await client.get("/readyz")
        assert response.status == 503
        assert (await response.json())["checks"]["migrations"] == \
            f"not applied: {latest.version:04d}_{latest.name}"
