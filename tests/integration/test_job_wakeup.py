"""The job loop wakes when a job comes due instead of waiting for its next poll
(worker/wakeup.py): an enqueue announces itself, and a job deferred to a rate-limit slot
starts at its slot. The poll delay here is 5 s (the longest allowed), so a job that waited
for the poll would show it by seconds, not milliseconds."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import asyncpg
from arq.connections import ArqRedis

from testing.fake_twilio import FakeTwilio
from tests.helpers import PHONES, fire, make_group, wait_for
from worker.config import load_settings
from worker.keys import Keys
from worker.queue import PLACE_CALL, ScheduledJob, enqueue_many, job_id
from worker.wakeup import JobWakeup

LONG_POLL = {"VOICEALERT_POLL_DELAY_S": "5"}


async def _idle_until_past_first_poll() -> None:
    # The loop looks at the queue once at start; from then on only a wake or the poll (5 s).
    await asyncio.sleep(0.5)


async def test_a_call_enqueued_while_the_worker_idles_starts_long_before_the_poll_delay(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    await make_group(db_conn, phones=PHONES[:1])
    await start_worker(load_settings(env | LONG_POLL))
    await _idle_until_past_first_poll()
    fired = time.monotonic()
    await fire(load_settings(env), alert_id="wake-on-enqueue")

    async def dialed() -> bool:
        return len(fake_twilio.creates()) == 1

    await wait_for(dialed, 4, "the call to be dialed")
    assert fake_twilio.creates()[0].at - fired < 2.5  # the next poll was ~4.5 s away


async def test_calls_deferred_to_rate_slots_start_at_their_slots_not_at_the_next_poll(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    await make_group(db_conn)  # three members, one call per second
    await start_worker(load_settings(env | LONG_POLL | {"VOICEALERT_CALLS_PER_SECOND": "1"}))
    await _idle_until_past_first_poll()
    await fire(load_settings(env), alert_id="wake-at-slot")

    async def all_dialed() -> bool:
        return len(fake_twilio.creates()) == 3

    await wait_for(all_dialed, 8, "three calls to be dialed")
    times = sorted(c.at for c in fake_twilio.creates())
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # One second apart (never sooner: the rate), and not held back to a 5 s poll.
    assert all(0.9 < gap < 1.6 for gap in gaps), gaps


async def test_an_enqueue_announces_its_earliest_job_on_the_wake_channel(
    arq_redis: ArqRedis, prefix: str,
) -> None:
    keys = Keys(prefix)
    wakeup = JobWakeup(arq_redis, keys.queue_wake)
    soon_ms = int(time.time() * 1000) + 60_000
    jobs = [ScheduledJob(PLACE_CALL, job_id(prefix, "call", n), (n,), soon_ms + n)
            for n in (3, 1, 2)]
    async with wakeup.listening():
        await asyncio.sleep(0.2)  # subscribed
        assert await enqueue_many(arq_redis, keys.queue, jobs, expires_ms=60_000) == 3
        assert await enqueue_many(arq_redis, keys.queue, jobs, expires_ms=60_000) == 0

        async def announced() -> bool:
            return wakeup.wakes >= 1

        await wait_for(announced, 5, "the wake announcement")
        await asyncio.sleep(0.2)
    assert wakeup.wakes == 1  # nothing new the second time: nothing announced
    started = asyncio.get_running_loop().time()
    # The wake is for the earliest job, a minute ahead: the wait runs to its deadline.
    await wakeup.wait(started + 0.2)
    assert asyncio.get_running_loop().time() - started >= 0.19


async def test_a_job_due_now_ends_the_wait_at_once(arq_redis: ArqRedis, prefix: str) -> None:
    wakeup = JobWakeup(arq_redis, Keys(prefix).queue_wake)
    loop = asyncio.get_running_loop()
    waiting = asyncio.create_task(wakeup.wait(loop.time() + 5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    wakeup.announce(time.time() * 1000)
    await asyncio.wait_for(waiting, 1)
    wakeup.looking()
    wakeup.announce(time.time() * 1000 + 300)  # a deferred job: wait for its time
    started = loop.time()
    await wakeup.wait(started + 5)
    assert 0.25 < loop.time() - started < 2



async def test_a_call_that_waited_for_its_number_dials_at_a_fresh_rate_slot(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    start_worker: Any,
) -> None:
    # One call per second. Alert "first" rings one person; "second" rings the same person,
    # so its call waits for the number (one ring at a time) and is re-checked every 2 s,
    # off the rate's slots; "crowd" fills the slots meanwhile with 6 other people.
    fake_twilio.talk_s = 1.0
    person, crowd = "+14155550190", [f"+141555502{i:02d}" for i in range(6)]
    await make_group(db_conn, "one", [person])
    await make_group(db_conn, "crowd", crowd)
    await start_worker(load_settings(env | {"VOICEALERT_CALLS_PER_SECOND": "1"}))
    settings = load_settings(env)
    for alert_id, group in (("first", "one"), ("second", "one"), ("crowd", "crowd")):
        await fire(settings, alert_id=alert_id, group=group)

    async def all_dialed() -> bool:
        return len(fake_twilio.creates()) == 8

    await wait_for(all_dialed, 20, "eight calls to be dialed")
    creates = sorted(fake_twilio.creates(), key=lambda c: c.at)
    to_person = [c.at for c in creates if c.form["To"][0] == person]
    assert len(to_person) == 2
    assert to_person[1] - to_person[0] > 1.2  # the second waited for the first to end
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(creates)]
    # A second apart, the call that waited included (without a slot of its own, it lands on
    # one of the crowd's); the margin is for a loaded machine.
    assert min(gaps) > 0.6, gaps
