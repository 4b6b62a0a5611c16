"""The HTTP API end to end: a real ``voicealert web`` process on loopback, real Redis and
Postgres, and a real worker process ringing the fake Twilio where a test says a worker rings.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio

from producers import HttpAlertProducer, ProducerError, ValidationError
from testing.fake_twilio import FakeTwilio
from tests.e2e.webs import SpawnWeb
from tests.e2e.workers import SpawnWorker
from tests.helpers import (
    PHONES,
    REPO,
    alert_decided,
    alert_rows,
    all_calls_completed,
    make_group,
    make_token,
    statuses_of,
    stream_entries,
    wait_for,
)
from worker import db
from worker.models import AlertStatus, CallStatus, NewAlert, StatusSource

EVENT = {"alert_id": "db-down", "group": "oncall", "message": "Primary database is down"}


def events_on(entries: list[tuple[str, dict[str, str]]]) -> list[dict[str, Any]]:
    return [json.loads(fields["event"]) for _, fields in entries]


# --- fire, and a worker rings -------------------------------------------------------------


async def test_a_202_puts_exactly_one_entry_on_the_stream_and_a_worker_rings(
    spawn_web: SpawnWeb, spawn_worker: SpawnWorker, db_conn: asyncpg.Connection,
    database_url: str, text_redis: redis.asyncio.Redis, prefix: str, fake_twilio: FakeTwilio,
) -> None:
    await make_group(db_conn, "oncall", PHONES, tenant="acme")
    token = await make_token(database_url, "acme", "ci")
    web = await spawn_web().up()
    worker = spawn_worker()

    answer = await web.request("POST", "/v1/alerts", token=token, json_body=EVENT)

    assert answer.status == 202, answer
    [(stream_id, _)] = entries = await stream_entries(text_redis, prefix)
    assert answer.body == {"status": "accepted", "stream_id": stream_id, "alert_id": "db-down",
                           "links": {"self": "/v1/alerts/db-down"}}
    [event] = events_on(entries)
    assert event["tenant"] == "acme"  # from the token
    assert (event["alert_id"], event["group"], event["message"]) == (
        "db-down", "oncall", "Primary database is down")

    await worker.ready()
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", len(PHONES)), 20,
                   "every member rung")
    assert sorted(c.form["To"][0] for c in fake_twilio.creates()) == sorted(PHONES)
    await wait_for(lambda: alert_decided(db_conn, "db-down", "answered"), 5, "alert answered")

    read = await web.request("GET", "/v1/alerts/db-down", token=token)
    assert read.status == 200, read
    assert read.body["status"] == AlertStatus.ANSWERED
    assert read.body["tenant"] == "acme"
    assert read.body["stream_id"] == stream_id
    calls = read.body["calls"]
    assert [c["member"] for c in calls] == [f"member{i}" for i in range(len(PHONES))]
    assert [c["phone"] for c in calls] == ["+1415•••0100", "+1415•••0101", "+1415•••0102"]
    assert {(c["status"], c["attempts"], c["error_code"]) for c in calls} == {
        ("completed", 1, None)}
    assert all(c["ended_at"] for c in calls)
    assert "+14155550100" not in json.dumps(read.body)


async def test_an_idempotency_key_retried_five_times_rings_once(
    spawn_web: SpawnWeb, spawn_worker: SpawnWorker, db_conn: asyncpg.Connection,
    database_url: str, text_redis: redis.asyncio.Redis, prefix: str, fake_twilio: FakeTwilio,
) -> None:
    await make_group(db_conn, "oncall", PHONES)
    token = await make_token(database_url)
    web = await spawn_web().up()
    worker = spawn_worker()
    headers = {"Idempotency-Key": "deploy-4711-db-down"}

    # A client whose POST timed out retries it: four times in a row, then once more
    # alongside a second copy that was still in flight.
    answers = [await web.request("POST", "/v1/alerts", token=token, json_body=EVENT,
                                 headers=headers) for _ in range(3)]
    answers += await asyncio.gather(*(
        web.request("POST", "/v1/alerts", token=token, json_body=EVENT, headers=headers)
        for _ in range(2)))

    assert [a.status for a in answers] == [202] * 5
    entries = await stream_entries(text_redis, prefix)
    assert {e["event_id"] for e in events_on(entries)} == {"deploy-4711-db-down"}
    await worker.ready()
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", len(PHONES)), 20,
                   "the calls of the first copy")
    await asyncio.sleep(1.0)  # the other four copies are read by now; none may ring
    assert len(fake_twilio.creates()) == len(PHONES)
    assert len(await alert_rows(db_conn, "db-down")) == 1
    history = await web.request("GET", "/v1/alerts/db-down?all=true", token=token)
    assert len(history.body["alerts"]) == 1


async def test_an_ack_stops_the_calling_and_reads_back_who_is_on_it(
    spawn_web: SpawnWeb, spawn_worker: SpawnWorker, db_conn: asyncpg.Connection,
    database_url: str, fake_twilio: FakeTwilio,
) -> None:
    fake_twilio.ring_s = 30.0  # nobody answers: the ack must stop the ringing
    await make_group(db_conn, "oncall", PHONES)
    token = await make_token(database_url)
    web = await spawn_web().up()
    worker = spawn_worker()
    await worker.ready()
    assert (await web.request("POST", "/v1/alerts", token=token, json_body=EVENT)).status == 202

    async def ringing() -> bool:
        statuses = await statuses_of(db_conn, "db-down")
        return len(statuses) == 3 and set(statuses) <= {CallStatus.QUEUED, CallStatus.RINGING}

    await wait_for(ringing, 20, "every member ringing")
    acked = await web.request("POST", "/v1/alerts/db-down/ack", token=token,
                              json_body={"acknowledged_by": "alice"})
    assert acked.status == 202, acked
    assert acked.body["links"] == {"self": "/v1/alerts/db-down"}

    async def stopped() -> bool:
        return await statuses_of(db_conn, "db-down") == [CallStatus.CANCELED] * 3

    await wait_for(stopped, 20, "the ringing calls hung up")
    read = await web.request("GET", "/v1/alerts/db-down", token=token)
    assert (read.body["status"], read.body["acknowledged_by"]) == ("acknowledged", "alice")
    assert read.body["acknowledged_at"] is not None
    assert {c["status"] for c in read.body["calls"]} == {"canceled"}


# --- tenants and tokens -------------------------------------------------------------------


async def _stored_alert(conn: asyncpg.Connection, tenant: str, alert_id: str) -> None:
    """An alert row as a worker stores it (for reading back without ringing anyone)."""
    alert = NewAlert(tenant=tenant, alert_id=alert_id, event_key=f"event:{alert_id}",
                     group_name="oncall", message="Disk full", mode="parallel",
                     status=AlertStatus.CALLING, dedup_window_s=300, metadata={},
                     event_id=alert_id, stream_id="1-0")
    await db.create_alert(conn, alert, [], StatusSource.WORKER)


async def test_a_token_of_tenant_a_cannot_fire_read_resolve_or_ack_in_tenant_b(
    spawn_web: SpawnWeb, db_conn: asyncpg.Connection, database_url: str,
    text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    await _stored_alert(db_conn, "tenant-b", "b-disk")
    token_a = await make_token(database_url, "tenant-a", "ci")
    token_b = await make_token(database_url, "tenant-b", "ci")
    web = await spawn_web().up()

    fire = await web.request("POST", "/v1/alerts", token=token_a,
                             json_body={**EVENT, "tenant": "tenant-b"})
    resolve = await web.request("POST", "/v1/alerts/b-disk/resolve", token=token_a,
                                json_body={"tenant": "tenant-b"})
    ack = await web.request("POST", "/v1/alerts/b-disk/ack", token=token_a,
                            json_body={"tenant": "tenant-b", "acknowledged_by": "mallory"})
    am = await web.request("POST", "/v1/integrations/alertmanager?group=oncall", token=token_a,
                           json_body={"alerts": []}, headers={})
    assert (fire.status, resolve.status, ack.status) == (403, 403, 403)
    assert am.status == 202  # an empty payload: nothing to write, in its own tenant only
    assert await stream_entries(text_redis, prefix) == []

    assert (await web.request("GET", "/v1/alerts/b-disk", token=token_a)).status == 404
    assert (await web.request("GET", "/v1/alerts/b-disk", token=token_b)).status == 200
    listed_a = await web.request("GET", "/v1/alerts", token=token_a)
    listed_b = await web.request("GET", "/v1/alerts", token=token_b)
    assert listed_a.body["alerts"] == []
    assert [a["alert_id"] for a in listed_b.body["alerts"]] == ["b-disk"]

    # Resolving "b-disk" with A's token resolves A's alert of that name, never B's.
    own = await web.request("POST", "/v1/alerts/b-disk/resolve", token=token_a)
    assert own.status == 202
    [event] = events_on(await stream_entries(text_redis, prefix))
    assert event == {"alert_id": "b-disk", "action": "resolve", "tenant": "tenant-a"}


async def test_alerts_list_newest_first_a_page_at_a_time_and_history_of_one_id(
    spawn_web: SpawnWeb, db_conn: asyncpg.Connection, database_url: str,
) -> None:
    for i in range(5):
        await _stored_alert(db_conn, "acme", f"disk-{i}")
    await _stored_alert(db_conn, "acme", "disk-1-again")
    await db_conn.execute("UPDATE alerts SET alert_id = 'disk-1' WHERE alert_id = 'disk-1-again'")
    await db_conn.execute("UPDATE alerts SET status = 'resolved' WHERE alert_id = 'disk-3'")
    await db_conn.execute(
        "UPDATE alerts SET received_at = now() - interval '2 hours' WHERE alert_id = 'disk-0'")
    token = await make_token(database_url, "acme", "ci")
    web = await spawn_web().up()

    pages: list[list[str]] = []
    path = "/v1/alerts?limit=2"
    while True:
        answer = await web.request("GET", path, token=token)
        assert answer.status == 200, answer
        pages.append([a["alert_id"] for a in answer.body["alerts"]])
        if answer.body["next_cursor"] is None:
            break
        path = f"/v1/alerts?limit=2&cursor={answer.body['next_cursor']}"

    assert pages == [["disk-1", "disk-4"], ["disk-3", "disk-2"], ["disk-1", "disk-0"]]
    resolved = await web.request("GET", "/v1/alerts?status=resolved", token=token)
    assert [a["alert_id"] for a in resolved.body["alerts"]] == ["disk-3"]
    recent = await web.request("GET", "/v1/alerts?since=1h", token=token)
    assert "disk-0" not in [a["alert_id"] for a in recent.body["alerts"]]
    assert len(recent.body["alerts"]) == 5
    iso = await web.request("GET", "/v1/alerts?since=2000-01-01T00:00:00", token=token)
    assert len(iso.body["alerts"]) == 6

    latest = await web.request("GET", "/v1/alerts/disk-1", token=token)
    history = await web.request("GET", "/v1/alerts/disk-1?all=true", token=token)
    assert latest.body["event_id"] == "disk-1-again"
    assert [a["event_id"] for a in history.body["alerts"]] == ["disk-1-again", "disk-1"]


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", *args, cwd=REPO, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_token_revoked_with_the_cli_is_refused_at_once(
    spawn_web: SpawnWeb, env: dict[str, str], text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    web = await spawn_web().up()
    code, out, _ = await _cli(env, "tokens", "create", "--tenant", "acme", "--name", "ci")
    assert code == 0
    token = out.strip()
    assert (await web.request("POST", "/v1/alerts", token=token, json_body=EVENT)).status == 202

    code, out, err = await _cli(env, "tokens", "revoke", "ci", "--tenant", "acme")
    assert code == 0, err
    refused = await web.request("POST", "/v1/alerts", token=token, json_body=EVENT)

    assert refused.status == 401
    assert len(await stream_entries(text_redis, prefix)) == 1


async def test_no_token_appears_in_any_log_line_and_phones_are_masked(
    spawn_web: SpawnWeb, database_url: str,
) -> None:
    token = await make_token(database_url, "acme", "ci")
    revoked = await make_token(database_url, "acme", "old")
    conn = await db.connect(database_url)
    await db.revoke_token(conn, "acme", "old")
    await conn.close()
    web = await spawn_web(VOICEALERT_LOG_LEVEL="debug").up()

    await web.request("POST", "/v1/alerts", token=token, json_body=EVENT)
    await web.request("POST", "/v1/alerts", token=revoked, json_body=EVENT)
    await web.request("POST", "/v1/alerts", token=token + "x", json_body=EVENT)
    await web.request("GET", f"/v1/alerts?token={token}", token=token)
    await web.request("GET", f"/v1/alerts/{token}", token=token)
    await web.request("GET", "/v1/alerts/+14155550100", token=token)
    await web.request("POST", "/v1/alerts", token=token,
                      json_body={**EVENT, "alert_id": "call +1 415 555 0101"})
    web.popen.send_signal(signal.SIGTERM)
    assert await web.wait_exit(15) == 0

    text = web.log_text()
    for secret in (token, revoked):
        assert secret not in text
        assert secret.split("_", 2)[2][:20] not in text  # not even part of the secret
    assert "+14155550100" not in text
    assert "+1 415 555 0101" not in text
    requests = [e for e in web.log_events() if e.get("event") == "web.request"]
    assert len(requests) == 7
    assert {e["actor"] for e in requests if e["status"] < 300} == {"acme/ci"}
    assert any(e["path"] == "/v1/alerts/+1415•••0100" for e in requests)
    accepted = [e for e in requests if e["status"] == 202]
    assert [e["alert_id"] for e in accepted] == ["db-down", "call +1415•••0101"]
    assert all(e["stream_id"] for e in accepted)


# --- group admin --------------------------------------------------------------------------


async def test_an_admin_token_creates_replaces_reads_and_deletes_its_tenants_groups(
    spawn_web: SpawnWeb, db_conn: asyncpg.Connection, database_url: str,
) -> None:
    await make_group(db_conn, "oncall", PHONES[:1], tenant="tenant-b")
    admin = await make_token(database_url, "tenant-a", "ops", scope="admin")
    web = await spawn_web().up()
    members = [{"name": "Alice", "phone": "+1 (415) 555-0100"},
               {"name": "Bob", "phone": "0044 20 7946 0958"}]

    created = await web.request("PUT", "/v1/groups/oncall", token=admin,
                                json_body={"members": members, "rounds": 5, "round_delay_s": 60})
    replaced = await web.request("PUT", "/v1/groups/oncall", token=admin,
                                 json_body={"tenant": "tenant-a", "members": members[:1]})
    read = await web.request("GET", "/v1/groups/oncall", token=admin)
    listed = await web.request("GET", "/v1/groups", token=admin)

    assert created.status == 201, created
    assert created.body["members"] == [{"name": "Alice", "phone": "+14155550100"},
                                       {"name": "Bob", "phone": "+442079460958"}]
    assert (created.body["tenant"], created.body["name"]) == ("tenant-a", "oncall")
    assert (created.body["rounds"], created.body["round_delay_s"]) == (5, 60)
    assert replaced.status == 200
    assert (replaced.body["rounds"], replaced.body["round_delay_s"]) == (5, 60)  # kept
    assert read.body == replaced.body
    assert read.body["members"] == [{"name": "Alice", "phone": "+14155550100"}]
    assert [g["name"] for g in listed.body["groups"]] == ["oncall"]
    # Tenant B's group of the same name was never touched.
    b_group = await db.get_group(db_conn, "tenant-b", "oncall")
    assert b_group is not None
    assert [m.phone for m in b_group.members] == [PHONES[0]]

    deleted = await web.request("DELETE", "/v1/groups/oncall", token=admin)
    assert (deleted.status, deleted.body) == (204, None)
    assert (await web.request("GET", "/v1/groups/oncall", token=admin)).status == 404
    assert (await web.request("DELETE", "/v1/groups/oncall", token=admin)).status == 404
    assert await db.get_group(db_conn, "tenant-b", "oncall") is not None


# --- serving it safely --------------------------------------------------------------------


async def test_a_token_over_its_rate_gets_429_with_retry_after_and_nothing_written(
    spawn_web: SpawnWeb, database_url: str, text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    token = await make_token(database_url, "acme", "busy")
    other = await make_token(database_url, "acme", "quiet")
    web = await spawn_web(VOICEALERT_API_RATE_PER_S="0.2", VOICEALERT_API_RATE_BURST="3").up()

    statuses = [(await web.request("POST", "/v1/alerts", token=token, json_body=EVENT))
                for _ in range(4)]

    assert [a.status for a in statuses] == [202, 202, 202, 429]
    refused = statuses[-1]
    assert refused.body["status"] == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 5
    assert len(await stream_entries(text_redis, prefix)) == 3
    # The limit is per token: another token of the same tenant is not held back.
    assert (await web.request("POST", "/v1/alerts", token=other, json_body=EVENT)).status == 202


async def test_sigterm_lets_requests_in_flight_finish_and_every_202_is_on_the_stream(
    spawn_web: SpawnWeb, database_url: str, text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    token = await make_token(database_url, "acme", "ci")
    web = await spawn_web(VOICEALERT_API_RATE_BURST="100000").up()
    accepted: list[str] = []
    refused = 0

    async def client(n: int) -> None:
        nonlocal refused
        async with aiohttp.ClientSession() as session:
            for i in range(1000):
                try:
                    async with session.post(
                        web.base_url + "/v1/alerts", json={**EVENT, "alert_id": f"a{n}-{i}"},
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as response:
                        body = await response.json()
                        assert response.status == 202, body
                        accepted.append(body["stream_id"])
                except aiohttp.ClientError:
                    refused += 1
                    return

    clients = [asyncio.create_task(client(n)) for n in range(20)]
    await wait_for(lambda: _at_least(accepted, 100), 15, "requests flowing")
    web.popen.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*clients), 30)

    assert await web.wait_exit(15) == 0, web.log_text()[-2000:]
    on_stream = {stream_id for stream_id, _ in await stream_entries(text_redis, prefix)}
    assert set(accepted) <= on_stream
    assert len(on_stream) == len(accepted)  # nothing written that was not answered 202
    assert refused == 20  # every client ended on a refused connection, not an error answer


async def _at_least(items: list[str], count: int) -> bool:
    return len(items) >= count


# --- the producer's HTTP mode -------------------------------------------------------------


async def test_http_producer_fires_resolves_and_acks_like_the_redis_producer(
    spawn_web: SpawnWeb, database_url: str, text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    token = await make_token(database_url, "acme", "service")
    web = await spawn_web().up()
    async with HttpAlertProducer(web.base_url, token=token) as producer:
        fired = await producer.fire(alert_id="db-down", group="oncall", message="Disk\x07 full",
                                    metadata={"host": "db-1"}, event_id="ev-1")
        resolved = await producer.resolve(alert_id="db-down")
        acked = await producer.ack(alert_id="db-down", tenant="acme", acknowledged_by="bob")
        with pytest.raises(ValidationError) as invalid:
            await producer.fire(alert_id="db-down", group="oncall", message=" ")
        with pytest.raises(ProducerError) as other_tenant:
            await producer.fire(alert_id="x", group="oncall", message="m", tenant="globex")

    entries = await stream_entries(text_redis, prefix)
    assert [stream_id for stream_id, _ in entries] == [fired, resolved, acked]
    assert events_on(entries) == [
        {"alert_id": "db-down", "group": "oncall", "message": "Disk full", "tenant": "acme",
         "metadata": {"host": "db-1"}, "event_id": "ev-1"},
        {"alert_id": "db-down", "tenant": "acme", "action": "resolve",
         "event_id": events_on(entries)[1]["event_id"]},
        {"alert_id": "db-down", "tenant": "acme", "action": "ack",
         "event_id": events_on(entries)[2]["event_id"], "acknowledged_by": "bob"},
    ]
    assert (invalid.value.field, invalid.value.reason) == ("message", "must not be blank")
    assert other_tenant.value.status == 403

    # One character of the secret changed (a token ending in "0" once came back unchanged).
    wrong = token[:-1] + ("1" if token.endswith("0") else "0")
    async with HttpAlertProducer(web.base_url, token=wrong) as bad:
        with pytest.raises(ProducerError) as unauthorized:
            await bad.fire(alert_id="x", group="oncall", message="m")
    assert unauthorized.value.status == 401


def test_tokens_cli_shows_a_token_once_and_never_its_secret(env: dict[str, str]) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "worker", "tokens", *args], cwd=REPO,
                              env={**os.environ, **env}, capture_output=True, text=True,
                              timeout=60, check=False)

    created = cli("create", "--tenant", "acme", "--name", "grafana", "--scope", "admin")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("va_")
    assert "shown only this once" in created.stderr
    assert token not in created.stderr

    listed, as_json = cli("list"), cli("list", "--json")
    for output in (listed.stdout, as_json.stdout, listed.stderr):
        assert token.split("_", 2)[2] not in output
    [row] = json.loads(as_json.stdout)
    assert row == {"tenant": "acme", "name": "grafana", "scope": "admin",
                   "key_id": token.split("_")[1], "created_at": row["created_at"],
                   "revoked_at": None}
    assert "acme\tgrafana\tadmin" in listed.stdout

    again = cli("create", "--tenant", "acme", "--name", "grafana")
    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr.startswith("voicealert: tenant 'acme' already has a live token")
    bad_name = cli("create", "--tenant", "acme", "--name", "a\tb")
    assert bad_name.returncode == 2
    assert bad_name.stderr == "voicealert: invalid --name: must not contain control characters\n"

    revoked = cli("revoke", "grafana", "--tenant", "acme")
    assert revoked.returncode == 0
    assert revoked.stdout.startswith("revoked grafana (tenant acme")
    assert cli("revoke", "grafana", "--tenant", "acme").returncode == 2
    assert "revoked " in cli("list").stdout
    assert cli("create", "--tenant", "acme", "--name", "grafana").returncode == 0  # name reused

    async def stored() -> list[asyncpg.Record]:
        conn = await db.connect(env["DATABASE_URL"])
        try:
            return await conn.fetch("SELECT * FROM api_tokens")
        finally:
            await conn.close()

    rows = asyncio.run(stored())
    assert len(rows) == 2
    assert all(token not in str(dict(r)) and token.encode() not in r["token_sha256"]
               for r in rows)
