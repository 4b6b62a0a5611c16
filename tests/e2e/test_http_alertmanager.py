"""Alertmanager (and Grafana) webhooks through a real web process and a real worker: firing
alerts ring the group named in the URL, a grouped notification is one event per alert, a
re-sent notification rings nobody again, and a resolved alert cancels its calls.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import asyncpg
import redis.asyncio

from testing.fake_twilio import FakeTwilio
from tests.e2e.webs import SpawnWeb, WebProc
from tests.e2e.workers import SpawnWorker
from tests.helpers import (
    PHONES,
    alert_status,
    all_calls_completed,
    make_group,
    make_token,
    statuses_of,
    stream_entries,
    wait_for,
)
from worker.models import CallStatus

STARTS = "2024-05-01T03:00:00.000Z"


def am_alert(fingerprint: str, status: str = "firing", **annotations: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "HighLatency", "instance": f"api-{fingerprint}",
                   "severity": "critical"},
        "annotations": annotations,
        "startsAt": STARTS,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2024-05-01T03:10:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    """Alertmanager's webhook body, version 4."""
    return {
        "version": "4", "groupKey": '{}:{alertname="HighLatency"}', "truncatedAlerts": 0,
        "status": status, "receiver": "voicealert", "groupLabels": {"alertname": "HighLatency"},
        "commonLabels": {"alertname": "HighLatency"}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "alerts": list(alerts),
    }


