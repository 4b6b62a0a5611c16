"""Contract 3: `voicealert migrate` builds one correct schema, once, however many run it."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import DATABASE_URL, REPO, admin_sql, with_database
from worker import db
from worker.migrate import MigrationError, load_migrations, migrate

MIGRATION_COUNT = len(load_migrations())


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    """The URL of a database that does not exist yet (migrate must create it); dropped after."""
    name = f"voicealert_test_fresh_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield with_database(DATABASE_URL, name)
    await admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def applied_rows(database_url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
    finally:
        await conn.close()


async def assert_one_correct_schema(database_url: str) -> None:
    rows = await applied_rows(database_url)
    expected = load_migrations()
    assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
        (m.version, m.name, m.checksum) for m in expected
    ]
    conn = await asyncpg.connect(database_url)
    try:
        tables = {
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
    finally:
        await conn.close()
    assert {"alert_groups", "alerts", "calls", "dead_letters", "schema_migrations"} <= tables


# --- the files --------------------------------------------------------------------------------


def test_migration_files_are_numbered_from_1_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"


def test_a_gap_in_the_numbering_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_initial.sql").write_text("SELECT 1;")
    (tmp_path / "0003_later.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="without gaps"):
        load_migrations(tmp_path)


def test_a_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_initial.sql").write_text("SELECT 1;")
    (tmp_path / "2_more.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"2_more\.sql"):
        load_migrations(tmp_path)


# --- applying ---------------------------------------------------------------------------------


async def test_migrate_creates_the_database_and_applies_every_file_once(
    fresh_database_url: str,
) -> None:
    first = await migrate(fresh_database_url)
    assert [m.version for m in first] == list(range(1, MIGRATION_COUNT + 1))
    second = await migrate(fresh_database_url)
    assert second == []
    await assert_one_correct_schema(fresh_database_url)


async def test_migrate_on_a_migrated_database_applies_nothing(database_url: str) -> None:
    assert await migrate(database_url) == []
    await assert_one_correct_schema(database_url)


async def test_two_concurrent_migrators_on_a_new_database_leave_one_schema(
    fresh_database_url: str,
) -> None:
    results = await asyncio.gather(migrate(fresh_database_url), migrate(fresh_database_url))
    # exactly one of them applied the files; the other waited for the lock and found none
    assert sorted(len(applied) for applied in results) == [0, MIGRATION_COUNT]
    await assert_one_correct_schema(fresh_database_url)


async def test_two_migrate_processes_at_once_leave_one_schema(fresh_database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": fresh_database_url}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "migrate", cwd=REPO, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode()
        assert out.decode().startswith("migrations applied: ")
    stdout = sorted(out.decode() for out, _ in outputs)
    assert sum("none pending" in text for text in stdout) == 1
    assert sum("0001_initial" in text for text in stdout) == 1
    await assert_one_correct_schema(fresh_database_url)


async def test_a_migration_changed_after_it_was_applied_is_refused(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        # what the database holds when the file was edited after being applied
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
    finally:
        await conn.close()
    with pytest.raises(MigrationError, match="0001_initial was changed"):
        await migrate(database_url)


# --- the migrated schema matches what the code expects ------------------------------------------

CONTRACT_COLUMNS = {
    "alert_groups": {"tenant", "name", "members", "created_at", "updated_at"},
    "alerts": {"tenant", "alert_id", "group_name", "message", "status", "event_id", "stream_id",
               "received_at", "duplicates", "mode", "metadata", "dedup_window_s"},
    "calls": {"alert", "position", "member_name", "phone", "status", "provider_sid", "attempts",
              "error_code", "error_message", "answered_by", "duration_s", "created_at",
              "updated_at", "ended_at"},
    "dead_letters": {"id", "source", "reason", "error", "payload", "attempts", "created_at",
                     "replayed_at"},
}


async def test_migrated_tables_have_the_contract_columns(db_conn: asyncpg.Connection) -> None:
    rows = await db_conn.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public'"
    )
    columns: dict[str, dict[str, str]] = {}
    for r in rows:
        columns.setdefault(r["table_name"], {})[r["column_name"]] = r["data_type"]
    for table, expected in CONTRACT_COLUMNS.items():
        assert expected <= set(columns[table]), f"{table} lacks {expected - set(columns[table])}"
    assert columns["alert_groups"]["members"] == "jsonb"
    assert columns["dead_letters"]["payload"] == "jsonb"
    assert columns["alerts"]["received_at"] == "timestamp with time zone"


async def test_group_names_are_unique_per_tenant(db_conn: asyncpg.Connection) -> None:
    insert = "INSERT INTO alert_groups (tenant, name, members) VALUES ($1, $2, '[]')"
    await db_conn.execute(insert, "acme", "oncall")
    await db_conn.execute(insert, "globex", "oncall")
    with pytest.raises(asyncpg.UniqueViolationError):
        await db_conn.execute(insert, "acme", "oncall")


async def _insert_alert(conn: asyncpg.Connection, status: str = "calling") -> int:
    alert_pk: int = await conn.fetchval(
        """
        INSERT INTO alerts (tenant, alert_id, event_key, group_name, message, mode, status,
                            dedup_window_s, stream_id)
        VALUES ('default', 'db-down', $1, 'oncall', 'Primary database is down', 'parallel',
                $2, 300, '1700000000000-0')
        RETURNING id
        """,
        f"stream:{uuid.uuid4().hex}",
        status,
    )
    return alert_pk


async def _insert_call(conn: asyncpg.Connection, alert_pk: int, position: int = 0,
                       status: str = "pending") -> int:
    call_id: int = await conn.fetchval(
        "INSERT INTO calls (alert, position, member_name, phone, status) "
        "VALUES ($1, $2, 'Alice', '+14155550100', $3) RETURNING id",
        alert_pk, position, status,
    )
    return call_id


async def test_alert_status_check_rejects_an_unknown_status(db_conn: asyncpg.Connection) -> None:
    for status in ("calling", "answered", "unanswered", "failed", "resolved", "unknown_group",
                   "empty_group"):
        await _insert_alert(db_conn, status)
    with pytest.raises(asyncpg.CheckViolationError):
        await _insert_alert(db_conn, "ringing")


async def test_call_status_check_rejects_an_unknown_status(db_conn: asyncpg.Connection) -> None:
    alert_pk = await _insert_alert(db_conn)
    statuses = ["pending", "dialing", "queued", "ringing", "in-progress", "completed", "busy",
                "no-answer", "failed", "canceled"]
    for position, status in enumerate(statuses):
        await _insert_call(db_conn, alert_pk, position, status)
    with pytest.raises(asyncpg.CheckViolationError):
        await _insert_call(db_conn, alert_pk, len(statuses), "answered")
    call_id = await _insert_call(db_conn, alert_pk, len(statuses) + 1, "pending")
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute("UPDATE calls SET status = 'in_progress' WHERE id = $1", call_id)


async def test_call_phone_must_be_e164(db_conn: asyncpg.Connection) -> None:
    alert_pk = await _insert_alert(db_conn)
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute(
            "INSERT INTO calls (alert, position, member_name, phone) "
            "VALUES ($1, 0, 'Alice', '415-555-0100')",
            alert_pk,
        )


async def test_terminal_call_status_never_moves_back(db_conn: asyncpg.Connection) -> None:
    alert_pk = await _insert_alert(db_conn)
    call_id = await _insert_call(db_conn, alert_pk, 0, "ringing")
    await db_conn.execute("UPDATE calls SET status = 'completed' WHERE id = $1", call_id)
    with pytest.raises(asyncpg.CheckViolationError, match="terminal"):
        await db_conn.execute("UPDATE calls SET status = 'ringing' WHERE id = $1", call_id)
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute("UPDATE calls SET status = 'failed' WHERE id = $1", call_id)
    # other columns of a finished call can still be recorded
    await db_conn.execute("UPDATE calls SET duration_s = 12 WHERE id = $1", call_id)
    row = await db_conn.fetchrow("SELECT status, duration_s FROM calls WHERE id = $1", call_id)
    assert row is not None
    assert (row["status"], row["duration_s"]) == ("completed", 12)


async def test_one_call_per_alert_and_position(db_conn: asyncpg.Connection) -> None:
    alert_pk = await _insert_alert(db_conn)
    other_alert = await _insert_alert(db_conn)
    await _insert_call(db_conn, alert_pk, 0)
    await _insert_call(db_conn, other_alert, 0)
    with pytest.raises(asyncpg.UniqueViolationError):
        await _insert_call(db_conn, alert_pk, 0)


async def test_calls_must_belong_to_an_existing_alert(db_conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await _insert_call(db_conn, 999_999, 0)


async def test_dead_letter_source_is_ingest_or_call(db_conn: asyncpg.Connection) -> None:
    insert = ("INSERT INTO dead_letters (source, reason, payload, letter_key) "
              "VALUES ($1, 'invalid', '{}', $2)")
    await db_conn.execute(insert, "ingest", "stream:1-0")
    await db_conn.execute(insert, "call", "call:1:1")
    with pytest.raises(asyncpg.CheckViolationError):
        await db_conn.execute(insert, "web", "web:1")


async def test_the_code_can_use_the_migrated_schema(db_conn: asyncpg.Connection) -> None:
    from schema import Member

    group = await db.upsert_group(
        db_conn, "default", "oncall",
        [Member(name="Alice", phone="+14155550100"), Member(name="Bob", phone="+14155550101")],
    )
    assert [m.name for m in group.members] == ["Alice", "Bob"]
    fetched = await db.get_group(db_conn, "default", "oncall")
    assert fetched is not None
    assert fetched.members == group.members
    assert await db.list_calls(db_conn, alert_id="nothing-yet") == []
