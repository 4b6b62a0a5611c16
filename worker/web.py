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
    def add_routes(app: web.Application) -> None:
        app.router.add_post("/twilio/status", status_callback)

    async def status_callback(request: web.Request) -> web.Response:
        pool = request.app[DB]
        ...

and is listed in ``FEATURES`` below. Every error answers JSON (404, 405, 500 included), never
HTML and never a traceback. SIGTERM or SIGINT stops accepting connections, lets requests in
flight finish for up to ``SHUTDOWN_TIMEOUT_S``, closes the resources and exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg
import redis.asyncio
from aiohttp import web
from arq.connections import ArqRedis

from worker import db
from worker.config import Settings, redact_url
from worker.health import migrations_pending
from worker.logs import get_logger
from worker.queue import json_deserializer, json_serializer

log = get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", ArqRedis)
DB = web.AppKey("db", asyncpg.Pool)

#: How long /readyz waits for each of Redis and Postgres.
READY_TIMEOUT_S = 2.0
#: On SIGTERM, how long requests in flight may take to finish (Twilio waits 15 s for a webhook).
SHUTDOWN_TIMEOUT_S = 10.0
#: Redis client bounds: a hung connection is an outage, not a wait.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_COMMAND_TIMEOUT_S = 5.0

AddRoutes = Callable[[web.Application], None]
#: Each feature module's ``add_routes``, called by create_app (none yet).
FEATURES: tuple[AddRoutes, ...] = ()

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
    try:
        yield
    finally:
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


def error_response(status: int, message: str, headers: Any = None) -> web.Response:
    """The one shape of every error: ``{"error": message, "status": status}``."""
    return web.json_response({"error": message, "status": status}, status=status,
                             headers=headers)


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


# --- the process --------------------------------------------------------------------------


async def serve(settings: Settings) -> int:
    """Run the web process until SIGTERM or SIGINT; returns the exit status."""
    runner = web.AppRunner(create_app(settings), access_log=None,
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
