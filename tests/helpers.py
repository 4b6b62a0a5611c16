"""Helpers shared by the integration and e2e suites: where the services are, groups, waiting,
firing, reading back, a worker in the test's event loop. (Fixtures live in conftest.py; test
modules import from here, never from a conftest.)

Everything here talks to the real services (Postgres, Redis) the fixtures provide; nothing
is mocked. ``wait_for`` is how a test waits for the pipeline: on a condition, never on a
fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio
from arq.constants import in_progress_key_prefix, job_key_prefix

from producers import AlertProducer
from schema import Member
from testing.fake_twilio import FakeTwilio
from worker import db
from worker.config import Settings
from worker.keys import Keys
from worker.migrate import maintenance_url
from worker.models import CallRow, CallStatus
from worker.queue import job_id

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/voicealert")
TEST_REDIS_DB = 15
FROM_NUMBER = "+15005550006"
PHONES = ["+14155550100", "+14155550101", "+14155550102"]


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def with_redis_db(url: str, index: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{index}"))


TEST_REDIS_URL = with_redis_db(REDIS_URL, TEST_REDIS_DB)


async def admin_sql(sql: str) -> None:
    """Run ``sql`` on the maintenance database (CREATE/DROP DATABASE)."""
    conn = await asyncpg.connect(maintenance_url(DATABASE_URL)[0], timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class InProcessWorker:
    """A real WorkerProcess (arq loop + stream consumer) running in the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        from worker.app import WorkerProcess

        self.process = WorkerProcess(settings)
        self.task: asyncio.Task[int] | None = None

    async def start(self) -> InProcessWorker:
        self.task = asyncio.create_task(self.process.run(install_signals=False))
        for _ in range(200):
            if self.process.consumer is not None:
                return self
            await asyncio.sleep(0.02)
        raise RuntimeError("worker did not start")

    async def stop(self) -> int:
        assert self.task is not None
        if not self.task.done():
            self.process.request_stop(signal.SIGTERM)
        return await asyncio.wait_for(self.task, 30)

    @property
    def services(self) -> Any:
        return self.process.worker.ctx["services"]




class InProcessWeb:
    """The real web application (``create_app``: webhooks included) served on a loopback port
    in the test's event loop, so the fake Twilio can call it back."""

    def __init__(self, settings: Settings) -> None:
        from aiohttp import web

        from worker.web import create_app

        self.settings = settings
        self.runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=1)

    async def start(self) -> InProcessWeb:
        from aiohttp import web

        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.settings.web_port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


async def make_group(conn: asyncpg.Connection, name: str = "oncall", phones: list[str] = PHONES,
                     tenant: str = "default", *, rounds: int | None = None,
                     round_delay_s: int | None = None) -> None:
    """A group of ``member0``, ``member1``... Rounds left None: the group defaults (3 rounds,
    120 s apart), so a test that lets calls go unanswered never sees a second round."""
    members = [Member(name=f"member{i}", phone=p) for i, p in enumerate(phones)]
    await db.upsert_group(conn, tenant, name, members, rounds=rounds,
                          round_delay_s=round_delay_s)


async def wait_for(predicate: Callable[[], Awaitable[bool]],
                   timeout: float = 15.0,  # noqa: ASYNC109 - a polling deadline, not I/O
                   what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met in {timeout:.0f}s")


async def fire(settings: Settings, **fields: Any) -> str:
    """Fire one trigger event the way a service would (validated producer); returns its id."""
    fields.setdefault("group", "oncall")
    fields.setdefault("message", "Primary database is down")
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        return await p.fire(**fields)


async def resolve(settings: Settings, alert_id: str, tenant: str | None = None) -> str:
    async with AlertProducer.from_url(settings.redis_url, prefix=settings.redis_prefix) as p:
        return await p.resolve(alert_id=alert_id, tenant=tenant)


async def xadd_raw(settings: Settings, fields: Mapping[str, str]) -> str:
    """Write a stream entry as any non-Python producer could, bypassing validation."""
    client = redis.asyncio.Redis.from_url(settings.redis_url)
    try:
        entry_id = await client.xadd(Keys(settings.redis_prefix).events, dict(fields))
    finally:
        await client.aclose()
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def event_json(**fields: Any) -> str:
    return json.dumps(fields)


async def calls_of(conn: asyncpg.Connection, alert_id: str,
                   tenant: str | None = None) -> list[CallRow]:
    """The calls of every alert row with this alert_id, oldest first."""
    return await db.list_calls(conn, alert_id=alert_id, tenant=tenant)


async def all_calls_completed(conn: asyncpg.Connection, alert_id: str, count: int) -> bool:
    """Whether the alert has exactly ``count`` calls and every one ended completed."""
    rows = await calls_of(conn, alert_id)
    return len(rows) == count and all(r.status == CallStatus.COMPLETED for r in rows)


async def alert_decided(conn: asyncpg.Connection, alert_id: str, status: str) -> bool:
    """Whether the alert's newest row has ``status``. An alert is decided from its calls'
    statuses in the job that recorded them, a moment after the call rows: wait for it with
    ``wait_for`` after the calls ended, rather than reading it once."""
    found = await conn.fetchval(
        "SELECT status FROM alerts WHERE alert_id = $1 ORDER BY id DESC LIMIT 1", alert_id)
    return bool(found == status)


async def statuses_of(conn: asyncpg.Connection, alert_id: str,
                      tenant: str | None = None) -> list[str]:
    """Call statuses in ring order (alert rows oldest first, then position)."""
    rows = await calls_of(conn, alert_id, tenant)
    return [r.status for r in sorted(rows, key=lambda r: r.id)]


async def alert_rows(conn: asyncpg.Connection, alert_id: str,
                     tenant: str | None = None) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM alerts WHERE alert_id = $1 AND ($2::text IS NULL OR tenant = $2)"
        " ORDER BY id",
        alert_id,
        tenant,
    )


