"""Real worker processes under test: each with its own JSON log, read back to learn what *that*
process did (which jobs it started and finished, which calls it dialed). The ``spawn_worker``
fixture (tests/e2e/conftest.py) starts them; test modules import the types from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import json_lines
from worker.queue import chunk_calls

# arq's lines about a job, as worker/logs.py turns them into events (job.started and the
# like are DEBUG: e2e workers log at debug unless a test says otherwise).
_JOB_START = "job.started"
_JOB_ENDS = {"job.finished", "job.deferred", "job.failed", "job.aborted",
             "job.max_tries_exceeded"}  # not job.interrupted: cancelled halfway, will run again

# Settings every e2e worker runs with unless a test overrides them.
E2E_DEFAULTS = {
    "VOICEALERT_LOG_LEVEL": "debug",
    "VOICEALERT_LOG_FORMAT": "json",
    "VOICEALERT_SHUTDOWN_GRACE_S": "10",
    "VOICEALERT_HEALTH_CHECK_INTERVAL_S": "1",
}


@dataclass
class WorkerProc:
    """One real worker process, with its log file."""

    name: str
    consumer: str
    log_path: Path
    popen: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.monotonic)

    # ------------------------------------------------------------------ state

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    # ------------------------------------------------------------------- log

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def events(self) -> list[dict[str, Any]]:
        """The process's log lines as JSON objects (lines that are not JSON are skipped)."""
        return json_lines(self.log_text())

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def job_runs(self, function: str = "place_call") -> tuple[list[str], list[str]]:
        """Job ids of ``function`` this process started, and those whose run it saw to an end
        (done, retry requested, failed; not cancelled halfway), in log order."""
        started: list[str] = []
        finished: list[str] = []
        for record in self.events():
            if record.get("function") != function or "job_id" not in record:
                continue
            if record.get("event") == _JOB_START:
                started.append(str(record["job_id"]))
            elif record.get("event") in _JOB_ENDS:
                finished.append(str(record["job_id"]))
        return started, finished

    def unfinished_jobs(self, function: str = "place_call") -> set[str]:
        """Jobs of ``function`` this process started and had not finished (per its log)."""
        started, finished = self.job_runs(function)
        remaining = list(started)
        for job in finished:
            if job in remaining:
                remaining.remove(job)
        return set(remaining)

    def unfinished_calls(self) -> set[int]:
        """The calls of the place_call jobs this process started and had not finished: a
        call's own job, or each call of a chunk job (``<prefix>calls:<ids>``)."""
        return {call for job in self.unfinished_jobs() for call in call_ids_of(job)}

    # -------------------------------------------------------------- control

    async def ready(self, timeout: float = 20.0) -> WorkerProc:  # noqa: ASYNC109 - a deadline
        """Wait until the process reads the stream (its consumer logged ``ingest.started``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.logged("ingest.started"):
                return self
            if not self.alive:
                raise AssertionError(
                    f"worker {self.name} exited with {self.returncode} while starting:\n"
                    f"{self.log_tail()}"
                )
            await asyncio.sleep(0.05)
        raise AssertionError(f"worker {self.name} not ready in {timeout:.0f}s:\n{self.log_tail()}")

    def send(self, signum: signal.Signals) -> float:
        """Send a signal; returns the monotonic time it was sent."""
        self.popen.send_signal(signum)
        return time.monotonic()

    def kill(self) -> float:
        return self.send(signal.SIGKILL)

    async def wait_exit(self, timeout: float) -> int | None:  # noqa: ASYNC109 - a deadline
        """The exit status, or None if the process is still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.popen.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.02)
        return self.popen.poll()

    def reap(self) -> None:
        """SIGKILL if still running, and wait for it (teardown)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


SpawnWorker = Callable[..., WorkerProc]


def call_ids_of(job: str) -> list[int]:
    """``<prefix>call:<id>`` → ``[id]``; a chunk's ``<prefix>calls:<ids>`` → its ids."""
    kind, spec = job.rsplit(":", 2)[-2:]
    found = chunk_calls("", f"{kind}:{spec}")
    return found[1] if found else [int(spec)]
