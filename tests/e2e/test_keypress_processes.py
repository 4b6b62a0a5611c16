"""Press 1 across real processes: ``voicealert worker`` places the call, the fake Twilio plays
it and posts the digit to ``voicealert web``, which acknowledges; the worker hangs up the
other member's ringing call."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from testing.fake_twilio import FakeTwilio
from tests.e2e.workers import SpawnWorker
from tests.helpers import PHONES, REPO, alert_rows, calls_of, fire, free_port, make_group, wait_for
from worker.config import load_settings


@pytest.fixture
def public(env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A ``voicealert web`` process on a free port, and the settings that make it public."""
    port = free_port()
    overrides = {"VOICEALERT_PUBLIC_URL": f"http://127.0.0.1:{port}",
                 "VOICEALERT_WEB_PORT": str(port)}
    log_path = tmp_path / "web.log"
    with open(log_path, "wb") as log_file:
        web = subprocess.Popen(
            [sys.executable, "-m", "worker", "web"], cwd=REPO,
            env={**os.environ, **env, **overrides, "VOICEALERT_LOG_FORMAT": "json"},
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield overrides
    finally:
        web.kill()
        web.wait(10)


async def _up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            async with aiohttp.ClientSession() as session, session.get(url + "/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("web process not up in 20 s")


async def test_press_1_acknowledges_through_the_web_process_and_the_worker_hangs_up_the_rest(
    env: dict[str, str], public: dict[str, str], spawn_worker: SpawnWorker,
    db_conn: asyncpg.Connection, fake_twilio: FakeTwilio,
) -> None:
    settings = load_settings({**env, **public})
    fake_twilio.play_twiml = True
    fake_twilio.ring_s = 1.0
    fake_twilio.set_callbacks(PHONES[1], before_create=True)
    fake_twilio.set_outcome(PHONES[1], "no-answer")
    fake_twilio.press(PHONES[0], "1", at_s=0.05)
    await make_group(db_conn, phones=PHONES[:2])
    await _up(public["VOICEALERT_PUBLIC_URL"])
    # One call a second: member 0 is dialed first (rings 1 s), member 1 a second later
    # (rings 5 s), so member 1 is still ringing when member 0 presses 1.
    worker = await spawn_worker("a", **public, VOICEALERT_CALLS_PER_SECOND="1").ready()
    await fire(settings, alert_id="db-down")

    async def first_dialed() -> bool:
        return len(fake_twilio.creates()) >= 1

    await wait_for(first_dialed, what="member 0 dialed")
    fake_twilio.ring_s = 5.0

    async def acknowledged() -> bool:
        rows = await alert_rows(db_conn, "db-down")
        return bool(rows) and rows[0]["status"] == "acknowledged"

    await wait_for(acknowledged, timeout=20, what="the alert acknowledged")

    async def hung_up() -> bool:
        rows = await calls_of(db_conn, "db-down")
        return len(rows) == 2 and rows[1].status == "canceled"

    await wait_for(hung_up, timeout=20, what="member 1's ringing call hung up")
    [alert] = await alert_rows(db_conn, "db-down")
    assert alert["acknowledged_by"] == "member0"
    assert (await calls_of(db_conn, "db-down"))[0].acknowledged_by == "member0"
    [press] = fake_twilio.gather_requests()
    assert (press.params["Digits"], press.status) == ("1", 200)
    assert fake_twilio.application_errors() == []
    assert worker.alive


async def test_a_worker_sigkilled_during_the_round_delay_loses_no_round(
    env: dict[str, str], spawn_worker: SpawnWorker, db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio,
) -> None:
    settings = load_settings(env)
    fake_twilio.default_outcome = "no-answer"
    await make_group(db_conn, phones=PHONES[:1])
    first = await spawn_worker("first").ready()
    await fire(settings, alert_id="db-down", rounds=2, round_delay_s=3)

    async def waiting() -> bool:
        rows = await alert_rows(db_conn, "db-down")
        return bool(rows) and rows[0]["next_round_at"] is not None

    await wait_for(waiting, timeout=20, what="round 1 over, round 2 waiting for its delay")
    first.kill()
    assert await first.wait_exit(10) is not None
    # Nothing of the dead worker's memory is needed: a new one takes the round up.
    await spawn_worker("second").ready()

    async def second_round_over() -> bool:
        rows = await alert_rows(db_conn, "db-down")
        return bool(rows) and rows[0]["status"] == "unacknowledged"

    await wait_for(second_round_over, timeout=30, what="round 2 called, then unacknowledged")
    rows = await calls_of(db_conn, "db-down")
    assert [(r.round, r.status) for r in rows] == [(1, "no-answer"), (2, "no-answer")]
    assert len(fake_twilio.creates()) == 2
