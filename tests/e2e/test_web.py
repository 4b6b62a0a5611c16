"""The web process as ops run it: ``voicealert web`` on a port, health, readiness, JSON errors,
SIGTERM, and a bad VOICEALERT_PUBLIC_URL refused at start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.webs import SpawnWeb
from tests.helpers import REPO, free_port


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
