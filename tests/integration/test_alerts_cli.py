"""`voicealert alerts list|show`: who was called for alert X and what happened, step by step,
from the record (call_events, duplicate_events, dead letters), in order, with the sources."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    calls_of,
    fire,
    make_group,
    resolve,
    run_cli,
    wait_for,
)
from worker import db
from worker.config import load_settings
from worker.models import CallStatus


async def test_the_timeline_of_an_alert_with_a_duplicate_a_429_retry_and_a_cancel_is_in_order(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    # 0.5 calls/s: the second member's slot is 2 s after the first's; the phones ring 30 s,
    # so the resolve finds both at the provider and cancels them there.
    slow = {**env, "VOICEALERT_CALLS_PER_SECOND": "0.5"}
    settings = load_settings(slow)
    fake_twilio.ring_s = 30.0
    fake_twilio.error_rate_429 = 1.0  # Twilio throttles the first attempt
    await make_group(db_conn, phones=PHONES[:2])
    await start_worker(settings)
    await fire(settings, alert_id="db-down")

    async def throttled() -> bool:
        rows = await calls_of(db_conn, "db-down")
        events = await db.call_events(db_conn, rows[0].id) if rows else []
        return any(e.status == CallStatus.PENDING and "20429" in (e.detail or "")
                   for e in events)

    await wait_for(throttled, what="the first attempt throttled")
    fake_twilio.error_rate_429 = 0.0
    await fire(settings, alert_id="db-down")  # within the dedup window: suppressed

    async def both_at_the_provider() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return len(rows) == 2 and all(r.status == CallStatus.QUEUED for r in rows)

    await wait_for(both_at_the_provider, what="both calls at the provider")
    await resolve(settings, "db-down")

    async def both_canceled() -> bool:
        return [r.status for r in await calls_of(db_conn, "db-down")] == [CallStatus.CANCELED] * 2

    await wait_for(both_canceled, what="both calls canceled")

    result = await run_cli(slow, "alerts", "show", "db-down", "--json")
    assert result.code == 0, result.stderr
    history = json.loads(result.stdout)
    assert history["alert"]["status"] == "resolved"
    assert history["alert"]["duplicates"] == 1
    steps = history["timeline"]
    assert [s["at"] for s in steps] == sorted(s["at"] for s in steps)
    first, second = (c["id"] for c in history["calls"])
    story = [(s["kind"], s["call"], s["status"], s["source"]) for s in steps]
    first_call = [(status, source) for kind, call, status, source in story
                  if kind == "call" and call == first]
    assert first_call[:5] == [
        ("pending", "worker"), ("dialing", "worker"), ("pending", "worker"),  # the 429
        ("dialing", "worker"), ("queued", "worker"),
    ], first_call
    assert first_call[-1] == ("canceled", "cancel")
    throttle = next(s for s in steps if s["call"] == first and s["status"] == "pending"
                    and s["detail"])
    assert throttle["detail"].startswith("20429: ")
    kinds = [s["kind"] for s in steps]
    assert kinds[:2] == ["written", "received"]
    # The duplicate came after the 429, the resolve after both rang, the cancels after it.
    duplicates = kinds.index("duplicates")
    resolved = kinds.index("resolved")
    throttled_at = steps.index(throttle)
    assert throttled_at < duplicates < resolved
    assert steps[duplicates]["count"] == 1
    cancels = [i for i, s in enumerate(steps) if s["status"] == "canceled"]
    assert len(cancels) == 2
    assert all(i > resolved for i in cancels)
    assert {steps[i]["source"] for i in cancels} == {"cancel"}
    assert [(s["status"], s["source"]) for s in steps if s["call"] == second] == [
        ("pending", "worker"), ("dialing", "worker"), ("queued", "worker"),
        ("canceled", "cancel")]

    screen = await run_cli(slow, "alerts", "show", "db-down")
    assert screen.code == 0
    lines = screen.stdout.splitlines()
    assert lines[0] == f"alert db-down (tenant default, #{history['alert']['id']}): resolved"
    assert any("dialing     by worker  (attempt 2)" in line for line in lines)
    assert any("1 duplicate trigger suppressed" in line for line in lines)
    assert any("canceled    by cancel" in line for line in lines)
    assert not any(phone in screen.stdout for phone in PHONES)  # masked for people


async def test_alerts_list_filters_by_status_tenant_and_since(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    settings = load_settings(env)
    await make_group(db_conn, phones=PHONES[:1])
    await make_group(db_conn, phones=PHONES[1:2], tenant="acme")
    await start_worker(settings)
    await fire(settings, alert_id="db-down")
    await fire(settings, alert_id="disk-full", tenant="acme")
    await fire(settings, alert_id="nobody-home", group="no-such-group")

    async def settled() -> bool:
        rows = await db.list_alerts(db_conn, None)
        return len(rows) == 3 and {r.status for r in rows} == {"answered", "unknown_group"}

    await wait_for(settled, what="three alerts settled")
    everything = json.loads((await run_cli(env, "alerts", "list", "--json")).stdout)
    by_id = {a["alert_id"]: a for a in everything}
    assert sorted(by_id) == ["db-down", "disk-full", "nobody-home"]
    assert by_id["db-down"]["call_count"] == by_id["db-down"]["answered_count"] == 1
    assert by_id["nobody-home"]["call_count"] == 0
    acme = json.loads((await run_cli(env, "alerts", "list", "--tenant", "acme", "--json")).stdout)
    assert [a["alert_id"] for a in acme] == ["disk-full"]
    unknown = await run_cli(env, "alerts", "list", "--status", "unknown_group")
    assert unknown.code == 0
    assert len(unknown.stdout.splitlines()) == 2  # the header and the one alert
    assert "nobody-home" in unknown.stdout
    future = await run_cli(env, "alerts", "list", "--since", "2999-01-01")
    assert (future.code, future.stdout) == (0, "no alerts\n")
    recent = await run_cli(env, "alerts", "list", "--since", "1h")
    assert len(recent.stdout.splitlines()) == 4


async def test_alerts_show_of_an_unknown_alert_exits_2_with_one_line(
    env: dict[str, str],
) -> None:
    result = await run_cli(env, "alerts", "show", "never-fired")
    assert result.code == 2
    assert result.error_line == "voicealert: no alert 'never-fired' in tenant 'default'"
