"""The web process (``voicealert web``): one aiohttp application serving every HTTP route.

Binds ``VOICEALERT_WEB_HOST`` (default 127.0.0.1) on ``VOICEALERT_WEB_PORT``; when that is
not set, on ``PORT``, which Heroku and honcho set for the Procfile line ``web: voicealert
web``; else 8080. ``VOICEALERT_PUBLIC_URL`` is validated at start with every setting (an
absolute https URL; http only for a loopback host).

The application owns the long-lived parts its handlers share, opened on start and closed on
stop (``cleanup_ctx``) and stored under typed keys: ``SETTINGS``, ``REDIS`` (an ``ArqRedis``,
so a handler can enqueue jobs) and ``DB`` (an asyncpg pool). Neither is contacted at start:
the process comes up while Redis or Postgres is down, and ``/readyz`` says so.

Routes of a feature live in the feature's module, which exposes ``add_routes``::

    # worker/webhooks.py
    from worker.web_support import DB

    def add_routes(app: web.Application) -> None:
        app.router.add_post("/twilio/status", status_callback)

    async def status_callback(request: web.Request) -> web.Response:
        pool = request.app[DB]
        ...

and is listed in ``FEATURES`` below. Feature modules import the keys and ``error_response``
from ``worker.web_support`` (this module imports them: importing it back would be a circle).
Every error answers JSON (404, 405, 500 included), never HTML and never a traceback. SIGTERM
or SIGINT stops accepting connections, lets requests in flight finish for up to
``SHUTDOWN_TIMEOUT_S``, closes the resources and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import asyncpg
import redis.asyncio
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from arq.connections import ArqRedis

from worker import api, db, webhooks
from worker.config import Settings, redact_url
from worker.health import migrations_pending
from worker.logs import get_logger
from worker.metrics_http import start_metrics_server
from worker.queue import json_deserializer, json_serializer
from worker.web_support import ACTOR, DB, LOG_FIELDS, REDIS, SETTINGS, error_response

log = get_logger(__name__)

__all__ = ["DB", "FEATURES", "REDIS", "SETTINGS", "create_app", "error_response", "run_web"]

#: How long /readyz waits for each of Redis and Postgres.
READY_TIMEOUT_S = 2.0
#: On SIGTERM, how long requests in flight may take to finish (Twilio waits 15 s for a webhook).
SHUTDOWN_TIMEOUT_S = 10.0
#: Redis client bounds: a hung connection is an outage, not a wait.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_COMMAND_TIMEOUT_S = 5.0

AddRoutes = Callable[[web.Application], None]
#: Each feature module's ``add_routes``, called by create_app.
FEATURES: tuple[AddRoutes, ...] = (api.add_routes, webhooks.add_routes)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings, features: Sequence[AddRoutes] = FEATURES) -> web.Application:
    """The web application: shared resources, JSON errors, health routes, feature routes."""
    app = web.Application(middlewares=[json_errors])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_resources)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    for add_routes in features:
        add_routes(app)
    return app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[REDIS] = open_redis(settings)
    # min_size 0: no connection at start, so the process starts while Postgres is down.
    app[DB] = await db.create_pool(settings.database_url, min_size=0, max_size=10)
    metrics_server = await start_metrics_server(settings, app[REDIS], app[DB])
    try:
        yield
    finally:
        if metrics_server is not None:
            await metrics_server.cleanup()
        await app[DB].close()
        await app[REDIS].aclose(close_connection_pool=True)


def open_redis(settings: Settings) -> ArqRedis:
    """A Redis client with bounded waits and arq's JSON job serializer (never pickle)."""
    pool = redis.asyncio.ConnectionPool.from_url(
        settings.redis_url,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_COMMAND_TIMEOUT_S,
    )
    return ArqRedis(pool, job_serializer=json_serializer, job_deserializer=json_deserializer)


# --- errors -------------------------------------------------------------------------------


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors as JSON: aiohttp's own (404, 405, 413) and any exception a handler raises."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise  # a redirect, or an error a handler already wrote as JSON
        default_text = f"{exc.status}: {exc.reason}"
        message = exc.text if exc.text and exc.text != default_text else exc.reason.lower()
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, message, allow)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("web.request_failed", method=request.method, path=request.path)
        return error_response(500, "internal server error")


