"""One spelling per status: the enums of worker/models.py against the migrated schema.

Read from the migrated database (every migration applied), so a status added to a CHECK
list by a later migration and not to the enum (or the other way round) fails here, as does
a status that ``call_status_rank`` or the terminal-status trigger does not know.
"""

from __future__ import annotations

import re

import asyncpg

from worker.models import (
    TERMINAL_CALL_STATUSES,
    AlertStatus,
    CallStatus,
    StatusSource,
    TokenScope,
)


async def check_list(conn: asyncpg.Connection, table: str, column: str) -> set[str]:
    """The values a CHECK constraint of ``table`` allows in ``column``."""
    definitions = await conn.fetch(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid = $1::regclass AND contype = 'c'",
        table,
    )
    lists = [
        set(re.findall(r"'([^']*)'::text", d["def"]))
        for d in definitions
        if re.search(rf"\(\(?{column} = ANY", d["def"])
    ]
    assert len(lists) == 1, f"expected one CHECK list on {table}.{column}, found {definitions}"
    return lists[0]


async def test_call_statuses_are_the_calls_check_list(db_conn: asyncpg.Connection) -> None:
    assert await check_list(db_conn, "calls", "status") == {s.value for s in CallStatus}


async def test_call_events_know_every_call_status_and_source(db_conn: asyncpg.Connection) -> None:
    assert await check_list(db_conn, "call_events", "status") == {s.value for s in CallStatus}
    assert await check_list(db_conn, "call_events", "source") == {s.value for s in StatusSource}


async def test_alert_statuses_are_the_alerts_check_list(db_conn: asyncpg.Connection) -> None:
    assert await check_list(db_conn, "alerts", "status") == {s.value for s in AlertStatus}


async def test_token_scopes_are_the_api_tokens_check_list(db_conn: asyncpg.Connection) -> None:
    assert await check_list(db_conn, "api_tokens", "scope") == {s.value for s in TokenScope}


async def test_call_status_rank_follows_the_enum_and_ends_at_the_terminal_set(
    db_conn: asyncpg.Connection,
) -> None:
    ranks = {
        status: await db_conn.fetchval("SELECT call_status_rank($1)", status.value)
        for status in CallStatus
    }
    in_order = [ranks[s] for s in CallStatus]
    assert in_order == sorted(in_order), f"enum order is not rank order: {ranks}"
    last = max(in_order)
    assert {s for s, r in ranks.items() if r == last} == TERMINAL_CALL_STATUSES
    open_ranks = [r for s, r in ranks.items() if s not in TERMINAL_CALL_STATUSES]
    assert len(set(open_ranks)) == len(open_ranks), f"two open statuses share a rank: {ranks}"


async def test_the_terminal_status_trigger_knows_the_terminal_set(
    db_conn: asyncpg.Connection,
) -> None:
    source = await db_conn.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'calls_terminal_status_is_final'"
    )
    listed = re.search(r"OLD\.status IN \(([^)]*)\)", source)
    assert listed is not None, source
    assert set(re.findall(r"'([^']*)'", listed[1])) == {s.value for s in TERMINAL_CALL_STATUSES}
