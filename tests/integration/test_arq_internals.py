"""The arq internals voicealert relies on, pinned: this fails loudly when an arq upgrade moves them.

- ``worker/queue.py`` enqueues a batch in one Lua call instead of ``enqueue_job``: it writes
  arq's key layout (``arq:job:<id>``, ``arq:result:<id>``, the queue sorted set) and arq's job
  payload (``serialize_job``) itself.
- ``worker/app.py`` subclasses ``Worker``: ``start_jobs`` is replaced (arq's semaphore and
  job counter, its check-and-take of a job done in one script, ``run_job(job_id, score)`` as
  a task in ``tasks``), stopping at once on a drain (``allow_pick_jobs``), and
  ``in_progress_timeout_s`` is shortened.
- tests/helpers.py reads ``arq:in-progress:<id>`` to know a job is running; so does
  ``worker/health.py`` (call jobs running vs waiting, for ``voicealert status``).
- ``worker/app.py`` overrides ``record_health`` (our heartbeat in the health key), reads
  ``Worker.tasks`` (which jobs run now) and passes ``on_job_start`` (the log scope of a job);
  ``worker/logs.py`` rewrites arq's log lines by their format strings
  (tests/unit/test_quiet_logs.py pins those).
- ``worker/app.py`` overrides ``Worker.main`` (arq's start-up steps, then its poll loop with
  the sleep cut short by ``worker/wakeup.py``) and reads ``queue_name``, ``poll_delay_s`` and
  the queue's scores (arq's ``timestamp_ms`` clock) to wake when a deferred job comes due.
- ``worker/jobs.py`` passes ``after_job_end``: it must run after the run is recorded (the job
  key deleted) and see the ctx dict the job itself ran with.

pyproject.toml pins arq to one minor version; moving the pin means reading these again.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version

from arq import Worker
from arq import constants as arq_constants
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus, deserialize_job, serialize_job
from arq.worker import func

from worker.app import WorkerProcess
from worker.config import Settings
from worker.keys import Keys
from worker.queue import (
    PLACE_CALL,
    ScheduledJob,
    enqueue_many,
    job_id,
    json_deserializer,
    json_serializer,
)


def test_arq_is_the_pinned_minor_version() -> None:
    assert version("arq").split(".")[:2] == ["0", "28"]


def test_arq_key_prefixes_are_the_ones_we_write() -> None:
    assert arq_constants.job_key_prefix == "arq:job:"
    assert arq_constants.result_key_prefix == "arq:result:"
    assert arq_constants.in_progress_key_prefix == "arq:in-progress:"
    assert arq_constants.retry_key_prefix == "arq:retry:"


def test_serialize_job_takes_the_arguments_we_pass() -> None:
    params = inspect.signature(serialize_job).parameters
    assert list(params)[:5] == ["function_name", "args", "kwargs", "job_try", "enqueue_time_ms"]
    assert params["serializer"].kind is inspect.Parameter.KEYWORD_ONLY
    payload = serialize_job(PLACE_CALL, (7,), {}, None, 1_700_000_000_000,
                            serializer=json_serializer)
    job = deserialize_job(payload, deserializer=json_deserializer)
    assert (job.function, tuple(job.args), job.kwargs) == (PLACE_CALL, (7,), {})
    assert job.job_try is None


def test_worker_start_jobs_and_the_drain_flag_are_where_we_override_them() -> None:
    assert inspect.iscoroutinefunction(Worker.start_jobs)
    assert list(inspect.signature(Worker.start_jobs).parameters) == ["self", "job_ids"]
    # arq reads allow_pick_jobs before starting a batch, and sets it on a graceful stop.
    assert "self.allow_pick_jobs" in inspect.getsource(Worker._poll_iteration)
    assert "self.allow_pick_jobs = False" in inspect.getsource(
        Worker.handle_sig_wait_for_completion
    )
    # start_jobs is where the in-progress lock gets its lifetime.
    assert "self.in_progress_timeout_s" in inspect.getsource(Worker.start_jobs)


def test_worker_attributes_we_set_and_read_exist(settings: Settings) -> None:
    async def job(ctx: dict[str, object]) -> None:
        return None

    plain = Worker(functions=[func(job, name="job")], handle_signals=False, job_timeout=15)
    assert plain.allow_pick_jobs is True
    assert plain.in_progress_timeout_s == 15 + 10  # arq's margin, which we shorten
    for counter in ("jobs_complete", "jobs_retried", "jobs_failed"):
        assert getattr(plain, counter) == 0
    for method in ("handle_sig", "handle_sig_wait_for_completion", "async_run", "close"):
        assert callable(getattr(plain, method))
    ours = WorkerProcess(settings).worker
    assert ours.in_progress_timeout_s < plain.in_progress_timeout_s


def test_the_health_hooks_we_override_are_called_where_we_expect() -> None:
    # heart_beat runs on every poll and calls record_health, which rate-limits itself with
    # _last_health_check: our override keeps that contract (worker/app.py).
    assert "await self.record_health()" in inspect.getsource(Worker.heart_beat)
    assert "await self.heart_beat()" in inspect.getsource(Worker._poll_iteration)
    assert "self._last_health_check" in inspect.getsource(Worker.record_health)
    assert inspect.iscoroutinefunction(Worker.record_health)
    # Running jobs are the run_job tasks in Worker.tasks, keyed by job id; on_job_start runs
    # in that task before arq logs the job's start.
    assert "self.tasks[job_id] = t" in inspect.getsource(Worker.start_jobs)
    run_job = inspect.getsource(Worker.run_job)
    assert run_job.index("await self.on_job_start(ctx)") < run_job.index("logger.info('%6.2fs →")
    assert "on_job_start" in inspect.signature(Worker).parameters
    # A clean stop deletes the health key (status then shows no replica, not a dead one).
    assert "await self.pool.delete(self.health_check_key)" in inspect.getsource(Worker.close)
def test_worker_start_jobs_is_the_check_and_take_our_script_repeats() -> None:
    source = inspect.getsource(Worker.start_jobs)
    for step in (
        "await self.sem.acquire()",
        "if self.job_counter >= self.max_jobs:",
        "self.job_counter = self.job_counter + 1",
        "await pipe.watch(in_progress_key)",
        "ongoing_exists = await pipe.exists(in_progress_key)",
        "score = await pipe.zscore(self.queue_name, job_id)",
        "if ongoing_exists or not score or score > timestamp_ms():",
        "pipe.psetex(in_progress_key, int(self.in_progress_timeout_s * 1000), b'1')",
        "self.run_job(job_id, int(score))",
        "t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())",
    ):
        assert step in source, step
    assert list(inspect.signature(Worker.run_job).parameters) == ["self", "job_id", "score"]
    release = inspect.getsource(Worker._release_sem_dec_counter_on_complete)
    assert "self.job_counter = self.job_counter - 1" in release
    assert "self.sem.release()" in release


async def test_our_start_jobs_takes_a_due_job_once_and_never_a_deferred_one(
    settings: Settings, arq_redis: ArqRedis, prefix: str,
) -> None:
    process = WorkerProcess(settings)
    worker = process.worker
    worker._pool = arq_redis
    keys = Keys(prefix)
    due, later = job_id(prefix, "call", 51), job_id(prefix, "call", 52)
    await enqueue_many(arq_redis, keys.queue, [
        ScheduledJob(PLACE_CALL, due, (51,), 1_000),
        ScheduledJob(PLACE_CALL, later, (52,), 4_102_444_800_000),
    ], expires_ms=60_000)
    started: list[tuple[str, int]] = []

    async def run_job(job_id: str, score: int) -> None:
        started.append((job_id, score))

    worker.run_job = run_job  # type: ignore[method-assign]
    await worker.start_jobs([due.encode(), due.encode(), later.encode()])
    await asyncio.gather(*worker.tasks.values())
    assert started == [(due, 1_000)]  # taken once: its in-progress key stops the second
    assert await arq_redis.pttl(arq_constants.in_progress_key_prefix + due) > 10_000
    assert not await arq_redis.exists(arq_constants.in_progress_key_prefix + later)
    assert worker.job_counter == 0  # every slot given back


def test_worker_main_is_the_start_up_and_poll_loop_our_override_repeats() -> None:
    source = inspect.getsource(Worker.main)
    steps = [
        "logger.info('Starting worker for %d functions: %s'",
        "await log_redis_info(self.pool, logger.info)",
        "self.ctx['redis'] = self.pool",
        "await self.on_startup(self.ctx)",
        "async for _ in poll(self.poll_delay_s):",
        "await self._poll_iteration()",
    ]
    positions = [source.index(step) for step in steps]
    assert positions == sorted(positions)
    # Nothing else happens per poll outside burst mode (which the worker never uses).
    loop_body = source[source.index("await self._poll_iteration()"):]
    assert "if self.burst:" in loop_body
    assert loop_body.count("await ") == 1 + loop_body[loop_body.index("if self.burst:"):].count(
        "await ")
    # Jobs start when their score is at most arq's timestamp_ms(): the clock we wake by.
    assert "score > timestamp_ms()" in inspect.getsource(Worker.start_jobs)
    assert "max=now" in inspect.getsource(Worker._poll_iteration)


def test_after_job_end_runs_after_the_run_is_recorded_with_the_jobs_own_ctx() -> None:
    assert "after_job_end" in inspect.signature(Worker.__init__).parameters
    source = inspect.getsource(Worker.run_job)
    assert "function.coroutine(ctx, *args, **kwargs)" in source
    assert source.index("self.finish_job(") < source.index("await self.after_job_end(ctx)")
    # A failed or timed-out run is finished (its job key deleted): what after_job_end re-adds.
    assert "delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id]" in (
        inspect.getsource(Worker.finish_job))


async def test_a_batch_enqueued_job_is_the_job_arq_reads(arq_redis: ArqRedis, prefix: str) -> None:
    keys = Keys(prefix)
    jid = job_id(prefix, "call", 41)
    run_at_ms = 4_102_444_800_000  # 2100-01-01: deferred, so no worker anywhere starts it
    added = await enqueue_many(
        arq_redis, keys.queue, [ScheduledJob(PLACE_CALL, jid, (41,), run_at_ms)],
        expires_ms=60_000,
    )
    assert added == 1
    job = Job(jid, arq_redis, _queue_name=keys.queue, _deserializer=json_deserializer)
    assert await job.status() == JobStatus.deferred
    info = await job.info()
    assert info is not None
    assert (info.function, tuple(info.args), info.score) == (PLACE_CALL, (41,), run_at_ms)
    # arq's own enqueue refuses a job id we queued: the same uniqueness rule on both paths.
    assert await arq_redis.enqueue_job(PLACE_CALL, 41, _job_id=jid,
                                       _queue_name=keys.queue) is None
