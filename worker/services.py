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
from worker.queue import PLACE_CALL, ScheduledJob, chunk_job_id, enqueue_many, job_id
from worker.ratelimit import RateLimiter


def job_expiry_ms(settings: Settings) -> int:
    """How long a queued call job lives: past the alert's maximum age it would not ring."""
    return int(settings.max_call_age_s * 1000) + 60_000


async def schedule_calls(
    redis: ArqRedis, settings: Settings, call_ids: Sequence[int],
    limiter: RateLimiter | None = None, *, not_before_ms: int = 0,
) -> int:
    """Enqueue place_call jobs at reserved slots of the global call rate, none before
    ``not_before_ms``; returns how many were new. Used by the worker and by the CLI's DLQ
    replay alike."""
    if not call_ids:
        return 0
    keys = Keys(settings.redis_prefix)
    limiter = limiter or RateLimiter(redis, keys.rate_limit, settings.calls_per_second)
    slots = await limiter.reserve(len(call_ids), not_before_ms=not_before_ms)
    jobs = [_place_job(keys.prefix, chunk) for chunk in call_chunks(call_ids, slots)]
    return await enqueue_many(redis, keys.queue, jobs, expires_ms=job_expiry_ms(settings))


#: At most this many calls in one place_call job ...
CHUNK_MAX = 50
#: ... whose rate slots all fall within this many ms of the first (each call still waits for
#: its own slot, in the job: at a low call rate every call is a job of its own).
CHUNK_SPAN_MS = 50


def call_chunks(call_ids: Sequence[int], slots: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Calls and their rate slots, in slot order, cut into the chunks one job places."""
    chunks: list[list[tuple[int, int]]] = []
    for pair in sorted(zip(call_ids, slots, strict=True), key=lambda p: p[1]):
        chunk = chunks[-1] if chunks else None
        if chunk and len(chunk) < CHUNK_MAX and pair[1] - chunk[0][1] <= CHUNK_SPAN_MS:
            chunk.append(pair)
        else:
            chunks.append([pair])
    return chunks


def _place_job(prefix: str, chunk: list[tuple[int, int]]) -> ScheduledJob:
    """One call: its place_call job, at its slot. Several: one place_call job for all of
    them (a list of ``[call id, slot]``), at the first slot."""
    if len(chunk) == 1:
        (cid, slot), = chunk
        return ScheduledJob(PLACE_CALL, job_id(prefix, "call", cid), (cid,), slot)
    ids = [cid for cid, _ in chunk]
    return ScheduledJob(PLACE_CALL, chunk_job_id(prefix, "calls", ids),
                        ([[cid, slot] for cid, slot in chunk],), chunk[0][1])


async def schedule_job(
    redis: ArqRedis, settings: Settings, function: str, kind: str, call_id: int,
    delay_s: float = 0,
) -> int:
    """Enqueue a follow-up job about a call (poll, cancel, settle), not rate limited; a job
    of the same kind for the same call already queued or running is not queued again.
    Used by the worker and by the web process's webhooks alike."""
    prefix = Keys(settings.redis_prefix).prefix
    run_at = int((time.time() + delay_s) * 1000)
    job = ScheduledJob(function, job_id(prefix, kind, call_id), (call_id,), run_at)
    return await enqueue_many(
        redis, Keys(settings.redis_prefix).queue, [job], expires_ms=job_expiry_ms(settings)
    )


@dataclass
class Services:
    settings: Settings
    keys: Keys
    db: asyncpg.Pool
    redis: ArqRedis
    provider: CallProvider
    limiter: RateLimiter
    dedup: DedupLock

    async def schedule_calls(self, call_ids: Sequence[int], *, not_before_ms: int = 0) -> int:
        return await schedule_calls(self.redis, self.settings, call_ids, self.limiter,
                                    not_before_ms=not_before_ms)

    async def schedule(self, function: str, kind: str, call_id: int, delay_s: float = 0) -> int:
        """Enqueue a follow-up job for a call (poll, cancel, settle), not rate limited."""
        return await schedule_job(self.redis, self.settings, function, kind, call_id, delay_s)
