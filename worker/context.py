"""The long-lived parts a worker process shares between its stream consumer and its jobs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis

from worker.config import Settings
from worker.dedup import DedupLock
from worker.keys import Keys
from worker.providers import CallProvider
from worker.queue import PLACE_CALL, ScheduledJob, enqueue_many, job_id
from worker.ratelimit import RateLimiter


@dataclass
class Services:
    settings: Settings
    keys: Keys
    db: asyncpg.Pool
    redis: ArqRedis
    provider: CallProvider
    limiter: RateLimiter
    dedup: DedupLock

    @property
    def job_expiry_ms(self) -> int:
        return int(self.settings.max_call_age_s * 1000) + 60_000

    async def schedule_calls(self, call_ids: Sequence[int]) -> int:
        """Enqueue place_call jobs at reserved slots of the global call rate."""
        if not call_ids:
            return 0
        slots = await self.limiter.reserve(len(call_ids))
        jobs = [
            ScheduledJob(PLACE_CALL, job_id(self.keys.prefix, "call", cid), (cid,), slot)
            for cid, slot in zip(call_ids, slots, strict=True)
        ]
        return await enqueue_many(self.redis, self.keys.queue, jobs, expires_ms=self.job_expiry_ms)

    async def schedule(self, function: str, kind: str, call_id: int, delay_s: float = 0) -> int:
        """Enqueue a follow-up job for a call (poll, cancel), not rate limited."""
        run_at = int((time.time() + delay_s) * 1000)
        job = ScheduledJob(function, job_id(self.keys.prefix, kind, call_id), (call_id,), run_at)
        return await enqueue_many(
            self.redis, self.keys.queue, [job], expires_ms=self.job_expiry_ms
        )
