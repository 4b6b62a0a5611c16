"""Postgres partitioned (packets dropped, not refused) for 30 s mid-fan-out (issue 7, item 2).

Two real worker processes reach a throwaway Postgres through a proxy that can blackhole the
traffic (testing/stall_proxy.py): connections neither fail nor answer. A 16-member parallel
alert and a 3-member sequential one are fanning out when the partition starts; one more
event arrives during it. After it heals: every member is called exactly once and every call
is terminal within a minute. Prints the recovery time (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from scripts.services import ThrowawayPostgres
from testing.fake_twilio import FakeTwilio
from testing.stall_proxy import StallProxy
from tests.e2e.workers import SpawnWorker
from tests.helpers import fire, make_group, wait_for
from worker import db
from worker.config import Settings, load_settings
from worker.migrate import migrate

STALL_S = 30.0
STORM = [f"+1415555{n:04d}" for n in range(100, 116)]
CHAIN = ["+14155550200", "+14155550201", "+14155550202"]
DURING = ["+14155550300"]
PARTITION_TUNING = {
    "VOICEALERT_CALLS_PER_SECOND": "2",  # the fan-out spans the start of the partition
    "VOICEALERT_DATABASE_TIMEOUT_S": "2",
    "VOICEALERT_CALL_JOB_TIMEOUT_S": "8",
}


async def test_postgres_blackholed_for_30s_mid_fanout_calls_everyone_once_and_ends_every_call(
    throwaway_postgres: ThrowawayPostgres, settings: Settings, fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    real_url = throwaway_postgres.url_for("voicealert")
    await migrate(real_url)
    conn = await db.connect(real_url)
    await make_group(conn, "storm", STORM)
    await make_group(conn, "chain", CHAIN)
    await make_group(conn, "during", DURING)
    fake_twilio.ring_s = 3.0
    fake_twilio.talk_s = 2.0
    for phone in CHAIN[:2]:
        fake_twilio.set_outcome(phone, "no-answer")
    with StallProxy("127.0.0.1", throwaway_postgres.port) as proxy:
        through_proxy = f"postgresql://postgres@127.0.0.1:{proxy.port}/voicealert"
        workers = [spawn_worker(name, DATABASE_URL=through_proxy, **PARTITION_TUNING)
                   for name in ("a", "b")]
        for worker in workers:
            await worker.ready()
        await fire(settings, alert_id="storm", group="storm", dedup_window_s=0)
        await fire(settings, alert_id="chain", group="chain", mode="sequential",
                   dedup_window_s=0)

        async def fan_out_started() -> bool:
            return len(fake_twilio.creates()) >= 8

        await wait_for(fan_out_started, 20, "the fan-out to start")
        proxy.stall()
        stalled_at = time.monotonic()
        await fire(settings, alert_id="during", group="during", dedup_window_s=0)
        while time.monotonic() - stalled_at < STALL_S:
            await asyncio.sleep(1)
            assert all(w.alive for w in workers), [w.log_tail() for w in workers]
        creates_during = len(fake_twilio.creates())
        proxy.heal()
        healed_at = time.monotonic()

        async def every_call_terminal() -> bool:
            rows = await db.list_calls(conn)
            return (len(rows) == len(STORM) + len(CHAIN) + len(DURING)
                    and all(r.ended_at is not None for r in rows))

        try:
            await wait_for(every_call_terminal, 60, "every call terminal after the partition")
        except AssertionError:
            rows = await db.list_calls(conn)
            raise AssertionError(
                f"not terminal: {[(r.id, r.member_name, r.status) for r in rows if not r.ended_at]}"
                f" of {len(rows)}\n" + "\n".join(w.log_tail(15) for w in workers)) from None
        recovery_s = time.monotonic() - healed_at
        rows = await db.list_calls(conn)
        alerts = {r["alert_id"]: r["status"]
                  for r in await conn.fetch("SELECT alert_id, status FROM alerts")}
    await conn.close()

    per_phone = Counter(c.to for c in fake_twilio.created_calls())
    assert per_phone == Counter(STORM + CHAIN + DURING), "each member called exactly once"
    assert {r.phone: r.status for r in rows if r.phone in CHAIN} == {
        CHAIN[0]: "no-answer", CHAIN[1]: "no-answer", CHAIN[2]: "completed"}
    assert all(r.status == "completed" for r in rows if r.phone not in CHAIN)
    assert alerts == {"storm": "answered", "chain": "answered", "during": "answered"}
    assert all(w.alive for w in workers)
    print(f"\n[partition] Postgres blackholed {STALL_S:.0f}s after {creates_during} of "
          f"{len(per_phone)} calls were placed: every member called once, every call terminal "
          f"{recovery_s:.1f}s after it healed")


def test_settings_used_here_are_valid(env: dict[str, str]) -> None:
    load_settings({**env, **PARTITION_TUNING})
