"""Lua goes to Redis by EVALSHA: the script text is loaded once per server, not sent per call.

A throwaway server starts with an empty script cache, so this also covers the first call
after a Redis restart (the script is loaded on demand, pipelined calls included).
"""

from __future__ import annotations

import redis.asyncio
from arq.connections import RedisSettings, create_pool

from scripts.services import ThrowawayRedis
from worker.dedup import DedupLock, LockRequest
from worker.keys import Keys
from worker.queue import PLACE_CALL, ScheduledJob, enqueue_many, job_id
from worker.ratelimit import RateLimiter


async def _script_commands(client: redis.asyncio.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in stats.items()
        if name in ("cmdstat_eval", "cmdstat_evalsha")
    }


async def test_lua_scripts_run_by_sha_on_a_server_that_never_saw_them(
    throwaway_redis: ThrowawayRedis,
) -> None:
    keys = Keys("lua:")
    client = await create_pool(RedisSettings.from_dsn(throwaway_redis.url))
    try:
        dedup = DedupLock(client, keys)
        requests = [LockRequest("default", f"a{i}", f"event:{i}", 60) for i in range(3)]
        decisions = await dedup.acquire_many([*requests, LockRequest("default", "a0", "x", 60)])
        assert [d.acquired for d in decisions] == [True, True, True, False]
        assert await dedup.release("default", "a1", "event:1")
        limiter = RateLimiter(client, keys.rate_limit, 10, dials_key=keys.dial_window)
        slots = await limiter.reserve(2)
        assert slots[1] - slots[0] == int(limiter.interval_ms)
        await limiter.admit_dial("1:1")
        jobs = [ScheduledJob(PLACE_CALL, job_id(keys.prefix, "call", 1), (1,), 0)]
        assert await enqueue_many(client, keys.queue, jobs, expires_ms=60_000) == 1
        assert await enqueue_many(client, keys.queue, jobs, expires_ms=60_000) == 0

        calls = await _script_commands(client)
        assert calls.get("eval", 0) == 0, calls
        assert calls["evalsha"] >= 1 + 1 + 1 + 1 + 2  # a batch of locks is one call
    finally:
        await client.aclose()
