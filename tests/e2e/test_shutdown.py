"""Graceful shutdown of a real worker process (issue 4, item 5).

On SIGTERM a replica stops taking work, lets the calls it has in flight finish within
``VOICEALERT_SHUTDOWN_GRACE_S`` (no POST is cut off halfway), leaves the rest to the other
replicas, and exits 0. A second SIGTERM during the grace period exits at once.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import asyncpg

from testing.fake_twilio import FakeTwilio
from tests.e2e.workers import SpawnWorker
from tests.helpers import fire, make_group, wait_for
from worker import db
from worker.config import Settings

GRACE_S = 8
SLOW_PROVIDER = {
    "VOICEALERT_CALLS_PER_SECOND": "100",
    # Few job slots: both replicas are saturated, with due calls waiting for a free slot.
    "VOICEALERT_CONCURRENCY": "5",
    "VOICEALERT_SHUTDOWN_GRACE_S": str(GRACE_S),
}


def phones(count: int) -> list[str]:
    return [f"+1415777{i:04d}" for i in range(count)]


async def test_sigterm_during_fanout_finishes_calls_in_flight_and_exits_zero(
    settings: Settings,
    db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    size = 40
    members = phones(size)
    await make_group(db_conn, "everyone", members)
    fake_twilio.create_delay_s = 1.0  # every POST is in flight for a second
    leaving = spawn_worker("leaving", **SLOW_PROVIDER)
    staying = spawn_worker("staying", **SLOW_PROVIDER)
    await leaving.ready()
    await staying.ready()

    await fire(settings, alert_id="deploy", group="everyone", message="Deploy broke checkout")

    async def leaving_has_posts_in_flight() -> bool:
        unanswered = [c for c in fake_twilio.creates() if c.status == 0]
        return len(leaving.unfinished_calls()) >= 5 and len(unanswered) >= 5

    await wait_for(leaving_has_posts_in_flight, 20, "calls in flight at the leaving replica")
    in_flight = leaving.unfinished_calls()
    assert in_flight
    sent_at = leaving.send(signal.SIGTERM)
    code = await leaving.wait_exit(GRACE_S + 10)
    exited_after = time.monotonic() - sent_at
    assert code == 0, leaving.log_tail()
    assert exited_after < GRACE_S, f"took {exited_after:.2f}s, grace is {GRACE_S}s"

    # Every job it had started ran to its end: no POST was cut off, no job left for a rerun.
    assert leaving.unfinished_jobs() == set(), leaving.log_tail()
    dialed = sorted({int(e["call"]) for e in leaving.logged("call.dialing")})
    recorded = await db_conn.fetch(
        "SELECT id, status, provider_sid FROM calls WHERE id = ANY($1::bigint[])", dialed
    )
    assert len(recorded) == len(dialed)
    assert all(r["provider_sid"] for r in recorded), [dict(r) for r in recorded]
    # It took no new work after the signal.
    lines = [str(e.get("event")) for e in leaving.events()]
    stop_line = lines.index("worker.stopping")
    assert not any("→" in line and ":place_call(" in line for line in lines[stop_line:])

    async def every_call_completed() -> bool:
        rows = await db.list_calls(db_conn, alert_id="deploy")
        return len(rows) == size and all(r.status == "completed" for r in rows)

    await wait_for(every_call_completed, 30, "the other replica finishing the fan-out")
    rows = await db.list_calls(db_conn, alert_id="deploy")
    assert not [r for r in rows if r.status == "dialing" and r.provider_sid is None]
    created = fake_twilio.created_calls()
    # Every POST the provider received is a call on our books, and nobody was rung twice.
    assert {c.sid for c in created} == {r.provider_sid for r in rows}
    assert Counter(c.to for c in created) == Counter(members)
    placed_by_leaving = len(leaving.logged("call.placed"))
    placed_by_staying = len(staying.logged("call.placed"))
    assert placed_by_leaving + placed_by_staying == size
    assert 0 < placed_by_leaving < size
    print(
        f"\n[shutdown] SIGTERM with {len(in_flight)} calls in flight: exited 0 after "
        f"{exited_after:.2f}s (grace {GRACE_S}s), having placed {placed_by_leaving} calls; "
        f"the other replica placed {placed_by_staying}"
    )


async def test_second_sigterm_during_grace_period_exits_at_once(
    settings: Settings,
    db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    await make_group(db_conn, "team", phones(10))
    fake_twilio.create_delay_s = 6.0  # draining would take ~6 s
    worker = spawn_worker("w", VOICEALERT_SHUTDOWN_GRACE_S="30")
    await worker.ready()
    await fire(settings, alert_id="slow", group="team", message="Provider is slow")

    async def posts_in_flight() -> bool:
        return sum(c.status == 0 for c in fake_twilio.creates()) >= 3

    await wait_for(posts_in_flight, 15, "POSTs in flight")
    worker.send(signal.SIGTERM)

    async def draining() -> bool:
        return bool(worker.logged("worker.stopping"))

    await wait_for(draining, 5, "the first SIGTERM to start the drain")
    assert worker.alive, "the first SIGTERM must drain, not exit"
    second_at = worker.send(signal.SIGTERM)
    code = await worker.wait_exit(2.0)
    took = time.monotonic() - second_at
    assert code is not None, f"still running 2s after the second SIGTERM:\n{worker.log_tail()}"
    assert worker.logged("worker.stopping_now")
    print(f"\n[shutdown] second SIGTERM: exited with {code} after {took:.2f}s")
