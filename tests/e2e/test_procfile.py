"""`honcho start -f Procfile.dev` runs the worker and the web process together, as a developer
runs them locally (the Procfile's one-shot `release` line would stop them all when it exits:
Procfile.dev leaves it out; run `voicealert migrate` first)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import REPO, run_cli, wait_for

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def test_procfile_dev_is_the_procfile_without_its_release_line() -> None:
    procfile = (REPO / "Procfile").read_text().splitlines()
    dev = (REPO / "Procfile.dev").read_text().splitlines()
    assert [line for line in procfile if not line.startswith("release:")] == dev


async def test_honcho_runs_worker_and_web_from_procfile_dev_and_stops_them_on_sigterm(
    env: dict[str, str], tmp_path: Path,
) -> None:
    port = 5000 + os.getpid() % 3000  # honcho gives the first process $PORT, the next +100
    process_env = {**os.environ, **env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
                   "PORT": str(port), "VOICEALERT_CONSUMER_NAME": f"honcho-{os.getpid()}"}
    log_path = tmp_path / "honcho.log"
    with log_path.open("wb") as log:
        honcho = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited in a thread
            [str(BIN / "honcho"), "-f", "Procfile.dev", "start"], cwd=REPO, env=process_env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    probe_env = {**env, "VOICEALERT_CONSUMER_NAME": process_env["VOICEALERT_CONSUMER_NAME"]}
    try:
        async def worker_alive() -> bool:
            assert honcho.poll() is None, log_path.read_text()
            return (await run_cli(probe_env, "worker", "--check")).code == 0

        await wait_for(worker_alive, timeout=30, what="the worker under honcho")

        async def web_up() -> bool:
            for candidate in (port, port + 100):  # worker is listed first, web second
                try:
                    async with aiohttp.ClientSession() as session, session.get(
                        f"http://127.0.0.1:{candidate}/readyz",
                        timeout=aiohttp.ClientTimeout(total=2)) as response:
                        if response.status == 200:
                            return True
                except aiohttp.ClientError:
                    continue
            return False

        await wait_for(web_up, timeout=30, what="the web process under honcho")
        honcho.send_signal(signal.SIGTERM)  # honcho passes it on to each process
        code = await asyncio.to_thread(honcho.wait, 40)
    finally:
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(10)
    text = log_path.read_text()
    assert code == 128 + signal.SIGTERM, text  # honcho reports the signal it was stopped by
    # Both processes drained and stopped cleanly (each was sent SIGTERM once, by honcho).
    assert "worker.stopped" in text
    assert "web.stopped" in text
    assert "worker.stopping_now" not in text
