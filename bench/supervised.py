"""Worker processes under a supervisor, for benchmarks that compare code versions.

A benchmark of "what happens to the pager" runs the worker of some checkout (``--repo``:
this one, or an older one for the baseline) the way production runs it: restarted whenever
it exits, each exit counted. Everything else (Postgres, Redis, the fake Twilio) comes from
this checkout, and each run gets its own database and Redis key prefix, so runs do not see
each other and nothing shared is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio

from bench.common import BENCH_REDIS, DATABASE_URL, REPO
from testing.fake_twilio import FakeTwilio
from worker.migrate import maintenance_url

RESTART_DELAY_S = 0.5  # a supervisor's restart back-off (systemd's RestartSec, roughly)


@dataclass
class Supervisor:
    """Keeps ``count`` workers of ``repo`` running; counts every exit."""

    repo: Path
    env: dict[str, str]
    count: int = 1
    log_dir: Path | None = None  # each process's log goes here when given
    exits: list[int] = field(default_factory=list)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        name = f"bench-{index}-{uuid.uuid4().hex[:6]}"
        out: Any = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - the child's
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "worker", "worker"],
                cwd=self.repo,
                env={**self.env, "PYTHONPATH": str(self.repo), "VOICEALERT_CONSUMER_NAME": name},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        finally:
            if out is not subprocess.DEVNULL:
                out.close()

    async def _watch(self) -> None:
        while True:
            for i, proc in enumerate(self._procs):
                code = proc.poll()
                if code is not None:
                    self.exits.append(code)
                    await asyncio.sleep(RESTART_DELAY_S)
                    self._procs[i] = self._spawn(i)
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> Supervisor:
        self._procs = [self._spawn(i) for i in range(self.count)]
        self._task = asyncio.create_task(self._watch())
        await asyncio.sleep(2.0)  # start-up: pools, consumer group
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                await asyncio.to_thread(proc.wait, 20)
            except subprocess.TimeoutExpired:
                proc.kill()


@dataclass(frozen=True)
class Scratch:
    """A fresh database and Redis prefix for one run."""

    database_url: str
    redis_url: str
    prefix: str

    def env(self, fake: FakeTwilio, **overrides: str) -> dict[str, str]:
        return {
            **os.environ,
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "VOICEALERT_REDIS_PREFIX": self.prefix,
            "TWILIO_ACCOUNT_SID": fake.account_sid,
            "TWILIO_AUTH_TOKEN": fake.auth_token,
            "TWILIO_FROM_NUMBER": "+15005550006",
            "TWILIO_API_BASE_URL": fake.base_url,
            "VOICEALERT_LOG_FORMAT": "json",
            "VOICEALERT_LOG_LEVEL": "warning",
            "VOICEALERT_CALLS_PER_SECOND": "200",
            "VOICEALERT_RECLAIM_IDLE_S": "2",
            "VOICEALERT_RECLAIM_INTERVAL_S": "0.5",
            "VOICEALERT_INGEST_BLOCK_MS": "100",
            **overrides,
        }


@asynccontextmanager
async def scratch(repo: Path, database_url: str = DATABASE_URL) -> AsyncIterator[Scratch]:
    """A fresh database migrated by ``repo``'s own ``voicealert migrate``, and a prefix."""
    name = f"voicealert_bench_{uuid.uuid4().hex[:10]}"
    url = database_url.rsplit("/", 1)[0] + f"/{name}"
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "worker", "migrate"], cwd=repo, check=True,
        env={**os.environ, "DATABASE_URL": url, "PYTHONPATH": str(repo)},
        stdout=subprocess.DEVNULL,
    )
    try:
        yield Scratch(url, BENCH_REDIS, prefix)
    finally:
        conn = await asyncpg.connect(maintenance_url(database_url)[0])
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        client = redis.asyncio.Redis.from_url(BENCH_REDIS)
        try:
            for pattern in (f"{prefix}*", f"arq:*:{prefix}*"):
                keys = [k async for k in client.scan_iter(match=pattern, count=1000)]
                for start in range(0, len(keys), 1000):
                    await client.delete(*keys[start:start + 1000])
        finally:
            await client.aclose()


async def seed_group(conn: asyncpg.Connection, name: str, phones: list[str]) -> None:
    """A group of ``m0``, ``m1``... in the default tenant, written with the columns every
    version of the schema has (a baseline checkout may predate rounds), so this checkout's
    ``db.upsert_group`` is not needed against another checkout's database."""
    members = [{"name": f"m{i}", "phone": phone} for i, phone in enumerate(phones)]
    await conn.execute(
        "INSERT INTO alert_groups (tenant, name, members) VALUES ('default', $1, $2)",
        name, members)


def repo_label(repo: Path) -> str:
    return "this checkout" if repo.resolve() == REPO else str(repo)


def elapsed_since(started: float) -> float:
    return time.monotonic() - started
