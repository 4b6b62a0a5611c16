"""The producer library writes contract-1 entries, and refuses invalid events before writing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio

from producers import AlertProducer, SyncAlertProducer, ValidationError
from schema import AlertEvent
from tests.helpers import stream_entries


@pytest.fixture
async def producer(redis_url: str, prefix: str) -> AsyncIterator[AlertProducer]:
    async with AlertProducer.from_url(redis_url, prefix=prefix) as p:
        yield p


def parsed(fields: dict[str, str]) -> AlertEvent:
    assert list(fields) == ["event"], f"entry must have exactly one field, event: {fields}"
    return AlertEvent.model_validate_json(fields["event"])


async def test_fire_returns_the_stream_id_of_one_event_entry(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    entry_id = await producer.fire(alert_id="db-down", group="platform-oncall",
                                   message="Primary database is down")
    [(stored_id, fields)] = await stream_entries(text_redis, prefix)
    assert stored_id == entry_id
    event = parsed(fields)
    assert (event.alert_id, event.group, event.message) == (
        "db-down", "platform-oncall", "Primary database is down")
    assert event.action == "trigger"


def test_stream_key_is_the_prefix_plus_events(redis_url: str) -> None:
    producer = AlertProducer(redis.asyncio.Redis.from_url(redis_url))
    assert producer.stream == "voicealert:events"
    assert AlertProducer(redis.asyncio.Redis.from_url(redis_url), prefix="acme:").stream == (
        "acme:events")


async def test_fire_passes_every_optional_field_through(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    await producer.fire(alert_id="db-down", group="dba", message="Replica lag", tenant="acme",
                        dedup_window_s=0, mode="sequential", metadata={"host": "db-2"},
                        event_id="evt-1")
    [(_, fields)] = await stream_entries(text_redis, prefix)
    assert parsed(fields) == AlertEvent(
        alert_id="db-down", group="dba", message="Replica lag", tenant="acme", dedup_window_s=0,
        mode="sequential", metadata={"host": "db-2"}, event_id="evt-1")


async def test_fire_writes_the_cleaned_message(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    await producer.fire(alert_id="a", group="g", message="Disk\x00 full\x07\non db-1")
    [(_, fields)] = await stream_entries(text_redis, prefix)
    assert json.loads(fields["event"])["message"] == "Disk full on db-1"


async def test_raw_xadd_of_event_json_has_the_same_shape_as_fire(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    # what `redis-cli XADD voicealert:events '*' event '{...}'` sends from a shell
    raw_json = ('{"alert_id":"db-down","group":"platform-oncall",'
                '"message":"Primary database is down"}')
    raw_id = await text_redis.xadd(f"{prefix}events", {"event": raw_json})
    fired_id = await producer.fire(alert_id="db-down", group="platform-oncall",
                                   message="Primary database is down")
    (first_id, raw_fields), (second_id, fired_fields) = await stream_entries(text_redis, prefix)
    assert (first_id, second_id) == (raw_id, fired_id)
    assert set(raw_fields) == set(fired_fields) == {"event"}
    assert parsed(raw_fields) == parsed(fired_fields)


async def test_fire_many_writes_every_event_in_order(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    events: list[AlertEvent | dict[str, Any]] = [
        {"alert_id": f"disk-{i}", "group": "ops", "message": f"Disk {i} full"} for i in range(20)
    ]
    events.append(AlertEvent(alert_id="cpu", group="ops", message="CPU hot"))
    ids = await producer.fire_many(events)
    stored = await stream_entries(text_redis, prefix)
    assert ids == [entry_id for entry_id, _ in stored]
    assert [parsed(fields).alert_id for _, fields in stored] == [
        *(f"disk-{i}" for i in range(20)), "cpu"]


async def test_fire_many_writes_nothing_when_one_event_is_invalid(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    events: list[dict[str, Any]] = [
        {"alert_id": f"a{i}", "group": "ops", "message": "m"} for i in range(5)
    ]
    events.insert(3, {"alert_id": "bad", "group": "ops", "message": "m", "dedup_window_s": -1})
    with pytest.raises(ValidationError) as info:
        await producer.fire_many(events)
    assert info.value.field == "dedup_window_s"
    assert await stream_entries(text_redis, prefix) == []


async def test_fire_many_takes_none_as_absent_like_fire(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    await producer.fire_many([
        {"alert_id": "a", "group": "ops", "message": "m", "tenant": None, "mode": None,
         "dedup_window_s": None, "metadata": None, "event_id": None},
        {"alert_id": "b", "group": "ops", "message": "m"},
    ])
    stored = [parsed(fields) for _, fields in await stream_entries(text_redis, prefix)]
    assert stored == [AlertEvent(alert_id="a", group="ops", message="m"),
                      AlertEvent(alert_id="b", group="ops", message="m")]


async def test_fire_many_names_the_field_of_the_first_invalid_event(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    events: list[AlertEvent | dict[str, Any]] = [
        AlertEvent(alert_id="ok", group="ops", message="m"),
        {"alert_id": "a", "group": "ops", "message": "\x00\x01"},
        {"alert_id": "b", "group": "ops", "message": "m", "mode": "serial"},
    ]
    with pytest.raises(ValidationError) as info:
        await producer.fire_many(events)
    assert (info.value.field, info.value.reason) == ("message", "must not be blank")
    assert await stream_entries(text_redis, prefix) == []


async def test_fire_many_writes_events_without_their_default_fields(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    await producer.fire_many([
        {"alert_id": "a", "group": "ops", "message": "m", "tenant": "default",
         "dedup_window_s": 300},
        AlertEvent(alert_id="b", group="ops", message="m", mode="sequential"),
    ])
    written = [json.loads(fields["event"]) for _, fields in await stream_entries(text_redis,
                                                                                 prefix)]
    assert written == [{"alert_id": "a", "group": "ops", "message": "m"},
                       {"alert_id": "b", "group": "ops", "message": "m", "mode": "sequential"}]


async def test_fire_many_of_nothing_writes_nothing(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    assert await producer.fire_many([]) == []
    assert await stream_entries(text_redis, prefix) == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"alert_id": "   "}, "alert_id"),
        ({"alert_id": "x" * 2048}, "alert_id"),
        ({"dedup_window_s": -1}, "dedup_window_s"),
        ({"dedup_window_s": 86401}, "dedup_window_s"),
        ({"message": "\x00\x01\x02"}, "message"),
        ({"group": ""}, "group"),
        ({"mode": "serial"}, "mode"),
        ({"metadata": {"blob": "x" * 5000}}, "metadata"),
    ],
)
async def test_invalid_fire_raises_validation_error_naming_the_field_and_writes_nothing(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str,
    fields: dict[str, Any], field: str,
) -> None:
    kwargs: dict[str, Any] = {"alert_id": "db-down", "group": "ops", "message": "down", **fields}
    with pytest.raises(ValidationError) as info:
        await producer.fire(**kwargs)
    assert info.value.field == field
    assert info.value.reason
    assert str(info.value).startswith(f"{field}: ")
    assert await stream_entries(text_redis, prefix) == []


async def test_unknown_field_in_fire_many_mapping_is_named(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    event = {"alert_id": "a", "group": "ops", "message": "m", "severity": "critical"}
    with pytest.raises(ValidationError) as info:
        await producer.fire_many([event])
    assert info.value.field == "severity"
    assert await stream_entries(text_redis, prefix) == []


async def test_trigger_mapping_without_group_names_group(producer: AlertProducer) -> None:
    with pytest.raises(ValidationError) as info:
        await producer.fire_many([{"alert_id": "a", "message": "m"}])
    assert info.value.field == "group"


def test_validation_error_is_a_value_error() -> None:
    assert issubclass(ValidationError, ValueError)


async def test_resolve_writes_a_resolve_event(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    entry_id = await producer.resolve(alert_id="db-down", tenant="acme")
    [(stored_id, fields)] = await stream_entries(text_redis, prefix)
    assert stored_id == entry_id
    event = parsed(fields)
    assert (event.action, event.alert_id, event.tenant) == ("resolve", "db-down", "acme")
    assert event.group is None
    assert event.message is None


async def test_ack_writes_an_ack_event_with_who(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    entry_id = await producer.ack(alert_id="db-down", tenant="acme", acknowledged_by="alice",
                                  event_id="ack-1")
    anonymous = await producer.ack(alert_id="db-down")
    [(first_id, first), (second_id, second)] = await stream_entries(text_redis, prefix)
    assert (first_id, second_id) == (entry_id, anonymous)
    event = parsed(first)
    assert (event.action, event.alert_id, event.tenant, event.acknowledged_by, event.event_id) \
        == ("ack", "db-down", "acme", "alice", "ack-1")
    assert event.group is None
    assert "acknowledged_by" not in json.loads(second["event"])


async def test_ack_with_a_control_character_in_who_is_refused(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await producer.ack(alert_id="db-down", acknowledged_by="al\x00ice")
    assert info.value.field == "acknowledged_by"
    assert await stream_entries(text_redis, prefix) == []


async def test_resolve_with_blank_alert_id_is_refused(
    producer: AlertProducer, text_redis: redis.asyncio.Redis, prefix: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await producer.resolve(alert_id=" ")
    assert info.value.field == "alert_id"
    assert await stream_entries(text_redis, prefix) == []


async def test_producer_over_a_caller_owned_client_leaves_it_open(
    redis_url: str, prefix: str, text_redis: redis.asyncio.Redis
) -> None:
    async with AlertProducer(text_redis, prefix=prefix) as p:
        await p.fire(alert_id="a", group="g", message="m")
    assert await text_redis.xlen(f"{prefix}events") == 1  # still usable after the producer closed


def test_sync_producer_fires_fire_many_resolves_and_acks_from_plain_code(
    redis_url: str, prefix: str
) -> None:
    producer = SyncAlertProducer(redis_url, prefix=prefix)
    fired = producer.fire(alert_id="db-down", group="ops", message="down")
    batch = producer.fire_many([{"alert_id": "b", "group": "ops", "message": "m"}])
    resolved = producer.resolve(alert_id="db-down")
    acked = producer.ack(alert_id="db-down", acknowledged_by="bob")
    with pytest.raises(ValidationError) as info:
        producer.fire(alert_id="", group="ops", message="down")
    assert info.value.field == "alert_id"
    with redis.Redis.from_url(redis_url, decode_responses=True) as sync_client:
        stored = sync_client.xrange(f"{prefix}events")
    assert [entry_id for entry_id, _ in stored] == [fired, *batch, resolved, acked]
    assert [parsed(fields).action for _, fields in stored] == [
        "trigger", "trigger", "resolve", "ack"]


async def test_sync_producer_works_from_a_thread_beside_a_running_loop(
    redis_url: str, prefix: str, text_redis: redis.asyncio.Redis
) -> None:
    producer = SyncAlertProducer(redis_url, prefix=prefix)
    entry_id = await asyncio.to_thread(producer.fire, alert_id="a", group="g", message="m")
    [(stored_id, _)] = await stream_entries(text_redis, prefix)
    assert stored_id == entry_id
