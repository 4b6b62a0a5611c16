"""/v1/openapi.json is generated from the route declarations and pydantic models: it is valid
OpenAPI 3.1, describes every /v1 route the application serves (and no other), and its event
schema is the stream's."""

from __future__ import annotations

import json

from openapi_spec_validator import validate

from schema import EVENT_SCHEMA_PATH
from worker.api import openapi
from worker.config import load_settings
from worker.web import create_app


def test_the_description_is_valid_openapi_3_1() -> None:
    document = openapi()
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_v1_route_is_described_and_nothing_else() -> None:
    app = create_app(load_settings({}))
    served = {
        (resource.canonical, route.method)
        for resource in app.router.resources()
        for route in resource
        if resource.canonical.startswith("/v1/") and route.method != "HEAD"
    }
    described = {
        (path, method.upper())
        for path, operations in openapi()["paths"].items()
        for method in operations
    }
    assert served == described


def test_the_event_body_is_the_streams_json_schema() -> None:
    document = openapi()
    ref = document["paths"]["/v1/alerts"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["$ref"]
    described = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    on_disk = json.loads(EVENT_SCHEMA_PATH.read_text())
    for key in ("properties", "required", "additionalProperties", "if", "then"):
        assert described.get(key) == on_disk.get(key), key


def test_routes_that_need_a_token_say_so() -> None:
    paths = openapi()["paths"]
    assert "security" not in paths["/v1/openapi.json"]["get"]
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path != "/v1/openapi.json":
                assert operation["security"] == [{"bearer": []}], (method, path)
                assert "401" in operation["responses"], (method, path)
