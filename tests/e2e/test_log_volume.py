"""What a real worker logs for a run on the happy path: a handful of lines per call, each naming
its alert (and call), none of arq's free text, no phantom SIGUSR1."""

from __future__ import annotations

import signal
from collections import Counter

import asyncpg
import pytest

from testing.fake_twilio import FakeTwilio
from tests.e2e.workers import SpawnWorker
from tests.helpers import PHONES, all_calls_completed, fire, make_group, wait_for
from worker.config import Settings

pytestmark = pytest.mark.e2e

MAX_LINES_PER_CALL = 6


async def test_a_call_on_the_happy_path_costs_at_most_six_log_lines(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
    spawn_worker: SpawnWorker,
) -> None:
    await make_group(db_conn, "solo", PHONES[:1])
    await make_group(db_conn, "oncall", PHONES)
    worker = spawn_worker("quiet", VOICEALERT_LOG_LEVEL="info")
    await worker.ready()
    alerts = {"solo-1": 1, "solo-2": 1, "solo-3": 1, "team-1": 3, "team-2": 3}
    for alert_id in alerts:
        await fire(settings, alert_id=alert_id, group="oncall" if "team" in alert_id else "solo")

    async def all_done() -> bool:
        return all([await all_calls_completed(db_conn, a, n) for a, n in alerts.items()])

    await wait_for(all_done, what="every call completed")
    worker.send(signal.SIGTERM)
    assert await worker.wait_exit(30) == 0, worker.log_tail()

    records = worker.events()
    text = worker.log_text()
    assert "SIGUSR1" not in text
    names = [r["event"] for r in records]
    run = records[names.index("ingest.started") + 1:names.index("worker.stopping")]
    calls = sum(alerts.values())
    per_alert = Counter(r.get("alert_id") for r in run)
    print(f"\n[logs] {len(run)} lines for {calls} calls ({len(run) / calls:.1f} per call): "
          f"{dict(Counter(r['event'] for r in run))}")
    assert len(run) <= MAX_LINES_PER_CALL * calls
    # Alerts for the same person may share one call (one ring at a time per person): the
    # call's lines name the alert whose row placed it, so that alert answers for the rows
    # merged into its calls too.
    merged = await db_conn.fetch(
        "SELECT a.alert_id, count(*) AS n FROM calls m JOIN calls c ON c.id = m.merged_into"
        " JOIN alerts a ON a.id = c.alert GROUP BY a.alert_id")
    rode_along: Counter[str] = Counter({str(r["alert_id"]): int(r["n"]) for r in merged})
    for alert_id, members in alerts.items():
        budget = MAX_LINES_PER_CALL * (members + rode_along[alert_id])
        assert per_alert[alert_id] <= budget, (alert_id, per_alert, rode_along)
    # Every line of the run says which alert it is about; every call line, which call.
    assert per_alert[None] == 0, [r for r in run if "alert_id" not in r]
    for record in run:
        if record["event"].startswith("call."):
            assert {"call", "alert", "alert_id"} <= record.keys(), record
    # arq's per-job free text is gone at INFO; the outcome of each call is there.
    assert not [r for r in run if r.get("logger", "").startswith("arq")]
    placed = await db_conn.fetchval("SELECT count(*) FROM calls WHERE merged_into IS NULL")
    assert names.count("call.placed") == placed
    assert sum(1 for r in run if r["event"] == "call.status" and r["status"] == "completed") \
        == placed
