"""The worker process: an arq worker, tuned, with the stream consumer running beside it.

arq defaults changed here, and why (the settings: docs/contracts.md#worker-tuning):
- ``poll_delay`` 0.05 s instead of 0.5 s: a call job starts within ~50 ms of its slot.
- ``job_timeout`` short (15 s): a SIGKILLed replica's jobs are re-run after timeout + 5 s
  (``in_progress_timeout_s``; arq's own margin is 10 s).
- ``job_completion_wait``: on SIGTERM, calls in flight finish instead of being cancelled.
- ``health_check_key`` per replica (arq's default key is shared by every replica), holding our
  heartbeat (``worker.health.ReplicaBeat``: what the replica is doing) instead of arq's
  counter string, written three times per interval and expiring after one, so a probe
  (``voicealert worker --check``) sees a SIGKILLed replica gone within one interval.
- ``keep_result`` 0: job ids are call ids and must be reusable (DLQ replay, escalation).
- JSON job serializer: no pickle on anything that passes through Redis.
- ``after_job_end``: a job arq would drop (timed out, failed) is put back, and follow-up
  jobs run again as fresh jobs rather than arq retries (``worker.jobs``).
- Our own signal handling: first SIGTERM/SIGINT drains, a second one exits at once, and a
  crashed stream consumer stops the whole process with a non-zero status.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, cast

from arq import Retry, Worker
from arq.connections import ArqRedis, log_redis_info
from arq.constants import in_progress_key_prefix
from arq.typing import WorkerCoroutine
from arq.utils import timestamp_ms
from arq.worker import func
from arq.worker import logger as arq_logger
from redis.commands.core import AsyncScript

from worker import db, metrics
from worker.calls import place_call
from worker.config import Settings, redact_url
from worker.connections import open_redis
from worker.dedup import DedupLock
from worker.health import ReplicaBeat, beat_every_s, forget_replica, this_host, write_beat
from worker.ingest import StreamConsumer
from worker.jobs import IN_PROGRESS_MARGIN_S, JobFunction, after_job_end, call_job
from worker.keys import Keys, wake_channel
from worker.logs import get_logger, job_scope
from worker.metrics_http import start_metrics_server
from worker.outages import REDIS_UNAVAILABLE
from worker.outcomes import cancel_call, check_answer, poll_call, settle_call, start_round
from worker.providers import CallProvider
from worker.queue import (
    CANCEL_CALL,
    CHECK_ANSWER,
    JOB_SUBJECTS,
    PLACE_CALL,
    POLL_CALL,
    SETTLE_CALL,
    START_ROUND,
    json_deserializer,
    json_serializer,
    parse_job_id,
)
from worker.ratelimit import RateLimiter
from worker.services import Services
from worker.simulated import SimulatedProvider
from worker.sweeper import Sweeper
from worker.twilio_provider import TwilioProvider
from worker.wakeup import JobWakeup

log = get_logger(__name__)

# Retries are bounded by our own rules (attempts, age); arq's counter is only a backstop.
_MAX_JOB_TRIES = 10_000


def open_worker_redis(settings: Settings) -> ArqRedis:
    """The replica's Redis client: every command bounded, XREADGROUP's block included."""
    return open_redis(settings.redis_url, timeout_s=settings.redis_timeout_s,
                      blocking_s=settings.ingest_block_ms / 1000)


def measured(name: str, job: WorkerCoroutine) -> WorkerCoroutine:
    """Time the job by outcome: done, deferred (a Retry: a poll rescheduling itself, or a
    call retried later), failed, interrupted (cancelled by a shutdown or a timeout)."""

    @wraps(job)
    async def wrapper(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        outcome = "failed"
        try:
            result = await job(ctx, *args, **kwargs)
            outcome = "done"
            return result
        except Retry:
            outcome = "deferred"
            raise
        except asyncio.CancelledError:
            outcome = "interrupted"
            raise
        finally:
            metrics.job_finished(name, outcome, time.monotonic() - started)

    return cast(WorkerCoroutine, wrapper)


def _job(function: JobFunction, name: str) -> Any:
    return func(measured(name, call_job(name, function)), name=name, max_tries=_MAX_JOB_TRIES)


def build_provider(settings: Settings, redis: ArqRedis, keys: Keys) -> CallProvider:
    if settings.provider_name == "twilio":
        assert settings.twilio_account_sid
        assert settings.twilio_auth_token
        return TwilioProvider(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number or "",
            base_url=settings.twilio_api_base_url,
            timeout_s=settings.provider_timeout_s,
            ring_timeout_s=settings.ring_timeout_s,
        )
    return SimulatedProvider(
        redis,
        keys,
        outcomes=settings.simulated_outcomes,
        ring_s=settings.simulated_ring_s,
        talk_s=settings.simulated_talk_s,
    )


def measured_provider(settings: Settings, redis: ArqRedis, keys: Keys) -> CallProvider:
    return metrics.MeasuredProvider(build_provider(settings, redis, keys))


async def open_services(settings: Settings, redis: ArqRedis) -> Services:
    keys = Keys(settings.redis_prefix)
    pool = await db.create_pool(settings.database_url, max_size=max(4, settings.concurrency // 4),
                                timeout_s=settings.database_timeout_s)
    return Services(
        settings=settings,
        keys=keys,
        db=pool,
        redis=redis,
        provider=measured_provider(settings, redis, keys),
        limiter=RateLimiter(redis, keys.rate_limit, settings.calls_per_second,
                            dials_key=keys.dial_window),
        dedup=DedupLock(redis, keys),
    )


async def close_services(services: Services) -> None:
    await services.provider.aclose()
    await services.db.close()


# arq's check-and-take of a job (Worker.start_jobs), atomic: not running anywhere (its
# in-progress key), still queued and due; then its in-progress key, for the job's timeout.
_TAKE_JOB = """
-- KEYS: in-progress key, queue; ARGV: job id, now (ms), in-progress lifetime (ms)
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""


