"""Hostile arguments to every `voicealert` command: one line on stderr, the right exit code, no
traceback, and nothing half-written (issue 7, item 5).

Run as the real process operators run, against the test's own database.
"""

from __future__ import annotations

import asyncpg
import pytest

from schema import Member
from tests.helpers import run_cli
from worker import db

ALICE = "Alice=+14155550100"


async def groups_in(conn: asyncpg.Connection) -> list[tuple[str, str, list[tuple[str, str]]]]:
    rows = await conn.fetch("SELECT tenant, name, members FROM alert_groups ORDER BY id")
    return [(r["tenant"], r["name"], [(m["name"], m["phone"]) for m in r["members"]])
            for r in rows]


# --- groups set -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["x" * 201, "--member", ALICE], "group name: String should have at most 200"),
        (["on\x01call", "--member", ALICE], "group name: must not contain control characters"),
        (["oncall", "--tenant", "", "--member", ALICE], "tenant: String should have at least"),
        (["oncall", "--tenant", "t" * 201, "--member", ALICE],
         "tenant: String should have at most"),
        (["oncall", "--tenant", " acme ", "--member", ALICE],
         "tenant: must not start or end with whitespace"),
        (["oncall", "--member", ALICE, "--member", "Bob=+12"],
         "member 'Bob': phone must be a valid"),
        (["oncall", "--member", ALICE, "--member", "Bob=+1415555"], "member 'Bob': phone"),
        (["oncall", "--member", f"{'n' * 201}=+14155550101"],
         "member #1: name: String should have at most 200 characters"),
        (["oncall", "--member", ALICE, "--member", "Alice=+14155550101"],
         "member 'Alice': name is already an earlier member's name"),
        (["oncall", "--member", ALICE, "--member", "Al=+1 415 555 0100"],
         "member 'Al': phone is already an earlier member's phone"),
        (["oncall", "--member", "Alice+14155550100"], "expected NAME=PHONE"),
    ],
    ids=["long-name", "control-name", "empty-tenant", "long-tenant", "padded-tenant", "short-phone",
         "invalid-phone", "long-member-name", "duplicate-member", "duplicate-phone", "no-equals"],
)
async def test_groups_set_refuses_what_no_event_could_address_with_one_line_and_writes_nothing(
    cli_env: dict[str, str], db_conn: asyncpg.Connection, args: list[str], words: str
) -> None:
    await db.upsert_group(db_conn, "default", "oncall", [Member(name="Zed", phone="+14155550199")])
    result = await run_cli(cli_env, "groups", "set", *args)
    assert result.code == 2, result
    assert words in result.error_line
    assert result.stdout == ""
    assert await groups_in(db_conn) == [("default", "oncall", [("Zed", "+14155550199")])]


async def test_groups_set_reports_every_bad_member_on_one_line(cli_env: dict[str, str]) -> None:
    result = await run_cli(cli_env, "groups", "set", "oncall", "--member", ALICE,
                           "--member", "Bob=+12", "--member", "Carol=call-me")
    assert result.code == 2
    line = result.error_line
    assert "member 'Bob'" in line
    assert "member 'Carol'" in line
    assert "Alice" not in line


async def test_groups_set_with_an_invalid_utf8_name_exits_2_without_a_traceback(
    cli_env: dict[str, str], db_conn: asyncpg.Connection
) -> None:
    result = await run_cli(cli_env, "groups", "set", b"on\xffcall", "--member", ALICE)
    assert result.code == 2
    assert "must be valid Unicode text" in result.error_line
    assert await groups_in(db_conn) == []


@pytest.mark.parametrize("command", ["show", "delete"])
async def test_looking_up_a_group_by_an_impossible_name_exits_2_with_one_line(
    cli_env: dict[str, str], command: str
) -> None:
    for args, words in ((["x" * 201], "group name"), (["oncall", "--tenant", " acme"], "tenant"),
                        ([b"on\xffcall"], "group name")):
        result = await run_cli(cli_env, "groups", command, *args)
        assert result.code == 2, result
        assert words in result.error_line


async def test_groups_list_with_a_padded_tenant_exits_2_with_one_line(
    cli_env: dict[str, str],
) -> None:
    result = await run_cli(cli_env, "groups", "list", "--tenant", "acme ")
    assert result.code == 2
    assert "tenant: must not start or end with whitespace" in result.error_line
