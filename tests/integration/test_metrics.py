"""`/metrics` of a worker: counters move as events and calls flow (scraped before and after),
and the gauges behind `voicealert status` are there."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from testing.fake_twilio import FakeTwilio
from tests.helpers import (
    PHONES,
    all_calls_completed,
    event_json,
    fire,
    free_port,
    make_group,
    wait_for,
    xadd_raw,
)
from worker.config import load_settings
from worker.metrics_http import REFRESH_S

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=10)
    ) as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_counters_move_as_events_and_calls_flow(
    env: dict[str, str], db_conn: asyncpg.Connection, fake_twilio: FakeTwilio, start_worker: Any,
) -> None:
    port = free_port()
    settings = load_settings({**env, "VOICEALERT_METRICS_PORT": str(port),
                              "VOICEALERT_METRICS_HOST": "127.0.0.1"})
    await make_group(db_conn)  # three members
    await start_worker(settings)
    before = await scrape(port)

    await fire(settings, alert_id="db-down")
    await fire(settings, alert_id="db-down")  # deduplicated
    await xadd_raw(settings, {"event": "{not json"})
    await xadd_raw(settings, {"event": event_json(alert_id="x", group="nobody", message="m")})
    await wait_for(lambda: all_calls_completed(db_conn, "db-down", 3), what="3 calls completed")

    def completed(samples: Samples) -> float:  # whoever answered (detection reports human)
        return sum(v for (name, labels), v in samples.items()
                   if name == "voicealert_calls_ended_total"
                   and ("status", "completed") in labels)

    async def counted() -> bool:
        return completed(await scrape(port)) - completed(before) == 3

    await wait_for(counted, what="the calls counted")
    after = await scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("voicealert_events_ingested_total", action="trigger") == 3
    assert delta("voicealert_events_deduplicated_total") == 1
    assert delta("voicealert_events_invalid_total", reason="invalid_json") == 1
    assert delta("voicealert_dead_letters_total", source="ingest", reason="invalid_json") == 1
    assert delta("voicealert_dead_letters_total", source="ingest", reason="unknown_group") == 1
    assert delta("voicealert_provider_requests_total", operation="create", outcome="ok") == 3
    assert delta("voicealert_provider_request_seconds_count", operation="create") == 3
    assert delta("voicealert_provider_requests_total", operation="fetch", outcome="ok") >= 3
    assert delta("voicealert_dial_latency_seconds_count") == 3
    # The three calls' rate slots (reserved together, 5 ms apart) fall in one chunk: one
    # place_call job places them (worker/services.py call_chunks).
    assert delta("voicealert_job_seconds_count", function="place_call", outcome="done") == 1
    # The gauges behind `voicealert status`, read at scrape time (at most every REFRESH_S).
    async def refreshed() -> bool:
        nonlocal after
        after = await scrape(port)
        return value(after, "voicealert_stream_length") == 4

    await wait_for(refreshed, timeout=REFRESH_S + 5, what="the gauges read again")
    assert value(after, "voicealert_status_reachable") == 1
    assert value(after, "voicealert_replicas_live") == 1
    assert value(after, "voicealert_stream_length") == 4
    assert value(after, "voicealert_stream_unread") == 0
    assert value(after, "voicealert_dead_letters_waiting", source="ingest",
                 reason="invalid_json") == 1
    assert value(after, "voicealert_jobs", function="place_call", state="waiting") == 0
    assert ("voicealert_rate_schedule_delay_seconds", frozenset()) in after
    # Counters only: no phone number and no secret on the page.
    assert not any(phone[2:] in str(key) for key in after for phone in PHONES)
