"""The HTTP API (docs/contracts.md#http-api): the ``/v1`` routes of the web process.

Thin on purpose: a request is authenticated (a bearer token of one tenant), rate-limited,
validated against the same model as the stream (``schema.AlertEvent``) and written to the
stream; the workers do the rest exactly as for any producer. A 202 means the event is on
the stream; anything that could not be written answers an error (503 when Redis cannot be
reached in time), never a 202.

Each route is declared once, in ``ROUTES``: its :class:`~worker.openapi.Operation` (path,
scope, models) both registers it and describes it in ``/v1/openapi.json``. Handlers receive
the request and the token's :class:`~worker.tokens.Principal`, and raise :class:`ApiError`
for every answer that is not a success.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pydantic
from aiohttp import web

from schema import AlertEvent, GroupKey, GroupSpec, describe_errors
from schema.event import Identifier
from schema.wire import WireError, loads_event
from worker import alertmanager, db
from worker.api_models import (
    Accepted,
    AcceptedEvent,
    AcceptedEvents,
    AckRequest,
    AlertHistory,
    AlertmanagerPayload,
    AlertPage,
    AlertSummary,
    AlertView,
    ErrorBody,
    FieldError,
    GroupBody,
    GroupList,
    GroupView,
    Links,
    ResolveRequest,
)
from worker.keys import Keys
from worker.logs import get_logger
from worker.models import AlertStatus, TokenScope
from worker.openapi import Operation, Param, openapi_document
from worker.outages import DATABASE_UNAVAILABLE, REDIS_UNAVAILABLE
from worker.request_limit import RequestLimiter, Verdict
from worker.tokens import InvalidToken, Principal, TokensUnavailable, TokenVerifier
from worker.web_support import ACTOR, DB, LOG_FIELDS, REDIS, SETTINGS

log = get_logger(__name__)

#: Larger request bodies answer 413 (an event is at most a few KiB).
MAX_BODY_BYTES = 64 * 1024
#: Bound of one write to the stream: past it Redis counts as unreachable (503).
STREAM_WRITE_TIMEOUT_S = 2.0
#: Bound of the rate-limit round trip, and of one Postgres read.
LIMIT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 5.0
#: Retry-After when Redis or Postgres is unreachable.
UNAVAILABLE_RETRY_AFTER_S = 2
#: Pages of GET /v1/alerts, and the alert rows of GET /v1/alerts/{alert_id}?all=true.
PAGE_DEFAULT = 50
PAGE_MAX = 500
HISTORY_MAX = 100

VERIFIER = web.AppKey("api_verifier", TokenVerifier)
LIMITER = web.AppKey("api_limiter", RequestLimiter)
OPENAPI = web.AppKey("api_openapi", bytes)

#: A Redis call that failed or did not answer in time: Redis counts as unreachable.
_REDIS_DOWN: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, TimeoutError)
_IDENTIFIER: pydantic.TypeAdapter[str] = pydantic.TypeAdapter(Identifier)
_BEARER_CHALLENGE = 'Bearer realm="voicealert"'


class ApiError(Exception):
    """An answer other than success: status, message, and the field errors of a 400."""

    def __init__(self, status: int, message: str, *,
                 errors: Sequence[tuple[str, str]] = (),
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = list(errors)
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = ErrorBody(
            error=self.message, status=self.status,
            errors=[FieldError(field=f, reason=r) for f, r in self.errors] or None,
        )
        return web.Response(status=self.status, headers=self.headers,
                            body=body.model_dump_json(exclude_none=True),
                            content_type="application/json")


def _unavailable(message: str) -> ApiError:
    return ApiError(503, message, headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


def _json(status: int, body: pydantic.BaseModel) -> web.Response:
    return web.Response(status=status, body=body.model_dump_json(),
                        content_type="application/json")


# --- routes -------------------------------------------------------------------------------

Handler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    operation: Operation
    handler: Handler
    #: Writes to the stream: without Redis it can only answer 503, so it answers at once.
    writes: bool = False


def add_routes(app: web.Application) -> None:
    """The /v1 routes, their shared parts (token verifier, rate limiter) and the OpenAPI."""
    app.cleanup_ctx.append(_api_resources)
    for route in ROUTES:
        app.router.add_route(route.operation.method, route.operation.path, _guarded(route))
    app[OPENAPI] = json.dumps(openapi(), indent=2).encode()
    app.router.add_get(OPENAPI_OPERATION.path, serve_openapi)


async def _api_resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[VERIFIER] = verifier = TokenVerifier(app[DB])
    app[LIMITER] = RequestLimiter(app[REDIS], Keys(settings.redis_prefix),
                                  per_second=settings.api_rate_per_s,
                                  burst=settings.api_rate_burst)
    listener = asyncio.create_task(verifier.listen_forever(settings.database_url))
    try:
        yield
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


def _guarded(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The route's handler behind authentication, scope, query check and rate limit."""
    operation = route.operation
    known_query = {p.name for p in operation.params if p.where == "query"}

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            principal = await _authenticate(request, operation)
            request[ACTOR] = f"{principal.tenant}/{principal.name}"
            unknown = sorted(set(request.query) - known_query)
            if unknown:
                raise ApiError(400, f"unknown query parameter {unknown[0]!r}",
                               errors=[(name, "unknown query parameter") for name in unknown])
            if not route.writes:
                await _rate_limit(request, principal)
            try:
                return await route.handler(request, principal)
            except ApiError as exc:
                # A write takes its place in the rate with its XADD (_write); a refused one
                # counts too, so a client looping on a bad request is slowed down as well.
                if route.writes and exc.status not in (429, 503):
                    await _rate_limit(request, principal)
                raise
        except ApiError as exc:
            return exc.response()

    return handle


