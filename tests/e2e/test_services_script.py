"""scripts/services.py, run as scripts/test and scripts/demo run it (issues 8.5 and 11.8).

It prints ``export`` lines for a Redis and a PostgreSQL that answer, starting throwaway servers
when it has to, or fails with exactly one line on stderr and nothing on stdout, and the scripts
stop there instead of going on without services.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from scripts.services import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def run(*command: str, **variables: str | None) -> subprocess.CompletedProcess[str]:
    """Run command in the repo with the environment changed by variables (None: unset)."""
    env = dict(os.environ)
    for name, value in variables.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def services(*args: str, **variables: str | None) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "scripts/services.py", *args, **variables)


def assert_one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert result.stdout == "", "a failed env must not print export lines for eval"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("services: error: ")
    return lines[0]


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state dir for throwaway servers; its servers are stopped afterwards.

    Not under pytest's tmp_path: the throwaway PostgreSQL runs as user postgres, and a pytest
    session starting meanwhile resets /tmp/pytest-of-<user> to 0700.
    """
    root = Path(tempfile.mkdtemp(prefix="voicealert-services-"))
    try:
        yield root / "state"
    finally:
        services("stop", VOICEALERT_STATE_DIR=str(root / "state"))
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(
    ("bad_url", "expected"),
    [
        ("redis://127.0.0.1:{closed}/0", "cannot use REDIS_URL redis://127.0.0.1:{closed}/0:"),
        ("redis://:hunter2@127.0.0.1:{closed}/0", "cannot use REDIS_URL"),
        ("http://127.0.0.1:6379/0", "cannot use REDIS_URL http://127.0.0.1:6379/0:"),
        ("redis://127.0.0.1:notaport/0", "cannot use REDIS_URL"),
    ],
)
def test_env_with_an_unusable_redis_url_fails_with_one_line(
    bad_url: str, expected: str, database_url: str
) -> None:
    closed = free_port()
    result = services("env", REDIS_URL=bad_url.format(closed=closed), DATABASE_URL=database_url)
    line = assert_one_line_failure(result)
    assert expected.format(closed=closed) in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("bad_url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:{closed}/voicealert", "Connect call failed"),
        ("postgresql://postgres:hunter2@127.0.0.1:{closed}/voicealert", "cannot use DATABASE_URL"),
        ("mysql://127.0.0.1/voicealert", "invalid DSN"),
        ("postgresql://no_such_role@{server}/voicealert", 'role "no_such_role"'),
    ],
)
def test_env_with_an_unusable_database_url_fails_with_one_line(
    bad_url: str, expected: str, redis_url: str, database_url: str
) -> None:
    server = urlsplit(database_url).netloc.rpartition("@")[2]
    bad_url = bad_url.format(closed=free_port(), server=server)
    result = services("env", REDIS_URL=redis_url, DATABASE_URL=bad_url)
    line = assert_one_line_failure(result)
    assert line.startswith("services: error: cannot use DATABASE_URL ")
    assert expected in line
    assert "hunter2" not in line


def test_env_accepts_a_database_url_whose_database_migrate_will_create(
    redis_url: str, database_url: str
) -> None:
    missing = urlsplit(database_url)._replace(path="/voicealert_not_created_yet").geturl()
    result = services("env", REDIS_URL=redis_url, DATABASE_URL=missing)
    assert result.returncode == 0, result.stderr
    assert f"export DATABASE_URL={shlex.quote(missing)}" in result.stdout.splitlines()


def test_demo_stops_with_one_line_before_running_when_services_are_unreachable() -> None:
    closed = free_port()
    result = run(
        "scripts/demo",
        REDIS_URL=f"redis://127.0.0.1:{closed}/0",
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/voicealert",
    )
    assert result.returncode != 0
    assert "voicealert migrate" not in result.stdout, "the demo ran without services"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("services: error: cannot use REDIS_URL")


def export_lines(stdout: str) -> dict[str, str]:
    exported: dict[str, str] = {}
    for line in stdout.splitlines():
        assert line.startswith("export "), line
        name, _, value = line.removeprefix("export ").partition("=")
        [exported[name]] = shlex.split(value)
    return exported


def postgres_answers(url: str) -> bool:
    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    try:
        asyncio.run(connect())
    except OSError:
        return False
    return True


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def test_env_starts_throwaway_servers_reuses_them_and_stop_stops_them(state_dir: Path) -> None:
    throwaway = {
        "VOICEALERT_STATE_DIR": str(state_dir),
        "VOICEALERT_SERVICES_FORCE_THROWAWAY": "1",
        "REDIS_URL": None,
        "DATABASE_URL": None,
    }
    first = services("env", **throwaway)
    assert first.returncode == 0, first.stderr
    urls = export_lines(first.stdout)
    assert set(urls) == {"REDIS_URL", "DATABASE_URL"}
    redis_port = urlsplit(urls["REDIS_URL"]).port
    pg = urlsplit(urls["DATABASE_URL"])
    assert redis_port not in (None, 6379)
    assert pg.port not in (None, 5432)
    assert pg.path == "/voicealert"
    assert "started a throwaway Redis" in first.stderr
    assert "started a throwaway PostgreSQL" in first.stderr
    admin_url = pg._replace(path="/postgres").geturl()
    assert redis_answers(urls["REDIS_URL"])
    assert postgres_answers(admin_url)

    second = services("env", **throwaway)
    assert second.returncode == 0, second.stderr
    assert export_lines(second.stdout) == urls
    assert "reusing the throwaway Redis" in second.stderr
    assert "reusing the throwaway PostgreSQL" in second.stderr

    stopped = services("stop", VOICEALERT_STATE_DIR=str(state_dir))
    assert stopped.returncode == 0, stopped.stderr
    assert not redis_answers(urls["REDIS_URL"])
    assert not postgres_answers(admin_url)


def test_env_fails_with_one_line_when_a_throwaway_server_cannot_start(
    state_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "bin" / "redis-server"
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'FATAL: cannot start here' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    result = services(
        "env",
        VOICEALERT_STATE_DIR=str(state_dir),
        VOICEALERT_SERVICES_FORCE_THROWAWAY="1",
        REDIS_URL=None,
        DATABASE_URL=None,
        PATH=f"{broken.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    line = assert_one_line_failure(result)
    assert "redis-server did not start" in line
    assert "FATAL: cannot start here" in line


def test_env_fails_with_one_line_when_the_state_dir_cannot_be_made(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = services(
        "env",
        VOICEALERT_STATE_DIR=str(a_file / "state"),
        VOICEALERT_SERVICES_FORCE_THROWAWAY="1",
        REDIS_URL=None,
        DATABASE_URL=None,
    )
    assert_one_line_failure(result)


def test_an_unknown_subcommand_is_a_usage_error() -> None:
    result = services("start")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "services: usage: .venv/bin/python scripts/services.py {env|stop}"
    ]
