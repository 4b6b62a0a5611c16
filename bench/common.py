"""What every benchmark shares: where it runs (a scratch database, a key prefix), real worker
processes, and reading a process's CPU time and memory from /proc.

Benchmarks are not tests: they print figures beside a baseline measured in the same run, on
the same machine. They use the Redis and Postgres servers of ``REDIS_URL`` and
``DATABASE_URL`` without disturbing anything else there: every key they write starts with a
per-run prefix (arq's job keys too: job ids start with it), and the database is their own,
dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis
import redis.asyncio

from schema import Member
from testing.fake_twilio import FakeTwilio
from worker import db
from worker.keys import Keys
from worker.migrate import maintenance_url, migrate

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/voicealert"
DATABASE_URL = os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
# For the stand-alone benchmarks of other issues (bench.poison, bench.http_api): Redis
# logical DB 14 (they scope their keys by prefix) and a database of their own.
BENCH_REDIS = urlunsplit(
    urlsplit(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))._replace(path="/14")
)
BENCH_DB = "voicealert_bench"


def bench_database_url() -> str:
    return urlunsplit(urlsplit(DATABASE_URL)._replace(path=f"/{BENCH_DB}"))

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Place:
    """Where a benchmark runs: a Redis URL and key prefix, and a database of its own."""

    redis_url: str
    database_url: str
    prefix: str

    @classmethod
    def for_this_process(
        cls, redis_url: str | None = None, server_url: str | None = None
    ) -> Place:
        redis_url = redis_url or os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
        server_url = server_url or os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
        name = f"voicealert_bench_{os.getpid()}"
        return cls(
            redis_url=redis_url,
            database_url=urlunsplit(urlsplit(server_url)._replace(path=f"/{name}")),
            prefix=f"vabench{os.getpid()}:",
        )

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    @property
    def database(self) -> str:
        return urlsplit(self.database_url).path.lstrip("/")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def reset(self) -> None:
        """A fresh, migrated database and no key of ours in Redis."""
        asyncio.run(self._reset_database())
        self.delete_keys()

    def delete_keys(self) -> None:
        client = self.client()
        for pattern in (f"{self.prefix}*", f"arq:*:{self.prefix}*"):
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=5000):
                batch.append(key)
                if len(batch) >= 5000:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
        client.close()

    def drop(self) -> None:
        asyncio.run(self._drop_database())
        self.delete_keys()

    async def _drop_database(self) -> None:
        conn = await asyncpg.connect(maintenance_url(self.database_url)[0], timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        finally:
            await conn.close()

    async def _reset_database(self) -> None:
        await self._drop_database()
        await migrate(self.database_url)

    def set_group(self, name: str, phones: Sequence[str]) -> None:
        async def upsert() -> None:
            conn = await db.connect(self.database_url)
            try:
                members = [Member(name=f"m{i}", phone=p) for i, p in enumerate(phones)]
                await db.upsert_group(conn, "default", name, members)
            finally:
                await conn.close()

        asyncio.run(upsert())

    async def fetchval(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.database_url, timeout=10)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    def worker_env(self, **overrides: str) -> dict[str, str]:
        """A worker with the simulated provider; pass fake_twilio_env(...) for Twilio."""
        env = {
            key: value for key, value in os.environ.items()
            if not key.startswith(("VOICEALERT_", "TWILIO_"))
        }
        env.update({
            "REDIS_URL": self.redis_url,
            "DATABASE_URL": self.database_url,
            "VOICEALERT_REDIS_PREFIX": self.prefix,
            "VOICEALERT_PROVIDER": "simulated",
            # As in production: JSON lines at the default level (info), into a file.
            "VOICEALERT_LOG_FORMAT": "json",
        })
        env.update(overrides)
        return env


def fake_twilio_env(fake: FakeTwilio) -> dict[str, str]:
    return {
        "VOICEALERT_PROVIDER": "twilio",
        "TWILIO_ACCOUNT_SID": fake.account_sid,
        "TWILIO_AUTH_TOKEN": fake.auth_token,
        "TWILIO_FROM_NUMBER": "+15005550006",
        "TWILIO_API_BASE_URL": fake.base_url,
    }


def phones(count: int, start: int = 0) -> list[str]:
    """``count`` distinct valid numbers (+1 415 2xx xxxx)."""
    return [f"+1415{2000000 + start + i:07d}" for i in range(count)]


# --- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessUsage:
    cpu_s: float  # user + system
    rss_kib: int
    peak_rss_kib: int


def usage(pid: int) -> ProcessUsage:
    """CPU time and memory of a live process, from /proc (Linux)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name (which may contain spaces) are split from its ')'.
    after = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(after[11]) + int(after[12])) / _CLK_TCK
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return ProcessUsage(
        cpu_s=cpu_s,
        rss_kib=int(status["VmRSS"].split()[0]),
        peak_rss_kib=int(status["VmHWM"].split()[0]),
    )


class WorkerDied(RuntimeError):
    pass