async def _authenticate(request: web.Request, operation: Operation) -> Principal:
    header = request.headers.get("Authorization")
    if header is None:
        raise ApiError(401, "missing token: send the header Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": _BEARER_CHALLENGE})
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must be: Bearer <token>",
                       headers={"WWW-Authenticate": _BEARER_CHALLENGE})
    try:
        principal = await request.app[VERIFIER].verify(token.strip())
    except InvalidToken:
        raise ApiError(401, "invalid token: unknown, revoked or malformed", headers={
            "WWW-Authenticate": f'{_BEARER_CHALLENGE}, error="invalid_token"'}) from None
    except TokensUnavailable:
        raise _unavailable("cannot check the token now: the database is unreachable") from None
    assert operation.scope is not None
    if not principal.may(operation.scope):
        raise ApiError(403, f"token {principal.name!r} has scope {principal.scope}; "
                            f"this needs scope {operation.scope}")
    return principal


async def _rate_limit(request: web.Request, principal: Principal) -> None:
    """Take a place in the token's rate, or 429. Without Redis this does not stop a request:
    reads come from Postgres, and a write answers its own 503."""
    try:
        async with asyncio.timeout(LIMIT_TIMEOUT_S):
            verdict = await request.app[LIMITER].acquire(principal.key_id)
    except _REDIS_DOWN as exc:
        log.warning("api.rate_limit_unavailable", path=request.path, error=type(exc).__name__)
        return
    if not verdict.allowed:
        raise _too_many(request, verdict)


def _too_many(request: web.Request, verdict: Verdict) -> ApiError:
    settings = request.app[SETTINGS]
    return ApiError(
        429, f"too many requests: this token may send {settings.api_rate_per_s:g} per "
             f"second (bursts of {settings.api_rate_burst})",
        headers={"Retry-After": verdict.retry_after_header},
    )


# --- reading a request --------------------------------------------------------------------


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


async def _read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The body as JSON (None when optional and absent); 413, 415 or 400 otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _too_large()
    if not request.body_exists or request.content_length == 0:
        if optional:
            return None
        raise ApiError(400, "a JSON body is required")
    if not _is_json(request.content_type):
        raise ApiError(415, "the body must be JSON, sent with Content-Type: application/json"
                            f" (got {request.content_type or 'none'})")
    body = await _read_limited(request)
    # Read exactly as a worker reads an event off the stream (bounded depth, integer digits,
    # no NaN or Infinity): what the API accepts, a worker can read.
    try:
        return loads_event(body)
    except WireError as exc:
        if exc.reason == "invalid_json":
            detail = exc.error.removeprefix("event is not valid JSON: ")
            raise ApiError(400, f"the body is not valid JSON: {detail}") from None
        raise ApiError(400, f"the body is refused ({exc.reason}): {exc.error}") from None