class _DrainableWorker(Worker):
    """arq's Worker, except that a drain stops starting jobs at once, and that the health
    key holds our heartbeat.

    arq checks ``allow_pick_jobs`` once per poll and then starts every job of the batch it
    read, so a SIGTERM landing mid-batch still took new calls after ``worker.stopping``.
    """

    heartbeat: Callable[[], Awaitable[None]] | None = None
    wakeup: JobWakeup | None = None
    _take_job_script: AsyncScript | None = None

    async def main(self) -> None:
        """arq's ``Worker.main`` (our pool given, never burst mode), its fixed-step poll
        replaced by ``JobWakeup.wait``: the poll delay is still the longest sleep between two
        looks at the queue, but an enqueued job or a deferred job's start time cuts it short."""
        arq_logger.info("Starting worker for %d functions: %s", len(self.functions),
                        ", ".join(self.functions))
        await log_redis_info(self.pool, arq_logger.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        wakeup = self.wakeup or JobWakeup(self.pool, wake_channel(self.queue_name))
        loop = asyncio.get_running_loop()
        async with wakeup.listening():
            while True:
                deadline = loop.time() + self.poll_delay_s
                wakeup.looking()
                # Jobs that ran may have deferred themselves (Retry) without announcing it.
                ran = bool(self.tasks)
                await self._poll_iteration()
                if wakeup.stale or ran or self.tasks:
                    wakeup.note_due(await self._next_due_ms())
                await wakeup.wait(deadline)

    async def _next_due_ms(self) -> float | None:
        """When the earliest job deferred to the future is due (epoch ms), if any."""
        found = await self.pool.zrangebyscore(self.queue_name, f"({timestamp_ms()}", "+inf",
                                              start=0, num=1, withscores=True)
        return float(found[0][1]) if found else None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's ``start_jobs``, taking each job in one script (``_TAKE_JOB``) instead of
        four round trips (WATCH, EXISTS, ZSCORE, MULTI/PSETEX/EXEC), and stopping at once on
        a drain."""
        for job_id_b in job_ids:
            if not self.allow_pick_jobs:
                return
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                score = await self._take_job(job_id)
            except BaseException:
                self.job_counter -= 1
                self.sem.release()
                raise
            if score is None:  # running elsewhere, finished, or deferred again meanwhile
                self.job_counter -= 1
                self.sem.release()
                continue
            task = asyncio.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _take_job(self, job_id: str) -> int | None:
        if self._take_job_script is None:
            self._take_job_script = self.pool.register_script(_TAKE_JOB)
        score = await self._take_job_script(
            keys=[in_progress_key_prefix + job_id, self.queue_name],
            args=[job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)])
        return None if score is None else int(float(score))

    async def record_health(self) -> None:
        # Called by arq on every poll (heart_beat); ours writes a few times per interval.
        now = time.time()
        if now - self._last_health_check < beat_every_s(self.health_check_interval):
            return
        self._last_health_check = now
        if self.heartbeat is not None:
            await self.heartbeat()


class WorkerProcess:
    """One replica: arq's job loop plus the stream consumer, started and stopped together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.redis_prefix)
        self.consumer: StreamConsumer | None = None
        self.consumer_task: asyncio.Task[None] | None = None
        self.sweeper: Sweeper | None = None
        self.sweeper_task: asyncio.Task[None] | None = None
        self.exit_code = 0
        self._signals = 0
        self.started_at = time.time()
        self.metrics_server: Any = None
        self.worker = _DrainableWorker(
            functions=[
                _job(place_call, PLACE_CALL),
                _job(poll_call, POLL_CALL),
                _job(cancel_call, CANCEL_CALL),
                _job(settle_call, SETTLE_CALL),
                _job(check_answer, CHECK_ANSWER),
                _job(start_round, START_ROUND),
            ],
            after_job_end=after_job_end,
            queue_name=self.keys.queue,
            redis_pool=open_worker_redis(settings),
            on_startup=self._startup,
            on_shutdown=self._shutdown,
            on_job_start=self._job_started,
            handle_signals=False,
            job_completion_wait=int(max(1, round(settings.shutdown_grace_s))),
            max_jobs=settings.concurrency,
            job_timeout=settings.call_job_timeout_s,
            keep_result=0,
            poll_delay=settings.poll_delay_s,
            queue_read_limit=max(settings.concurrency * 2, 100),
            max_tries=_MAX_JOB_TRIES,
            health_check_interval=settings.health_check_interval_s,
            health_check_key=self.keys.health_check(settings.consumer_name),
            job_serializer=json_serializer,
            job_deserializer=json_deserializer,
            ctx={"settings": settings},
        )
        # arq keeps a job's in-progress lock for its timeout + 10 s, which is how long a job of
        # a SIGKILLed replica waits before another replica runs it. Jobs here are cancelled at
        # their timeout (asyncio.wait_for), so a 5 s margin suffices: 20 s by default.
        self.worker.in_progress_timeout_s = settings.call_job_timeout_s + IN_PROGRESS_MARGIN_S
        self.worker.heartbeat = self._heartbeat

    async def _job_started(self, ctx: dict[str, Any]) -> None:
        """Every line logged while this job runs (arq's too) names its call."""
        parsed = parse_job_id(self.keys.prefix, str(ctx.get("job_id", "")))
        if parsed is not None:
            function, number = parsed
            job_scope(**{JOB_SUBJECTS.get(function, "call"): number})

    def beat(self) -> ReplicaBeat:
        """What this replica is doing, for its health key."""
        worker = self.worker
        running = []
        for job_id, task in list(worker.tasks.items()):
            parsed = parse_job_id(self.keys.prefix, job_id)
            if parsed and not task.done():
                running.append(f"{parsed[0]}:{parsed[1]}")
        return ReplicaBeat(
            consumer=self.settings.consumer_name,
            host=this_host(),
            pid=os.getpid(),
            at=time.time(),
            started_at=self.started_at,
            interval_s=self.settings.health_check_interval_s,
            draining=not worker.allow_pick_jobs,
            running=tuple(sorted(running)),
            jobs_done=worker.jobs_complete,
            jobs_failed=worker.jobs_failed,
        )

    async def _heartbeat(self) -> None:
        await write_beat(self.worker.pool, self.keys, self.beat())

    async def _startup(self, ctx: dict[str, Any]) -> None:
        services = await open_services(self.settings, ctx["redis"])
        ctx["services"] = services
        self.metrics_server = await start_metrics_server(self.settings, services.redis,
                                                         services.db)
        self.consumer = StreamConsumer(services)
        self.consumer_task = asyncio.create_task(self.consumer.run(), name="stream-consumer")
        self.consumer_task.add_done_callback(self._consumer_ended)
        self.sweeper = Sweeper(services)
        self.sweeper_task = asyncio.create_task(self.sweeper.run(), name="sweeper")
        log.info("worker.started", consumer=self.settings.consumer_name,
                 provider=self.settings.provider_name,
                 redis=redact_url(self.settings.redis_url),
                 database=redact_url(self.settings.database_url),
                 calls_per_second=self.settings.calls_per_second)

    def _consumer_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A half-alive worker (jobs run, stream unread) is worse than a restart.
        exc = task.exception()
        log.error("ingest.crashed", error=f"{type(exc).__name__}: {exc}")
        self.exit_code = 1
        self.worker.handle_sig(signal.SIGTERM)

    async def _shutdown(self, ctx: dict[str, Any]) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        if self.sweeper_task is not None:
            self.sweeper_task.cancel()  # a sweep half done is redone by the next one
        if self.consumer is not None:
            self.consumer.stop()
        if self.consumer_task is not None and not self.consumer_task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.consumer_task), 10)
            except (TimeoutError, asyncio.CancelledError, Exception):
                self.consumer_task.cancel()
        if self.metrics_server is not None:
            await self.metrics_server.cleanup()
        with contextlib.suppress(*REDIS_UNAVAILABLE):  # stopped cleanly: not listed as dead
            await forget_replica(ctx["redis"], self.keys, self.settings.consumer_name)
        services: Services | None = ctx.get("services")
        if services is not None:
            await close_services(services)
        # Not arq's jobs_retried: it counts every poll that rescheduled itself.
        log.info("worker.stopped", consumer=self.settings.consumer_name,
                 jobs_done=self.worker.jobs_complete, jobs_failed=self.worker.jobs_failed)

    def request_stop(self, signum: signal.Signals = signal.SIGTERM) -> None:
        """What SIGTERM does: the first request drains, a second one stops at once."""
        self._on_signal(signum)

    def _on_signal(self, signum: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("worker.stopping", signal=signum.name,
                     grace_s=self.settings.shutdown_grace_s)
            if self.consumer is not None:
                self.consumer.stop()
            self.worker.handle_sig_wait_for_completion(signum)
        else:
            log.warning("worker.stopping_now", signal=signum.name)
            self.exit_code = 1
            if self.consumer_task is not None:
                self.consumer_task.cancel()
            self.worker.handle_sig(signum)

    async def run(self, *, install_signals: bool = True) -> int:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.worker.async_run()
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            log.error("worker.crashed", error=f"{type(exc).__name__}: {exc}")
            self.exit_code = 1
        finally:
            try:
                await self.worker.close()
            except (Exception, asyncio.CancelledError) as exc:
                log.error("worker.close_failed", error=f"{type(exc).__name__}: {exc}")
                self.exit_code = self.exit_code or 1
        return self.exit_code


def run_worker(settings: Settings) -> int:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        process = WorkerProcess(settings)
        return loop.run_until_complete(process.run())
    finally:
        loop.close()