# --- health -------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    """The process is up and serving (it does not look at Redis or Postgres)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Redis and Postgres both answer within READY_TIMEOUT_S and every migration this code
    knows is applied: 200; else 503 saying which."""
    redis_check, postgres_check, migrations_check = await asyncio.gather(
        _check(_ping_redis(request.app[REDIS])), _check(_ping_postgres(request.app[DB])),
        _check(_migrations_applied(request.app[DB])),
    )
    checks = {"redis": redis_check, "postgres": postgres_check, "migrations": migrations_check}
    ready = all(value == "ok" for value in checks.values())
    return web.json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )


async def _check(probe: Awaitable[None]) -> str:
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await probe
    except TimeoutError:
        return f"no answer within {READY_TIMEOUT_S:g}s"
    except _NotReady as exc:
        return str(exc)
    except Exception as exc:  # any failure to answer is "not ready", said in a word
        return f"error ({type(exc).__name__})"
    return "ok"


async def _ping_redis(client: ArqRedis) -> None:
    await client.ping()


async def _ping_postgres(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


class _NotReady(Exception):
    """A check that answered, and the answer is no (its text is the reason)."""


async def _migrations_applied(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        pending, error = await migrations_pending(conn)
    if error or pending:
        raise _NotReady(error or f"not applied: {', '.join(pending)}")
# --- the access log -----------------------------------------------------------------------

# An API token pasted where it does not belong (a path, a query string): keep its public key
# id, hide its secret. Tokens are read from the Authorization header only, never logged.
_TOKEN_RE = re.compile(r"(va_[0-9a-f]{16}_)[A-Za-z0-9_-]+")
#: Health probes that succeed are not logged: a probe every few seconds would drown the rest.
_PROBES = frozenset({"/healthz", "/readyz"})


def _scrub(text: str) -> str:
    return _TOKEN_RE.sub(r"\1***", text)


class AccessLog(AbstractAccessLogger):
    """One ``web.request`` line per request: method, path, status, duration, who
    (``tenant/token-name``) and what the handler added (``LOG_FIELDS``: the alert and stream
    ids it wrote); never a header; phone numbers masked like every line."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path in _PROBES and response.status < 400:
            return
        log.info("web.request", method=request.method, path=_scrub(request.path),
                 query=_scrub(request.query_string) or None, status=response.status,
                 duration_ms=round(time * 1000, 1), actor=request.get(ACTOR),
                 remote=request.remote, **request.get(LOG_FIELDS, {}))


class BadRequestsInOneLine(logging.Filter):
    """aiohttp answers a request it cannot parse (a malformed request line, a header over
    8 KiB) with a plain-text 400 before any handler runs, and logs it with a traceback: it
    is the client's mistake, so it becomes one ``web.bad_request`` line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError):
            return True
        log.warning("web.bad_request", error=type(error).__name__, detail=error.message[:200])
        return False


# --- the process --------------------------------------------------------------------------


async def serve(settings: Settings) -> int:
    """Run the web process until SIGTERM or SIGINT; returns the exit status."""
    logging.getLogger("aiohttp.server").addFilter(BadRequestsInOneLine())
    runner = web.AppRunner(create_app(settings), access_log_class=AccessLog,
                           access_log=logging.getLogger("aiohttp.access"),
                           shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.web_host, settings.web_port)
        try:
            await site.start()
        except OSError as exc:
            log.error("web.bind_failed", host=settings.web_host, port=settings.web_port,
                      error=str(exc))
            return 1
        log.info("web.started", host=settings.web_host, port=settings.web_port,
                 public_url=settings.public_url, redis=redact_url(settings.redis_url),
                 database=redact_url(settings.database_url))
        await stop.wait()
        log.info("web.stopping", shutdown_timeout_s=SHUTDOWN_TIMEOUT_S)
    finally:
        await runner.cleanup()
    log.info("web.stopped")
    return 0


def run_web(settings: Settings) -> int:
    return asyncio.run(serve(settings))
