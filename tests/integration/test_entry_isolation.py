"""An entry whose handling raises is lettered on its own; the rest of its batch goes on
(issue 7, item 1: per-entry isolation in the consumer).

The failure is real: a trigger on ``alerts`` makes Postgres refuse one event's row with a
data exception (SQLSTATE 22023), as it refuses a value it cannot store.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from testing.fake_twilio import FakeTwilio
from testing.poison import good_event
from tests.helpers import make_group, stream_drained, wait_for, xadd_raw
from worker.config import Settings
from worker.keys import Keys

REFUSE_ONE_ALERT = """
CREATE FUNCTION refuse_one_alert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.alert_id = 'refused-by-postgres' THEN
        RAISE EXCEPTION 'this value cannot be stored' USING ERRCODE = '22023';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_one_alert BEFORE INSERT ON alerts
    FOR EACH ROW EXECUTE FUNCTION refuse_one_alert();
"""


async def test_an_entry_postgres_refuses_is_lettered_and_its_batch_rings(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
    text_redis: Any,
) -> None:
    await make_group(db_conn, "oncall", ["+14155550100"])
    await db_conn.execute(REFUSE_ONE_ALERT)
    first = await xadd_raw(settings, {k.decode(): v.decode()
                                      for k, v in good_event("first").items()})
    refused = await xadd_raw(settings, {"event": '{"alert_id": "refused-by-postgres", '
                                                 '"group": "no-such-group", "message": "m"}'})
    last = await xadd_raw(settings, {k.decode(): v.decode()
                                     for k, v in good_event("last").items()})
    worker = await start_worker()  # reads the three as one batch

    async def both_rang() -> bool:
        return len(fake_twilio.creates()) == 2

    await wait_for(both_rang, 15, "the two good events' calls")
    await wait_for(lambda: stream_drained(text_redis, Keys(settings.redis_prefix)), 10,
                   "the stream drained")
    letters = await db_conn.fetch("SELECT letter_key, reason, error FROM dead_letters")
    assert [(r["letter_key"], r["reason"]) for r in letters] == [
        (f"stream:{refused}", "processing_failed")]
    assert "cannot be stored" in letters[0]["error"]
    alerts = await db_conn.fetch("SELECT alert_id, stream_id FROM alerts ORDER BY id")
    assert [(r["alert_id"], r["stream_id"]) for r in alerts] == [("first", first), ("last", last)]
    assert worker.process.consumer_task is not None
    assert not worker.process.consumer_task.done(), "the consumer must go on"


REFUSE_ONE_RESOLVE = """
CREATE FUNCTION refuse_one_resolve() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.alert_id = 'refused-on-resolve' AND NEW.status <> OLD.status THEN
        RAISE EXCEPTION 'this change cannot be stored' USING ERRCODE = '22023';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_one_resolve BEFORE UPDATE ON alerts
    FOR EACH ROW EXECUTE FUNCTION refuse_one_resolve();
"""


async def test_a_resolve_and_an_ack_postgres_refuses_are_lettered_and_the_consumer_goes_on(
    settings: Settings, db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
    text_redis: Any,
) -> None:
    # Resolves and acks are handled apart from triggers (they stop calls, they create
    # nothing): a value Postgres refuses there must be lettered like any other entry's.
    await db_conn.execute(
        "INSERT INTO alerts (tenant, alert_id, event_key, group_name, message, mode, status,"
        " dedup_window_s, stream_id) VALUES ('default', 'refused-on-resolve', 'event:seed',"
        " 'oncall', 'm', 'parallel', 'calling', 0, '0-1')")
    await db_conn.execute(REFUSE_ONE_RESOLVE)
    await make_group(db_conn, "oncall", ["+14155550100"])
    resolve = await xadd_raw(settings, {"event": '{"alert_id": "refused-on-resolve", '
                                                 '"action": "resolve"}'})
    ack = await xadd_raw(settings, {"event": '{"alert_id": "refused-on-resolve", '
                                             '"action": "ack", "acknowledged_by": "alice"}'})
    await xadd_raw(settings, {k.decode(): v.decode() for k, v in good_event("after").items()})
    worker = await start_worker()  # reads the three as one batch

    async def rang() -> bool:
        return len(fake_twilio.creates()) == 1

    await wait_for(rang, 15, "the good event's call")
    await wait_for(lambda: stream_drained(text_redis, Keys(settings.redis_prefix)), 10,
                   "the stream drained")
    letters = await db_conn.fetch("SELECT letter_key, reason FROM dead_letters ORDER BY id")
    assert [(r["letter_key"], r["reason"]) for r in letters] == [
        (f"stream:{resolve}", "processing_failed"), (f"stream:{ack}", "processing_failed")]
    assert worker.process.consumer_task is not None
    assert not worker.process.consumer_task.done(), "the consumer must go on"
