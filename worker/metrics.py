"""Prometheus metrics: what flowed through this process (counters, histograms).

The pipeline records with one-line calls (``metrics.events_deduplicated(n)``), so a step never
deals with label sets; the provider is measured by wrapping it (``MeasuredProvider``), so
neither provider knows about metrics. The gauges behind ``voicealert status`` (stream lag,
call backlog, rate-schedule delay: global facts, the same from every replica) are read at
scrape time by ``worker.metrics_http``. Names, labels and what to alert on:
docs/operations.md#metrics.

Counters count what *this process* did; sum them across replicas.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from prometheus_client import Counter, Histogram, disable_created_metrics

from worker.models import TERMINAL_CALL_STATUSES, CallJob, CallStatus
from worker.providers import (
    AmbiguousProviderError,
    CallProvider,
    PermanentProviderError,
    ProviderError,
    ThrottledProviderError,
)

T = TypeVar("T")

# No "<counter>_created" series: timestamps nobody graphs, doubling the page.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Latencies of a phone call pipeline: tens of milliseconds to minutes.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_REQUEST_BUCKETS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 2, 5, 10)

EVENTS_INGESTED = Counter(
    "voicealert_events_ingested", "Valid events read from the stream and handled, by action.",
    ["action"],
)
EVENTS_INVALID = Counter(
    "voicealert_events_invalid", "Stream entries that are not a usable event, by reason.",
    ["reason"],
)
EVENTS_DEDUPLICATED = Counter(
    "voicealert_events_deduplicated", "Triggers suppressed by another event's dedup lock.",
)
CALLS_ENDED = Counter(
    "voicealert_calls_ended",
    "Calls that reached a final status here, by status and answered_by (answering-machine "
    "detection; 'none' when not reported).",
    ["status", "answered_by"],
)
PROVIDER_REQUESTS = Counter(
    "voicealert_provider_requests",
    "Requests to the call provider, by operation and outcome class (ok, rejected, throttled, "
    "ambiguous, error).",
    ["operation", "outcome"],
)
PROVIDER_SECONDS = Histogram(
    "voicealert_provider_request_seconds", "Time the provider took to answer, by operation.",
    ["operation"], buckets=_REQUEST_BUCKETS,
)
DIAL_LATENCY = Histogram(
    "voicealert_dial_latency_seconds",
    "From the event's XADD to the first POST of its call, for calls rung at once (parallel "
    "alerts, and a sequential alert's first member); includes the wait for a call-rate slot.",
    buckets=_LATENCY_BUCKETS,
)
JOB_SECONDS = Histogram(
    "voicealert_job_seconds",
    "Duration of call jobs, by function and outcome (done, deferred: rescheduled itself or "
    "retried later, failed, interrupted).",
    ["function", "outcome"], buckets=_REQUEST_BUCKETS,
)
DEAD_LETTERS = Counter(
    "voicealert_dead_letters", "Dead letters written, by source and reason.",
    ["source", "reason"],
)


# --- the pipeline's one-line calls ----------------------------------------------------------


SWEEPER_REPAIRS = Counter(
    "voicealert_sweeper_repairs",
    "What the sweeper re-created because Redis had lost it, by kind (place, redial, follow, "
    "round, decide, dedup_lock).",
    ["kind"],
)


def sweeper_repaired(counts: dict[str, int]) -> None:
    for kind, count in counts.items():
        if count:
            SWEEPER_REPAIRS.labels(kind).inc(count)


def events_ingested(actions: Iterable[str]) -> None:
    for action, count in collections.Counter(actions).items():
        EVENTS_INGESTED.labels(action).inc(count)


def event_invalid(reason: str) -> None:
    EVENTS_INVALID.labels(reason).inc()


def events_deduplicated(count: int) -> None:
    if count:
        EVENTS_DEDUPLICATED.inc(count)


def call_ended(status: str, answered_by: str | None = None) -> None:
    """A call reached ``status``; counted only when it is final."""
    if status in TERMINAL_CALL_STATUSES:
        CALLS_ENDED.labels(str(status), answered_by or "none").inc()


def calls_canceled(count: int) -> None:
    if count:
        CALLS_ENDED.labels(str(CallStatus.CANCELED), "none").inc(count)


def dialing(call: CallJob, attempt: int) -> None:
    """The first POST of a call rung with its alert: observe XADD → dial."""
    first_in_line = call.mode != "sequential" or call.position == 0
    with_its_alert = call.created_at - call.received_at < timedelta(seconds=60)
    if attempt != 1 or not first_in_line or not with_its_alert or not call.stream_id:
        return
    xadd_ms = int(call.stream_id.partition("-")[0] or 0)
    if xadd_ms:
        DIAL_LATENCY.observe(max(0.0, time.time() - xadd_ms / 1000))


def dead_letter(source: str, reason: str) -> None:
    DEAD_LETTERS.labels(source, reason).inc()


def job_finished(function: str, outcome: str, seconds: float) -> None:
    JOB_SECONDS.labels(function, outcome).observe(seconds)


# --- the provider, measured -----------------------------------------------------------------


def outcome_class(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, PermanentProviderError):
        return "rejected"
    if isinstance(exc, ThrottledProviderError):
        return "throttled"
    if isinstance(exc, AmbiguousProviderError):
        return "ambiguous"
    return "error"


class MeasuredProvider:
    """A CallProvider that counts and times every request of the one it wraps."""

    def __init__(self, inner: CallProvider) -> None:
        self.inner = inner
        self.name = inner.name

    async def _measure(self, operation: str, request: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        try:
            result = await request()
        except ProviderError as exc:
            self._record(operation, outcome_class(exc), started)
            raise
        except Exception:
            self._record(operation, "error", started)
            raise
        self._record(operation, "ok", started)
        return result

    @staticmethod
    def _record(operation: str, outcome: str, started: float) -> None:
        PROVIDER_REQUESTS.labels(operation, outcome).inc()
        PROVIDER_SECONDS.labels(operation).observe(time.monotonic() - started)

    async def create_call(self, *args: Any, **kwargs: Any) -> Any:
        return await self._measure("create", lambda: self.inner.create_call(*args, **kwargs))

    async def fetch_call(self, *args: Any, **kwargs: Any) -> Any:
        return await self._measure("fetch", lambda: self.inner.fetch_call(*args, **kwargs))

    async def find_calls(self, *args: Any, **kwargs: Any) -> Any:
        return await self._measure("find", lambda: self.inner.find_calls(*args, **kwargs))

    async def cancel_call(self, *args: Any, **kwargs: Any) -> Any:
        return await self._measure("cancel", lambda: self.inner.cancel_call(*args, **kwargs))

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        # Anything else the provider offers (added later) passes through, unmeasured.
        return getattr(self.inner, name)
