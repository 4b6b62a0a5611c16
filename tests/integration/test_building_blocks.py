"""The Redis building blocks on their own, against real Redis: dedup lock, call-rate schedule,
batched job enqueue, the simulated provider."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio
from arq.connections import ArqRedis

from worker.dedup import DedupLock, LockRequest
from worker.keys import Keys
from worker.providers import CallOptions
from worker.queue import PLACE_CALL, ScheduledJob, enqueue_many, job_id, json_deserializer
from worker.ratelimit import DIAL_MARGIN_MS, RateLimiter
from worker.simulated import SimulatedProvider, parse_outcomes


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    conn = redis.asyncio.Redis.from_url(redis_url)
    yield conn
    await conn.aclose()


def request(owner: str, alert_id: str = "db-down", tenant: str = "t1") -> LockRequest:
    return LockRequest(tenant=tenant, alert_id=alert_id, owner=owner, window_s=60)


async def test_dedup_lock_is_reentered_by_its_owner_and_refused_to_others(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    lock = DedupLock(client, Keys(prefix))
    first, again, other, other_tenant = await lock.acquire_many(
        [request("event:a"), request("event:a"), request("event:b"),
         request("event:b", tenant="t2")]
    )
    assert (first.acquired, again.acquired, other.acquired) == (True, True, False)
    assert other.owner == "event:a"
    assert other_tenant.acquired


async def test_a_batch_of_lock_requests_decides_as_the_same_requests_one_by_one(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    """A batch asks Redis once per distinct lock; its decisions must be those of trying
    each request in turn, locks held before the batch included."""
    requests = [request(owner, alert_id) for owner, alert_id in [
        ("event:1", "a"), ("event:2", "a"), ("event:1", "a"), ("event:3", "b"),
        ("event:4", "c"), ("event:2", "a"), ("event:4", "c"), ("event:5", "b"),
    ]]
    one_by_one, batched = DedupLock(client, Keys(f"{prefix}1:")), DedupLock(client, Keys(prefix))
    for lock in (one_by_one, batched):
        await lock.acquire_many([request("event:0", "b")])  # held before the batch
    expected = [(await one_by_one.acquire_many([r]))[0] for r in requests]
    assert await batched.acquire_many(requests) == expected
    assert [d.acquired for d in expected] == [True, False, True, False, True, False, True, False]
    assert {d.owner for d in expected} == {"event:0", "event:1", "event:4"}
    for alert_id in "abc":
        key = Keys(prefix).dedup_lock("t1", alert_id)
        assert await client.get(key) == await client.get(Keys(f"{prefix}1:").dedup_lock(
            "t1", alert_id))
        assert 0 < await client.ttl(key) <= 60


async def test_dedup_lock_is_released_only_by_its_owner(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    lock = DedupLock(client, Keys(prefix))
    await lock.acquire_many([request("event:a")])
    assert not await lock.release("t1", "db-down", "event:b")
    assert not (await lock.acquire_many([request("event:b")]))[0].acquired
    assert await lock.release("t1", "db-down", "event:a")
    assert (await lock.acquire_many([request("event:b")]))[0].acquired


async def test_dedup_lock_expires_with_its_window(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    lock = DedupLock(client, Keys(prefix))
    short = LockRequest(tenant="t1", alert_id="x", owner="event:a", window_s=1)
    await lock.acquire_many([short])
    ttl = await client.ttl(Keys(prefix).dedup_lock("t1", "x"))
    assert 0 < ttl <= 1


async def test_tenant_and_alert_id_cannot_collide_in_lock_keys() -> None:
    keys = Keys("p:")
    assert keys.dedup_lock("a:b", "c") != keys.dedup_lock("a", "b:c")


async def test_rate_limiter_spaces_reservations_across_callers(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    keys = Keys(prefix)
    one = RateLimiter(client, keys.rate_limit, calls_per_second=10)
    two = RateLimiter(client, keys.rate_limit, calls_per_second=10)  # another replica
    first = await one.reserve(3)
    second = await two.reserve(2)
    slots = first + second
    # 10 per second plus the dial margin: the schedule comes at the pace the gate admits.
    assert one.interval_ms == (1000 + DIAL_MARGIN_MS) / 10
    assert all(b - a in (int(one.interval_ms), math.ceil(one.interval_ms))
               for a, b in itertools.pairwise(slots))
    assert slots[-1] - slots[0] == int(4 * one.interval_ms)


async def test_rate_limiter_does_not_bank_idle_time(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    limiter = RateLimiter(client, Keys(prefix).rate_limit, calls_per_second=20)
    await limiter.reserve(1)
    await asyncio.sleep(0.3)
    later = await limiter.reserve(2)
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros // 1000
    assert later[0] >= now_ms - 50  # no burst credit from the idle 300 ms
    assert later[1] - later[0] == int(limiter.interval_ms)


async def test_rate_limiter_spaces_calls_below_a_millisecond_at_high_rates(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    # 10,000 calls/s (the cap): about 0.1 ms apart (0.1 ms and the margin's share), so 1,000
    # calls span about 100 ms, in two callers.
    keys = Keys(prefix)
    one = RateLimiter(client, keys.rate_limit, calls_per_second=10_000)
    two = RateLimiter(client, keys.rate_limit, calls_per_second=10_000)
    slots = await one.reserve(500) + await two.reserve(500)
    assert slots == sorted(slots)
    span = 999 * one.interval_ms
    assert int(span) - 1 <= slots[-1] - slots[0] <= math.ceil(span)
    per_ms = max(slots.count(s) for s in set(slots))
    assert per_ms <= 10  # never more than the rate's share of a millisecond


async def test_rate_limiter_stores_a_whole_millisecond_schedule(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    # At 3 calls/s slots are a fraction of a millisecond apart; what is stored stays an
    # integer, never ahead of the rate, so a replica of the previous version (integer
    # arithmetic) reads it during an upgrade.
    key = Keys(prefix).rate_limit
    limiter = RateLimiter(client, key, calls_per_second=3)
    slots = await limiter.reserve(4)
    stored = (await client.get(key)).decode()
    assert stored.isdigit()
    assert int(stored) >= slots[0] + 4 * limiter.interval_ms
    gap = limiter.interval_ms
    assert {b - a for a, b in itertools.pairwise(slots)} <= {int(gap), math.ceil(gap)}


@pytest.mark.parametrize(("rate", "per_window", "window_ms"), [
    (10, 10, 1000 + DIAL_MARGIN_MS),
    (1, 1, 1000 + DIAL_MARGIN_MS),
    (0.5, 1, 2000 + DIAL_MARGIN_MS),  # one call per two seconds
    (2.5, 3, 1200 + DIAL_MARGIN_MS),  # three per 1.2 s: the rate, over whole calls
])
async def test_dial_gate_window_holds_the_rate_in_whole_calls(
    client: redis.asyncio.Redis, rate: float, per_window: int, window_ms: float
) -> None:
    limiter = RateLimiter(client, "unused", calls_per_second=rate)
    assert (limiter.per_window, limiter.window_ms) == (per_window, window_ms)
    assert limiter.interval_ms == window_ms / per_window


async def test_dial_gate_holds_every_window_at_the_rate_across_replicas_in_a_burst(
    redis_url: str, prefix: str
) -> None:
    # Three replicas (connections of their own) each dial 12 calls at once, as replicas
    # starting overdue jobs together would. Asserted on the gate's own record of when each
    # dial was admitted (Redis's clock, inside the script that checks and records): no
    # window of the gate's width, and so no 1 s window, holds more than the rate.
    keys = Keys(prefix)
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(3)]
    try:
        limiters = [RateLimiter(c, keys.rate_limit, calls_per_second=10,
                                dials_key=keys.dial_window) for c in clients]
        admitted = await asyncio.gather(*(
            limiter.admit_dial(f"{r}:{i}") for r, limiter in enumerate(limiters)
            for i in range(12)))
    finally:
        for c in clients:
            await c.aclose()
    times = sorted(admitted)
    assert len(set(times)) == 36
    window_us = limiters[0].window_ms * 1000
    most = max(bisect.bisect_left(times, t + window_us) - i for i, t in enumerate(times))
    assert most == 10  # the first ten at once, then never an eleventh within the window
    spans = [times[i + 10] - times[i] for i in range(len(times) - 10)]
    assert min(spans) >= window_us


async def test_dial_gate_admits_dials_asked_together_in_one_script_each_at_its_place(
    redis_url: str, prefix: str
) -> None:
    # Two replicas each reach 15 POSTs in the same turn of their event loop (a chunk's calls
    # at their slots): each replica's dials go to the gate as one script per turn, and still
    # take their places one by one: the first script admits as many as the window holds (at
    # consecutive microseconds), the rest wait, and no window ever holds more than the rate.
    keys = Keys(prefix)
    clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
    try:
        limiters = [RateLimiter(c, keys.rate_limit, calls_per_second=10,
                                dials_key=keys.dial_window) for c in clients]
        first = await asyncio.gather(*(limiters[0].admit_dial(f"0:{i}") for i in range(10)))
        admitted = first + await asyncio.gather(*(
            limiter.admit_dial(f"{r}:{i}") for r, limiter in enumerate(limiters)
            for i in range(10 if r == 0 else 15, 15 if r == 0 else 30)))
        record = await clients[0].zrange(keys.dial_window, 0, -1, withscores=True)
    finally:
        for c in clients:
            await c.aclose()
    # One script, in the order asked (separate scripts are a round trip apart, not 1 µs).
    assert first == list(range(first[0], first[0] + 10))
    times = sorted(admitted)
    assert len(set(times)) == 30
    window_us = limiters[0].window_ms * 1000
    most = max(bisect.bisect_left(times, t + window_us) - i for i, t in enumerate(times))
    assert most == 10
    assert min(times[i + 10] - times[i] for i in range(len(times) - 10)) >= window_us
    # The gate keeps the latest ten, each recorded at the time returned to its caller.
    assert sorted(int(score) for _, score in record) == times[-10:]


async def test_dial_gate_needs_its_key(client: redis.asyncio.Redis) -> None:
    with pytest.raises(RuntimeError, match="dial gate"):
        await RateLimiter(client, "unused", calls_per_second=1).admit_dial("1:1")


async def test_enqueue_many_skips_jobs_already_queued(arq_redis: ArqRedis, prefix: str) -> None:
    keys = Keys(prefix)
    jobs = [ScheduledJob(PLACE_CALL, job_id(prefix, "call", i), (i,), 0) for i in (1, 2)]
    assert await enqueue_many(arq_redis, keys.queue, jobs, expires_ms=60_000) == 2
    again = [*jobs, ScheduledJob(PLACE_CALL, job_id(prefix, "call", 3), (3,), 0)]
    assert await enqueue_many(arq_redis, keys.queue, again, expires_ms=60_000) == 1
    queued = await arq_redis.zrange(keys.queue, 0, -1)
    assert sorted(q.decode() for q in queued) == [job_id(prefix, "call", i) for i in (1, 2, 3)]
    raw = await arq_redis.get("arq:job:" + job_id(prefix, "call", 3))
    payload = json_deserializer(raw)  # JSON, never pickle
    assert (payload["f"], payload["a"]) == (PLACE_CALL, [3])


async def test_simulated_provider_follows_a_realistic_lifecycle(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    provider = SimulatedProvider(client, Keys(prefix), outcomes="+14155550101=busy,*=completed",
                                 ring_s=0.2, talk_s=0.2)
    detection = CallOptions(machine_detection="Enable")
    answered = await provider.create_call(to="+14155550100", twiml="<Response/>",
                                          options=detection)
    busy = await provider.create_call(to="+14155550101", twiml="<Response/>")
    assert answered.status == "queued"
    await asyncio.sleep(0.5)
    done = await provider.fetch_call(answered.sid)
    assert (done.status, done.answered_by) == ("completed", "human")
    assert (await provider.fetch_call(busy.sid)).status == "busy"
    since = datetime.now(UTC) - timedelta(minutes=1)
    found = await provider.find_calls(to="+14155550100", since=since)
    assert [c.sid for c in found] == [answered.sid]


async def test_simulated_call_canceled_while_ringing_ends_canceled(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    provider = SimulatedProvider(client, Keys(prefix), outcomes="completed", ring_s=5, talk_s=1)
    call = await provider.create_call(to="+14155550100", twiml="<Response/>")
    assert (await provider.cancel_call(call.sid)).status == "canceled"
    await asyncio.sleep(0.1)
    assert (await provider.fetch_call(call.sid)).status == "canceled"


async def test_simulated_machines_are_detected_and_presses_reported(
    client: redis.asyncio.Redis, prefix: str
) -> None:
    provider = SimulatedProvider(
        client, Keys(prefix), outcomes="+14155550101=machine,+14155550102=press-1",
        ring_s=0.1, talk_s=0.4)
    detection = CallOptions(machine_detection="DetectMessageEnd")
    machine = await provider.create_call(to="+14155550101", twiml="<Response/>",
                                         options=detection)
    person = await provider.create_call(to="+14155550102", twiml="<Response/>",
                                        options=detection)
    undetected = await provider.create_call(to="+14155550101", twiml="<Response/>")
    await asyncio.sleep(0.15)
    answering = await provider.fetch_call(machine.sid)
    assert (answering.status, answering.answered_by) == ("in-progress", "machine_end_beep")
    assert (await provider.fetch_call(person.sid)).digits is None  # not pressed yet
    hung_up = await provider.hang_up(machine.sid)
    assert (hung_up.status, hung_up.answered_by) == ("completed", "machine_end_beep")
    await asyncio.sleep(0.2)
    pressed = await provider.fetch_call(person.sid)
    assert (pressed.status, pressed.answered_by, pressed.digits) == ("in-progress", "human", "1")
    assert (await provider.fetch_call(undetected.sid)).answered_by is None


def test_simulated_outcomes_reject_unknown_statuses() -> None:
    assert parse_outcomes("no-answer") == {"*": "no-answer"}
    with pytest.raises(ValueError, match="answered"):
        parse_outcomes("+14155550100=answered")
