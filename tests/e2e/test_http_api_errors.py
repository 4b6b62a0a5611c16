"""Every error path of the HTTP API, against one real web process on loopback: each answers
its status code with a JSON body ``{"error", "status"}`` (and ``errors`` for a 400 about a
body), and writes nothing to the stream. Hostile input (deep nesting, huge numbers, invalid
UTF-8, NUL, 10k-character ids) gets a clear 400, never a 500 or a traceback.

One web process, database and key prefix serve the whole module (they are only read and
refused here); each test checks the stream's length before and after.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydantic
import pytest
import redis

from producers import ValidationError, build_event
from schema import describe_errors, group_spec
from tests.e2e.webs import Answer, WebProc
from tests.helpers import (
    DATABASE_URL,
    REPO,
    TEST_REDIS_URL,
    admin_sql,
    free_port,
    make_token,
    with_database,
)
from worker.keys import Keys


@dataclass(frozen=True)
class Api:
    web: WebProc
    prefix: str
    tokens: dict[str, str]

    def stream_length(self) -> int:
        return int(cast(int, redis.Redis.from_url(TEST_REDIS_URL).xlen(Keys(self.prefix).events)))

    async def call(self, method: str, path: str, token: str | None = "fire",  # noqa: S107
                   **kwargs: Any) -> Answer:
        """The answer, after checking it is JSON with the error shape and wrote nothing."""
        before = self.stream_length()
        answer = await self.web.request(
            method, path, token=None if token is None else self.tokens.get(token, token), **kwargs)
        assert answer.content_type == "application/json", answer
        assert answer.body["status"] == answer.status, answer
        assert isinstance(answer.body["error"], str), answer
        assert answer.body["error"], answer
        assert "Traceback" not in str(answer.body)
        assert self.stream_length() == before, f"{method} {path} wrote to the stream"
        return answer


@pytest.fixture(scope="module")
def api(template_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    name = f"voicealert_test_{os.getpid()}_apierr_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    database_url = with_database(DATABASE_URL, name)
    prefix = f"vatest{os.getpid()}_apierr_{uuid.uuid4().hex[:8]}:"

    async def tokens() -> dict[str, str]:
        made = {
            "fire": await make_token(database_url, "acme", "ci"),
            "admin": await make_token(database_url, "acme", "ops", scope="admin"),
            "other": await make_token(database_url, "globex", "ci"),
            "revoked": await make_token(database_url, "acme", "old"),
        }
        conn = await asyncio.wait_for(_connect(database_url), 10)
        await conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE name = 'old'")
        await conn.close()
        return made

    port = free_port()
    log_path = tmp_path_factory.mktemp("apierr") / "web.log"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": TEST_REDIS_URL,
           "VOICEALERT_REDIS_PREFIX": prefix, "VOICEALERT_PROVIDER": "simulated",
           "VOICEALERT_WEB_PORT": str(port), "VOICEALERT_LOG_FORMAT": "json",
           "VOICEALERT_API_RATE_PER_S": "10000", "VOICEALERT_API_RATE_BURST": "10000"}
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen([sys.executable, "-m", "worker", "web"], cwd=REPO, env=env,
                                 stdin=subprocess.DEVNULL, stdout=log_file,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    web = WebProc(popen, f"http://127.0.0.1:{port}", log_path)
    try:
        made = asyncio.run(tokens())
        asyncio.run(web.up())
        yield Api(web, prefix, made)
    finally:
        web.reap()
        client = redis.Redis.from_url(TEST_REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        asyncio.run(admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _connect(url: str) -> Any:
    from worker import db

    return await db.connect(url)


EVENT = {"alert_id": "db-down", "group": "oncall", "message": "Primary database is down"}
JSON = {"Content-Type": "application/json"}


# --- 401: no token, or a bad one ----------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    None,
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer not-a-token",
    "Bearer va_0123456789abcdef_" + "A" * 43,  # well formed, unknown
    "Bearer va_0123456789ABCDEF_" + "A" * 43,  # key id not hex
    "bearer " + "x" * 8_000,
])
async def test_a_missing_or_bad_token_is_401_with_a_bearer_challenge(
    api: Api, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = await api.call("POST", "/v1/alerts", token=None, json_body=EVENT,
                            headers=headers)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_header_too_long_to_parse_is_400_and_logged_in_one_line(api: Api) -> None:
    # aiohttp refuses it (plain text) before any handler runs; the process goes on.
    answer = await api.web.request("POST", "/v1/alerts", json_body=EVENT,
                                   headers={"Authorization": "Bearer " + "x" * 10_000})
    assert answer.status == 400
    assert (await api.web.request("GET", "/healthz")).status == 200
    lines = [e for e in api.web.log_events() if e.get("event") == "web.bad_request"]
    assert lines
    assert lines[-1]["error"] == "LineTooLong"
    assert "Traceback" not in api.web.log_text()


async def test_a_revoked_token_is_401(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts", token="revoked", json_body=EVENT)
    assert answer.status == 401
    assert "invalid token" in answer.body["error"]


async def test_the_right_key_id_with_a_wrong_secret_is_401(api: Api) -> None:
    good = api.tokens["fire"]
    forged = good[:-1] + ("A" if good[-1] != "A" else "B")
    answer = await api.call("POST", "/v1/alerts", token=forged, json_body=EVENT)
    assert answer.status == 401


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/alerts/db-down/resolve"),
    ("POST", "/v1/alerts/db-down/ack"),
    ("POST", "/v1/integrations/alertmanager?group=oncall"),
    ("GET", "/v1/alerts/db-down"),
    ("GET", "/v1/alerts"),
])
async def test_every_v1_route_needs_a_token(api: Api, method: str, path: str) -> None:
    answer = await api.call(method, path, token=None)
    assert answer.status == 401


# --- 403: another tenant ------------------------------------------------------------------


async def test_an_event_naming_another_tenant_is_403(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts", json_body={**EVENT, "tenant": "globex"})
    assert answer.status == 403
    assert "acme" in answer.body["error"]
    assert "globex" in answer.body["error"]


async def test_a_resolve_naming_another_tenant_is_403(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts/db-down/resolve", json_body={"tenant": "globex"})
    assert answer.status == 403


async def test_the_tenant_with_surrounding_spaces_is_the_same_tenant(api: Api) -> None:
    answer = await api.web.request("POST", "/v1/alerts", token=api.tokens["fire"],
                                   json_body={**EVENT, "tenant": " acme "})
    assert answer.status == 202, answer


# --- 400: invalid events, in the producer's words ------------------------------------------


async def test_every_field_error_is_listed_in_the_producers_words(api: Api) -> None:
    bad = {"alert_id": "x" * 201, "group": "oncall", "message": " \t ", "dedup_window_s": "30",
           "mode": "loud", "colour": "red"}
    answer = await api.call("POST", "/v1/alerts", json_body=bad)
    assert answer.status == 400
    fields = {e["field"]: e["reason"] for e in answer.body["errors"]}
    assert set(fields) == {"alert_id", "message", "dedup_window_s", "mode", "colour"}
    for field, value in [("alert_id", "x" * 201), ("message", " \t "), ("dedup_window_s", "30"),
                         ("mode", "loud")]:
        with pytest.raises(ValidationError) as raised:
            build_event(**{**EVENT, field: value})
        assert (raised.value.field, raised.value.reason) == (field, fields[field])
    assert answer.body["error"].startswith("invalid event: ")


async def test_a_trigger_without_group_names_the_field(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts", json_body={"alert_id": "a", "message": "m"})
    assert answer.status == 400
    assert answer.body["errors"] == [{"field": "group", "reason": "field required to trigger"}]


@pytest.mark.parametrize(("body", "error"), [
    (b"{", "not valid JSON"),
    (b'["an", "array"]', "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b'{"alert_id": "db\xff"}', "codec can't decode"),
    (b'{"alert_id": "a", "group": "g", "message": "m", "metadata": {"x": NaN}}', "NaN"),
    (b'{"alert_id": "a", "group": "g", "message": "m", "metadata": {"x": 1e999}}', "range"),
    (b'{"alert_id": "a", "dedup_window_s": ' + b"9" * 10_000 + b"}", "10000 digits"),
    (b"[" * 30_000 + b"]" * 30_000, "more than 32 levels deep"),
    (b'{"alert_id": "a", "group": "g", "message": "m", "metadata": ' + b'{"k": ' * 40
     + b"1" + b"}" * 41, "more than 32 levels deep"),
])
async def test_a_body_that_is_not_a_readable_json_object_is_400(
    api: Api, body: bytes, error: str
) -> None:
    answer = await api.call("POST", "/v1/alerts", data=body, headers=JSON)
    assert answer.status == 400
    assert error in answer.body["error"]


@pytest.mark.parametrize(("fields", "field"), [
    ({"alert_id": "a" * 10_000}, "alert_id"),
    ({"alert_id": "db\x00down"}, "alert_id"),
    ({"group": "on\ncall"}, "group"),
    ({"metadata": {"k": "v\x00"}}, "metadata"),
    ({"metadata": {"k": "x" * 5000}}, "metadata"),
    ({"dedup_window_s": 10**30}, "dedup_window_s"),
    ({"event_id": ""}, "event_id"),
])
async def test_hostile_fields_are_400_naming_the_field(
    api: Api, fields: dict[str, Any], field: str
) -> None:
    answer = await api.call("POST", "/v1/alerts", json_body={**EVENT, **fields})
    assert answer.status == 400
    assert [e["field"] for e in answer.body["errors"]] == [field]


async def test_metadata_nested_nine_hundred_deep_is_400_not_500(api: Api) -> None:
    nested: Any = "leaf"
    for _ in range(900):
        nested = {"k": nested}
    answer = await api.call("POST", "/v1/alerts", json_body={**EVENT, "metadata": nested})
    assert answer.status == 400


async def test_the_api_refuses_what_a_worker_could_not_read(api: Api) -> None:
    # 31 levels of metadata nesting is the most the stream's readers take (32 with the
    # event): 32 is refused here rather than accepted and dead-lettered by a worker.
    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = {"k": value}
        return value

    answer = await api.call("POST", "/v1/alerts", json_body={**EVENT, "metadata": nested(32)})
    assert answer.status == 400
    accepted = await api.web.request("POST", "/v1/alerts", token=api.tokens["fire"],
                                     json_body={**EVENT, "metadata": nested(31)})
    assert accepted.status == 202


async def test_an_idempotency_key_with_control_characters_is_400(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts", json_body=EVENT,
                            headers={"Idempotency-Key": "key\tone"})
    assert answer.status == 400
    assert answer.body["errors"] == [{"field": "Idempotency-Key",
                                      "reason": "must not contain control characters"}]


async def test_an_idempotency_key_that_contradicts_the_event_id_is_400(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts", json_body={**EVENT, "event_id": "one"},
                            headers={"Idempotency-Key": "two"})
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == "event_id"


async def test_a_resolve_of_an_invalid_alert_id_is_400(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts/" + "x" * 300 + "/resolve")
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == "alert_id"


async def test_a_resolve_body_with_unknown_fields_is_400(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts/db-down/resolve", json_body={"reason": "fixed"})
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == "reason"


@pytest.mark.parametrize(("body", "field"), [
    ({"by": "alice"}, "by"),
    ({"acknowledged_by": "al\nice"}, "acknowledged_by"),
    ({"acknowledged_by": None}, "acknowledged_by"),
    ({"acknowledged_by": "x" * 201}, "acknowledged_by"),
])
async def test_an_ack_with_a_bad_body_is_400(api: Api, body: dict[str, Any], field: str) -> None:
    answer = await api.call("POST", "/v1/alerts/db-down/ack", json_body=body)
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == field


async def test_an_unknown_query_parameter_is_400_not_ignored(api: Api) -> None:
    answer = await api.call("GET", "/v1/alerts?stauts=calling")
    assert answer.status == 400
    assert answer.body["errors"] == [{"field": "stauts", "reason": "unknown query parameter"}]


@pytest.mark.parametrize(("query", "field"), [
    ("status=ringing", "status"),
    ("since=yesterday", "since"),
    ("limit=0", "limit"),
    ("limit=" + "9" * 50, "limit"),
    ("cursor=bm90IGEgY3Vyc29y", "cursor"),
])
async def test_bad_list_parameters_are_400(api: Api, query: str, field: str) -> None:
    answer = await api.call("GET", f"/v1/alerts?{query}")
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == field


# --- Alertmanager payloads that cannot be events -------------------------------------------


async def test_alertmanager_firing_without_a_group_is_400(api: Api) -> None:
    payload = {"version": "4", "status": "firing",
               "alerts": [{"status": "firing", "labels": {"alertname": "Down"}}]}
    answer = await api.call("POST", "/v1/integrations/alertmanager", json_body=payload)
    assert answer.status == 400
    assert answer.body["errors"][0]["field"] == "group"


_UP = {"status": "firing", "labels": {"alertname": "Up"}}


@pytest.mark.parametrize(("payload", "field"), [
    ({"status": "firing"}, "alerts"),
    ({"alerts": [_UP, {"status": "pending"}]}, "alerts.1.status"),
    ({"alerts": [_UP, {"status": "firing", "labels": {"a": 1}}]}, "alerts.1.labels.a"),
    ({"alerts": [_UP, {"status": "firing", "fingerprint": "f\x00"}]}, "alerts.1.alert_id"),
])
async def test_an_invalid_alertmanager_payload_is_400_and_writes_none_of_its_alerts(
    api: Api, payload: dict[str, Any], field: str
) -> None:
    answer = await api.call("POST", "/v1/integrations/alertmanager?group=oncall",
                            json_body=payload)
    assert answer.status == 400
    assert field in [e["field"] for e in answer.body["errors"]]


# --- group admin --------------------------------------------------------------------------


GROUP = {"members": [{"name": "Alice", "phone": "+14155550100"}]}


@pytest.mark.parametrize(("method", "path", "body"), [
    ("GET", "/v1/groups", None),
    ("GET", "/v1/groups/oncall", None),
    ("PUT", "/v1/groups/oncall", GROUP),
    ("DELETE", "/v1/groups/oncall", None),
])
async def test_group_admin_needs_an_admin_token(
    api: Api, method: str, path: str, body: Any
) -> None:
    answer = await api.call(method, path, json_body=body)  # a fire token
    assert answer.status == 403
    assert "admin" in answer.body["error"]
    assert (await api.call(method, path, token=None, json_body=body)).status == 401
    listed = await api.web.request("GET", "/v1/groups", token=api.tokens["admin"])
    assert listed.body == {"groups": []}


async def test_group_admin_refuses_another_tenant_in_the_body(api: Api) -> None:
    answer = await api.call("PUT", "/v1/groups/oncall", token="admin",
                            json_body={**GROUP, "tenant": "globex"})
    assert answer.status == 403


@pytest.mark.parametrize("members", [
    [{"name": "Alice", "phone": "+12"}],
    [{"name": "Alice", "phone": "+14155550100"}, {"name": "alice", "phone": "+14155550101"}],
    [{"name": "Alice", "phone": "+14155550100"}, {"name": "Bob", "phone": "+1 415 555 0100"}],
    [{"name": "Al\x00ice", "phone": "+14155550100"}],
    [{"name": "Alice", "phone": "+14155550100", "email": "a@example.com"}],
    [{"name": "x" * 201, "phone": "+14155550100"}],
    "Alice=+14155550100",
    None,
])
async def test_a_group_is_checked_like_groups_set_and_nothing_is_written(
    api: Api, members: Any
) -> None:
    answer = await api.call("PUT", "/v1/groups/oncall", token="admin",
                            json_body={"members": members})
    assert answer.status == 400
    with pytest.raises(pydantic.ValidationError) as refused:
        group_spec("acme", "oncall", members)
    assert answer.body["errors"] == [
        {"field": f, "reason": r} for f, r in describe_errors(refused.value)]
    assert (await api.call("GET", "/v1/groups/oncall", token="admin")).status == 404


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/groups/" + "g" * 201, "name"),
    ("/v1/groups/on%09call", "name"),
])
async def test_a_bad_group_name_in_the_url_is_400(api: Api, path: str, field: str) -> None:
    for method in ("GET", "PUT", "DELETE"):
        answer = await api.call(method, path, token="admin", json_body=GROUP)
        assert answer.status == 400
        assert answer.body["errors"][0]["field"] == field


async def test_a_group_body_with_unknown_fields_is_400(api: Api) -> None:
    answer = await api.call("PUT", "/v1/groups/oncall", token="admin",
                            json_body={**GROUP, "colour": "red", "owner": "me"})
    assert answer.status == 400
    assert [e["field"] for e in answer.body["errors"]] == ["colour", "owner"]


@pytest.mark.parametrize(("rounds", "round_delay_s"), [(0, None), (21, None), ("3", None),
                                                      (None, -1), (None, 86401), (None, 1.5)])
async def test_group_rounds_are_checked_like_groups_set(
    api: Api, rounds: Any, round_delay_s: Any
) -> None:
    answer = await api.call("PUT", "/v1/groups/oncall", token="admin",
                            json_body={**GROUP, "rounds": rounds, "round_delay_s": round_delay_s})
    assert answer.status == 400
    with pytest.raises(pydantic.ValidationError) as refused:
        group_spec("acme", "oncall", GROUP["members"], rounds=rounds, round_delay_s=round_delay_s)
    assert answer.body["errors"] == [
        {"field": f, "reason": r} for f, r in describe_errors(refused.value)]


# --- 413, 415 -----------------------------------------------------------------------------


async def test_a_body_over_64_kib_is_413(api: Api) -> None:
    body = b'{"alert_id": "a", "group": "g", "message": "' + b"x" * (64 * 1024) + b'"}'
    answer = await api.call("POST", "/v1/alerts", data=body, headers=JSON)
    assert answer.status == 413


async def test_a_chunked_body_over_64_kib_is_413(api: Api) -> None:
    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 8192

    answer = await api.call("POST", "/v1/alerts", data=chunks(), headers=JSON)
    assert answer.status == 413


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
async def test_a_body_that_is_not_declared_json_is_415(api: Api, content_type: str) -> None:
    answer = await api.call("POST", "/v1/alerts", data=b'{"alert_id": "a"}',
                            headers={"Content-Type": content_type})
    assert answer.status == 415


async def test_a_post_without_a_body_is_400(api: Api) -> None:
    answer = await api.call("POST", "/v1/alerts")
    assert answer.status == 400


# --- routes and methods -------------------------------------------------------------------


async def test_unknown_routes_and_methods_are_json(api: Api) -> None:
    assert (await api.call("GET", "/v1/nothing-here")).status == 404
    answer = await api.call("DELETE", "/v1/alerts")
    assert answer.status == 405
    assert "GET" in answer.headers["Allow"]


async def test_an_alert_of_another_tenant_is_not_found(api: Api) -> None:
    answer = await api.call("GET", "/v1/alerts/db-down", token="other")
    assert answer.status == 404


async def test_json_errors_are_what_the_openapi_description_says(api: Api) -> None:
    from jsonschema import Draft202012Validator

    document = (await api.web.request("GET", "/v1/openapi.json")).body
    schema = {**document["components"]["schemas"]["ErrorBody"],
              "$defs": document["components"]["schemas"]}
    answer = await api.call("POST", "/v1/alerts", json_body={"alert_id": ""})
    Draft202012Validator(_local_refs(schema)).validate(answer.body)


def _local_refs(schema: Any) -> Any:
    """Components referenced as #/components/schemas/X, rewritten to #/$defs/X."""
    if isinstance(schema, dict):
        return {k: (v.replace("#/components/schemas/", "#/$defs/") if k == "$ref" else
                    _local_refs(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_local_refs(v) for v in schema]
    return schema


def test_module_server_logs_no_traceback(api: Api) -> None:
    # Runs last in the module (pytest keeps file order): every error above was answered
    # without a traceback in the log.
    assert "Traceback" not in api.web.log_text()
    assert Path(api.web.log_path).exists()
