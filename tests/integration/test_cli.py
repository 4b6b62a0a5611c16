"""Contract 4: the `voicealert` command line, run as the real process operators run."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio

from schema import AlertEvent, Member
from tests.helpers import DATABASE_URL, run_cli, stream_entries, with_database
from worker import db
from worker.migrate import maintenance_url


async def add_group(conn: asyncpg.Connection, name: str, *members: tuple[str, str],
                    tenant: str = "default") -> None:
    await db.upsert_group(conn, tenant, name, [Member(name=n, phone=p) for n, p in members])


def members_of(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["name"], m["phone"]) for m in document["members"]]


# --- groups ---------------------------------------------------------------------------------


async def test_groups_set_keeps_members_in_order_and_show_json_returns_them(
    cli_env: dict[str, str],
) -> None:
    saved = await run_cli(cli_env, "groups", "set", "platform-oncall",
                          "--member", "Carol=+14155550102",
                          "--member", "Alice=+1 415 555 0100",
                          "--member", "Bob=+14155550101")
    assert saved.code == 0, saved.stderr
    assert "5550100" not in saved.stdout  # human output masks phones
    shown = await run_cli(cli_env, "groups", "show", "platform-oncall", "--json")
    assert shown.code == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["name"] == "platform-oncall"
    assert document["tenant"] == "default"
    assert members_of(document) == [
        ("Carol", "+14155550102"), ("Alice", "+14155550100"), ("Bob", "+14155550101")]


async def test_groups_set_replaces_the_members(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    await add_group(db_conn, "ops", ("Alice", "+14155550100"))
    replaced = await run_cli(cli_env, "groups", "set", "ops", "--member", "Bob=+14155550101",
                             "--member", "Alice=+14155550100")
    assert replaced.code == 0, replaced.stderr
    group = await db.get_group(db_conn, "default", "ops")
    assert group is not None
    assert [m.name for m in group.members] == ["Bob", "Alice"]


async def test_groups_list_json_is_one_document_of_the_tenants_groups(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    for name in ("dba", "platform"):
        await add_group(db_conn, name, ("Alice", "+14155550100"))
    await add_group(db_conn, "elsewhere", ("Bob", "+14155550101"), tenant="acme")
    listed, acme = await asyncio.gather(
        run_cli(cli_env, "groups", "list", "--json"),
        run_cli(cli_env, "groups", "list", "--json", "--tenant", "acme"),
    )
    assert listed.code == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert sorted(g["name"] for g in document) == ["dba", "platform"]
    assert all(members_of(g) == [("Alice", "+14155550100")] for g in document)
    assert [(g["tenant"], g["name"]) for g in json.loads(acme.stdout)] == [("acme", "elsewhere")]


async def test_groups_list_json_of_an_empty_tenant_is_an_empty_list(
    cli_env: dict[str, str],
) -> None:
    listed = await run_cli(cli_env, "groups", "list", "--json", "--tenant", "nobody")
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout) == []


async def test_groups_delete_removes_the_group(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    await add_group(db_conn, "ops", ("Alice", "+14155550100"))
    deleted = await run_cli(cli_env, "groups", "delete", "ops", "--yes")
    assert deleted.code == 0, deleted.stderr
    assert await db.get_group(db_conn, "default", "ops") is None
    again = await run_cli(cli_env, "groups", "delete", "ops", "--yes")
    assert again.code == 2
    assert "ops" in again.error_line


async def test_show_of_a_missing_group_exits_2_with_one_line(cli_env: dict[str, str]) -> None:
    shown = await run_cli(cli_env, "groups", "show", "ghost")
    assert shown.code == 2
    assert "ghost" in shown.error_line


async def test_bad_phone_exits_2_naming_the_member_and_writes_no_new_group(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    result = await run_cli(cli_env, "groups", "set", "ops", "--member", "Alice=+14155550100",
                           "--member", "Bob=555-0101")
    assert result.code == 2
    assert "Bob" in result.error_line
    assert "Alice" not in result.error_line
    assert await db.get_group(db_conn, "default", "ops") is None


async def test_bad_phone_leaves_the_existing_members_unchanged(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    await add_group(db_conn, "ops", ("Alice", "+14155550100"))
    result = await run_cli(cli_env, "groups", "set", "ops", "--member", "Bob=+14155550101",
                           "--member", "Mallory=not-a-number")
    assert result.code == 2
    assert "Mallory" in result.error_line
    group = await db.get_group(db_conn, "default", "ops")
    assert group is not None
    assert [(m.name, m.phone) for m in group.members] == [("Alice", "+14155550100")]


async def test_member_without_a_phone_exits_2(cli_env: dict[str, str]) -> None:
    result = await run_cli(cli_env, "groups", "set", "ops", "--member", "Alice")
    assert result.code == 2
    assert "Alice" in result.error_line


async def test_same_group_name_in_two_tenants_are_separate_groups(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    saved = await asyncio.gather(
        run_cli(cli_env, "groups", "set", "oncall", "--tenant", "acme",
                "--member", "Alice=+14155550100"),
        run_cli(cli_env, "groups", "set", "oncall", "--tenant", "globex",
                "--member", "Bob=+14155550101"),
    )
    assert [r.code for r in saved] == [0, 0], [r.stderr for r in saved]
    acme = await db.get_group(db_conn, "acme", "oncall")
    globex = await db.get_group(db_conn, "globex", "oncall")
    assert acme is not None
    assert globex is not None
    assert [m.name for m in acme.members] == ["Alice"]
    assert [m.name for m in globex.members] == ["Bob"]
    assert await db.get_group(db_conn, "default", "oncall") is None
    shown, deleted = await asyncio.gather(
        run_cli(cli_env, "groups", "show", "oncall", "--tenant", "globex", "--json"),
        run_cli(cli_env, "groups", "delete", "oncall", "--tenant", "acme", "--yes"),
    )
    assert members_of(json.loads(shown.stdout)) == [("Bob", "+14155550101")]
    assert deleted.code == 0
    assert await db.get_group(db_conn, "acme", "oncall") is None
    assert await db.get_group(db_conn, "globex", "oncall") is not None


# --- fire / resolve ---------------------------------------------------------------------------


async def test_fire_prints_the_stream_id_of_the_entry_it_wrote(
    no_db_env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    result = await run_cli(no_db_env, "fire", "--group", "platform-oncall", "--alert-id", "db-down",
                           "--message", "Primary database is down", "--tenant", "acme",
                           "--dedup-window", "60", "--mode", "sequential", "--no-check")
    assert result.code == 0, result.stderr
    [(entry_id, fields)] = await stream_entries(text_redis, prefix)
    assert result.stdout.strip() == entry_id
    assert list(fields) == ["event"]
    assert AlertEvent.model_validate_json(fields["event"]) == AlertEvent(
        alert_id="db-down", group="platform-oncall", message="Primary database is down",
        tenant="acme", dedup_window_s=60, mode="sequential")


async def test_fire_with_blank_alert_id_exits_2_naming_alert_id_and_writes_nothing(
    no_db_env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    result = await run_cli(no_db_env, "fire", "--group", "ops", "--alert-id", "  ",
                           "--message", "down")
    assert result.code == 2
    assert "alert_id" in result.error_line
    assert await stream_entries(text_redis, prefix) == []


async def test_fire_with_negative_dedup_window_exits_2_naming_it(
    no_db_env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    result = await run_cli(no_db_env, "fire", "--group", "ops", "--alert-id", "a",
                           "--message", "down", "--dedup-window", "-1")
    assert result.code == 2
    assert "dedup_window_s" in result.error_line
    assert await stream_entries(text_redis, prefix) == []


async def test_resolve_writes_a_resolve_event(
    no_db_env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    result = await run_cli(no_db_env, "resolve", "--alert-id", "db-down", "--tenant", "acme")
    assert result.code == 0, result.stderr
    [(entry_id, fields)] = await stream_entries(text_redis, prefix)
    assert result.stdout.strip() == entry_id
    event = AlertEvent.model_validate_json(fields["event"])
    assert (event.action, event.alert_id, event.tenant) == ("resolve", "db-down", "acme")


async def test_ack_writes_an_ack_event_with_who(
    no_db_env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    result = await run_cli(no_db_env, "ack", "--alert-id", "db-down", "--tenant", "acme",
                           "--by", "alice")
    assert result.code == 0, result.stderr
    [(entry_id, fields)] = await stream_entries(text_redis, prefix)
    assert result.stdout.strip() == entry_id
    event = AlertEvent.model_validate_json(fields["event"])
    assert (event.action, event.alert_id, event.tenant, event.acknowledged_by) == (
        "ack", "db-down", "acme", "alice")


async def test_ack_with_an_invalid_name_exits_2_naming_the_field(
    no_db_env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    result = await run_cli(no_db_env, "ack", "--alert-id", "db-down", "--by", "x" * 201)
    assert result.code == 2
    assert "acknowledged_by" in result.error_line
    assert await stream_entries(text_redis, prefix) == []


# --- usage, configuration and service errors --------------------------------------------------


async def test_unknown_command_exits_2_with_one_line(no_db_env: dict[str, str]) -> None:
    result = await run_cli(no_db_env, "frie", "--group", "ops")
    assert result.code == 2
    assert "frie" in result.error_line


async def test_missing_required_option_exits_2_with_one_line(no_db_env: dict[str, str]) -> None:
    result = await run_cli(no_db_env, "fire", "--alert-id", "a", "--message", "m")
    assert result.code == 2
    assert "--group" in result.error_line


async def test_typo_in_a_voicealert_variable_exits_2_with_one_line(
    no_db_env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    env = {**no_db_env, "VOICEALERT_REDIS_PREFX": "other:"}
    result = await run_cli(env, "fire", "--group", "ops", "--alert-id", "a", "--message", "m")
    assert result.code == 2
    assert "VOICEALERT_REDIS_PREFX" in result.error_line
    assert "VOICEALERT_REDIS_PREFIX" in result.error_line  # the suggestion
    assert await stream_entries(text_redis, prefix) == []


async def test_bad_setting_value_exits_2_naming_the_variable(no_db_env: dict[str, str]) -> None:
    env = {**no_db_env, "VOICEALERT_CALLS_PER_SECOND": "0"}
    result = await run_cli(env, "groups", "list")
    assert result.code == 2
    assert "VOICEALERT_CALLS_PER_SECOND" in result.error_line
    assert "VOICEALERT_VOICEALERT" not in result.error_line


async def test_unreachable_redis_exits_1_with_one_line_and_no_password(
    no_db_env: dict[str, str],
) -> None:
    env = {**no_db_env, "REDIS_URL": "redis://:redis-SECRET-pw@127.0.0.1:1/0"}
    result = await run_cli(env, "fire", "--group", "ops", "--alert-id", "a", "--message", "m")
    assert result.code == 1
    line = result.error_line
    assert "Redis" in line
    assert "127.0.0.1:1" in line
    assert "redis-SECRET-pw" not in result.stderr + result.stdout


async def test_unreachable_postgres_exits_1_with_one_line(no_db_env: dict[str, str]) -> None:
    env = {**no_db_env, "DATABASE_URL": "postgresql://postgres:pg-SECRET-pw@127.0.0.1:1/x"}
    result = await run_cli(env, "groups", "list")
    assert result.code == 1
    assert "Postgres" in result.error_line
    assert "pg-SECRET-pw" not in result.stderr + result.stdout


# --- migrate ------------------------------------------------------------------------------------


@pytest.fixture
async def fresh_database_url() -> AsyncIterator[str]:
    name = f"voicealert_test_cli_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield with_database(DATABASE_URL, name)
    conn = await asyncpg.connect(maintenance_url(DATABASE_URL)[0], timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_migrate_twice_applies_then_reports_none_pending(
    cli_env: dict[str, str], fresh_database_url: str
) -> None:
    env = {**cli_env, "DATABASE_URL": fresh_database_url}
    first = await run_cli(env, "migrate")
    assert first.code == 0, first.stderr
    assert "0001_initial" in first.stdout
    second = await run_cli(env, "migrate")
    assert second.code == 0, second.stderr
    assert "none pending" in second.stdout
    assert "0001_initial" not in second.stdout


async def test_commands_on_an_unmigrated_database_say_to_migrate(
    cli_env: dict[str, str], fresh_database_url: str
) -> None:
    env = {**cli_env, "DATABASE_URL": fresh_database_url}
    result = await run_cli(env, "groups", "list")
    assert result.code == 1
    assert "voicealert migrate" in result.error_line


async def test_groups_set_takes_rounds_keeps_them_when_left_out_and_refuses_bad_ones(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    created = await run_cli(cli_env, "groups", "set", "ops", "--member", "Alice=+14155550100")
    assert "rounds: 3, 120 s apart" in created.stdout  # the defaults
    tuned = await run_cli(cli_env, "groups", "set", "ops", "--member", "Alice=+14155550100",
                          "--rounds", "5", "--round-delay", "30", "--json")
    assert tuned.code == 0, tuned.stderr
    assert (json.loads(tuned.stdout)["rounds"], json.loads(tuned.stdout)["round_delay_s"]) == (
        5, 30)
    replaced = await run_cli(cli_env, "groups", "set", "ops", "--member", "Bob=+14155550101")
    assert "rounds: 5, 30 s apart" in replaced.stdout  # kept when left out
    refused = await run_cli(cli_env, "groups", "set", "ops", "--member", "Bob=+14155550101",
                            "--rounds", "0")
    assert refused.code == 2
    assert refused.error_line.startswith("voicealert: --rounds: ")
    group = await db.get_group(db_conn, "default", "ops")
    assert group is not None
    assert (group.rounds, [m.name for m in group.members]) == (5, ["Bob"])
