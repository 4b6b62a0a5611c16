"""Shared set-up for benchmarks: a scratch database, a Redis logical DB, the fake Twilio and
worker processes. Benchmarks are not tests: they print figures beside a baseline measured in
the same run, on the same machine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

from schema import Member
from testing.fake_twilio import FakeTwilio
from worker import db
from worker.migrate import maintenance_url, migrate

REPO = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/voicealert")
BENCH_DB = "voicealert_bench"
BENCH_REDIS = urlunsplit(urlsplit(REDIS_URL)._replace(path="/14"))


def bench_database_url() -> str:
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path=f"/{BENCH_DB}"))


async def _fresh_database() -> None:
    conn = await asyncpg.connect(maintenance_url(DATABASE_URL)[0])
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
    finally:
        await conn.close()
    await migrate(bench_database_url())


def fresh_state() -> None:
    asyncio.run(_fresh_database())
    redis.Redis.from_url(BENCH_REDIS).flushdb()


async def _set_group(name: str, phones: list[str]) -> None:
    conn = await db.connect(bench_database_url())
    try:
        members = [Member(name=f"m{i}", phone=p) for i, p in enumerate(phones)]
        await db.upsert_group(conn, "default", name, members)
    finally:
        await conn.close()


def set_group(name: str, phones: list[str]) -> None:
    asyncio.run(_set_group(name, phones))


def worker_env(fake: FakeTwilio, **overrides: str) -> dict[str, str]:
    env = {
        **os.environ,
        "REDIS_URL": BENCH_REDIS,
        "DATABASE_URL": bench_database_url(),
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": fake.base_url,
        "VOICEALERT_LOG_FORMAT": "json",
        "VOICEALERT_LOG_LEVEL": "warning",
        "VOICEALERT_CALLS_PER_SECOND": "1000",
    }
    env.update(overrides)
    return env


@contextmanager
def worker_processes(
    env: dict[str, str], count: int = 1
) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "worker", "worker"],
            env={**env, "VOICEALERT_CONSUMER_NAME": f"bench-{i}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]
    try:
        time.sleep(1.5)  # start-up: pools, consumer group
        yield procs
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
