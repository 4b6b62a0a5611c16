"""The web process as ops run it: ``voicealert web`` on a port, health, readiness, JSON errors,
SIGTERM, and a bad VOICEALERT_PUBLIC_URL refused at start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import REPO, free_port


@dataclass
class WebProc:
    popen: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def get(self, path: str, method: str = "GET") -> tuple[int, Any, dict[str, str]]:
        async with aiohttp.ClientSession() as session, session.request(
            method, self.base_url + path, timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            assert response.content_type == "application/json", await response.text()
            return response.status, await response.json(), dict(response.headers)

    async def up(self) -> WebProc:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(f"web exited {self.popen.returncode}:\n{self.log_text()}")
            try:
                await self.get("/healthz")
                return self
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"web not up in 20s:\n{self.log_text()}")

    async def wait_exit(self, timeout: float) -> int | None:  # noqa: ASYNC109 - a deadline
        try:
            return await asyncio.to_thread(self.popen.wait, timeout)
        except subprocess.TimeoutExpired:
            return None


SpawnWeb = Callable[..., WebProc]


@pytest.fixture
def spawn_web(env: dict[str, str], tmp_path: Path) -> Iterator[SpawnWeb]:
    """``spawn_web(**overrides)`` starts ``python -m worker web`` on a free loopback port."""
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
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(10)


async def test_web_process_is_healthy_ready_and_exits_0_on_sigterm(spawn_web: SpawnWeb) -> None:
    web = await spawn_web().up()
    assert (await web.get("/healthz"))[:2] == (200, {"status": "ok"})
    status, body, _ = await web.get("/readyz")
    assert (status, body) == (200, {"status": "ok", "checks": {"redis": "ok", "postgres": "ok",
                                                               "migrations": "ok"}})

    web.popen.send_signal(signal.SIGTERM)
    assert await web.wait_exit(15) == 0, web.log_text()
    assert "web.stopped" in web.log_text()


async def test_unknown_routes_and_methods_answer_json_not_html(spawn_web: SpawnWeb) -> None:
    web = await spawn_web().up()
    status, body, _ = await web.get("/no/such/route")
    assert (status, body) == (404, {"error": "not found", "status": 404})
    status, body, headers = await web.get("/healthz", method="DELETE")
    assert (status, body) == (405, {"error": "method not allowed", "status": 405})
    assert "GET" in headers["Allow"]


async def test_readyz_is_503_naming_postgres_when_it_is_unreachable(
    spawn_web: SpawnWeb,
) -> None:
    closed = free_port()
    web = await spawn_web(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/voicealert").up()
    status, body, _ = await web.get("/readyz")
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["postgres"] != "ok"
    assert (await web.get("/healthz"))[0] == 200  # up, only not ready


@pytest.mark.parametrize(
    "public_url", ["http://alerts.example.com", "alerts.example.com/twilio", "https://"]
)
def test_bad_public_url_stops_the_web_process_with_one_line(
    env: dict[str, str], public_url: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "web"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, **env, "VOICEALERT_WEB_PORT": str(free_port()),
             "VOICEALERT_PUBLIC_URL": public_url},
        timeout=30, check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("voicealert: invalid VOICEALERT_PUBLIC_URL: ")