async def alert_status(conn: asyncpg.Connection, alert_id: str,
                       tenant: str | None = None) -> str | None:
    rows = await alert_rows(conn, alert_id, tenant)
    return str(rows[-1]["status"]) if rows else None


def posted_to(fake: FakeTwilio) -> list[str]:
    """The To number of every create POST the fake received, in arrival order."""
    return [c.form["To"][0] for c in sorted(fake.creates(), key=lambda c: c.at)]


async def pending_count(client: redis.asyncio.Redis, keys: Keys) -> int:
    """Entries delivered to some consumer of the group and not acknowledged."""
    summary = await client.xpending(keys.events, keys.consumer_group)
    return int(summary["pending"])


async def stream_drained(client: redis.asyncio.Redis, keys: Keys) -> bool:
    """Every entry of the stream was delivered to the group and acknowledged."""
    groups = await client.xinfo_groups(keys.events)
    mine = [g for g in groups if _text(g["name"]) == keys.consumer_group]
    if not mine:
        return False
    last = await client.xrevrange(keys.events, count=1)
    if not last:
        return True
    delivered = _text(mine[0]["last-delivered-id"])
    return delivered == _text(last[0][0]) and int(mine[0]["pending"]) == 0


async def call_jobs_done(client: redis.asyncio.Redis, keys: Keys, call_ids: list[int]) -> bool:
    """No place_call job of these calls is queued or running any more."""
    for call_id in call_ids:
        jid = job_id(keys.prefix, "call", call_id)
        if await client.zscore(keys.queue, jid) is not None:
            return False
        if await client.exists(in_progress_key_prefix + jid, job_key_prefix + jid):
            return False
    return True


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def stream_entries(
    client: redis.asyncio.Redis, prefix: str
) -> list[tuple[str, dict[str, str]]]:
    """Every entry of the events stream, as a decoding client returns them."""
    result: list[tuple[str, dict[str, str]]] = await client.xrange(Keys(prefix).events)
    return result


# --- the command line, run as the real process operators run ---------------------------------


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_line(self) -> str:
        """The one stderr line a failing command must print (fails the test otherwise)."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, f"expected one stderr line, got: {self.stderr!r}"
        assert "Traceback" not in self.stderr
        return lines[0]


async def run_cli(env: dict[str, str], *args: str | bytes) -> Result:
    """Run ``voicealert ARGS`` (bytes arguments reach it as the OS passes them: invalid
    UTF-8 included)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args, cwd=REPO, env={**os.environ, **env},
        # No terminal: a command that would ask for confirmation refuses instead of waiting.
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


async def make_token(database_url: str, tenant: str = "default", name: str | None = None,
                     scope: str = "fire") -> str:
    """A live API token of ``tenant`` (as ``voicealert tokens create`` makes one)."""
    from worker import tokens
    from worker.models import TokenScope

    made = tokens.new_token()
    conn = await db.connect(database_url)
    try:
        row = await db.insert_token(conn, tenant, name or f"token-{made.key_id}",
                                    TokenScope(scope), made.key_id, made.digest)
    finally:
        await conn.close()
    assert row is not None
    return made.token


def json_lines(text: str) -> list[dict[str, Any]]:
    """A process's JSON log lines as objects (lines that are not JSON objects are skipped)."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                out.append(record)
    return out
