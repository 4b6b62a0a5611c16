"""The HTTP API under load: ``POST /v1/alerts`` from 200 concurrent clients for 10 s on
loopback, beside a baseline from the same run: a bare aiohttp handler that only XADDs the
body (no token check, no validation, no rate limit, no access log).

Each server is a process of its own (``voicealert web`` with its default settings, logs at
info to /dev/null, and the rate limit raised out of the way; then the same at log level
warning, to show what the one access-log line per request costs; the baseline: ``python -m
bench.http_api --serve-baseline PORT``); the clients run in this process, one aiohttp
session, keep-alive connections. Latency is per request, as the client sees it. Nothing
consumes the stream: this measures the API up to the XADD.

    .venv/bin/python -m bench.http_api [--clients 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import redis
import redis.asyncio
from aiohttp import web

from bench.common import BENCH_REDIS, REPO, bench_database_url, percentile
from worker import db, tokens
from worker.keys import Keys
from worker.migrate import migrate
from worker.models import TokenScope

EVENT = {"alert_id": "bench", "group": "oncall", "message": "Load test: nothing is on fire",
         "metadata": {"host": "db-1", "region": "eu-west-1"}}


# --- the baseline server ------------------------------------------------------------------


def serve_baseline(port: int, redis_url: str, prefix: str) -> None:
    """A bare aiohttp handler: read the body, XADD it, answer 202 with the stream id."""
    stream = Keys(prefix).events

    async def start(app: web.Application) -> None:
        app["redis"] = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        stream_id = await request.app["redis"].xadd(stream, {"event": body})
        return web.json_response({"status": "accepted", "stream_id": stream_id.decode()},
                                 status=202)

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/v1/alerts", post)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# --- the load -----------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def load(url: str, token: str, clients: int, seconds: float, label: str) -> Result:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = aiohttp.JsonPayload(EVENT)._value  # the same bytes for every request

    async def client(session: aiohttp.ClientSession, deadline: float) -> None:
        nonlocal errors
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 202
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append((time.monotonic() - started) * 1000)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session, time.monotonic() + 0.5) for _ in range(clients)))
        latencies.clear()  # warm-up: connections open, code paths hot
        errors = 0
        started = time.monotonic()
        await asyncio.gather(*(client(session, started + seconds) for _ in range(clients)))
        elapsed = time.monotonic() - started
    return Result(label, len(latencies), errors, elapsed, latencies)


# --- processes ----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(argv: list[str], env: dict[str, str], port: int) -> Iterator[str]:
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"{argv} exited with {proc.returncode}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1/alerts"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _make_token(database_url: str) -> str:
    made = tokens.new_token()
    conn = await db.connect(database_url)
    try:
        await db.insert_token(conn, "default", f"bench-{made.key_id}", TokenScope.FIRE,
                              made.key_id, made.digest)
    finally:
        await conn.close()
    return made.token


def run(clients: int, seconds: float, database_url: str, redis_url: str) -> list[Result]:
    prefix = f"benchhttp:{uuid.uuid4().hex[:8]}:"
    asyncio.run(migrate(database_url))
    token = asyncio.run(_make_token(database_url))
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url,
           "VOICEALERT_REDIS_PREFIX": prefix, "VOICEALERT_PROVIDER": "simulated",
           "VOICEALERT_LOG_FORMAT": "json", "VOICEALERT_LOG_LEVEL": "info",
           "VOICEALERT_API_RATE_PER_S": "100000", "VOICEALERT_API_RATE_BURST": "100000"}
    results = []
    try:
        port = _free_port()
        baseline = [sys.executable, "-m", "bench.http_api", "--serve-baseline", str(port),
                    "--redis-url", redis_url, "--prefix", prefix]
        with server(baseline, env, port) as url:
            results.append(asyncio.run(load(url, token, clients, seconds,
                                            "baseline: bare aiohttp + XADD")))
        for label, level in (("voicealert web POST /v1/alerts", "info"),
                             ("  same, log level warning", "warning")):
            port = _free_port()
            with server([sys.executable, "-m", "worker", "web"],
                        {**env, "VOICEALERT_WEB_PORT": str(port),
                         "VOICEALERT_LOG_LEVEL": level}, port) as url:
                results.append(asyncio.run(load(url, token, clients, seconds, label)))
    finally:
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    return results


def report(results: list[Result], clients: int, seconds: float) -> None:
    print(f"POST /v1/alerts, {clients} concurrent clients, {seconds:g} s, loopback")
    print(f"{'server':<34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}")
    for r in results:
        lat = r.latencies_ms or [0.0]
        print(f"{r.label:<34} {r.rate:8.0f} {percentile(lat, 0.5):8.1f} "
              f"{percentile(lat, 0.99):8.1f} {max(lat):8.1f} {r.errors:7d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database-url", default=None,
                        help="a database to use (default: the bench database, migrated)")
    parser.add_argument("--redis-url", default=BENCH_REDIS)
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="voicealert:", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline, args.redis_url, args.prefix)
        return
    results = run(args.clients, args.seconds, args.database_url or bench_database_url(),
                  args.redis_url)
    report(results, args.clients, args.seconds)
    if any(r.requests == 0 for r in results):
        raise SystemExit("a server accepted no request")


if __name__ == "__main__":
    main()
