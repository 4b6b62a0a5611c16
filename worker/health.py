"""What is happening, read in one place: the data behind ``voicealert status``, the gauges of
``/metrics``, ``/readyz`` and ``voicealert worker --check``.

Two halves:

- **Heartbeats.** Each replica writes a ``ReplicaBeat`` (JSON) to its own health key every
  third of ``VOICEALERT_HEALTH_CHECK_INTERVAL_S``, expiring after one interval, and scores its
  consumer name in the ``replicas`` sorted set. A replica is alive while its key exists; a
  SIGKILLed one is gone within one interval, and still named by the sorted set (as dead)
  for an hour. arq's own health string says only counters; ours says what the replica is
  doing (which jobs run, whether it drains).
- **Snapshot.** ``gather`` reads the stream, the consumer group, the heartbeats, the job
  queue, the call-rate schedule and Postgres, and ``assess`` names what is wrong, one
  ``Problem`` per line of the status screen. Reads only; every read is bounded in time.

Read docs/operations.md for what each line means and what to do about it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import redis.asyncio
import redis.exceptions
from arq.constants import in_progress_key_prefix

from worker import db
from worker.config import Settings, redact_url
from worker.keys import Keys
from worker.migrate import MigrationError, load_migrations
from worker.models import LetterSummary
from worker.outages import DATABASE_UNAVAILABLE, REDIS_UNAVAILABLE
from worker.queue import JOB_KINDS, function_of_kind

# --- thresholds of "degraded" (docs/operations.md#status) ----------------------------------

#: An entry not yet read by any replica this long: ingest is behind (or nobody reads).
UNREAD_AGE_S = 30.0
#: A due call job not started this long: replicas are busy, stopped, or stuck.
JOB_WAIT_S = 10.0
#: The call-rate schedule booked further ahead than this: the last waiting call is late.
RATE_DELAY_S = 60.0
#: Dead letters created within this window make the status degraded (older ones are shown).
RECENT_LETTERS_S = 3600.0
#: A call at the provider with no news this long past its ring timeout + poll margin is stuck.
STUCK_CALL_SLACK_S = 60.0
#: Dead replicas are listed for this long after their last heartbeat.
REGISTRY_RETENTION_S = 3600.0
#: A whole snapshot gives up after this long: a hung service is "unreachable", not a wait.
GATHER_TIMEOUT_S = 8.0

_REDIS_DOWN: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, TimeoutError, OSError)


# --- heartbeats ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaBeat:
    """What a replica says about itself, every third of its health interval."""

    consumer: str
    host: str
    pid: int
    at: float  # epoch seconds of this beat
    started_at: float
    interval_s: float  # the key expires this long after the beat
    draining: bool = False
    running: tuple[str, ...] = ()  # jobs running now, as "place_call:12"
    jobs_done: int = 0
    jobs_failed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> ReplicaBeat | None:
        """The beat in ``raw``, or None when it is not one (arq's plain string, garbage)."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(
                consumer=str(data["consumer"]), host=str(data["host"]), pid=int(data["pid"]),
                at=float(data["at"]), started_at=float(data["started_at"]),
                interval_s=float(data["interval_s"]), draining=bool(data.get("draining")),
                running=tuple(str(j) for j in data.get("running", ())),
                jobs_done=int(data.get("jobs_done", 0)),
                jobs_failed=int(data.get("jobs_failed", 0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return None

    def doing(self) -> str:
        """In words: what the replica is busy with."""
        if not self.running:
            text = "idle"
        else:
            kinds: dict[str, list[str]] = {}
            for job in self.running:
                function, _, call = job.partition(":")
                kinds.setdefault(function, []).append(call)
            text = ", ".join(
                f"{function} {' '.join(sorted(calls, key=_numeric)[:5])}"
                + (f" (+{len(calls) - 5})" if len(calls) > 5 else "")
                for function, calls in sorted(kinds.items())
            )
        return f"draining; {text}" if self.draining else text


def beat_every_s(interval_s: float) -> float:
    """How often a replica writes its beat: three times per expiry, so a busy event loop
    (a late beat) does not look like a dead replica."""
    return interval_s / 3


def this_host() -> str:
    return socket.gethostname()


async def write_beat(client: redis.asyncio.Redis, keys: Keys, beat: ReplicaBeat) -> None:
    at_ms = int(beat.at * 1000)
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(keys.health_check(beat.consumer), beat.to_json(),
                 px=max(1, int(beat.interval_s * 1000)))
        pipe.zadd(keys.replicas, {beat.consumer: at_ms})
        pipe.zremrangebyscore(keys.replicas, "-inf", at_ms - int(REGISTRY_RETENTION_S * 1000))
        await pipe.execute()


async def forget_replica(client: redis.asyncio.Redis, keys: Keys, consumer: str) -> None:
    """A replica that stopped cleanly is not listed as dead."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.delete(keys.health_check(consumer))
        pipe.zrem(keys.replicas, consumer)
        await pipe.execute()


@dataclass(frozen=True)
class Replica:
    consumer: str
    beat: ReplicaBeat | None  # None: its health key expired (dead) or is not ours
    last_beat_age_s: float

    @property
    def alive(self) -> bool:
        return self.beat is not None


async def replicas(client: redis.asyncio.Redis, keys: Keys) -> list[Replica]:
    """Every replica seen within the last hour, alive first, newest beat first."""
    now_ms = time.time() * 1000
    since = now_ms - REGISTRY_RETENTION_S * 1000
    members = await client.zrangebyscore(keys.replicas, since, "+inf", withscores=True)
    names = [_text(m) for m, _ in members]
    if not names:
        return []
    values = await client.mget([keys.health_check(n) for n in names])
    found = [
        Replica(name, ReplicaBeat.from_json(raw), max(0.0, (now_ms - score) / 1000))
        for (name, (_, score)), raw in zip(zip(names, members, strict=True), values, strict=True)
    ]
    return sorted(found, key=lambda r: (not r.alive, r.last_beat_age_s))


def default_consumer_prefix(host: str | None = None) -> str:
    """Default consumer names are ``<hostname>-<pid>`` (worker/config.py)."""
    return f"{host or this_host()}-"


async def replicas_on_this_host(
    client: redis.asyncio.Redis, keys: Keys, settings: Settings
) -> list[Replica]:
    """The replicas ``worker --check`` looks at: the one named ``VOICEALERT_CONSUMER_NAME``
    when it is set, else those with a default name for this host (``<hostname>-<pid>``)."""
    if "consumer_name" in settings.model_fields_set:
        raw = await client.get(keys.health_check(settings.consumer_name))
        beat = ReplicaBeat.from_json(raw)
        return [Replica(settings.consumer_name, beat, 0.0 if beat else -1.0)]
    prefix = default_consumer_prefix()
    return [r for r in await replicas(client, keys) if r.consumer.startswith(prefix)]


# --- the snapshot ---------------------------------------------------------------------------


class Unreachable(Exception):
    """Redis or Postgres did not answer: the one line to print."""


@dataclass(frozen=True)
class Consumer:
    name: str
    pending: int
    idle_s: float
    alive: bool  # a replica with a live heartbeat reads as this consumer


@dataclass(frozen=True)
class StreamState:
    length: int
    memory_bytes: int | None
    group_exists: bool
    unread: int | None  # entries not yet delivered to the group (None: Redis cannot tell)
    oldest_unread_age_s: float | None
    pending: int  # delivered, not acknowledged
    consumers: list[Consumer]


@dataclass(frozen=True)
class JobCounts:
    waiting: int = 0  # due and not started
    running: int = 0
    deferred: int = 0  # scheduled for later (a call's rate-limit slot, a poll, a retry)
    oldest_wait_s: float | None = None  # how long the oldest waiting job has been due
    last_due_in_s: float | None = None  # when the latest deferred job comes due


@dataclass(frozen=True)
class RateSchedule:
    calls_per_second: float
    free_in_s: float  # when the next call could start: 0 = now


@dataclass(frozen=True)
class DatabaseState:
    migrations_pending: list[str]
    migrations_error: str | None
    calls_last_hour: dict[str, int]
    alerts_last_hour: dict[str, int]
    alerts_open: dict[str, int]
    dead_letters: list[LetterSummary]  # recent: created within RECENT_LETTERS_S
    stuck_calls: int


@dataclass(frozen=True)
class Problem:
    line: str  # the status line it is about: stream, replicas, calls, rate, ...
    message: str

    def __str__(self) -> str:
        return f"{self.line}: {self.message}"


@dataclass(frozen=True)
class Snapshot:
    at: datetime
    stream: StreamState
    replicas: list[Replica]
    jobs: dict[str, JobCounts]  # by job function: place_call, poll_call, cancel_call
    rate: RateSchedule
    database: DatabaseState
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def live_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "state": "healthy" if self.healthy else "degraded",
            "problems": [{"line": p.line, "message": p.message} for p in self.problems],
            "stream": {
                **{k: v for k, v in asdict(self.stream).items() if k != "consumers"},
                "consumers": [asdict(c) for c in self.stream.consumers],
            },
            "replicas": [
                {
                    "consumer": r.consumer,
                    "alive": r.alive,
                    "last_beat_age_s": round(r.last_beat_age_s, 1),
                    "host": r.beat.host if r.beat else None,
                    "pid": r.beat.pid if r.beat else None,
                    "draining": r.beat.draining if r.beat else None,
                    "running": list(r.beat.running) if r.beat else [],
                    "up_s": round(r.beat.at - r.beat.started_at, 1) if r.beat else None,
                }
                for r in self.replicas
            ],
            "jobs": {name: asdict(counts) for name, counts in self.jobs.items()},
            "rate": asdict(self.rate),
            "database": {
                **asdict(self.database),
                "dead_letters": [
                    {**asdict(d), "newest": d.newest.isoformat() if d.newest else None}
                    for d in self.database.dead_letters
                ],
            },
        }


async def gather(
    settings: Settings, client: redis.asyncio.Redis, conn: db.Executor
) -> Snapshot:
    """Read everything ``status`` shows, within GATHER_TIMEOUT_S; raises Unreachable."""
    try:
        async with asyncio.timeout(GATHER_TIMEOUT_S):
            redis_part = await _redis_part(settings, client)
    except _REDIS_DOWN as exc:
        raise Unreachable(
            f"cannot reach Redis at {redact_url(settings.redis_url)}: {_reason(exc)}"
        ) from None
    try:
        async with asyncio.timeout(GATHER_TIMEOUT_S):
            database = await _database_part(settings, conn)
    except (asyncpg.InvalidCatalogNameError, asyncpg.UndefinedTableError):
        raise Unreachable("the database is not migrated: run `voicealert migrate` first") \
            from None
    except DATABASE_UNAVAILABLE as exc:
        raise Unreachable(
            f"cannot reach Postgres at {redact_url(settings.database_url)}: {_reason(exc)}"
        ) from None
    stream, found, jobs, rate = redis_part
    snapshot = Snapshot(datetime.now(UTC), stream, found, jobs, rate, database)
    return Snapshot(**{**snapshot.__dict__, "problems": assess(snapshot, settings)})


async def _redis_part(
    settings: Settings, client: redis.asyncio.Redis
) -> tuple[StreamState, list[Replica], dict[str, JobCounts], RateSchedule]:
    keys = Keys(settings.redis_prefix)
    found = await replicas(client, keys)
    stream = await stream_state(client, keys, {r.consumer for r in found if r.alive})
    jobs = await job_counts(client, keys)
    rate = await rate_schedule(client, keys, settings.calls_per_second)
    return stream, found, jobs, rate


async def stream_state(
    client: redis.asyncio.Redis, keys: Keys, live_consumers: set[str]
) -> StreamState:
    length = int(await client.xlen(keys.events))
    memory = await client.memory_usage(keys.events) if length else 0
    try:
        groups = await client.xinfo_groups(keys.events)
    except redis.exceptions.ResponseError:  # no such key: nobody wrote or read yet
        groups = []
    group = next((g for g in groups if _text(g["name"]) == keys.consumer_group), None)
    if group is None:
        oldest = await client.xrange(keys.events, count=1)
        return StreamState(length, memory, False, length, _age_of(oldest), 0, [])
    last_delivered = _text(group["last-delivered-id"])
    unread_first = await client.xrange(keys.events, min=f"({last_delivered}", count=1)
    lag = group.get("lag")
    consumers = [
        Consumer(
            name=_text(c["name"]),
            pending=int(c["pending"]),
            idle_s=int(c["idle"]) / 1000,
            alive=_text(c["name"]) in live_consumers,
        )
        for c in await client.xinfo_consumers(keys.events, keys.consumer_group)
    ]
    return StreamState(
        length=length,
        memory_bytes=memory,
        group_exists=True,
        unread=int(lag) if lag is not None else None,
        oldest_unread_age_s=_age_of(unread_first),
        pending=int(group["pending"]),
        consumers=sorted(consumers, key=lambda c: (-c.pending, c.name)),
    )


# One pass over the job queue, counting by job function without shipping the queue over the
# network: waiting (due, no in-progress key), running (due, in-progress key), deferred.
_COUNT_JOBS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local skip = #ARGV[1]
local counts = {}
local order = {}
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local id = members[i]
  local score = tonumber(members[i + 1])
  local kind = string.match(string.sub(id, skip + 1), '^([^:]+):') or 'other'
  local c = counts[kind]
  if not c then
    c = {0, 0, 0, -1, -1}
    counts[kind] = c
    table.insert(order, kind)
  end
  if score <= now_ms then
    if redis.call('EXISTS', ARGV[2] .. id) == 1 then
      c[2] = c[2] + 1
    else
      c[1] = c[1] + 1
      if c[4] < 0 or score < c[4] then c[4] = score end
    end
  else
    c[3] = c[3] + 1
    if score > c[5] then c[5] = score end
  end
end
local out = {now_ms}
for _, kind in ipairs(order) do
  local c = counts[kind]
  table.insert(out, kind)
  for j = 1, 5 do table.insert(out, c[j]) end
end
return out
"""

async def job_counts(client: redis.asyncio.Redis, keys: Keys) -> dict[str, JobCounts]:
    raw = await client.register_script(_COUNT_JOBS)(
        keys=[keys.queue], args=[keys.prefix, in_progress_key_prefix]
    )
    now_ms = int(raw[0])
    counts = {name: JobCounts() for name in JOB_KINDS.values()}
    for i in range(1, len(raw), 6):
        kind = _text(raw[i])
        waiting, running, deferred, oldest, latest = (int(v) for v in raw[i + 1:i + 6])
        function = function_of_kind(kind) or kind
        previous = counts.get(function, JobCounts())  # settle-<status> kinds share a function
        counts[function] = _add(previous, JobCounts(
            waiting=waiting,
            running=running,
            deferred=deferred,
            oldest_wait_s=(now_ms - oldest) / 1000 if oldest >= 0 else None,
            last_due_in_s=(latest - now_ms) / 1000 if latest >= 0 else None,
        ))
    return counts


def _add(a: JobCounts, b: JobCounts) -> JobCounts:
    def pick(x: float | None, y: float | None, best: Any) -> float | None:
        present = [v for v in (x, y) if v is not None]
        return best(present) if present else None

    return JobCounts(
        waiting=a.waiting + b.waiting, running=a.running + b.running,
        deferred=a.deferred + b.deferred,
        oldest_wait_s=pick(a.oldest_wait_s, b.oldest_wait_s, max),
        last_due_in_s=pick(a.last_due_in_s, b.last_due_in_s, max),
    )


async def rate_schedule(
    client: redis.asyncio.Redis, keys: Keys, calls_per_second: float
) -> RateSchedule:
    """The GCRA key holds the next free slot (epoch ms, Redis clock): how far ahead the
    call rate is booked, i.e. when the last call waiting for its slot rings (+ one slot)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(keys.rate_limit)
        pipe.time()
        tat_raw, (seconds, micros) = await pipe.execute()
    now_ms = seconds * 1000 + micros / 1000
    try:  # epoch milliseconds, possibly with a fraction (worker/ratelimit.py)
        tat = float(tat_raw) if tat_raw is not None else 0.0
    except ValueError:
        tat = 0.0
    return RateSchedule(calls_per_second, round(max(0.0, tat - now_ms) / 1000, 3))


async def _database_part(settings: Settings, conn: db.Executor) -> DatabaseState:
    pending, error = await migrations_pending(conn)
    stuck_after = settings.ring_timeout_s + settings.poll_margin_s + STUCK_CALL_SLACK_S
    return DatabaseState(
        migrations_pending=pending,
        migrations_error=error,
        calls_last_hour=await db.calls_by_status_since(conn, 3600),
        alerts_last_hour=await db.alerts_by_status_since(conn, 3600),
        alerts_open=await db.open_alerts_by_status(conn),
        dead_letters=await db.dead_letters_waiting(conn, RECENT_LETTERS_S),
        stuck_calls=await db.stuck_calls(conn, stuck_after),
    )


async def migrations_pending(conn: db.Executor) -> tuple[list[str], str | None]:
    """Migrations in schema/migrations not applied to this database (and an error line when
    an applied one was changed, or the files are misnumbered)."""
    try:
        files = load_migrations()
    except MigrationError as exc:
        return [], str(exc)
    applied = await db.applied_migrations(conn)
    changed = [f"{m.version:04d}_{m.name}" for m in files
               if m.version in applied and applied[m.version] != m.checksum]
    pending = [f"{m.version:04d}_{m.name}" for m in files if m.version not in applied]
    error = f"changed after it was applied: {', '.join(changed)}" if changed else None
    return pending, error


# --- assessment -----------------------------------------------------------------------------


def assess(snapshot: Snapshot, settings: Settings) -> list[Problem]:
    """What is wrong, one problem per status line, worst first."""
    problems: list[Problem] = []
    stream, database = snapshot.stream, snapshot.database
    if not snapshot.live_replicas:
        problems.append(Problem("replicas", "no live worker replica: nothing reads the stream "
                                            "or places calls"))
    for consumer in stream.consumers:
        if consumer.pending and not consumer.alive:
            problems.append(Problem(
                "stream",
                f"{consumer.pending} entries pending on {consumer.name}, which has no live "
                f"replica (idle {consumer.idle_s:.0f}s; another replica takes them over after "
                f"{settings.reclaim_idle_s:g}s)",
            ))
    if stream.oldest_unread_age_s is not None and stream.oldest_unread_age_s > UNREAD_AGE_S:
        problems.append(Problem(
            "stream", f"{_count(stream.unread)} events not read yet, the oldest for "
                      f"{stream.oldest_unread_age_s:.0f}s"))
    calls = snapshot.jobs.get("place_call", JobCounts())
    for name, counts in snapshot.jobs.items():
        if counts.oldest_wait_s is not None and counts.oldest_wait_s > JOB_WAIT_S:
            problems.append(Problem(
                "jobs", f"{counts.waiting} {name} jobs due and not started, the oldest for "
                        f"{counts.oldest_wait_s:.0f}s"))
    if snapshot.rate.free_in_s > RATE_DELAY_S:
        problems.append(Problem(
            "call rate", f"booked {snapshot.rate.free_in_s:.0f}s ahead at "
                         f"{snapshot.rate.calls_per_second:g}/s: {calls.deferred} calls wait "
                         "for their slot"))
    if database.stuck_calls:
        problems.append(Problem(
            "calls", f"{database.stuck_calls} calls at the provider with no news for longer "
                     "than the ring timeout allows"))
    recent = sum(d.recent for d in database.dead_letters)
    if recent:
        problems.append(Problem(
            "dead letters", f"{recent} new in the last hour (voicealert dlq list --since 1h)"))
    if database.migrations_pending:
        problems.append(Problem(
            "migrations", f"not applied: {', '.join(database.migrations_pending)} "
                          "(run voicealert migrate)"))
    if database.migrations_error:
        problems.append(Problem("migrations", database.migrations_error))
    return problems


# --- helpers --------------------------------------------------------------------------------


def _age_of(entries: list[Any]) -> float | None:
    if not entries:
        return None
    entry_id = _text(entries[0][0])
    return max(0.0, time.time() - int(entry_id.partition("-")[0]) / 1000)


def _count(value: int | None) -> str:
    return "some" if value is None else str(value)


def _numeric(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (0, text)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, TimeoutError):
        text = f"no answer within {GATHER_TIMEOUT_S:g}s"
    return " ".join(text.split())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
