"""Quiet, useful logs: arq's free text becomes events at the level they deserve, and every line
a job causes names its call and alert (the count per call is measured in
tests/e2e/test_log_volume.py, on a real worker)."""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import arq.worker
import pytest

from worker.logs import _ARQ_LINES, bind_job, configure_logging, get_logger, job_scope

ARQ = logging.getLogger("arq.worker")


@pytest.fixture
def log_at() -> Iterator[Any]:
    stream = io.StringIO()

    def configure(level: str) -> io.StringIO:
        configure_logging("json", level, stream=stream)
        return stream

    yield configure
    configure_logging("console", "warning")


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_arq_format_string_we_rewrite_is_still_in_arq() -> None:
    # arq is pinned to 0.28.x; an upgrade that rewords a line must fail here, not leak it.
    source = inspect.getsource(arq.worker)
    for template in _ARQ_LINES:
        assert repr(template)[1:-1] in source or template in source, template


def test_arq_job_lines_become_debug_events_with_fields(log_at: Any) -> None:
    stream = log_at("debug")
    ARQ.info("%6.2fs → %s(%s)%s", 0.012, "vat:call:12:place_call", "12", " try=2 delayed=1.50s")
    ARQ.info("%6.2fs ← %s ● %s", 0.25, "vat:call:12:place_call", "")
    ARQ.info("%6.2fs ↻ %s retrying job in %0.2fs", 0.01, "vat:poll:12:poll_call", 0.5)
    started, finished, deferred = lines(stream)
    assert started == {**started, "event": "job.started", "level": "debug",
                       "job_id": "vat:call:12", "function": "place_call", "try": "2",
                       "delayed": "1.50", "queued_s": 0.012}
    assert finished == {**finished, "event": "job.finished", "duration_s": 0.25,
                        "function": "place_call"}
    assert deferred == {**deferred, "event": "job.deferred", "retry_in_s": 0.5,
                        "function": "poll_call"}


def test_at_info_arq_job_lines_and_its_shutdown_lines_are_gone(log_at: Any) -> None:
    stream = log_at("info")
    ARQ.info("%6.2fs → %s(%s)%s", 0.012, "vat:call:12:place_call", "12", "")
    ARQ.info("%6.2fs ← %s ● %s", 0.25, "vat:call:12:place_call", "")
    ARQ.info("shutdown on %s ◆ %d jobs complete ◆ %d failed ◆ %d retries ◆ %d ongoing to cancel",
             "SIGUSR1", 3, 0, 0, 0)
    ARQ.info("recording health: %s", "Nov-27 00:00:00 j_complete=1")
    assert stream.getvalue() == ""


def test_a_job_cut_off_halfway_is_a_warning_and_a_failed_job_an_error(log_at: Any) -> None:
    stream = log_at("warning")
    ARQ.info("%6.2fs ↻ %s cancelled, will be run again", 1.0, "vat:call:3:place_call")
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        ARQ.exception("%6.2fs ! %s failed, %s: %s", 0.1, "vat:call:3:place_call",
                      type(exc).__name__, exc)
    interrupted, failed = lines(stream)
    assert (interrupted["event"], interrupted["level"]) == ("job.interrupted", "warning")
    assert (failed["event"], failed["level"], failed["error"]) == ("job.failed", "error", "boom")
    assert "RuntimeError: boom" in failed["exception"]


def test_arq_lines_we_do_not_know_pass_through_at_their_own_level(log_at: Any) -> None:
    stream = log_at("info")
    ARQ.warning("something new in arq %s", 1)
    ARQ.debug("chatter")
    [line] = lines(stream)
    assert (line["event"], line["level"]) == ("something new in arq 1", "warning")


async def test_lines_of_a_job_and_arqs_line_after_it_carry_its_call_and_alert(
    log_at: Any,
) -> None:
    stream = log_at("debug")
    ours = get_logger("worker.calls")

    async def run_job() -> None:  # what arq's run_job does around a job, in its own task
        job_scope(call=12)
        ARQ.info("%6.2fs → %s(%s)%s", 0.0, "vat:call:12:place_call", "12", "")

        async def job() -> None:
            ours.info("call.first")
            bind_job(alert=4, alert_id="db-down", tenant="acme")
            ours.info("call.placed")

        await asyncio.create_task(job())
        ARQ.info("%6.2fs ← %s ● %s", 0.1, "vat:call:12:place_call", "")

    await asyncio.gather(run_job(), asyncio.create_task(asyncio.sleep(0)))
    ours.info("outside.any.job")
    started, first, placed, finished, outside = lines(stream)
    assert started["call"] == first["call"] == 12
    assert "alert_id" not in first
    for line in (placed, finished):
        assert (line["call"], line["alert"], line["alert_id"], line["tenant"]) == (
            12, 4, "db-down", "acme")
    assert "call" not in outside


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_logs_are_coloured_on_a_terminal_and_plain_elsewhere() -> None:
    terminal, pipe = _Terminal(), io.StringIO()
    try:
        for stream in (terminal, pipe):
            configure_logging("console", "info", stream=stream)
            get_logger("worker.calls").warning("call.throttled", call=3)
    finally:
        configure_logging("console", "warning")
    assert "\x1b[" in terminal.getvalue()
    assert "\x1b[" not in pipe.getvalue()
    assert "call.throttled" in pipe.getvalue()