async def _read_limited(request: web.Request) -> bytes:
    """The body, read no further than the limit (a chunked body has no Content-Length)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> ApiError:
    return ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object ({what})")
    return data


def _invalid(message: str, errors: Sequence[tuple[str, str]]) -> ApiError:
    detail = "; ".join(f"{field}: {reason}" for field, reason in errors)
    return ApiError(400, f"{message}: {detail}", errors=errors)


def _validate_event(data: dict[str, Any]) -> AlertEvent:
    try:
        return AlertEvent.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _invalid("invalid event", describe_errors(exc)) from None
    except RecursionError:
        raise _invalid("invalid event", [("event", "is nested too deeply")]) from None


def _identifier(value: str, field: str) -> str:
    try:
        return _IDENTIFIER.validate_python(value)
    except pydantic.ValidationError as exc:
        raise _invalid("invalid request", [(field, describe_errors(exc)[0][1])]) from None


def _apply_idempotency_key(request: web.Request, data: dict[str, Any]) -> None:
    """``Idempotency-Key`` becomes the event_id: a retried POST is the same event."""
    header = request.headers.get("Idempotency-Key")
    if header is None:
        return
    key = _identifier(header, "Idempotency-Key")
    given = data.get("event_id")
    if given is not None and (not isinstance(given, str) or given.strip() != key):
        raise _invalid("invalid request", [("event_id", "differs from the Idempotency-Key header")])
    data["event_id"] = key


def _check_tenant(tenant: str, principal: Principal) -> None:
    if tenant != principal.tenant:
        raise ApiError(403, f"this token acts in tenant {principal.tenant!r} only, "
                            f"not {tenant!r}")


# --- writing events -----------------------------------------------------------------------


async def _write(request: web.Request, principal: Principal,
                 events: Sequence[AlertEvent]) -> list[str]:
    """Take the request's place in the token's rate and XADD the events, in one atomic
    round trip (all or none), bounded in time; 429 over the rate, 503 when Redis does not
    answer in time. A 503 after a timeout may hide a write that happened: the client's retry
    with the same Idempotency-Key (event_id) is then the same event."""
    stream = Keys(request.app[SETTINGS].redis_prefix).events
    entries = [event.to_entry()["event"] for event in events]
    try:
        async with asyncio.timeout(STREAM_WRITE_TIMEOUT_S):
            verdict, stream_ids = await request.app[LIMITER].admit(
                principal.key_id, stream, entries)
    except _REDIS_DOWN as exc:
        log.warning("api.redis_unavailable", path=request.path, error=type(exc).__name__)
        raise _unavailable("cannot reach Redis: the event was not accepted; retry later "
                           "with the same Idempotency-Key") from None
    if not verdict.allowed:
        raise _too_many(request, verdict)
    # The request's access-log line says what it wrote: one line per request.
    if len(events) == 1:
        request[LOG_FIELDS] = {"alert_id": events[0].alert_id, "action": events[0].action,
                               "event_id": events[0].event_id, "stream_id": stream_ids[0]}
    else:
        request[LOG_FIELDS] = {"alert_ids": [e.alert_id for e in events],
                               "stream_ids": stream_ids}
    return stream_ids


async def fire_alert(request: web.Request, principal: Principal) -> web.Response:
    data = dict(_object(await _read_json(request), "an alert event"))
    data.setdefault("tenant", principal.tenant)
    _apply_idempotency_key(request, data)
    event = _validate_event(data)
    _check_tenant(event.tenant, principal)
    [stream_id] = await _write(request, principal, [event])
    return _json(202, Accepted.of(stream_id, event.alert_id))


def _alert_action(action: str, body_model: type[ResolveRequest]) -> Handler:
    """The handler of ``POST /v1/alerts/{alert_id}/<action>``: the event of that action, for
    the alert in the path, in the token's tenant; the body is optional."""

    async def handle(request: web.Request, principal: Principal) -> web.Response:
        data: dict[str, Any] = {"alert_id": request.match_info["alert_id"], "action": action,
                                "tenant": principal.tenant}
        body = await _read_json(request, optional=True)
        if body is not None:
            raw = _object(body, "or no body")
            try:
                fields = body_model.model_validate(raw)
            except pydantic.ValidationError as exc:
                raise _invalid("invalid request", describe_errors(exc)) from None
            if fields.tenant is not None:
                _check_tenant(fields.tenant, principal)
            # The event model checks the values, in its own words (null included).
            data.update({key: value for key, value in raw.items() if key != "tenant"})
        _apply_idempotency_key(request, data)
        event = _validate_event(data)
        [stream_id] = await _write(request, principal, [event])
        return _json(202, Accepted.of(stream_id, event.alert_id))

    return handle


resolve_alert = _alert_action("resolve", ResolveRequest)
ack_alert = _alert_action("ack", AckRequest)


