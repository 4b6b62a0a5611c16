"""What operators see of a run: the worker's own log output, and `voicealert calls`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from testing.fake_twilio import FakeTwilio
from tests.helpers import PHONES, alert_status, calls_of, fire, make_group, wait_for
from worker.config import Settings

pytestmark = pytest.mark.e2e

BAD_PHONE = "+14155550199"


def _forms(phone: str) -> list[str]:
    """Ways a full number could show up in a log line: E.164, national digits, formatted,
    URL-encoded (as a provider's error message may quote the request)."""
    national = phone.removeprefix("+1")
    return [phone, national, f"({national[:3]}) {national[3:6]}-{national[6:]}",
            quote(phone), quote(phone).lower()]


#: Twilio's 21211 message quotes the number it refused; this one also as it was URL-encoded.
REFUSAL = (f"The 'To' number {BAD_PHONE} is not a valid phone number "
           f"(To={quote(BAD_PHONE)}).")


def _masked(phone: str) -> str:
    return f"+{phone[1:5]}•••{phone[-4:]}"


async def _run_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_worker_logs_of_a_whole_run_contain_no_full_phone_number(
    env: dict[str, str], settings: Settings, db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio, tmp_path: Path,
) -> None:
    fake_twilio.fail_number(BAD_PHONE, message=REFUSAL)
    await make_group(db_conn)
    await make_group(db_conn, name="bad", phones=[BAD_PHONE])
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log_file:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "worker",
            env={**os.environ, **env, "VOICEALERT_LOG_FORMAT": "json",
                 "VOICEALERT_LOG_LEVEL": "debug"},
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        await fire(settings, alert_id="db-down")
        await fire(settings, alert_id="bad-number", group="bad")
        await fire(settings, alert_id="no-group", group="nobody-by-this-name")

        async def run_finished() -> bool:
            ok = [c.status for c in await calls_of(db_conn, "db-down")] == ["completed"] * 3
            bad = [c.status for c in await calls_of(db_conn, "bad-number")] == ["failed"]
            unknown = await alert_status(db_conn, "no-group") == "unknown_group"
            return ok and bad and unknown

        await wait_for(run_finished, timeout=30, what="the run to finish")
        worker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.wait(), 30) == 0
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    text = log_path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    events = {line.get("event") for line in lines}
    # The run really happened and was logged: the lines a number could leak through exist.
    assert {"call.dialing", "call.rejected", "alert.unknown_group"} <= events, events
    for phone in [*PHONES, BAD_PHONE]:
        for form in _forms(phone):
            assert form not in text, f"{form} appears in the worker's log"
    for phone in [*PHONES, BAD_PHONE]:
        assert _masked(phone) in text
    assert fake_twilio.auth_token not in text


async def test_calls_command_lists_an_alerts_calls_and_filters_by_status(
    env: dict[str, str], settings: Settings, db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    fake_twilio.fail_number(PHONES[2])
    await make_group(db_conn)
    await make_group(db_conn, name="solo", phones=["+14155550300"])
    await start_worker()
    await fire(settings, alert_id="db-down")
    await fire(settings, alert_id="disk-full", group="solo")

    async def settled() -> bool:
        mine = [c.status for c in await calls_of(db_conn, "db-down")]
        other = [c.status for c in await calls_of(db_conn, "disk-full")]
        return mine == ["completed", "completed", "failed"] and other == ["completed"]

    await wait_for(settled, what="both alerts' calls to end")

    code, out, err = await _run_cli(env, "calls", "--alert-id", "db-down", "--json")
    assert (code, err) == (0, "")
    rows = json.loads(out)
    assert [(r["alert_id"], r["phone"], r["status"]) for r in rows] == [
        ("db-down", PHONES[0], "completed"),
        ("db-down", PHONES[1], "completed"),
        ("db-down", PHONES[2], "failed"),
    ]
    assert all(r["provider_sid"] for r in rows[:2])
    assert rows[2]["error_code"] == 21211

    code, out, err = await _run_cli(
        env, "calls", "--alert-id", "db-down", "--status", "failed", "--json")
    assert (code, err) == (0, "")
    assert [(r["phone"], r["status"]) for r in json.loads(out)] == [(PHONES[2], "failed")]

    code, out, _ = await _run_cli(env, "calls", "--status", "completed", "--json")
    assert code == 0
    assert sorted((r["alert_id"], r["phone"]) for r in json.loads(out)) == [
        ("db-down", PHONES[0]), ("db-down", PHONES[1]), ("disk-full", "+14155550300")]

    # The table for humans masks the numbers.
    code, out, _ = await _run_cli(env, "calls", "--alert-id", "db-down")
    assert code == 0
    assert _masked(PHONES[0]) in out
    assert not any(phone in out for phone in PHONES)


async def test_human_output_of_every_command_contains_no_full_or_url_encoded_number(
    env: dict[str, str], settings: Settings, db_conn: asyncpg.Connection,
    fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    fake_twilio.fail_number(BAD_PHONE, message=REFUSAL)
    await make_group(db_conn)
    await make_group(db_conn, name="bad", phones=[BAD_PHONE])
    await start_worker()
    await fire(settings, alert_id="db-down", message=f"Call {PHONES[0]} back about the database")
    await fire(settings, alert_id="bad-number", group="bad")

    async def run_finished() -> bool:
        ok = [c.status for c in await calls_of(db_conn, "db-down")] == ["completed"] * 3
        bad = [c.status for c in await calls_of(db_conn, "bad-number")] == ["failed"]
        return ok and bad

    await wait_for(run_finished, timeout=30, what="the run to finish")
    code, out, _ = await _run_cli(env, "dlq", "list", "--json")
    assert code == 0
    (letter,) = json.loads(out)
    assert quote(BAD_PHONE) in letter["error"]  # the provider's text really carries it
    commands = [
        ["calls"], ["calls", "--status", "failed"], ["calls", "--alert-id", "bad-number"],
        ["alerts", "list"], ["alerts", "show", "bad-number"], ["alerts", "show", "db-down"],
        ["dlq", "list"], ["dlq", "show", str(letter["id"])], ["groups", "list"],
        ["groups", "show", "bad"], ["groups", "show", "oncall"], ["status"],
        ["groups", "set", "copy", "--member", f"x={BAD_PHONE}"], ["dlq", "replay", "--all"],
    ]
    shown = ""
    for args in commands:
        code, out, err = await _run_cli(env, *args)
        assert code in (0, 1), (args, code, err)  # status: 1 when degraded; replay refused
        shown += out + err
        for phone in [*PHONES, BAD_PHONE]:
            for form in _forms(phone):
                assert form not in out + err, f"{form} in the output of {args}"
    assert _masked(BAD_PHONE) in shown
    assert _masked(PHONES[0]) in shown
    # --json stays whole.
    code, out, _ = await _run_cli(env, "dlq", "show", str(letter["id"]), "--json")
    assert code == 0
    assert json.loads(out)["payload"]["phone"] == BAD_PHONE
