"""What the worker may do after a provider failure: the taxonomy of ``classify`` and backoff.

The exceptions are the ones the real libraries raise (``TwilioRestException`` as twilio-python
builds it, ``ClientConnectorError`` from a real refused connection), not look-alikes.
"""

from __future__ import annotations

import random
import socket

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.base.exceptions import TwilioRestException

from worker.providers import (
    AmbiguousProviderError,
    PermanentProviderError,
    ProviderError,
    ThrottledProviderError,
)
from worker.retries import backoff_s
from worker.twilio_provider import TwilioProvider, classify

CALLS_URI = "/2010-04-01/Accounts/AC00/Calls.json"


def rest_error(status: int, code: int | None, msg: str = "error") -> TwilioRestException:
    return TwilioRestException(status, CALLS_URI, msg=msg, code=code, method="POST")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, 21211),  # invalid To number
        (400, 21214),  # To number cannot be reached
        (400, 21215),  # geo permissions
        (400, 21216),  # blocked number
        (400, 21217),  # not a valid phone number
        (401, 20003),  # authentication
        (403, 20003),
        (404, 20404),
    ],
)
def test_client_errors_other_than_429_are_permanent_and_keep_code_and_status(
    status: int, code: int
) -> None:
    result = classify(rest_error(status, code, "The 'To' number is not valid"))
    assert type(result) is PermanentProviderError
    assert result.code == code
    assert result.http_status == status
    assert "not valid" in str(result)


def test_http_429_is_throttled() -> None:
    result = classify(rest_error(429, 20429, "Too Many Requests"))
    assert type(result) is ThrottledProviderError
    assert (result.code, result.http_status) == (20429, 429)


def test_code_20429_is_throttled_whatever_the_http_status() -> None:
    # Without the code rule a 400 would be taken as a permanent refusal and never retried.
    assert type(classify(rest_error(400, 20429))) is ThrottledProviderError


@pytest.mark.parametrize(("status", "code"), [(500, 20500), (502, None), (503, 20503)])
def test_server_errors_are_ambiguous(status: int, code: int | None) -> None:
    result = classify(rest_error(status, code))
    assert type(result) is AmbiguousProviderError
    assert result.http_status == status


def test_timeout_is_ambiguous() -> None:
    assert type(classify(TimeoutError())) is AmbiguousProviderError


def test_dropped_connection_is_ambiguous() -> None:
    # The request may have been sent before the connection dropped.
    dropped = aiohttp.ServerDisconnectedError()
    assert type(classify(dropped)) is AmbiguousProviderError


def test_provider_errors_pass_through_unchanged() -> None:
    original = ThrottledProviderError("slow down", code=20429, http_status=429)
    assert classify(original) is original


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_refused_connection_is_throttled() -> None:
    port = _closed_port()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await session.get(f"http://127.0.0.1:{port}/")
    assert type(classify(caught.value)) is ThrottledProviderError


async def test_provider_create_against_refusing_server_raises_throttled() -> None:
    # End to end through the real client: nothing was sent, so a plain retry is safe.
    provider = TwilioProvider(
        account_sid="AC" + "0" * 32,
        auth_token="token",
        from_number="+15005550006",
        base_url=f"http://127.0.0.1:{_closed_port()}",
        timeout_s=2,
        ring_timeout_s=30,
    )
    try:
        with pytest.raises(ProviderError) as caught:
            await provider.create_call(to="+14155550100", twiml="<Response/>")
    finally:
        await provider.aclose()
    assert type(caught.value) is ThrottledProviderError


@settings(max_examples=300, deadline=None)
@given(
    attempt=st.integers(min_value=0, max_value=64),
    base_s=st.floats(min_value=0.001, max_value=10),
    cap_s=st.floats(min_value=0.001, max_value=120),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_between_floor_and_exponential_ceiling(
    attempt: int, base_s: float, cap_s: float, seed: int
) -> None:
    delay = backoff_s(attempt, base_s=base_s, cap_s=cap_s, rng=random.Random(seed))
    ceiling = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    assert 0.05 <= delay <= max(0.05, ceiling)


def test_backoff_is_fully_jittered_across_its_range() -> None:
    # Full jitter: retries from many replicas spread over [0, ceiling] instead of bunching.
    rng = random.Random(7)
    delays = [backoff_s(4, base_s=1.0, cap_s=60.0, rng=rng) for _ in range(2000)]
    ceiling = 8.0
    assert max(delays) <= ceiling
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling
    assert 0.4 * ceiling < sum(delays) / len(delays) < 0.6 * ceiling


def test_backoff_ceiling_doubles_per_attempt_until_the_cap() -> None:
    rng = random.Random(3)
    tops = [
        max(backoff_s(n, base_s=0.5, cap_s=3.0, rng=rng) for _ in range(500))
        for n in (1, 2, 3, 4, 5)
    ]
    assert tops[0] <= 0.5 < tops[1] <= 1.0 < tops[2] <= 2.0 < tops[3] <= 3.0
    assert tops[4] <= 3.0