async def alertmanager_webhook(request: web.Request, principal: Principal) -> web.Response:
    raw = _object(await _read_json(request), "Alertmanager's webhook payload")
    try:
        payload = AlertmanagerPayload.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise _invalid("invalid Alertmanager payload", describe_errors(exc)) from None
    group = request.query.get("group")
    if group is not None:
        group = _identifier(group, "group")
    elif any(alert.status == "firing" for alert in payload.alerts):
        raise _invalid("invalid request", [("group", "the query parameter ?group=NAME is "
                                                     "required to fire: the group to ring")])
    mode = request.query.get("mode")
    if mode is not None and mode not in ("parallel", "sequential"):
        raise _invalid("invalid request", [("mode", "must be parallel or sequential")])
    events: list[AlertEvent] = []
    errors: list[tuple[str, str]] = []
    for i, alert in enumerate(payload.alerts):
        fields = alertmanager.event_fields(alert, group=group, mode=mode)
        try:
            events.append(AlertEvent.model_validate({**fields, "tenant": principal.tenant}))
        except pydantic.ValidationError as exc:
            errors.extend((f"alerts.{i}.{field}", reason) for field, reason in describe_errors(exc))
    if errors:
        raise _invalid("invalid Alertmanager payload", errors)
    stream_ids = await _write(request, principal, events)
    return _json(202, AcceptedEvents(events=[
        AcceptedEvent(alert_id=e.alert_id, action=e.action, stream_id=sid,
                      links=Links.to_alert(e.alert_id))
        for e, sid in zip(events, stream_ids, strict=True)
    ]))


# --- reading alerts back ------------------------------------------------------------------


async def _from_db(request: web.Request, query: Awaitable[Any]) -> Any:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await query
    except DATABASE_UNAVAILABLE as exc:
        log.warning("api.database_unavailable", path=request.path, error=type(exc).__name__)
        raise _unavailable("cannot reach the database") from None


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise _invalid("invalid request", [(name, "must be true or false")])
    return value in ("true", "1")


async def get_alert(request: web.Request, principal: Principal) -> web.Response:
    alert_id = _identifier(request.match_info["alert_id"], "alert_id")
    history = _flag(request, "all")
    rows = await _from_db(request, db.alerts_with_calls(
        request.app[DB], principal.tenant, alert_id, limit=HISTORY_MAX if history else 1))
    if not rows:
        raise ApiError(404, f"no alert {alert_id!r} in tenant {principal.tenant!r} (an event "
                            "accepted moments ago may not be processed yet)")
    if history:
        return _json(200, AlertHistory(alert_id=alert_id, alerts=[AlertView.of(r) for r in rows]))
    return _json(200, AlertView.of(rows[0]))


