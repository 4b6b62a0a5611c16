"""Every command with hostile arguments: one line on stderr, the right exit code, nothing
half-written (real Postgres and Redis; the CLI's own entry point, ``worker.cli.main``).

Values: 10,000 characters, NUL, invalid UTF-8 (what Python makes of it: surrogates), a number
above bigint, a negative number, the empty string, control characters. A command either
accepts the value (exit 0: "-5" is a fine tenant, an unknown alert id lists nothing) or
refuses it before any SQL (exit 2, one line, nothing written). Exit 1 (a failure) or a
traceback is a bug here. A few cases also run as real processes with the bytes as typed, and
the misconfigured database (a refused role, a missing database) is one line and exit 1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
import redis

from worker.cli import main
from worker.keys import Keys

VALUES = {
    "10k characters": "7" * 10_000,
    "NUL": "a\x00b",
    "invalid UTF-8": os.fsdecode(b"a\xff\xfeb"),
    "above bigint": "99999999999999999999",
    "negative": "-5",
    "empty": "",
    "control characters": "a\x1b[31mb\x7f",
}

OK = "--member", "a=+14155550100"
TEMPLATES = [
    ["groups", "set", "{}", *OK], ["groups", "set", "g", "--member", "{}=+14155550100"],
    ["groups", "set", "g", "--member", "a={}"], ["groups", "set", "g", *OK, "--rounds", "{}"],
    ["groups", "set", "g", *OK, "--round-delay", "{}"],
    ["groups", "set", "g", *OK, "--tenant", "{}"],
    ["groups", "list", "--tenant", "{}"], ["groups", "show", "{}"],
    ["groups", "show", "g", "--tenant", "{}"], ["groups", "delete", "{}", "--yes"],
    ["fire", "--no-check", "--group", "{}", "--alert-id", "a", "--message", "m"],
    ["fire", "--no-check", "--group", "g", "--alert-id", "{}", "--message", "m"],
    ["fire", "--no-check", "--group", "g", "--alert-id", "a", "--message", "{}"],
    ["fire", "--no-check", "--group", "g", "--alert-id", "a", "--message", "m", "--tenant", "{}"],
    ["fire", "--no-check", "--group", "g", "--alert-id", "a", "--message", "m",
     "--dedup-window", "{}"],
    ["fire", "--no-check", "--group", "g", "--alert-id", "a", "--message", "m", "--event-id", "{}"],
    ["fire", "--no-check", "--group", "g", "--alert-id", "a", "--message", "m", "--rounds", "{}"],
    ["resolve", "--alert-id", "{}"], ["resolve", "--alert-id", "a", "--tenant", "{}"],
    ["ack", "--alert-id", "{}"], ["ack", "--alert-id", "a", "--by", "{}"],
    ["alerts", "list", "--since", "{}"], ["alerts", "list", "--tenant", "{}"],
    ["alerts", "list", "--limit", "{}"], ["alerts", "list", "--status", "{}"],
    ["alerts", "show", "{}"], ["alerts", "show", "a", "--tenant", "{}"],
    ["calls", "--alert-id", "{}"], ["calls", "--since", "{}"], ["calls", "--tenant", "{}"],
    ["calls", "--limit", "{}"], ["calls", "--status", "{}"],
    ["dlq", "list", "--since", "{}"], ["dlq", "list", "--tenant", "{}"],
    ["dlq", "list", "--limit", "{}"], ["dlq", "list", "--source", "{}"], ["dlq", "show", "{}"],
    ["dlq", "replay", "{}"], ["dlq", "purge", "{}", "--yes"],
    ["dlq", "purge", "--older-than", "{}", "--yes"],
    ["tokens", "create", "--tenant", "{}", "--name", "n"],
    ["tokens", "create", "--tenant", "t", "--name", "{}"],
    ["tokens", "create", "--tenant", "t", "--name", "n", "--scope", "{}"],
    ["tokens", "list", "--tenant", "{}"], ["tokens", "revoke", "{}"],
    ["tokens", "revoke", "n", "--tenant", "{}"],
    ["status", "--interval", "{}"],
]


def _argv(template: list[str], value: str) -> list[str]:
    return [part.replace("{}", value) for part in template]


async def _written(database_url: str, redis_url: str, prefix: str) -> tuple[Any, ...]:
    """What a command could write: every table an operator command touches, and the stream."""
    conn = await asyncpg.connect(database_url)
    try:
        counts = tuple([await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608
                        for table in ("alert_groups", "alerts", "calls", "dead_letters",
                                      "api_tokens")])
        revoked = await conn.fetchval(
            "SELECT count(*) FROM api_tokens WHERE revoked_at IS NOT NULL")
    finally:
        await conn.close()
    client = redis.Redis.from_url(redis_url)
    try:
        stream = client.xlen(Keys(prefix).events) if client.exists(Keys(prefix).events) else 0
    finally:
        client.close()
    return (*counts, revoked, stream)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("template", TEMPLATES, ids=[" ".join(t) for t in TEMPLATES])
def test_every_command_with_hostile_arguments_is_one_line_and_writes_nothing_when_refused(
    template: list[str], cli_env: dict[str, str], database_url: str, redis_url: str,
    prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in cli_env.items():
        monkeypatch.setenv(key, value)
    problems = []
    for label, value in VALUES.items():
        argv = _argv(template, value)
        before = asyncio.run(_written(database_url, redis_url, prefix))
        code, out, err = _run(argv, capsys)
        after = asyncio.run(_written(database_url, redis_url, prefix))
        lines = err.splitlines()
        if "Traceback" in err or code not in (0, 2):
            problems.append(f"{label}: exit {code}: {err[-300:]!r}")
        elif code == 2 and (len(lines) != 1 or not lines[0].startswith("voicealert: ")
                            or out or before != after or len(lines[0]) > 400):
            problems.append(f"{label}: refused but stdout {out[:80]!r}, stderr {err[:200]!r}, "
                            f"written {before} -> {after}")
    assert problems == [], "\n".join(problems)


# Real processes, the arguments as bytes (invalid UTF-8 as typed in a shell).
PROCESS_CASES = [
    [b"calls", b"--tenant", b"a\xff\xfe"], [b"alerts", b"show", b"a\xff"],
    [b"dlq", b"show", b"99999999999999999999"], [b"tokens", b"revoke", b"\xff"],
    [b"dlq", b"purge", b"--older-than", b"999999999d", b"--yes"],
    [b"groups", b"show", b"\xff" * 5000],
]


@pytest.mark.parametrize("argv", PROCESS_CASES, ids=[repr(a)[:60] for a in PROCESS_CASES])
def test_hostile_bytes_as_typed_are_one_line_and_exit_2(
    argv: list[bytes], cli_env: dict[str, str]
) -> None:
    done = subprocess.run([sys.executable, "-m", "worker", *argv],
                          env={**os.environ, **cli_env}, capture_output=True, timeout=60,
                          check=False)
    err = done.stderr.decode("utf-8")  # what it prints is valid UTF-8, whatever was typed
    assert done.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("voicealert: ")
    assert "Traceback" not in err
    assert done.stdout == b""


@pytest.mark.parametrize("url", [
    "postgresql://nouser:s3cretpw@127.0.0.1:5432/voicealert",
    "postgresql://postgres:s3cretpw@127.0.0.1:5432/no_such_database_here",
], ids=["refused role", "missing database"])
@pytest.mark.parametrize("command", [["calls"], ["tokens", "list"], ["dlq", "show", "1"]])
def test_a_database_that_refuses_us_is_one_line_exit_1_without_the_password(
    url: str, command: list[str], cli_env: dict[str, str]
) -> None:
    done = subprocess.run([sys.executable, "-m", "worker", *command],
                          env={**os.environ, **cli_env, "DATABASE_URL": url},
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("voicealert: ")
    assert "s3cretpw" not in done.stderr
    assert "Traceback" not in done.stderr
