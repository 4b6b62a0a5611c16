"""Probes with real processes: `voicealert worker --check` while a replica lives and after a
SIGKILL, and `voicealert status` naming a killed replica's pending entries and idle time."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Awaitable

import pytest
import redis.asyncio

from scripts.services import ThrowawayPostgres
from tests.e2e.workers import SpawnWorker
from tests.helpers import fire, run_cli, wait_for
from worker.config import Settings
from worker.keys import Keys
from worker.migrate import migrate

pytestmark = pytest.mark.e2e

INTERVAL_S = 1.0  # VOICEALERT_HEALTH_CHECK_INTERVAL_S of e2e workers (tests/e2e/workers.py)


async def test_worker_check_is_0_while_the_replica_lives_and_1_within_an_interval_of_sigkill(
    env: dict[str, str], redis_url: str, prefix: str, spawn_worker: SpawnWorker,
) -> None:
    worker = spawn_worker("probed")
    await worker.ready()
    probe_env = {**env, "VOICEALERT_CONSUMER_NAME": worker.consumer}
    for _ in range(3):  # alive across several beats, not once by luck
        alive = await run_cli(probe_env, "worker", "--check")
        assert alive.code == 0, alive.stderr
        assert alive.stdout.startswith(f"alive: {worker.consumer}")
        await asyncio.sleep(INTERVAL_S / 2)

    client = redis.asyncio.Redis.from_url(redis_url)
    key = Keys(prefix).health_check(worker.consumer)
    try:
        killed_at = worker.kill()
        while await client.exists(key):
            assert time.monotonic() - killed_at < INTERVAL_S + 0.5, "health key outlived the kill"
            await asyncio.sleep(0.02)
        gone_after = time.monotonic() - killed_at
    finally:
        await client.aclose()
    dead = await run_cli(probe_env, "worker", "--check")
    assert dead.code == 1
    assert dead.error_line == (f"voicealert: no live worker replica: no heartbeat from consumer "
                               f"{worker.consumer}")
    print(f"\n[probe] health key gone {gone_after:.2f}s after SIGKILL (interval {INTERVAL_S}s)")


async def test_worker_check_finds_this_hosts_replica_by_its_default_name(
    env: dict[str, str], spawn_worker: SpawnWorker,
) -> None:
    # A replica named like the default (<hostname>-<pid>): the probe runs without
    # VOICEALERT_CONSUMER_NAME, as a Kubernetes exec probe in the same pod would.
    name = f"{socket.gethostname()}-{uuid.uuid4().int % 10**6}"
    worker = spawn_worker("default-name", VOICEALERT_CONSUMER_NAME=name)
    await worker.ready()
    result = await run_cli(env, "worker", "--check")
    assert result.code == 0, result.stderr
    assert result.stdout.startswith(f"alive: {name}")
    worker.kill()
    await worker.wait_exit(5)

    async def gone() -> bool:
        return (await run_cli(env, "worker", "--check")).code == 1

    await wait_for(gone, timeout=10, what="the probe to fail after the kill")


async def test_status_shows_a_killed_replicas_pending_entries_and_idle_time(
    env: dict[str, str], settings: Settings, redis_url: str, prefix: str,
    throwaway_postgres: ThrowawayPostgres, spawn_worker: SpawnWorker,
) -> None:
    # The victim reads entries it cannot store (its Postgres is down), so they stay pending on
    # it; then it is SIGKILLed. Nobody reclaims them for 10 minutes.
    victim_db = throwaway_postgres.url_for("voicealert")
    await migrate(victim_db)
    victim = spawn_worker("victim", DATABASE_URL=victim_db, VOICEALERT_RECLAIM_IDLE_S="600")
    await victim.ready()
    await asyncio.to_thread(throwaway_postgres.stop, "fast")
    for i in range(3):
        await fire(settings, alert_id=f"lost-{i}")
    client = redis.asyncio.Redis.from_url(redis_url)
    keys = Keys(prefix)
    try:
        async def pending_on_victim() -> int:
            summary = await client.xpending(keys.events, keys.consumer_group)
            mine = {c["name"].decode(): int(c["pending"]) for c in summary["consumers"]}
            return mine.get(victim.consumer, 0)

        # It reads the first entry, fails to store it, and re-reads only its own pending
        # entries until Postgres returns: at least one is pending on it.
        await wait_for(lambda: _positive(pending_on_victim()),
                       what="entries pending on the victim")
        pending = await pending_on_victim()
        victim.kill()
        await victim.wait_exit(5)

        async def heartbeat_gone() -> bool:
            return not await client.exists(keys.health_check(victim.consumer))

        await wait_for(heartbeat_gone, timeout=5, what="the victim's heartbeat to expire")
    finally:
        await client.aclose()
    await asyncio.sleep(1.0)  # some idle time to see

    result = await run_cli(env, "status")
    assert result.code == 1, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("voicealert: DEGRADED")
    assert f"! stream: {pending} entries pending on {victim.consumer}, which has no live " \
           "replica" in out
    assert "! replicas: no live worker replica" in out
    stream_line = next(line for line in out.splitlines()
                       if f"{victim.consumer}: {pending} pending" in line)
    idle = float(stream_line.split("idle ")[1].split("s,")[0])
    assert idle >= 1.0, stream_line
    assert stream_line.endswith("NO LIVE REPLICA")
    assert f"{victim.consumer}: DEAD, last beat" in out
    marked = [line.split()[1] for line in out.splitlines() if line.startswith("! ")]
    assert marked == ["stream", "replicas"], out


async def _positive(count: Awaitable[int]) -> bool:
    return await count > 0
