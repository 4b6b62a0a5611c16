"""``/metrics``: the counters of ``worker.metrics`` plus the gauges behind ``voicealert status``.

Each worker replica serves it on ``VOICEALERT_METRICS_HOST``:``VOICEALERT_METRICS_PORT`` (off
when the port is unset). The gauges are global facts read from Redis and Postgres at scrape
time (``worker.health.gather``), at most once per ``REFRESH_S`` per process however often it
is scraped; every replica reports the same values, so aggregate them with ``max``, not
``sum``. When Redis or Postgres does not answer, ``voicealert_status_reachable`` is 0 and the
other gauges are left out rather than reported stale.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator

import redis.asyncio
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from worker import db
from worker.config import Settings
from worker.health import Snapshot, Unreachable, gather
from worker.logs import get_logger

log = get_logger(__name__)

#: Scrapes within this many seconds of the last read share it.
REFRESH_S = 5.0


class StatusGauges:
    """A prometheus collector over the latest snapshot, refreshed on demand."""

    def __init__(self, settings: Settings, client: redis.asyncio.Redis, pool: db.Executor):
        self.settings = settings
        self.client = client
        self.pool = pool
        self.snapshot: Snapshot | None = None
        self.error: str | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._read_at < REFRESH_S:
                return
            try:
                snapshot = await gather(self.settings, self.client, self.pool)
                self.snapshot, self.error = snapshot, None
            except Unreachable as exc:
                self.snapshot, self.error = None, str(exc)
            self._read_at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "voicealert_status_reachable",
            "1 when Redis and Postgres answered the last status read, else 0.",
            value=1 if self.snapshot is not None else 0,
        )
        if self.snapshot is not None:
            yield from _gauges(self.snapshot)


def _gauges(snap: Snapshot) -> Iterator[Metric]:
    def gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, value=float(value or 0))

    problems = GaugeMetricFamily(
        "voicealert_status_problems", "Problems `voicealert status` reports, by status line.",
        labels=["line"])
    for line in sorted({p.line for p in snap.problems}):
        problems.add_metric([line], sum(p.line == line for p in snap.problems))
    yield problems
    yield gauge("voicealert_status_degraded",
                "1 when `voicealert status` would exit 1 (degraded).", int(not snap.healthy))
    stream = snap.stream
    yield gauge("voicealert_stream_length", "Entries in the events stream.", stream.length)
    yield gauge("voicealert_stream_memory_bytes", "Memory the events stream uses in Redis.",
                stream.memory_bytes)
    yield gauge("voicealert_stream_unread",
                "Entries not yet read by any replica (the consumer group's lag).", stream.unread)
    yield gauge("voicealert_stream_oldest_unread_seconds",
                "Age of the oldest entry not yet read (0 when none).", stream.oldest_unread_age_s)
    yield gauge("voicealert_stream_pending", "Entries read and not yet acknowledged.",
                stream.pending)
    yield gauge("voicealert_stream_pending_on_dead_consumers",
                "Entries pending on consumers with no live replica (reclaimed after "
                "VOICEALERT_RECLAIM_IDLE_S).",
                sum(c.pending for c in stream.consumers if not c.alive))
    yield gauge("voicealert_replicas_live", "Worker replicas with a live heartbeat.",
                len(snap.live_replicas))
    jobs = GaugeMetricFamily("voicealert_jobs", "Call jobs in the queue, by function and state "
                             "(waiting: due, not started; running; deferred: due later).",
                             labels=["function", "state"])
    waits = GaugeMetricFamily("voicealert_jobs_oldest_wait_seconds",
                              "How long the oldest due job has waited to start.",
                              labels=["function"])
    for function, counts in sorted(snap.jobs.items()):
        for state in ("waiting", "running", "deferred"):
            jobs.add_metric([function, state], getattr(counts, state))
        waits.add_metric([function], counts.oldest_wait_s or 0)
    yield jobs
    yield waits
    yield gauge("voicealert_rate_schedule_delay_seconds",
                "How far ahead the global call rate is booked: when the last waiting call "
                "rings.", snap.rate.free_in_s)
    letters = GaugeMetricFamily("voicealert_dead_letters_waiting",
                                "Dead letters not replayed, by source and reason.",
                                labels=["source", "reason"])
    for letter in snap.database.dead_letters:
        letters.add_metric([letter.source, letter.reason], letter.waiting)
    yield letters
    alerts = GaugeMetricFamily("voicealert_alerts_open", "Alerts still ringing, by status.",
                               labels=["status"])
    for status, count in sorted(snap.database.alerts_open.items()):
        alerts.add_metric([status], count)
    yield alerts
    yield gauge("voicealert_calls_stuck",
                "Calls at the provider with no news for longer than the ring timeout allows.",
                snap.database.stuck_calls)
    yield gauge("voicealert_migrations_pending", "Migrations not applied to the database.",
                len(snap.database.migrations_pending))


def metrics_handler(gauges: StatusGauges) -> Handler:
    """``GET /metrics``: this process's counters and the status gauges, in Prometheus text."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(gauges)

    async def handler(request: web.Request) -> web.Response:
        await gauges.refresh()
        body = generate_latest(REGISTRY) + generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler


async def start_metrics_server(
    settings: Settings, client: redis.asyncio.Redis, pool: db.Executor
) -> web.AppRunner | None:
    """Serve /metrics when VOICEALERT_METRICS_PORT is set; None when off or the port is
    taken (the replica works on without metrics, and says so)."""
    if settings.metrics_port is None:
        return None
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(StatusGauges(settings, client, pool)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.metrics_host, settings.metrics_port).start()
    except OSError as exc:
        log.error("metrics.bind_failed", host=settings.metrics_host, port=settings.metrics_port,
                  error=str(exc))
        await runner.cleanup()
        return None
    log.info("metrics.started", host=settings.metrics_host, port=settings.metrics_port)
    return runner
