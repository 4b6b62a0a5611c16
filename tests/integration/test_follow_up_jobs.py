"""No job is dropped by arq while its call is not over (worker/jobs.py; issue 7, item 2).

arq drops a job for good when it fails or hits its ``job_timeout``. These tests run jobs
through a real arq worker on the real Redis: a run cut off by its timeout, or one that raised,
is put back; following a call is a fresh job each round, not an arq retry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from arq import Worker
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.worker import func

from schema import Member
from testing.fake_twilio import FakeTwilio
from tests.helpers import fire, make_group, wait_for
from worker import db
from worker.app import close_services, open_services
from worker.calls import place_call
from worker.config import Settings
from worker.jobs import after_job_end, call_job, run_again_in
from worker.models import AlertStatus, CallStatus, NewAlert, StatusSource
from worker.outcomes import POLL_MAX_S, poll_call
from worker.queue import (
    ScheduledJob,
    enqueue_many,
    job_id,
    json_deserializer,
    json_serializer,
)
from worker.services import Services


@pytest.fixture
async def services(settings: Settings, arq_redis: ArqRedis) -> AsyncIterator[Services]:
    opened = await open_services(settings, arq_redis)
    yield opened
    await close_services(opened)


async def run_arq(services: Services, jobs: dict[str, Any], until: Any,
                  timeout_s: float = 10) -> Worker:
    """A real arq worker running ``jobs`` (wrapped like the worker's) until ``until()``."""
    worker = Worker(
        functions=[func(call_job(name, fn), name=name) for name, fn in jobs.items()],
        queue_name=services.keys.queue, redis_pool=services.redis, handle_signals=False,
        after_job_end=after_job_end, job_timeout=0.3, poll_delay=0.02, keep_result=0,
        ctx={"services": services}, max_tries=10_000,
        job_serializer=json_serializer, job_deserializer=json_deserializer,
    )
    worker.in_progress_timeout_s = 2
    task = asyncio.create_task(worker.main())
    try:
        await wait_for(until, timeout_s, "the jobs to finish")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return worker


async def enqueue(services: Services, name: str, call_id: int) -> str:
    jid = job_id(services.keys.prefix, name, call_id)
    await enqueue_many(services.redis, services.keys.queue,
                       [ScheduledJob(name, jid, (call_id,), int(time.time() * 1000))],
                       expires_ms=60_000)
    return jid


async def test_a_job_cut_off_by_its_timeout_runs_again_instead_of_being_dropped(
    services: Services,
) -> None:
    runs: list[int] = []

    async def slow_once(ctx: dict[str, Any], call_id: int) -> str:
        runs.append(call_id)
        if len(runs) == 1:
            await asyncio.sleep(5)  # far past the 0.3 s job timeout
        return "done"

    jid = await enqueue(services, "slow", 7)

    async def finished() -> bool:
        return len(runs) == 2 and not await services.redis.exists(job_key_prefix + jid)

    worker = await run_arq(services, {"slow": slow_once}, finished)
    assert runs == [7, 7]
    assert worker.jobs_failed == 1  # arq's verdict on the first run; it was put back anyway


async def test_a_job_that_raised_runs_again_with_its_failures_counted(services: Services) -> None:
    seen: list[int] = []

    async def broken_twice(ctx: dict[str, Any], call_id: int) -> str:
        seen.append(ctx["job_try"])
        if len(seen) < 3:
            raise KeyError("a bug")
        return "done"

    await enqueue(services, "broken", 8)

    async def three_runs() -> bool:
        return len(seen) == 3

    await run_arq(services, {"broken": broken_twice}, three_runs)
    assert seen == [1, 1, 1]  # each run is a fresh job, not an arq retry


async def test_a_job_that_asks_to_run_again_is_a_fresh_job_not_an_arq_retry(
    services: Services,
) -> None:
    rounds: list[int] = []

    async def follow(ctx: dict[str, Any], call_id: int) -> str:
        rounds.append(ctx["job_try"])
        if len(rounds) < 4:
            run_again_in(ctx, 0.01)
            return "following"
        return "ended"

    jid = await enqueue(services, "follow", 9)

    async def ended() -> bool:
        return len(rounds) == 4 and not await services.redis.exists(job_key_prefix + jid)

    worker = await run_arq(services, {"follow": follow}, ended)
    assert rounds == [1, 1, 1, 1]
    assert (worker.jobs_retried, worker.jobs_failed, worker.jobs_complete) == (0, 0, 4)


async def test_a_followed_call_is_polled_to_its_end_without_arq_retries(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any
) -> None:
    fake_twilio.ring_s = 1.0
    fake_twilio.talk_s = 0.5
    await make_group(db_conn, "oncall", ["+14155550100"])
    worker = await start_worker()
    await fire(settings, alert_id="followed")

    async def completed() -> bool:
        rows = await db.list_calls(db_conn, alert_id="followed")
        return len(rows) == 1 and rows[0].status == CallStatus.COMPLETED

    await wait_for(completed, 15, "the call to complete")
    [row] = await db.list_calls(db_conn, alert_id="followed")
    events = await db.call_events(db_conn, row.id)
    polled = [e.status for e in events if e.source == StatusSource.POLL]
    assert polled[-1] == CallStatus.COMPLETED
    arq_worker = worker.process.worker
    assert arq_worker.jobs_retried == 0
    assert arq_worker.jobs_complete >= 3  # place_call, then several rounds of poll_call
    poll_job = job_key_prefix + job_id(settings.redis_prefix, "poll", row.id)

    async def poll_job_gone() -> bool:  # the run that saw the end finishes, asks nothing more
        return not await worker.services.redis.exists(poll_job)

    await wait_for(poll_job_gone, 5, "the poll job to end")


async def test_poll_call_run_by_hand_asks_to_run_again_while_the_call_rings(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, services: Services,
) -> None:
    fake_twilio.ring_s = 30.0
    stored = await db.create_alert(db_conn, _alert(), [Member(name="A", phone="+14155550100")],
                                   StatusSource.WORKER)
    [call] = stored.calls
    call_id = call.id
    assert await place_call({"services": services}, call_id) == "placed"
    ctx: dict[str, Any] = {"services": services}
    assert await poll_call(ctx, call_id) == "following"
    assert 0 < ctx["voicealert.run_again_s"] <= POLL_MAX_S


def _alert() -> NewAlert:
    return NewAlert(tenant="default", alert_id="by-hand", event_key="event:by-hand",
                    group_name="oncall", message="m", mode="parallel",
                    status=AlertStatus.CALLING, dedup_window_s=0, metadata={},
                    event_id="by-hand", stream_id="1-0")