@dataclass
class Profiler:
    """``python -m bench --profile DIR``: two ``py-spy record`` per process a benchmark starts,
    into DIR/NN-LABEL.txt (every sample not idle: CPU, and waits such as a socket write that
    woke Redis or Postgres and lost the core to it) and NN-LABEL.gil.txt (samples holding the
    GIL: the process's own Python CPU); the process's log is kept as NN-LABEL.log."""

    directory: Path
    rate: int = 100
    _runs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def name(self, label: str) -> str:
        return f"{next(self._runs):02d}-{label}"

    def attach(self, pid: int, name: str) -> list[subprocess.Popen[bytes]]:
        self.directory.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).with_name("py-spy")
        command = [str(py_spy if py_spy.exists() else "py-spy"), "record", "--pid", str(pid),
                   "--rate", str(self.rate), "--format", "raw", "--nonblocking"]
        return [
            subprocess.Popen([*command, *extra, "--output", str(self.directory / output)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for extra, output in (([], f"{name}.txt"), (["--gil"], f"{name}.gil.txt"))
        ]

    def keep_log(self, log: Path, name: str) -> None:
        if log.exists():
            shutil.copyfile(log, self.directory / f"{name}.log")


# Set by ``python -m bench --profile DIR``: every worker started while it is set is profiled.
PROFILER: list[Profiler] = []


@dataclass
class Processes:
    """Real processes under benchmark, stopped (SIGTERM, then SIGKILL) on exit."""

    popens: list[subprocess.Popen[bytes]]
    logs: list[Path]
    profilers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.popens]

    def cpu_s(self) -> float:
        """CPU seconds the processes used so far, together."""
        return sum(usage(pid).cpu_s for pid in self.pids)

    def check_alive(self) -> None:
        for popen, log in zip(self.popens, self.logs, strict=True):
            if popen.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                raise WorkerDied(f"process {popen.args!r} exited {popen.returncode}:\n{tail}")

    def stop(self) -> None:
        for popen in self.popens:
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for popen in self.popens:
            try:
                popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        for profiler in self.profilers:
            try:
                profiler.wait(timeout=30)
            except subprocess.TimeoutExpired:
                profiler.kill()


@contextlib.contextmanager
def processes(
    commands: Sequence[tuple[list[str], dict[str, str]]], label: str
) -> Iterator[Processes]:
    with tempfile.TemporaryDirectory(prefix="voicealert-bench-") as tmp:
        logs = [Path(tmp) / f"{label}-{i}.log" for i in range(len(commands))]
        popens = []
        for (argv, env), log in zip(commands, logs, strict=True):
            with log.open("wb") as out:
                popens.append(subprocess.Popen(argv, env=env, stdout=out,
                                               stderr=subprocess.STDOUT, cwd=REPO))
        procs = Processes(popens, logs)
        names = [(profiler, [profiler.name(f"{label}-{i}") for i in range(len(popens))])
                 for profiler in PROFILER]
        try:
            for profiler, profiled in names:
                for popen, name in zip(popens, profiled, strict=True):
                    procs.profilers += profiler.attach(popen.pid, name)
            yield procs
        finally:
            procs.stop()
            for profiler, profiled in names:
                for log, name in zip(logs, profiled, strict=True):
                    profiler.keep_log(log, name)


@contextlib.contextmanager
def workers(place: Place, env: dict[str, str], count: int = 1, label: str = "worker",
            *, wait: bool = True) -> Iterator[Processes]:
    """``count`` real ``python -m worker worker`` replicas, yielded once each one is polling
    its job queue (its health key exists), or at once with ``wait=False``."""
    commands = [
        ([sys.executable, "-m", "worker", "worker"],
         {**env, "VOICEALERT_CONSUMER_NAME": f"bench-{i}"})
        for i in range(count)
    ]
    with processes(commands, label) as procs:
        if not wait:
            yield procs
            return
        client = place.client()
        health = [place.keys.health_check(f"bench-{i}") for i in range(count)]
        wait_until(lambda: client.exists(*health) == count, 60, procs.check_alive,
                   what="workers to start")
        client.close()
        yield procs


def wait_until(
    condition: Callable[[], bool], timeout_s: float, check: Callable[[], None] | None = None,
    *, interval_s: float = 0.01, what: str = "condition",
) -> float:
    """Poll ``condition`` until true; returns the monotonic time it was seen true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return time.monotonic()
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


async def async_wait_until(
    condition: Callable[[], Awaitable[bool]], timeout_s: float,
    check: Callable[[], None] | None = None, *, interval_s: float = 0.01,
    what: str = "condition",
) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        if await condition():
            return time.monotonic()
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)


# --- the stream -----------------------------------------------------------------------------


def group_state(client: redis.Redis, stream: str, group: str) -> tuple[int, int]:
    """(entries ``group`` has not read yet, entries read and not acknowledged)."""
    for info in client.xinfo_groups(stream):  # type: ignore[union-attr]
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name == group:
            return int(info.get("lag") or 0), int(info.get("pending") or 0)
    raise LookupError(f"no consumer group {group} on {stream}")


def backlog(client: redis.Redis, stream: str, group: str) -> int:
    """Entries of ``group`` not yet acknowledged: never read (lag) plus pending."""
    return sum(group_state(client, stream, group))


def fill_stream(client: redis.Redis, stream: str, payloads: Sequence[bytes],
                chunk: int = 5000) -> None:
    """XADD one ``event`` entry per payload, pipelined."""
    for start in range(0, len(payloads), chunk):
        with client.pipeline(transaction=False) as pipe:
            for payload in payloads[start:start + chunk]:
                pipe.xadd(stream, {"event": payload})
            pipe.execute()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]
