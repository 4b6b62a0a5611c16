"""Only Twilio may press 1 or report a status: every webhook is verified against
VOICEALERT_PUBLIC_URL + path + query with the auth token, and a request that fails changes
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest
from twilio.request_validator import RequestValidator

from schema import Member
from testing.fake_twilio import FakeTwilio
from worker import db
from worker.config import Settings
from worker.models import AlertStatus, NewAlert, StatusSource

CALL_SID = "CA" + "1" * 32


@pytest.fixture
async def stored_call(db_conn: asyncpg.Connection) -> int:
    """One alert calling one member, its call ringing at the provider."""
    alert = NewAlert(tenant="default", alert_id="db-down", event_key="event:e1",
                     group_name="oncall", message="Primary database is down",
                     mode="parallel", status=AlertStatus.CALLING, dedup_window_s=300,
                     metadata={}, event_id="e1", stream_id="1-0")
    stored = await db.create_alert(db_conn, alert, [Member(name="alice", phone="+14155550100")],
                                   StatusSource.WORKER)
    call_id = stored.calls[0].id
    await db_conn.execute("UPDATE calls SET status = 'ringing', provider_sid = $2 WHERE id = $1",
                          call_id, CALL_SID)
    return call_id


@pytest.fixture
async def http(webhook_settings: Settings, start_web: Any) -> AsyncIterator[aiohttp.ClientSession]:
    await start_web(webhook_settings)
    async with aiohttp.ClientSession() as session:
        yield session


def sign(token: str, url: str, params: dict[str, str]) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


async def post(http: aiohttp.ClientSession, url: str, params: dict[str, str],
               signature: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature is not None:
        headers["X-Twilio-Signature"] = signature
    async with http.post(url, data=urlencode(params), headers=headers) as response:
        return response.status, await response.text()


async def unchanged(db_conn: asyncpg.Connection, call_id: int) -> bool:
    call = await db_conn.fetchrow("SELECT status, acknowledged_at FROM calls WHERE id = $1",
                                  call_id)
    assert call is not None
    alert = await db_conn.fetchval("SELECT status FROM alerts")
    events = await db_conn.fetchval("SELECT count(*) FROM call_events WHERE call = $1", call_id)
    return (call["status"], call["acknowledged_at"], alert, events) == (
        "ringing", None, "calling", 1)


def _gather(settings: Settings, call_id: int) -> tuple[str, dict[str, str]]:
    url = f"{settings.public_url}/twilio/gather?call={call_id}"
    return url, {"CallSid": CALL_SID, "Digits": "1", "AccountSid": "AC" + "0" * 32}


async def test_a_keypress_without_a_signature_is_refused(
    webhook_settings: Settings, db_conn: asyncpg.Connection, stored_call: int,
    http: aiohttp.ClientSession,
) -> None:
    url, params = _gather(webhook_settings, stored_call)
    assert (await post(http, url, params, None))[0] == 403
    assert await unchanged(db_conn, stored_call)


async def test_a_keypress_signed_with_another_token_is_refused(
    webhook_settings: Settings, db_conn: asyncpg.Connection, stored_call: int,
    http: aiohttp.ClientSession,
) -> None:
    url, params = _gather(webhook_settings, stored_call)
    status, body = await post(http, url, params, sign("not-the-token", url, params))
    assert status == 403
    assert "signature" in body
    assert await unchanged(db_conn, stored_call)


@pytest.mark.parametrize("signed_for", [
    "https://evil.example.com/twilio/gather?call={id}",  # another host
    "{public}/twilio/gather?call=999999",  # another call
    "{public}/twilio/status?call={id}",  # another webhook
])
async def test_a_keypress_signed_for_another_url_is_refused(
    webhook_settings: Settings, db_conn: asyncpg.Connection, stored_call: int,
    http: aiohttp.ClientSession, fake_twilio: FakeTwilio, signed_for: str,
) -> None:
    url, params = _gather(webhook_settings, stored_call)
    other = signed_for.format(public=webhook_settings.public_url, id=stored_call)
    status, _ = await post(http, url, params, sign(fake_twilio.auth_token, other, params))
    assert status == 403
    assert await unchanged(db_conn, stored_call)


async def test_a_replayed_body_with_a_changed_digit_is_refused(
    webhook_settings: Settings, db_conn: asyncpg.Connection, stored_call: int,
    http: aiohttp.ClientSession, fake_twilio: FakeTwilio,
) -> None:
    url, params = _gather(webhook_settings, stored_call)
    pressed_2 = {**params, "Digits": "2"}
    signature = sign(fake_twilio.auth_token, url, pressed_2)
    status, _ = await post(http, url, params, signature)  # the same signature, Digits=1
    assert status == 403
    assert await unchanged(db_conn, stored_call)


async def test_a_forged_status_callback_is_refused(
    webhook_settings: Settings, db_conn: asyncpg.Connection, stored_call: int,
    http: aiohttp.ClientSession,
) -> None:
    url = f"{webhook_settings.public_url}/twilio/status?call={stored_call}"
    params = {"CallSid": CALL_SID, "CallStatus": "completed", "CallDuration": "30"}
    assert (await post(http, url, params, sign("guess", url, params)))[0] == 403
    assert (await post(http, url, params, None))[0] == 403
    assert await unchanged(db_conn, stored_call)


@pytest.mark.parametrize("body", [b"\xff\xfe\x00", b"a=" + b"&b=" * 5000, b"%zz=%"])
async def test_hostile_bodies_are_refused_without_an_error(
    webhook_settings: Settings, db_conn: asyncpg.Connection, stored_call: int,
    http: aiohttp.ClientSession, body: bytes,
) -> None:
    url = f"{webhook_settings.public_url}/twilio/gather?call={stored_call}"
    async with http.post(url, data=body, headers={"X-Twilio-Signature": "x" * 28}) as response:
        assert response.status == 403
        assert response.content_type == "application/json"
    assert await unchanged(db_conn, stored_call)


async def test_a_correctly_signed_keypress_acknowledges(
    webhook_settings: Settings, db_conn: asyncpg.Connection, stored_call: int,
    http: aiohttp.ClientSession, fake_twilio: FakeTwilio,
) -> None:
    url, params = _gather(webhook_settings, stored_call)
    status, body = await post(http, url, params, sign(fake_twilio.auth_token, url, params))
    assert status == 200
    assert "Acknowledged. Thank you." in body
    alert = await db_conn.fetchrow("SELECT status, acknowledged_by FROM alerts")
    assert alert is not None
    assert (alert["status"], alert["acknowledged_by"]) == ("acknowledged", "alice")
    call = await db_conn.fetchval("SELECT acknowledged_by FROM calls WHERE id = $1", stored_call)
    assert call == "alice"


async def test_webhooks_are_off_without_a_public_url(
    settings: Settings, start_web: Any, stored_call: int,
) -> None:
    from tests.helpers import free_port

    web_settings = settings.model_copy(update={"web_port": free_port()})
    await start_web(web_settings)
    url = f"http://127.0.0.1:{web_settings.web_port}/twilio/gather?call={stored_call}"
    async with aiohttp.ClientSession() as session, session.post(url, data={"Digits": "1"}) as r:
        assert r.status == 404