def parse_since(value: str) -> datetime:
    """An ISO 8601 time (UTC when it has no offset) or an age: ``30s``, ``15m``, ``12h``,
    ``7d`` (that long ago)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(value) >= 2 and value[-1] in units and value[:-1].isdigit() and len(value) < 12:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    moment = datetime.fromisoformat(value)  # ValueError: the caller's 400
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _cursor(alert_pk: int) -> str:
    return base64.urlsafe_b64encode(f"a{alert_pk}".encode()).decode().rstrip("=")


def _cursor_id(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("a") or not text[1:].isdigit() or len(text) > 20:
            raise ValueError(cursor)
        return int(text[1:])
    except (ValueError, binascii.Error):
        raise _invalid("invalid request", [("cursor", "is not a cursor this API gave")]) from None


async def list_alerts(request: web.Request, principal: Principal) -> web.Response:
    query = request.query
    errors: list[tuple[str, str]] = []
    status: AlertStatus | None = None
    if "status" in query:
        try:
            status = AlertStatus(query["status"])
        except ValueError:
            errors.append(("status", "must be one of " + ", ".join(s.value for s in AlertStatus)))
    since: datetime | None = None
    if "since" in query:
        try:
            since = parse_since(query["since"])
        except (ValueError, OverflowError):
            errors.append(("since", "must be an ISO 8601 time or an age like 30m, 12h, 7d"))
    limit = PAGE_DEFAULT
    if "limit" in query:
        text = query["limit"]
        if not text.isdigit() or not 1 <= int(text[:6]) <= PAGE_MAX:
            errors.append(("limit", f"must be a whole number from 1 to {PAGE_MAX}"))
        else:
            limit = int(text)
    if errors:
        raise _invalid("invalid request", errors)
    before = _cursor_id(query["cursor"]) if "cursor" in query else None
    rows = await _from_db(request, db.list_alerts(
        request.app[DB], principal.tenant, status=status, since=since, before_id=before,
        limit=limit + 1))
    page = rows[:limit]
    next_cursor = _cursor(page[-1].id) if len(rows) > limit else None
    return _json(200, AlertPage(alerts=[AlertSummary.of(r) for r in page],
                                next_cursor=next_cursor))


# --- group admin (admin scope) ------------------------------------------------------------


def _group_key(request: web.Request, principal: Principal) -> GroupKey:
    try:
        return GroupKey(tenant=principal.tenant, name=request.match_info["name"])
    except pydantic.ValidationError as exc:
        raise _invalid("invalid request", describe_errors(exc)) from None


async def list_groups(request: web.Request, principal: Principal) -> web.Response:
    found = await _from_db(request, db.list_groups(request.app[DB], principal.tenant))
    return _json(200, GroupList(groups=[GroupView.of(g) for g in found]))


async def get_group(request: web.Request, principal: Principal) -> web.Response:
    key = _group_key(request, principal)
    group = await _from_db(request, db.get_group(request.app[DB], key.tenant, key.name))
    if group is None:
        raise ApiError(404, f"no group {key.name!r} in tenant {key.tenant!r}")
    return _json(200, GroupView.of(group))


async def put_group(request: web.Request, principal: Principal) -> web.Response:
    """Create the group or replace its whole member list: 201 when created, else 200."""
    key = _group_key(request, principal)
    body = _object(await _read_json(request), "a group: {\"members\": [...]}")
    unknown = sorted(set(body) - {"tenant", "members", "rounds", "round_delay_s"})
    if unknown:
        raise _invalid("invalid group", [(k, "Extra inputs are not permitted") for k in unknown])
    if body.get("tenant") is not None:
        _check_tenant(_identifier(body["tenant"], "tenant"), principal)
    try:
        spec = GroupSpec.model_validate(
            {"tenant": key.tenant, "name": key.name, "members": body.get("members"),
             "rounds": body.get("rounds"), "round_delay_s": body.get("round_delay_s")})
    except pydantic.ValidationError as exc:
        raise _invalid("invalid group", describe_errors(exc)) from None
    except RecursionError:
        raise _invalid("invalid group", [("members", "is nested too deeply")]) from None
    group = await _from_db(request, db.upsert_group(
        request.app[DB], spec.tenant, spec.name, spec.members, rounds=spec.rounds,
        round_delay_s=spec.round_delay_s))
    request[LOG_FIELDS] = {"group": spec.name, "members": len(spec.members)}
    return _json(201 if group.created_at == group.updated_at else 200, GroupView.of(group))


async def delete_group(request: web.Request, principal: Principal) -> web.Response:
    key = _group_key(request, principal)
    if not await _from_db(request, db.delete_group(request.app[DB], key.tenant, key.name)):
        raise ApiError(404, f"no group {key.name!r} in tenant {key.tenant!r}")
    request[LOG_FIELDS] = {"group": key.name}
    return web.Response(status=204)


# --- the description ----------------------------------------------------------------------


def _package_version() -> str:
    try:
        return version("voicealert")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0"


async def serve_openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def openapi() -> dict[str, Any]:
    return openapi_document([*(r.operation for r in ROUTES), OPENAPI_OPERATION],
                            version=_package_version())


_ALERT_ID = Param("alert_id", "path", "The alert's alert_id (URL-encoded).")
_GROUP_NAME = Param("name", "path", "The group's name (URL-encoded).")
_IDEMPOTENCY_KEY = Param(
    "Idempotency-Key", "header",
    "Becomes the event's event_id: retrying a POST with the same key is the same event, "
    "processed once. Same rules as event_id (1-200 characters, no control characters).")
_EVENT_ERRORS = (400, 401, 403, 413, 415, 429, 503)

OPENAPI_OPERATION = Operation(
    "GET", "/v1/openapi.json", "openapi", "This description (OpenAPI 3.1).", scope=None,
    responses={200: ("The OpenAPI document.", None)},
)

ROUTES: tuple[Route, ...] = (
    Route(Operation(
        "POST", "/v1/alerts", "fireAlert",
        "Send an alert event (the stream's event; the tenant is the token's).",
        scope=TokenScope.FIRE, body=AlertEvent, params=(_IDEMPOTENCY_KEY,),
        responses={202: ("On the stream.", Accepted)}, errors=_EVENT_ERRORS,
    ), fire_alert, writes=True),
    Route(Operation(
        "POST", "/v1/alerts/{alert_id}/resolve", "resolveAlert",
        "Resolve an alert: calls not yet answered are canceled.",
        scope=TokenScope.FIRE, body=ResolveRequest, body_required=False,
        params=(_ALERT_ID, _IDEMPOTENCY_KEY),
        responses={202: ("On the stream.", Accepted)}, errors=_EVENT_ERRORS,
    ), resolve_alert, writes=True),
    Route(Operation(
        "POST", "/v1/alerts/{alert_id}/ack", "ackAlert",
        "Acknowledge an alert: someone is on it; calling stops (as pressing 1 on a call).",
        scope=TokenScope.FIRE, body=AckRequest, body_required=False,
        params=(_ALERT_ID, _IDEMPOTENCY_KEY),
        responses={202: ("On the stream.", Accepted)}, errors=_EVENT_ERRORS,
    ), ack_alert, writes=True),
    Route(Operation(
        "POST", "/v1/integrations/alertmanager", "alertmanagerWebhook",
        "Alertmanager's (or Grafana's) webhook: one event per alert; resolved alerts resolve.",
        scope=TokenScope.FIRE, body=AlertmanagerPayload,
        params=(Param("group", "query", "The group to ring for firing alerts.", required=False),
                Param("mode", "query", "parallel (default) or sequential.",
                      {"type": "string", "enum": ["parallel", "sequential"]})),
        responses={202: ("Every event on the stream.", AcceptedEvents)}, errors=_EVENT_ERRORS,
    ), alertmanager_webhook, writes=True),
    Route(Operation(
        "GET", "/v1/alerts/{alert_id}", "getAlert",
        "The latest alert of this alert_id, with its calls (`?all=true`: every alert row).",
        scope=TokenScope.FIRE,
        params=(_ALERT_ID, Param("all", "query", "Every alert row of this alert_id, newest "
                                 f"first (at most {HISTORY_MAX}).", {"type": "boolean"})),
        responses={200: ("The alert; with ?all=true, its history.", (AlertView, AlertHistory))},
        errors=(400, 401, 403, 404, 429, 503),
    ), get_alert),
    Route(Operation(
        "GET", "/v1/alerts", "listAlerts", "The tenant's alerts, newest first, a page at a time.",
        scope=TokenScope.FIRE,
        params=(
            Param("status", "query", "Only alerts in this status.",
                  {"type": "string", "enum": [s.value for s in AlertStatus]}),
            Param("since", "query", "Received at or after: ISO 8601, or an age (30m, 12h, 7d)."),
            Param("limit", "query", f"Page size, 1-{PAGE_MAX} (default {PAGE_DEFAULT}).",
                  {"type": "integer", "minimum": 1, "maximum": PAGE_MAX}),
            Param("cursor", "query", "next_cursor of the previous page."),
        ),
        responses={200: ("A page of alerts.", AlertPage)}, errors=(400, 401, 403, 429, 503),
    ), list_alerts),
    Route(Operation(
        "GET", "/v1/groups", "listGroups", "The tenant's alert groups, by name.",
        scope=TokenScope.ADMIN, responses={200: ("The groups.", GroupList)},
        errors=(401, 403, 429, 503),
    ), list_groups),
    Route(Operation(
        "GET", "/v1/groups/{name}", "getGroup", "One alert group: its members in ring order.",
        scope=TokenScope.ADMIN, params=(_GROUP_NAME,),
        responses={200: ("The group.", GroupView)}, errors=(400, 401, 403, 404, 429, 503),
    ), get_group),
    Route(Operation(
        "PUT", "/v1/groups/{name}", "putGroup",
        "Create the group, or replace its whole member list (same rules as `groups set`).",
        scope=TokenScope.ADMIN, body=GroupBody, params=(_GROUP_NAME,),
        responses={200: ("Replaced.", GroupView), 201: ("Created.", GroupView)},
        errors=(400, 401, 403, 413, 415, 429, 503),
    ), put_group),
    Route(Operation(
        "DELETE", "/v1/groups/{name}", "deleteGroup",
        "Delete the group (alerts already raised keep their calls).",
        scope=TokenScope.ADMIN, params=(_GROUP_NAME,),
        responses={204: ("Deleted.", None)}, errors=(400, 401, 403, 404, 429, 503),
    ), delete_group),
)