async def post(web: WebProc, token: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = await web.request("POST", "/v1/integrations/alertmanager?group=oncall",
                               token=token, json_body=body)
    assert answer.status == 202, answer
    events: list[dict[str, Any]] = answer.body["events"]
    return events


async def test_firing_grouped_and_unannotated_alerts_each_ring_once(
    spawn_web: SpawnWeb, spawn_worker: SpawnWorker, db_conn: asyncpg.Connection,
    database_url: str, text_redis: redis.asyncio.Redis, prefix: str, fake_twilio: FakeTwilio,
) -> None:
    await make_group(db_conn, "oncall", PHONES[:2], tenant="acme")
    token = await make_token(database_url, "acme", "alertmanager")
    web = await spawn_web().up()
    worker = spawn_worker()

    first = await post(web, token, payload(am_alert("aaaa000000000001",
                                                    summary="API p99 latency is 4 s")))
    # The group changes: Alertmanager sends the whole group again, the first alert included.
    grouped = await post(web, token, payload(
        am_alert("aaaa000000000001", summary="API p99 latency is 4 s"),
        am_alert("aaaa000000000002", description="Latency above SLO\nfor 10 minutes"),
        am_alert("aaaa000000000003"),
    ))

    assert [(e["alert_id"], e["action"]) for e in first] == [("aaaa000000000001", "trigger")]
    assert [e["alert_id"] for e in grouped] == [f"aaaa00000000000{i}" for i in (1, 2, 3)]
    events = [json.loads(f["event"]) for _, f in await stream_entries(text_redis, prefix)]
    assert [e["message"] for e in events] == [
        "API p99 latency is 4 s", "API p99 latency is 4 s", "Latency above SLO for 10 minutes",
        "HighLatency: instance api-aaaa000000000003, severity critical"]
    assert {e["tenant"] for e in events} == {"acme"}
    assert events[0]["event_id"] == events[1]["event_id"]  # the same firing: the same event
    assert events[3]["metadata"]["labels"]["instance"] == "api-aaaa000000000003"

    await worker.ready()
    for alert_id in [f"aaaa00000000000{i}" for i in (1, 2, 3)]:
        await wait_for(partial(all_calls_completed, db_conn, alert_id, 2), 20, alert_id)
    # Three alerts, two members each: six calls, the re-sent first alert rang nobody again
    # (calls for the same person may be merged into one POST: count the rows).
    rows = await db_conn.fetch("SELECT provider_sid, merged_into FROM calls")
    assert len(rows) == 6
    assert all(r["provider_sid"] for r in rows)
    assert len(fake_twilio.creates()) == sum(r["merged_into"] is None for r in rows)
    read = await web.request("GET", "/v1/alerts/aaaa000000000002", token=token)
    assert read.body["message"] == "Latency above SLO for 10 minutes"


async def test_a_resolved_alert_cancels_its_calls(
    spawn_web: SpawnWeb, spawn_worker: SpawnWorker, db_conn: asyncpg.Connection,
    database_url: str, fake_twilio: FakeTwilio,
) -> None:
    fake_twilio.ring_s = 30.0  # nobody answers before the resolve
    await make_group(db_conn, "oncall", PHONES)
    token = await make_token(database_url)
    web = await spawn_web().up()
    worker = spawn_worker()
    await worker.ready()

    await post(web, token, payload(am_alert("bbbb000000000001", summary="Disk full")))

    async def ringing() -> bool:
        statuses = await statuses_of(db_conn, "bbbb000000000001")
        return len(statuses) == 3 and set(statuses) <= {CallStatus.QUEUED, CallStatus.RINGING}

    await wait_for(ringing, 20, "the calls placed and ringing")
    resolved = await post(web, token, payload(
        am_alert("bbbb000000000001", status="resolved", summary="Disk full"), status="resolved"))
    assert [(e["alert_id"], e["action"]) for e in resolved] == [("bbbb000000000001", "resolve")]

    async def canceled() -> bool:
        return await statuses_of(db_conn, "bbbb000000000001") == [CallStatus.CANCELED] * 3

    await wait_for(canceled, 20, "the calls canceled")
    assert await alert_status(db_conn, "bbbb000000000001") == "resolved"
    assert {c.status for c in fake_twilio.created_calls()} == {"canceled"}


async def test_grafana_webhook_payload_is_accepted_like_alertmanagers(
    spawn_web: SpawnWeb, database_url: str, text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    token = await make_token(database_url)
    web = await spawn_web().up()
    grafana = {
        "receiver": "voicealert", "status": "firing", "orgId": 1, "version": "1",
        "groupKey": "{}/{}:{}", "truncatedAlerts": 0, "title": "[FIRING:1] DiskFull",
        "state": "alerting", "message": "**Firing**\n\nValue: B=97",
        "alerts": [{
            "status": "firing", "labels": {"alertname": "DiskFull", "grafana_folder": "infra"},
            "annotations": {"summary": "Disk /var is 97% full"},
            "startsAt": "2024-05-01T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "https://grafana/alerting/grafana/abc/view",
            "fingerprint": "57c6d9296de2ad39", "silenceURL": "https://grafana/alerting/silence",
            "dashboardURL": "", "panelURL": "", "values": {"B": 97},
            "valueString": "[ var='B' labels={} value=97 ]",
        }],
        "groupLabels": {"alertname": "DiskFull"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "https://grafana/",
    }
    answer = await web.request("POST", "/v1/integrations/alertmanager?group=oncall&mode=sequential",
                               token=token, json_body=grafana)
    assert answer.status == 202, answer
    [(_, fields)] = await stream_entries(text_redis, prefix)
    event = json.loads(fields["event"])
    assert (event["alert_id"], event["message"], event["mode"]) == (
        "57c6d9296de2ad39", "Disk /var is 97% full", "sequential")


async def test_an_alert_without_a_fingerprint_gets_alertmanagers_from_its_labels(
    spawn_web: SpawnWeb, database_url: str, text_redis: redis.asyncio.Redis, prefix: str,
) -> None:
    token = await make_token(database_url)
    web = await spawn_web().up()
    alert = {"status": "firing", "labels": {"alertname": "Down", "job": "api"}}
    await post(web, token, payload(alert))
    await post(web, token, payload({**alert, "status": "resolved"}, status="resolved"))
    events = [json.loads(f["event"]) for _, f in await stream_entries(text_redis, prefix)]
    assert [e.get("action", "trigger") for e in events] == ["trigger", "resolve"]
    assert events[0]["alert_id"] == events[1]["alert_id"]
    assert len(events[0]["alert_id"]) == 16
