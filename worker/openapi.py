"""The OpenAPI 3.1 description of the HTTP API, generated from the routes' declarations and
their pydantic models (never written by hand), served at ``/v1/openapi.json``.

Each route of ``worker/api.py`` is declared once as an :class:`Operation` (method, path,
scope, body model, response models); the same declaration registers the route and
describes it here, so a route cannot exist undocumented or be documented wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from worker.api_models import ErrorBody
from worker.models import TokenScope

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["path", "query", "header"]
    description: str
    schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


Models = type[BaseModel] | tuple[type[BaseModel], ...] | None


def _each(models: Models) -> tuple[type[BaseModel], ...]:
    if models is None:
        return ()
    return models if isinstance(models, tuple) else (models,)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    #: The scope a token needs; None: no token (the description itself).
    scope: TokenScope | None
    #: Responses other than errors: status → (description, body model(s) or None); several
    #: models are alternatives (``oneOf``).
    responses: Mapping[int, tuple[str, Models]]
    #: Error statuses this operation may answer, each with an ErrorBody.
    errors: Sequence[int] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    params: Sequence[Param] = ()


_ERROR_TEXT = {
    400: "The request is invalid: every field error is listed.",
    401: "No token, or a token that is malformed, unknown or revoked.",
    403: "The token may not do this: another tenant, or a scope without it.",
    404: "Nothing of that name in the token's tenant.",
    409: "The request conflicts with the current state.",
    413: "The body is larger than the limit.",
    415: "The body is not JSON (Content-Type must be application/json).",
    429: "The token's request rate is exceeded; retry after `Retry-After` seconds.",
    503: "Redis or Postgres cannot be reached: nothing was written; retry after "
         "`Retry-After` seconds (with the same Idempotency-Key).",
}


def _models(operations: Sequence[Operation]) -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    found: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(ErrorBody, "serialization"): None}
    for op in operations:
        if op.body is not None:
            found[(op.body, "validation")] = None
        for _, models in op.responses.values():
            for model in _each(models):
                found[(model, "serialization")] = None
    return list(found)


def openapi_document(operations: Sequence[Operation], *, version: str) -> dict[str, Any]:
    models = _models(operations)
    refs, definitions = models_json_schema(models, ref_template=_REF)

    def ref(model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        return dict(refs[(model, mode)])

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "voicealert HTTP API",
            "version": version,
            "description": "Fire, resolve and acknowledge alerts; read them back; administer "
                           "alert groups. Reference: docs/contracts.md#http-api.",
        },
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "`voicealert tokens create`; scoped to a tenant."},
            },
        },
    }


def _operation(op: Operation, ref: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.scope is not None:
        out["security"] = [{"bearer": []}]
        out["description"] = f"Needs a token of scope `{op.scope}`"
        if op.scope == TokenScope.FIRE:
            out["description"] += " (or `admin`)"
        out["description"] += "."
    if op.params:
        out["parameters"] = [
            {"name": p.name, "in": p.where, "description": p.description,
             "required": p.required or p.where == "path", "schema": dict(p.schema)}
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": ref(op.body, "validation")}},
        }
    responses: dict[str, Any] = {}
    for status, (description, models) in op.responses.items():
        responses[str(status)] = {"description": description}
        schemas = [ref(model, "serialization") for model in _each(models)]
        if schemas:
            schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
            responses[str(status)]["content"] = {"application/json": {"schema": schema}}
    for status in op.errors:
        responses[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": ref(ErrorBody, "serialization")}},
        }
    out["responses"] = responses
    return out
