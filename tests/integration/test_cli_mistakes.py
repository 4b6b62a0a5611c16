"""Mistakes refused before the incident (real CLI processes): an event for a group that does not
exist or with no worker to read it, a destructive command without confirmation; and the
shared conventions: --version, --since/--tenant/--json everywhere, the environment in --help."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from importlib.metadata import version
from typing import Any

import asyncpg
import click
import pytest
import redis.asyncio

from tests.helpers import REPO, make_group, run_cli, stream_entries, wait_for
from worker import db, health
from worker.cli import cli
from worker.config import Settings
from worker.keys import Keys
from worker.models import NewDeadLetter

FIRE = ("fire", "--group", "oncall", "--alert-id", "db-down", "--message", "Database down")


async def a_live_worker(settings: Settings, start_worker: Any) -> None:
    await start_worker()

    async def alive() -> bool:
        client = redis.asyncio.Redis.from_url(settings.redis_url)
        try:
            return any(r.alive for r in await health.replicas(client,
                                                               Keys(settings.redis_prefix)))
        finally:
            await client.aclose()

    await wait_for(alive, what="the worker's heartbeat")


# --- fire refuses what would ring nobody --------------------------------------------------------


async def test_fire_for_a_group_that_does_not_exist_exits_1_and_writes_nothing(
    env: dict[str, str], settings: Settings, text_redis: redis.asyncio.Redis, prefix: str,
    start_worker: Any,
) -> None:
    await a_live_worker(settings, start_worker)
    result = await run_cli(env, *FIRE)
    assert result.code == 1
    assert result.error_line == ("voicealert: no group 'oncall' in tenant 'default': nothing "
                                 "sent (--no-check sends it anyway)")
    assert await stream_entries(text_redis, prefix) == []


async def test_fire_for_a_group_with_no_members_exits_1_and_writes_nothing(
    env: dict[str, str], settings: Settings, db_conn: asyncpg.Connection,
    text_redis: redis.asyncio.Redis, prefix: str, start_worker: Any,
) -> None:
    await a_live_worker(settings, start_worker)
    await make_group(db_conn, phones=[])
    result = await run_cli(env, *FIRE)
    assert (result.code, result.error_line) == (
        1, "voicealert: group 'oncall' has no members: nothing sent (--no-check sends it anyway)")
    assert await stream_entries(text_redis, prefix) == []


async def test_fire_with_no_live_worker_exits_1_and_writes_nothing_unless_no_check(
    env: dict[str, str], db_conn: asyncpg.Connection, text_redis: redis.asyncio.Redis,
    prefix: str,
) -> None:
    await make_group(db_conn)
    refused = await run_cli(env, *FIRE)
    assert refused.code == 1
    assert refused.error_line.startswith("voicealert: no worker replica is alive (none seen in "
                                         "the last hour)")
    assert await stream_entries(text_redis, prefix) == []

    sent = await run_cli(env, *FIRE, "--no-check")
    assert sent.code == 0, sent.stderr
    [(entry_id, _)] = await stream_entries(text_redis, prefix)
    assert sent.stdout.strip() == entry_id


async def test_fire_with_a_live_worker_and_the_group_sends_the_event(
    env: dict[str, str], settings: Settings, db_conn: asyncpg.Connection, start_worker: Any,
) -> None:
    await make_group(db_conn)
    await a_live_worker(settings, start_worker)
    result = await run_cli(env, *FIRE)
    assert (result.code, result.stderr) == (0, "")

    async def rang() -> bool:
        return len(await db.list_calls(db_conn, alert_id="db-down")) == 3

    await wait_for(rang, what="the event's calls")


async def test_an_invalid_event_is_refused_before_any_check(
    env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    result = await run_cli(env, "fire", "--group", "oncall", "--alert-id", "x" * 10_000,
                           "--message", "down")
    assert result.code == 2
    assert result.error_line.startswith("voicealert: invalid event: alert_id: ")
    assert await stream_entries(text_redis, prefix) == []


# --- destructive commands ask first ---------------------------------------------------------------


async def test_groups_delete_without_a_terminal_or_yes_exits_2_and_deletes_nothing(
    env: dict[str, str], db_conn: asyncpg.Connection,
) -> None:
    await make_group(db_conn)
    result = await run_cli(env, "groups", "delete", "oncall")
    assert result.code == 2
    assert result.error_line == (
        "voicealert: refusing to delete group oncall (tenant default, 3 members; alerts naming "
        "it will ring nobody) without confirmation (no terminal to ask on): add --yes")
    assert await db.get_group(db_conn, "default", "oncall") is not None
    deleted = await run_cli(env, "groups", "delete", "oncall", "--yes")
    assert (deleted.code, deleted.stdout) == (0, "deleted oncall (tenant default)\n")


async def _letters(conn: asyncpg.Connection, count: int) -> None:
    await db.insert_dead_letters(conn, [
        NewDeadLetter(source="ingest", reason="invalid_json", error="x",
                      payload={"stream_id": f"1-{i}", "fields": {"event": "{"}},
                      letter_key=f"stream:1-{i}")
        for i in range(count)
    ])


async def test_dlq_purge_all_without_a_terminal_or_yes_exits_2_and_purges_nothing(
    env: dict[str, str], db_conn: asyncpg.Connection,
) -> None:
    await _letters(db_conn, 2)
    result = await run_cli(env, "dlq", "purge", "--all")
    assert result.code == 2
    assert result.error_line == ("voicealert: refusing to delete all 2 dead letters without "
                                 "confirmation (no terminal to ask on): add --yes")
    assert await db.count_dead_letters(db_conn) == 2


async def _on_a_terminal(env: dict[str, str], answer: str, *args: str) -> tuple[int, str]:
    """Run with a pseudo-terminal as stdin (the operator at a shell), typing ``answer``."""
    leader, follower = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", *args, cwd=REPO, env={**os.environ, **env},
            stdin=follower, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        os.write(leader, answer.encode() + b"\n")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


@pytest.mark.parametrize(("answer", "code", "left"), [("n", 1, 2), ("y", 0, 0)])
async def test_dlq_purge_all_on_a_terminal_asks_and_does_what_the_answer_says(
    env: dict[str, str], db_conn: asyncpg.Connection, answer: str, code: int, left: int,
) -> None:
    await _letters(db_conn, 2)
    result, output = await _on_a_terminal(env, answer, "dlq", "purge", "--all")
    assert result == code, output
    assert "Delete all 2 dead letters? [y/N]" in output
    assert await db.count_dead_letters(db_conn) == left


# --- conventions ------------------------------------------------------------------------------


async def test_version_prints_the_installed_version(env: dict[str, str]) -> None:
    result = await run_cli(env, "--version")
    assert (result.code, result.stdout) == (0, f"voicealert {version('voicealert')}\n")


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        found.append((*path, name))
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
    return found


def test_every_command_says_in_its_help_which_environment_it_reads() -> None:
    for path in _commands(cli):
        command: Any = cli
        for name in path:
            command = command.commands[name]
        if isinstance(command, click.Group):
            continue
        ctx = click.Context(command, info_name=" ".join(path))
        text = command.get_help(ctx)
        assert "Environment:" in text, path
        for option in command.params:
            # An option that reads a variable must say so (none does today: configuration
            # comes from the environment, options are per invocation).
            if isinstance(option, click.Option) and option.envvar:
                assert option.show_envvar, (path, option.name)


async def test_calls_dlq_and_alerts_take_the_same_since_tenant_and_json(
    env: dict[str, str], db_conn: asyncpg.Connection,
) -> None:
    await db.insert_dead_letters(db_conn, [
        NewDeadLetter(source="call", reason="provider_rejected", error="21211: bad number",
                      payload={"call_id": 1, "tenant": "acme", "phone": "+14155550100"},
                      letter_key="call:1:1"),
        NewDeadLetter(source="ingest", reason="invalid_event", error="message: blank",
                      payload={"stream_id": "1-1",
                               "fields": {"event": json.dumps({"alert_id": "a",
                                                               "tenant": "acme"})}},
                      letter_key="stream:1-1"),
        NewDeadLetter(source="ingest", reason="invalid_json", error="not JSON",
                      payload={"stream_id": "1-2", "fields": {"event": "[" * 100_000}},
                      letter_key="stream:1-2"),
    ])
    for command in (("calls",), ("dlq", "list"), ("alerts", "list")):
        for options in (("--since", "1h"), ("--since", "2024-05-01T00:00:00"),
                        ("--tenant", "acme"), ("--json",)):
            result = await run_cli(env, *command, *options)
            assert result.code == 0, (command, options, result.stderr)
    acme = await run_cli(env, "dlq", "list", "--tenant", "acme", "--json")
    assert sorted(d["reason"] for d in json.loads(acme.stdout)) == ["invalid_event",
                                                                    "provider_rejected"]
    table = await run_cli(env, "dlq", "list")
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["id", "created", "(UTC)", "source", "reason", "error"]
    assert len(rows) == 3
    assert "+14155550100" not in table.stdout


@pytest.mark.parametrize("since", ["9" * 30 + "d", "99999999999d", "yesterday", "\x01",
                                   "x" * 10_000, "2024-13-45"])
async def test_a_bad_since_exits_2_with_one_line(env: dict[str, str], since: str) -> None:
    result = await run_cli(env, "alerts", "list", "--since", since)
    assert result.code == 2
    assert "is not a duration" in result.error_line or "too far back" in result.error_line
    assert len(result.error_line) < 200
