"""End-to-end fixtures: real ``python -m worker worker`` processes (tests/e2e/workers.py), and
servers a test may stop.

Each worker process gets the test's environment (``env`` fixture: per-test database, Redis
DB 15 with a per-test prefix, the fake Twilio) plus a unique consumer name, and writes its
JSON log to a file of its own, which is how a test learns what *that* process did (which
jobs it started and finished, which calls it dialed). Every process a test started is
SIGKILLed at teardown if it is still alive, whatever the test did.

``spawn_web`` starts ``python -m worker web`` processes the same way (tests/e2e/webs.py).

``throwaway_postgres`` and ``throwaway_redis`` are servers the test owns and may stop and
start (scripts/services.py), so outages never touch the shared services.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.services import ThrowawayPostgres, ThrowawayRedis
from tests.e2e.webs import SpawnWeb, WebProc
from tests.e2e.workers import E2E_DEFAULTS, SpawnWorker, WorkerProc
from tests.helpers import REPO, free_port

_names = itertools.count(1)


@pytest.fixture
def spawn_worker(env: dict[str, str], tmp_path: Path) -> Iterator[SpawnWorker]:
    """``spawn_worker("a", VOICEALERT_CONCURRENCY="20")`` starts ``python -m worker worker``
    with the test's environment plus overrides; returns at once (``await w.ready()``)."""
    started: list[WorkerProc] = []

    def spawn(name: str = "w", **overrides: str) -> WorkerProc:
        consumer = f"e2e-{name}-{next(_names)}-{uuid.uuid4().hex[:8]}"
        process_env = {
            **os.environ,
            **env,
            **E2E_DEFAULTS,
            "VOICEALERT_CONSUMER_NAME": consumer,
            **overrides,
        }
        log_path = tmp_path / f"worker-{consumer}.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [sys.executable, "-m", "worker", "worker"],
                cwd=REPO,
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C at the terminal reaches pytest, not the worker
            )
        worker = WorkerProc(name=name, consumer=consumer, log_path=log_path, popen=popen)
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        worker.reap()


@pytest.fixture
def spawn_web(env: dict[str, str], tmp_path: Path) -> Iterator[SpawnWeb]:
    """``spawn_web(**overrides)`` starts ``python -m worker web`` on a free loopback port with
    the test's environment plus overrides; returns at once (``await w.up()``)."""
    started: list[WebProc] = []

    def spawn(**overrides: str) -> WebProc:
        port = free_port()
        log_path = tmp_path / f"web-{port}.log"
        process_env = {**os.environ, **env, "VOICEALERT_WEB_PORT": str(port), **overrides}
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [sys.executable, "-m", "worker", "web"], cwd=REPO, env=process_env,
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = WebProc(popen, f"http://127.0.0.1:{port}", log_path)
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.reap()


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL server of the test's own, running, removed afterwards.

    Its data directory is not under pytest's tmp_path: the server runs as user postgres,
    and any pytest session starting meanwhile resets /tmp/pytest-of-<user> to mode 0700,
    which would lock the server out of its own directory.
    """
    root = Path(tempfile.mkdtemp(prefix="voicealert-e2e-pg-"))
    server = ThrowawayPostgres(data_dir=root / "pg")
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[ThrowawayRedis]:
    """A redis-server of the test's own, running (no persistence)."""
    server = ThrowawayRedis(data_dir=tmp_path / "redis")
    server.start()
    yield server
    server.stop()
