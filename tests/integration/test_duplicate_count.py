"""Duplicates counted by one replica while another creates the alert they count toward are
all counted (worker/db.py: both take the owner's transaction lock).

Two real connections interleave as two replicas did: the alert's creation is in flight
(its transaction open, its row not committed) when the duplicates are recorded. Before the
lock, the count of the duplicates' statement went to no row and the alert's insert did not
see them: a storm over two replicas counted 99 duplicates of 199.
"""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg

from schema import Member
from worker import db
from worker.models import AlertStatus, Duplicate, NewAlert, StatusSource

OWNER = "stream:1-0"


def alert() -> NewAlert:
    return NewAlert(tenant="default", alert_id="storm", event_key=OWNER, group_name="g",
                    message="m", mode="parallel", status=AlertStatus.CALLING, dedup_window_s=300,
                    metadata={}, event_id=None, stream_id="1-0")


async def test_duplicates_recorded_while_the_alert_is_created_are_all_counted(
    db_conn: asyncpg.Connection, database_url: str
) -> None:
    creator = await db.connect(database_url)
    try:
        members = [Member(name="A", phone="+14155550100")]
        async with creator.transaction():
            # The creating replica's transaction is open and holds its row, uncommitted...
            await db.create_alert(creator, alert(), members, StatusSource.WORKER)
            duplicates = [Duplicate(tenant="default", owner_key=OWNER, stream_id=f"{n}-1",
                                    alert_id="storm", event_id=None) for n in range(2, 102)]
            # ...when the other replica records 100 duplicates of it.
            counting = asyncio.create_task(db.record_duplicates(db_conn, duplicates))
            await asyncio.sleep(0.3)
            assert not counting.done(), "the count must wait for the alert being created"
        await asyncio.wait_for(counting, 5)
    finally:
        await creator.close()
    assert await db_conn.fetchval("SELECT duplicates FROM alerts WHERE event_key = $1",
                                  OWNER) == 100


async def test_duplicates_of_several_events_in_one_call_are_each_a_row_counted_once(
    db_conn: asyncpg.Connection,
) -> None:
    other = dataclasses.replace(alert(), alert_id="other", event_key="event:e1", event_id="e1",
                                stream_id="1-1")
    members = [Member(name="A", phone="+14155550100")]
    for new in (alert(), other):
        await db.create_alert(db_conn, new, members, StatusSource.WORKER)
    storm = [Duplicate("default", OWNER, f"{n}-0", "storm", None) for n in range(2, 7)]
    retried = [Duplicate("default", "event:e1", f"{n}-5", "other", "e1") for n in range(2, 4)]
    # Interleaved, with a redelivered entry: five rows and two, each counted once.
    await db.record_duplicates(db_conn, [*storm[:2], retried[0], *storm[2:], retried[1],
                                         storm[0]])
    await db.record_duplicates(db_conn, storm[3:])  # delivered again: counts nothing
    counts = {r["event_key"]: r["duplicates"]
              for r in await db_conn.fetch("SELECT event_key, duplicates FROM alerts")}
    assert counts == {OWNER: 5, "event:e1": 2}
    rows = await db_conn.fetch(
        "SELECT owner_key, stream_id, alert_id, event_id FROM duplicate_events ORDER BY 1, 2")
    assert [tuple(r) for r in rows] == sorted(
        (d.owner_key, d.stream_id, d.alert_id, d.event_id) for d in [*storm, *retried])


async def test_a_batch_mixing_new_and_redelivered_duplicates_counts_only_the_new(
    db_conn: asyncpg.Connection,
) -> None:
    await db.create_alert(db_conn, alert(), [Member(name="A", phone="+14155550100")],
                          StatusSource.WORKER)
    first = [Duplicate("default", OWNER, f"{n}-0", "storm", None) for n in range(2, 5)]
    await db.record_duplicates(db_conn, first)
    # A batch read again after a crash before its XACK, with entries that came after it.
    again = [*first[1:], *(Duplicate("default", OWNER, f"{n}-0", "storm", None)
                           for n in range(5, 7))]
    await db.record_duplicates(db_conn, again)
    assert await db_conn.fetchval("SELECT duplicates FROM alerts WHERE event_key = $1",
                                  OWNER) == 5
    assert await db_conn.fetchval("SELECT count(*) FROM duplicate_events") == 5
