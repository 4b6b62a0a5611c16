"""Phone numbers are masked in every log line, by a processor, whoever logs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from schema import Member
from worker.logs import configure_logging, get_logger, mask_phone_numbers

PHONE = "+14155550100"
MASKED = "+1415•••0100"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("calling +14155550100 now", "calling +1415•••0100 now"),
        ("+442079460958", "+4420•••0958"),
        ("to=+14155550100,", "to=+1415•••0100,"),
        ("['+14155550100']", "['+1415•••0100']"),
        ("+1 415 555 0100", "+1415•••0100"),
        ("+1 (415) 555-0100", "+1415•••0100"),
        ("(415) 555-0100", "4155•••0100"),
        ("415-555-0100", "4155•••0100"),
        ("415.555.0100", "4155•••0100"),
        ("dial 4155550100 please", "dial 4155•••0100 please"),
        ("dial 14155550100 please", "dial 1415•••0100 please"),
    ],
)
def test_phone_numbers_in_common_formats_are_masked(text: str, masked: str) -> None:
    assert mask_phone_numbers(text) == masked


def test_masked_number_keeps_neither_the_middle_digits_nor_the_whole() -> None:
    masked = mask_phone_numbers("+14155550123")
    assert "5550123" not in masked
    assert "555" not in masked


def test_several_numbers_in_one_line_are_all_masked() -> None:
    line = mask_phone_numbers("from +15005550006 to +14155550100 and (415) 555-0101")
    assert line == "from +1500•••0006 to +1415•••0100 and 4155•••0101"


@pytest.mark.parametrize(
    "text",
    [
        "stream id 1700000000000-0 acked",
        "1700000000000-12",
        "received 2024-05-01T12:34:56.789012+00:00",
        "at 2024-05-01 12:34:56",
        "took 12 ms, 42 of 1000 calls, attempt 3",
        "call 123456 alert 9876",
        "sid CA0123456789abcdef0123456789abcdef",
        "version 0001_initial",
        "a 20-digit id 12345678901234567890",
    ],
)
def test_ids_timestamps_and_small_numbers_are_not_masked(text: str) -> None:
    assert mask_phone_numbers(text) == text


# --- configured logging ------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", "debug", stream=stream)
    yield stream
    configure_logging("console", "warning")  # what tests/conftest.py set for the session


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_logging_writes_one_json_object_per_line(json_log: io.StringIO) -> None:
    get_logger("voicealert.test").info("worker.started", consumer="host-1")
    [line] = lines(json_log)
    assert line["event"] == "worker.started"
    assert line["consumer"] == "host-1"
    assert line["level"] == "info"
    assert "timestamp" in line


def test_structlog_fields_are_masked_at_any_depth(json_log: io.StringIO) -> None:
    get_logger("voicealert.test").info(
        "call.placed",
        to=PHONE,
        member={"name": "Alice", "phones": [PHONE, ("415-555-0101",)]},
        stream_id="1700000000000-0",
        attempts=3,
    )
    raw = json_log.getvalue()
    assert "5550100" not in raw
    assert "555-0101" not in raw
    [line] = lines(json_log)
    assert line["to"] == MASKED
    assert line["member"] == {"name": "Alice", "phones": [MASKED, ["4155•••0101"]]}
    assert line["stream_id"] == "1700000000000-0"
    assert line["attempts"] == 3


def test_event_name_with_a_number_is_masked(json_log: io.StringIO) -> None:
    get_logger("voicealert.test").warning(f"dialing {PHONE}")
    assert lines(json_log)[0]["event"] == f"dialing {MASKED}"


def test_objects_logged_as_fields_are_masked(json_log: io.StringIO) -> None:
    get_logger("voicealert.test").info("group.member", member=Member(name="Al", phone=PHONE))
    assert "5550100" not in json_log.getvalue()
    assert MASKED in lines(json_log)[0]["member"]


def test_exception_traceback_is_masked(json_log: io.StringIO) -> None:
    log = get_logger("voicealert.test")
    try:
        raise RuntimeError(f"Twilio refused {PHONE}")
    except RuntimeError:
        log.exception("call.failed", call=7)
    assert "5550100" not in json_log.getvalue()
    [line] = lines(json_log)
    assert f"RuntimeError: Twilio refused {MASKED}" in line["exception"]
    assert line["call"] == 7


def test_exception_passed_as_a_field_is_masked(json_log: io.StringIO) -> None:
    error = ValueError(f"bad To {PHONE}")
    get_logger("voicealert.test").warning("call.rejected", error=error)
    assert lines(json_log)[0]["error"] == f"ValueError: bad To {MASKED}"


def test_stdlib_logging_from_libraries_is_masked(json_log: io.StringIO) -> None:
    logging.getLogger("arq").info("job place_call for +14155550100 done")
    logging.getLogger("asyncpg").warning("row %s", {"phone": "(415) 555-0101"})
    raw = json_log.getvalue()
    assert "5550100" not in raw
    assert "555-0101" not in raw
    first, second = lines(json_log)
    assert first == {**first, "event": f"job place_call for {MASKED} done", "logger": "arq"}
    assert second["event"] == "row {'phone': '4155•••0101'}"


def test_stdlib_exception_traceback_is_masked(json_log: io.StringIO) -> None:
    try:
        raise ConnectionError(f"lost while calling {PHONE}")
    except ConnectionError:
        logging.getLogger("arq.worker").exception("job failed")
    assert "5550100" not in json_log.getvalue()
    assert f"ConnectionError: lost while calling {MASKED}" in lines(json_log)[0]["exception"]


def test_console_format_is_masked_too() -> None:
    stream = io.StringIO()
    configure_logging("console", "info", stream=stream)
    try:
        get_logger("voicealert.test").info("call.placed", to=PHONE)
        logging.getLogger("arq").info("for %s", PHONE)
    finally:
        configure_logging("console", "warning")
    text = stream.getvalue()
    assert "5550100" not in text
    assert text.count(MASKED) == 2


def test_auto_format_writes_json_when_not_on_a_terminal(json_log: io.StringIO) -> None:
    stream = io.StringIO()  # StringIO.isatty() is False, like a pipe to a log shipper
    configure_logging("auto", "info", stream=stream)
    get_logger("voicealert.test").info("worker.started")
    assert json.loads(stream.getvalue())["event"] == "worker.started"
