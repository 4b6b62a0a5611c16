"""Every SQL statement voicealert runs, in one module, behind small typed functions.

Reading this file top to bottom tells what the service does to Postgres: groups, alerts and
their calls, duplicate bookkeeping, call status updates (monotonic), dead letters. The rows
it returns are the dataclasses of ``worker.models``; statuses are passed as parameters from
its enums, so the SQL spells no status of its own.

Every statement that changes ``calls.status`` also writes the change to ``call_events``, in
the same statement (a data-modifying CTE), with the ``StatusSource`` its caller gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import NamedTuple

import asyncpg

from schema import DEDUP_WINDOW_MAX_S, DEFAULT_ROUND_DELAY_S, DEFAULT_ROUNDS, Member
from worker import connections
from worker.models import (
    ACKNOWLEDGEABLE_ALERT_STATUSES,
    ANSWERED_CALL_STATUSES,
    CALLING_STOPPED_ALERT_STATUSES,
    HUMAN,
    LIVE_PROVIDER_STATUSES,
    MACHINE_ANSWERS,
    OPEN_ALERT_STATUSES,
    RANG_NOBODY_ALERT_STATUSES,
    RESOLVABLE_ALERT_STATUSES,
    AlertCall,
    AlertCallEvent,
    AlertProgress,
    AlertRow,
    AlertStatus,
    ApiToken,
    CallEvent,
    CallJob,
    CallRef,
    CallRow,
    CallStatus,
    CallUpdate,
    DeadLetter,
    DedupWindow,
    Duplicate,
    DuplicateSpan,
    Group,
    Keypress,
    LetterSummary,
    LineClaim,
    LiveCall,
    NewAlert,
    NewDeadLetter,
    OpenAlert,
    RoundStart,
    StatusSource,
    StoredAlert,
    TokenScope,
    UnfinishedCall,
)

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Executor = asyncpg.Pool | Connection


DEFAULT_TIMEOUT_S = 5.0  # VOICEALERT_DATABASE_TIMEOUT_S's default


async def create_pool(
    database_url: str, *, min_size: int = 1, max_size: int = 10,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> asyncpg.Pool:
    """A pool whose every wait is bounded (``worker.connections``)."""
    return await connections.open_pool(database_url, timeout_s=timeout_s, min_size=min_size,
                                       max_size=max_size)


async def connect(database_url: str, *, timeout_s: float = 10.0) -> asyncpg.Connection:
    """One connection, for commands and tests; statements bounded by ``timeout_s``."""
    return await connections.connect(database_url, timeout_s=timeout_s)


# --- groups -------------------------------------------------------------------------------


def _group(row: asyncpg.Record) -> Group:
    return Group(
        tenant=row["tenant"],
        name=row["name"],
        # Stored members were validated when written; not again on the way out (a number
        # libphonenumber's newer plans dislike must not stop its group from ringing).
        members=[Member.model_construct(name=m["name"], phone=m["phone"]) for m in row["members"]],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        rounds=row["rounds"],
        round_delay_s=row["round_delay_s"],
    )


_GROUP_COLUMNS = "tenant, name, members, created_at, updated_at, rounds, round_delay_s"


async def upsert_group(
    db: Executor, tenant: str, name: str, members: Sequence[Member], *,
    rounds: int | None = None, round_delay_s: int | None = None,
) -> Group:
    """Create the group or replace its members; rounds and round delay left None take the
    defaults on a new group and are kept on an existing one."""
    row = await db.fetchrow(
        f"""
        INSERT INTO alert_groups (tenant, name, members, rounds, round_delay_s)
        VALUES ($1, $2, $3, coalesce($4::int, $6::int), coalesce($5::int, $7::int))
        ON CONFLICT (tenant, name)
        DO UPDATE SET members = EXCLUDED.members,
                      rounds = coalesce($4::int, alert_groups.rounds),
                      round_delay_s = coalesce($5::int, alert_groups.round_delay_s),
                      updated_at = now()
        RETURNING {_GROUP_COLUMNS}
        """,  # noqa: S608 - the interpolated part is a constant column list
        tenant,
        name,
        [m.model_dump() for m in members],
        rounds,
        round_delay_s,
        DEFAULT_ROUNDS,
        DEFAULT_ROUND_DELAY_S,
    )
    assert row is not None
    return _group(row)


async def list_groups(db: Executor, tenant: str) -> list[Group]:
    rows = await db.fetch(
        f"SELECT {_GROUP_COLUMNS} FROM alert_groups"  # noqa: S608 - constant columns
        " WHERE tenant = $1 ORDER BY name",
        tenant,
    )
    return [_group(r) for r in rows]


async def get_group(db: Executor, tenant: str, name: str) -> Group | None:
    row = await db.fetchrow(
        f"SELECT {_GROUP_COLUMNS} FROM alert_groups"  # noqa: S608 - constant columns
        " WHERE tenant = $1 AND name = $2",
        tenant,
        name,
    )
    return _group(row) if row else None


async def get_groups(db: Executor, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Group]:
    """Groups for a batch of (tenant, name) in one query, each read once however many of
    the keys name it (a storm's batch names one group a thousand times)."""
    if not keys:
        return {}
    keys = list(dict.fromkeys(keys))
    rows = await db.fetch(
        """
        SELECT g.tenant, g.name, g.members, g.created_at, g.updated_at, g.rounds,
               g.round_delay_s
        FROM alert_groups g
        JOIN unnest($1::text[], $2::text[]) AS k(tenant, name)
          ON g.tenant = k.tenant AND g.name = k.name
        """,
        [k[0] for k in keys],
        [k[1] for k in keys],
    )
    return {(r["tenant"], r["name"]): _group(r) for r in rows}


async def delete_group(db: Executor, tenant: str, name: str) -> bool:
    result = await db.execute(
        "DELETE FROM alert_groups WHERE tenant = $1 AND name = $2", tenant, name
    )
    return bool(result == "DELETE 1")


# --- alerts and their calls ---------------------------------------------------------------


async def create_alert(
    conn: Connection, alert: NewAlert, members: Sequence[Member], source: StatusSource
) -> StoredAlert:
    """The alert row and one pending call per member, in one transaction, idempotent on the
    event: a redelivered event returns the rows it created the first time (``created`` is
    False), except that an event which rang nobody is taken up again.

    A new alert is one statement after the lock (``_CREATE_ALERT``: the alert, its calls and
    their first events, returning them): four round trips in all instead of six, on the path
    every event takes. A redelivered one reads its rows back."""
    async with conn.transaction():
        await conn.execute(_LOCK_DUPLICATE_OWNERS, [alert.tenant], [alert.event_key])
        rows = await conn.fetch(
            _CREATE_ALERT,
            alert.tenant,
            alert.alert_id,
            alert.event_key,
            alert.group_name,
            alert.message,
            alert.mode,
            alert.status,
            alert.dedup_window_s,
            alert.metadata,
            alert.event_id,
            alert.stream_id,
            list(RANG_NOBODY_ALERT_STATUSES),
            AlertStatus.CALLING,
            alert.rounds,
            alert.round_delay_s,
            list(range(len(members))),
            [m.name for m in members],
            [m.phone for m in members],
            source,
        )
        created = bool(rows)
        if created:
            row = rows[0]
            calls = [r for r in rows if r["id"] is not None]
        else:
            stored = await conn.fetchrow(
                "SELECT id AS alert, status AS alert_status, mode FROM alerts"
                " WHERE tenant = $1 AND event_key = $2",
                alert.tenant,
                alert.event_key,
            )
            assert stored is not None
            row = stored
            calls = await conn.fetch(
                "SELECT id, position, status FROM calls WHERE alert = $1 ORDER BY position",
                row["alert"],
            )
    return StoredAlert(
        id=row["alert"],
        status=AlertStatus(row["alert_status"]),
        mode=row["mode"],
        created=created,
        calls=[
            CallRef(id=c["id"], position=c["position"], status=CallStatus(c["status"]))
            for c in calls
        ],
    )


# The alert (inserted, or taken up again when it rang nobody: then no row comes back for an
# alert already stored), one call per member with its first call_events row, and every call
# of the alert: those inserted here, and any from before (a statement does not see what its
# own CTEs insert, so the two sets do not overlap). One row per call, ordered by position;
# one row with NULL call columns when there is none.
_CREATE_ALERT = """
WITH alert AS (
    INSERT INTO alerts (tenant, alert_id, event_key, group_name, message, mode, status,
                        dedup_window_s, metadata, event_id, stream_id, duplicates,
                        rounds, round_delay_s)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
            (SELECT count(*) FROM duplicate_events
              WHERE tenant = $1 AND owner_key = $3), $14, $15)
    ON CONFLICT (tenant, event_key) DO UPDATE SET
        group_name = EXCLUDED.group_name, message = EXCLUDED.message,
        mode = EXCLUDED.mode, status = EXCLUDED.status, metadata = EXCLUDED.metadata,
        dedup_window_s = EXCLUDED.dedup_window_s, stream_id = EXCLUDED.stream_id,
        rounds = EXCLUDED.rounds, round_delay_s = EXCLUDED.round_delay_s,
        updated_at = now()
    -- an event that rang nobody (no such group yet) is processed again when re-sent
    WHERE alerts.status = ANY($12::text[]) AND EXCLUDED.status = $13
    RETURNING id, status, mode
), inserted AS (
    INSERT INTO calls (alert, position, member_name, phone)
    SELECT alert.id, m.position, m.name, m.phone
    FROM alert, unnest($16::int[], $17::text[], $18::text[]) AS m(position, name, phone)
    ON CONFLICT (alert, round, position) DO NOTHING
    RETURNING id, position, status
), events AS (
    INSERT INTO call_events (call, status, source)
    SELECT id, status, $19 FROM inserted ORDER BY id
), calls_of AS (
    SELECT id, position, status FROM inserted
    UNION ALL
    SELECT c.id, c.position, c.status FROM calls c JOIN alert ON c.alert = alert.id
)
SELECT alert.id AS alert, alert.status AS alert_status, alert.mode,
       calls_of.id, calls_of.position, calls_of.status
FROM alert LEFT JOIN calls_of ON true
ORDER BY calls_of.position
"""


# Counting a duplicate and creating the alert it counts toward take the same transaction
# lock: without it, a replica counting while another creates the alert (each statement blind
# to the other's uncommitted row) lost the count. Taken in a fixed order: no deadlock.
_LOCK_DUPLICATE_OWNERS = """
SELECT pg_advisory_xact_lock(hashtextextended(o.tenant || chr(31) || o.owner_key, 0))
FROM (SELECT DISTINCT tenant, owner_key FROM unnest($1::text[], $2::text[]) AS u(tenant, owner_key)
      ORDER BY tenant, owner_key) o
"""


async def record_duplicates(db: Executor, duplicates: Sequence[Duplicate]) -> None:
    """Count suppressed events on the alert that holds the lock, once per stream entry."""
    if not duplicates:
        return
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            await record_duplicates(conn, duplicates)
        return
    runs = _duplicate_runs(duplicates)
    try:
        await _record_duplicate_runs(db, runs, redelivered=False)
    except asyncpg.UniqueViolationError:
        # An entry already counted (delivered again after a crash before its XACK): the
        # batch again, skipping the rows that exist. Rare, so not the statement every batch
        # pays for (ON CONFLICT costs Postgres about half as much again per row).
        await _record_duplicate_runs(db, runs, redelivered=True)


async def _record_duplicate_runs(
    db: Connection, runs: Sequence[tuple[str, str, str, str | None, str]], *,
    redelivered: bool,
) -> None:
    async with db.transaction():
        await db.execute(_LOCK_DUPLICATE_OWNERS, [r[0] for r in runs], [r[1] for r in runs])
        await db.execute(
            _COUNT_REDELIVERED_DUPLICATES if redelivered else _COUNT_DUPLICATES,
            [r[0] for r in runs],
            [r[1] for r in runs],
            [r[2] for r in runs],
            [r[3] for r in runs],
            [r[4] for r in runs],
            _STREAM_ID_SEPARATOR,
        )


# Stream entry ids are "<ms>-<seq>": digits and one dash, never this separator.
_STREAM_ID_SEPARATOR = ","


def _duplicate_runs(
    duplicates: Sequence[Duplicate],
) -> list[tuple[str, str, str, str | None, str]]:
    """The duplicates as (tenant, owner_key, alert_id, event_id, stream ids joined), one per
    distinct event they repeat: a storm's thousand rows go to Postgres as one run, not as
    five thousand array elements for asyncpg to encode one by one."""
    runs: dict[tuple[str, str, str, str | None], list[str]] = {}
    for d in duplicates:
        runs.setdefault((d.tenant, d.owner_key, d.alert_id, d.event_id), []).append(d.stream_id)
    joined = []
    for key, stream_ids in runs.items():
        ids = _STREAM_ID_SEPARATOR.join(stream_ids)
        if ids.count(_STREAM_ID_SEPARATOR) != len(stream_ids) - 1:
            raise ValueError(f"a stream id contains {_STREAM_ID_SEPARATOR!r}: {stream_ids!r}")
        joined.append((*key, ids))
    return joined


# One row per suppressed entry, and the alert's count raised by the rows written. The plain
# INSERT fails on an entry already recorded (the primary key); the redelivered variant skips
# it, so an entry is counted once however often it is delivered.
_COUNT_DUPLICATES_TEMPLATE = """
WITH inserted AS (
    INSERT INTO duplicate_events (tenant, owner_key, stream_id, alert_id, event_id)
    SELECT r.tenant, r.owner_key, s.stream_id, r.alert_id, r.event_id
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
           AS r(tenant, owner_key, alert_id, event_id, stream_ids),
         unnest(string_to_array(r.stream_ids, $6)) AS s(stream_id)
    {on_conflict}
    RETURNING tenant, owner_key
), counts AS (
    SELECT tenant, owner_key, count(*) AS n FROM inserted GROUP BY tenant, owner_key
)
UPDATE alerts a
SET duplicates = a.duplicates + counts.n, last_duplicate_at = now(), updated_at = now()
FROM counts
WHERE a.tenant = counts.tenant AND a.event_key = counts.owner_key
"""
_COUNT_DUPLICATES = _COUNT_DUPLICATES_TEMPLATE.format(on_conflict="")
_COUNT_REDELIVERED_DUPLICATES = _COUNT_DUPLICATES_TEMPLATE.format(
    on_conflict="ON CONFLICT DO NOTHING")


# How each way of stopping an alert marks it (constant SQL, chosen by the caller's verb).
_STOP_SET = {
    AlertStatus.RESOLVED: "resolved_at = now()",
    AlertStatus.ACKNOWLEDGED: "acknowledged_at = now(), acknowledged_by = $11",
}


async def _stop_alerts(
    db: Executor,
    *,
    status: AlertStatus,
    applies_to: frozenset[AlertStatus],
    tenant: str | None = None,
    alert_id: str | None = None,
    alert_pks: Sequence[int] = (),
    by: str | None = None,
    reason: str,
    source: StatusSource,
) -> list[LiveCall]:
    """Mark alerts ``status`` (chosen by tenant and alert_id, or by row ids), drop a round
    waiting for its delay, and cancel their calls not yet dialed.

    Returns the calls already at the provider and not answered, for the caller to cancel
    there."""
    # Who acknowledged is a parameter of the acknowledgement only (Postgres refuses a
    # parameter a statement does not use: its type cannot be inferred).
    by_parameter = [by] if status == AlertStatus.ACKNOWLEDGED else []
    rows = await db.fetch(
        f"""
        WITH stopped AS (
            UPDATE alerts SET status = $3, {_STOP_SET[status]}, next_round_at = NULL,
                              updated_at = now()
            WHERE ((tenant = $1 AND alert_id = $2) OR id = ANY($9::bigint[]))
              AND status = ANY($4::text[])
            RETURNING id
        ), canceled AS (
            UPDATE calls SET status = $5, updated_at = now(), ended_at = now(),
                             error_message = $8
            WHERE alert IN (SELECT id FROM stopped) AND status = $6
            RETURNING id, status
        ), recorded AS (
            INSERT INTO call_events (call, status, source, detail)
            SELECT id, status, $7, $8 FROM canceled ORDER BY id
        )
        SELECT c.id, c.provider_sid, c.status FROM calls c
        WHERE c.alert IN (SELECT id FROM stopped)
          AND c.status = ANY($10::text[])
          AND c.id NOT IN (SELECT id FROM canceled)
        ORDER BY c.id
        """,  # noqa: S608 - the interpolated part is one of the constants of _STOP_SET
        tenant,
        alert_id,
        status,
        list(applies_to),
        CallStatus.CANCELED,
        CallStatus.PENDING,
        source,
        reason,
        list(alert_pks),
        [CallStatus.DIALING, CallStatus.QUEUED, CallStatus.RINGING],
        *by_parameter,
    )
    return [
        LiveCall(id=r["id"], provider_sid=r["provider_sid"], status=CallStatus(r["status"]))
        for r in rows
    ]


async def resolve_alert(
    db: Executor, tenant: str, alert_id: str, source: StatusSource
) -> list[LiveCall]:
    """Mark the alert's open rows resolved and cancel its calls not yet dialed.

    Returns the calls already at the provider and not answered, for the caller to cancel there.
    """
    return await _stop_alerts(
        db, status=AlertStatus.RESOLVED, applies_to=RESOLVABLE_ALERT_STATUSES,
        tenant=tenant, alert_id=alert_id, reason="alert resolved before the call was placed",
        source=source,
    )


async def acknowledge_alert(
    db: Executor, tenant: str, alert_id: str, by: str | None, source: StatusSource
) -> list[LiveCall]:
    """Someone is on it: the alert's rows still calling (or out of rounds) become
    acknowledged, by whom and when; no further call or round. Returns the calls at the
    provider and not answered, for the caller to hang up there."""
    return await _stop_alerts(
        db, status=AlertStatus.ACKNOWLEDGED, applies_to=ACKNOWLEDGEABLE_ALERT_STATUSES,
        tenant=tenant, alert_id=alert_id, by=by,
        reason="alert acknowledged before the call was placed", source=source,
    )


async def acknowledge_call(conn: Connection, call_id: int) -> Keypress | None:
    """The member on this call pressed 1: it is recorded on the call (and the rows merged
    into it: one call, several alerts), and every alert spoken on it is acknowledged by that
    member. None when there is no such call."""
    async with conn.transaction():
        rows = await conn.fetch(
            """
            UPDATE calls SET acknowledged_at = coalesce(acknowledged_at, now()),
                             acknowledged_by = coalesce(acknowledged_by, member_name),
                             updated_at = now()
            WHERE id = $1 OR merged_into = $1
            RETURNING id, alert, member_name
            """,
            call_id,
        )
        if not rows:
            return None
        member = next(r["member_name"] for r in rows if r["id"] == call_id)
        alerts = sorted({r["alert"] for r in rows})
        acknowledged = await conn.fetchval(
            "SELECT count(*) FROM alerts WHERE id = ANY($1::bigint[]) AND status = ANY($2)",
            alerts,
            list(ACKNOWLEDGEABLE_ALERT_STATUSES),
        )
        to_cancel = await _stop_alerts(
            conn, status=AlertStatus.ACKNOWLEDGED, applies_to=ACKNOWLEDGEABLE_ALERT_STATUSES,
            alert_pks=alerts, by=member, reason="alert acknowledged before the call was placed",
            source=StatusSource.CANCEL,
        )
    return Keypress(member_name=member, acknowledged=int(acknowledged), to_cancel=to_cancel)


# Another call than $2 to the number $1 is being placed or is live, and not stuck for $4 s.
_LINE_IN_USE = """
    SELECT count(*) FROM calls
    WHERE phone = $1 AND id <> $2 AND status = ANY($3::text[])
      AND coalesce(attempt_started_at, updated_at) > now() - make_interval(secs => $4)
"""


async def line_in_use(db: Executor, call_id: int, phone: str, *, stuck_s: float) -> bool:
    """Whether another call to ``phone`` is being placed or is live (as ``claim_line``
    decides it, without taking the number)."""
    return bool(await db.fetchval(
        _LINE_IN_USE, phone, call_id, [CallStatus.DIALING, *LIVE_PROVIDER_STATUSES], stuck_s))


async def mark_waiting(db: Executor, call_ids: Sequence[int]) -> None:
    """These pending calls are due (their jobs are queued): calls that take their number
    first may speak for them (``claim_line`` merges waiting calls)."""
    await db.execute(
        """UPDATE calls SET waiting_since = coalesce(waiting_since, now())
           WHERE id = ANY($1::bigint[]) AND status = $2 AND merged_into IS NULL""",
        list(call_ids), CallStatus.PENDING,
    )


# What claim_line decides in one statement, under the lock on the number taken before it (a
# statement's snapshot is taken when it starts, so the lock must be held by then: only then
# does it see the claim that held the lock before it): the call marked waiting; whether the
# number is in use (_LINE_IN_USE's test); the merge window left; the calls waiting for the
# number; and, when the number is free, the window over and nobody waiting, the attempt
# started (start_attempt's update) in the same update.
_BEGIN_AND_LOCK = (
    "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended(phone, 9)) FROM calls WHERE id = %d"
)
_CLAIM = """
WITH me AS (
    SELECT c.id, c.phone, a.message,
           extract(epoch FROM a.received_at + make_interval(secs => $3) - now())
               AS window_left_s
    FROM calls c JOIN alerts a ON a.id = c.alert
    WHERE c.id = $1 AND c.status = $2 AND c.merged_into IS NULL
), busy AS (
    SELECT EXISTS (
        SELECT 1 FROM calls o, me
        WHERE o.phone = me.phone AND o.id <> me.id AND o.status = ANY($4::text[])
          AND coalesce(o.attempt_started_at, o.updated_at) > now() - make_interval(secs => $5)
    ) AS busy
), waiting AS (
    SELECT o.id, oa.message, o.waiting_since FROM calls o JOIN alerts oa ON oa.id = o.alert, me
    WHERE o.phone = me.phone AND o.id <> me.id AND o.status = $2 AND o.merged_into IS NULL
      AND o.waiting_since IS NOT NULL AND NOT oa.status = ANY($6::text[])
      AND oa.received_at > now() - make_interval(secs => $7)
    ORDER BY o.waiting_since, o.id
    LIMIT 100
), decided AS (
    SELECT me.id, NOT busy.busy AND me.window_left_s <= 0
                  AND NOT EXISTS (SELECT 1 FROM waiting) AS take
    FROM me, busy
), updated AS (
    UPDATE calls c SET
        waiting_since = coalesce(c.waiting_since, now()),
        status = CASE WHEN d.take THEN $8 ELSE c.status END,
        attempts = c.attempts + CASE WHEN d.take THEN 1 ELSE 0 END,
        attempt_started_at = CASE WHEN d.take THEN now() ELSE c.attempt_started_at END,
        updated_at = CASE WHEN d.take THEN now() ELSE c.updated_at END
    FROM decided d
    WHERE c.id = d.id
    RETURNING c.id, c.status, c.attempts, d.take
), recorded AS (
    INSERT INTO call_events (call, status, source, detail)
    SELECT id, status, $9, 'attempt ' || attempts FROM updated WHERE take
)
SELECT me.message, me.window_left_s, busy.busy,
       (SELECT attempts FROM updated WHERE take) AS attempt,
       coalesce((SELECT array_agg(id ORDER BY waiting_since, id) FROM waiting), '{}')
           AS waiting_ids,
       coalesce((SELECT array_agg(message ORDER BY waiting_since, id) FROM waiting), '{}')
           AS waiting_messages
FROM me, busy
"""


async def claim_line(
    conn: Connection,
    call_id: int,
    *,
    window_s: float,
    stuck_s: float,
    max_age_s: float,
    fitting: Callable[[list[str]], int],
    source: StatusSource,
) -> LineClaim:
    """One ring at a time per number: may this pending call be placed now, and with which
    other calls to the same number?

    Under an advisory lock on the number (every replica takes it), the call is marked
    waiting; when another call to the number is being placed or is live (and not stuck
    longer than ``stuck_s``), or its alert arrived less than ``window_s`` ago, it waits.
    Otherwise it takes the number: the calls waiting for it (oldest first, as many as
    ``fitting`` says one call can speak) are merged into it, and all of them start an
    attempt together, in the same transaction, so no other claim can see the number free.

    Three round trips when nobody else waits for the number (the transaction begun and the
    lock taken in one, the decision, the commit); two more to merge."""
    # One simple-protocol query (no parameters: the call id is an int, formatted as one).
    async with _transaction_begun_by(conn, _BEGIN_AND_LOCK % int(call_id)):
        return await _claim_locked(conn, call_id, window_s=window_s, stuck_s=stuck_s,
                                   max_age_s=max_age_s, fitting=fitting, source=source)


@contextlib.asynccontextmanager
async def _transaction_begun_by(conn: Connection, begin: str) -> AsyncIterator[None]:
    """A transaction that ``begin`` starts (and takes its locks in, one round trip),
    committed when the block ends, rolled back when it raises."""
    try:
        await conn.execute(begin)
        yield
    except BaseException:
        if not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


async def _claim_locked(
    conn: Connection,
    call_id: int,
    *,
    window_s: float,
    stuck_s: float,
    max_age_s: float,
    fitting: Callable[[list[str]], int],
    source: StatusSource,
) -> LineClaim:
    row = await conn.fetchrow(
        _CLAIM,
        call_id,
        CallStatus.PENDING,
        window_s,
        [CallStatus.DIALING, *LIVE_PROVIDER_STATUSES],
        stuck_s,
        list(CALLING_STOPPED_ALERT_STATUSES),
        max_age_s,
        CallStatus.DIALING,
        source,
    )
    if row is None:
        return LineClaim(kind="gone")  # no such call, merged into another, or not pending
    if row["busy"]:
        return LineClaim(kind="busy")
    if row["window_left_s"] > 0:
        return LineClaim(kind="window", wait_s=float(row["window_left_s"]))
    if row["attempt"] is not None:  # nobody waiting: placed alone
        return LineClaim(kind="claimed", attempt=int(row["attempt"]), merged=[],
                         messages=[row["message"]])
    waiting = list(zip(row["waiting_ids"], row["waiting_messages"], strict=True))
    count = max(1, fitting([row["message"], *[message for _, message in waiting]]))
    taken = sorted(waiting[: count - 1], key=lambda w: int(w[0]))
    merged = [int(w[0]) for w in taken]
    if merged:
        await conn.execute(
            "UPDATE calls SET merged_into = $1, updated_at = now() WHERE id = ANY($2::bigint[])",
            call_id,
            merged,
        )
    attempt = await start_attempt(conn, call_id, source)
    # What the call speaks, as line_messages reads it: its own alert's, then by call id.
    messages = [row["message"], *[message for _, message in taken]]
    return LineClaim(kind="claimed", attempt=attempt, merged=merged, messages=messages)


# The numbers of several calls locked in one query, in one order (two chunks taking locks in
# opposite orders would wait for each other forever).
_BEGIN_AND_LOCK_ALL = (
    "BEGIN; SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(phone, 9)"
    " AS h FROM calls WHERE id = ANY('{%s}'::bigint[]) ORDER BY h) AS numbers"
)
# claim_line's decision for several calls at once, taking only the simple case: the call is
# the only one of them to its number, the number is free, the merge window is over and no
# other call waits for the number. The attempts of the calls taken start in the statement.
_CLAIM_ALL = """
WITH me AS (
    SELECT c.id, c.phone, a.message
    FROM calls c JOIN alerts a ON a.id = c.alert
    WHERE c.id = ANY($1::bigint[]) AND c.status = $2 AND c.merged_into IS NULL
      AND a.received_at + make_interval(secs => $3) <= now()
), lone AS (
    SELECT * FROM me WHERE phone IN (SELECT phone FROM me GROUP BY phone HAVING count(*) = 1)
), free AS (
    SELECT l.id, l.message FROM lone l
    WHERE NOT EXISTS (
        SELECT 1 FROM calls o
        WHERE o.phone = l.phone AND o.id <> l.id AND o.status = ANY($4::text[])
          AND coalesce(o.attempt_started_at, o.updated_at) > now() - make_interval(secs => $5)
    ) AND NOT EXISTS (
        SELECT 1 FROM calls o JOIN alerts oa ON oa.id = o.alert
        WHERE o.phone = l.phone AND o.id <> l.id AND o.status = $2 AND o.merged_into IS NULL
          AND o.waiting_since IS NOT NULL AND NOT oa.status = ANY($6::text[])
          AND oa.received_at > now() - make_interval(secs => $7)
    )
), attempt AS (
    UPDATE calls c SET status = $8, attempts = c.attempts + 1, attempt_started_at = now(),
                       updated_at = now(), waiting_since = coalesce(c.waiting_since, now())
    FROM free f
    WHERE c.id = f.id
    RETURNING c.id, c.status, c.attempts
), recorded AS (
    INSERT INTO call_events (call, status, source, detail)
    SELECT id, status, $9, 'attempt ' || attempts FROM attempt ORDER BY id
)
SELECT a.id, a.attempts, f.message FROM attempt a JOIN free f ON f.id = a.id
"""


async def claim_lines(
    conn: Connection,
    call_ids: Sequence[int],
    *,
    window_s: float,
    stuck_s: float,
    max_age_s: float,
    source: StatusSource,
) -> dict[int, LineClaim]:
    """``claim_line`` for several pending calls in one transaction of three round trips,
    under the locks of all their numbers: the calls that are simply free to place (alone
    to their number in ``call_ids``, nobody else on it or waiting for it, the merge window
    over) are claimed; for the others nothing changed (None), and ``claim_line`` decides."""
    if not call_ids:
        return {}
    async with _transaction_begun_by(
            conn, _BEGIN_AND_LOCK_ALL % ",".join(str(int(c)) for c in call_ids)):
        rows = await conn.fetch(
            _CLAIM_ALL,
            list(call_ids),
            CallStatus.PENDING,
            window_s,
            [CallStatus.DIALING, *LIVE_PROVIDER_STATUSES],
            stuck_s,
            list(CALLING_STOPPED_ALERT_STATUSES),
            max_age_s,
            CallStatus.DIALING,
            source,
        )
    return {row["id"]: LineClaim(kind="claimed", attempt=int(row["attempts"]),
                                 messages=[row["message"]]) for row in rows}


async def merged_calls(db: Executor, call_id: int) -> list[int]:
    """The calls merged into this one."""
    rows = await db.fetch("SELECT id FROM calls WHERE merged_into = $1 ORDER BY id", call_id)
    return [r["id"] for r in rows]


async def line_alerts(db: Executor, call_id: int) -> list[int]:
    """The alerts a call speaks for: its own, and those of the calls merged into it."""
    rows = await db.fetch(
        "SELECT DISTINCT alert FROM calls WHERE id = $1 OR merged_into = $1 ORDER BY alert",
        call_id,
    )
    return [r["alert"] for r in rows]


async def lines_alerts(db: Executor, call_ids: Sequence[int]) -> list[int]:
    """``line_alerts`` of several calls at once."""
    if not call_ids:
        return []
    rows = await db.fetch(
        "SELECT DISTINCT alert FROM calls"
        " WHERE id = ANY($1::bigint[]) OR merged_into = ANY($1::bigint[]) ORDER BY alert",
        list(call_ids),
    )
    return [r["alert"] for r in rows]


async def line_still_wanted(db: Executor, call_id: int) -> bool:
    """Whether a call (or one merged into it, or the call it was merged into) still speaks
    for an alert that is being called: then it must not be hung up for the others."""
    return bool(await db.fetchval(
        """
        WITH lead AS (SELECT coalesce(merged_into, id) AS id FROM calls WHERE id = $1)
        SELECT count(*) FROM calls c JOIN alerts a ON a.id = c.alert
        WHERE (c.id = (SELECT id FROM lead) OR c.merged_into = (SELECT id FROM lead))
          AND NOT a.status = ANY($2::text[])
        """,
        call_id,
        list(CALLING_STOPPED_ALERT_STATUSES),
    ))


async def line_messages(db: Executor, call_id: int) -> list[str]:
    """The messages a call speaks: its own alert's, then those of the calls merged into it."""
    rows = await db.fetch(
        """
        SELECT a.message FROM calls c JOIN alerts a ON a.id = c.alert
        WHERE c.id = $1 OR c.merged_into = $1
        ORDER BY c.id <> $1, c.id
        """,
        call_id,
    )
    return [r["message"] for r in rows]


_CALL_JOB = """
    SELECT c.id, c.alert, c.position, c.member_name, c.phone, c.status, c.provider_sid,
           c.attempts, c.attempt_started_at, c.created_at, a.alert_id, a.tenant,
           a.message, a.mode, a.status AS alert_status, a.received_at, c.answered_by,
           c.acknowledged_at, c.merged_into, a.stream_id
    FROM calls c JOIN alerts a ON a.id = c.alert
"""


def _call_job(row: asyncpg.Record) -> CallJob:
    return CallJob(**{**dict(row), "status": CallStatus(row["status"]),
                      "alert_status": AlertStatus(row["alert_status"])})


async def get_call(db: Executor, call_id: int) -> CallJob | None:
    row = await db.fetchrow(_CALL_JOB + " WHERE c.id = $1", call_id)
    return None if row is None else _call_job(row)


async def get_calls(db: Executor, call_ids: Sequence[int]) -> dict[int, CallJob]:
    """``get_call`` of several calls in one query (those that exist), by id."""
    if not call_ids:
        return {}
    rows = await db.fetch(_CALL_JOB + " WHERE c.id = ANY($1::bigint[])", list(call_ids))
    return {row["id"]: _call_job(row) for row in rows}


async def start_attempt(db: Executor, call_id: int, source: StatusSource) -> int | None:
    """Record an attempt before the POST (the lookup after an ambiguous failure starts from
    its time). Returns the attempt number, or None when the call is no longer dialable.

    Each attempt is a call event, a second one too (``dialing`` again): a second POST for
    the same call is worth seeing in its history."""
    value = await db.fetchval(
        """
        WITH attempt AS (
            UPDATE calls
            SET status = $2, attempts = attempts + 1, attempt_started_at = now(),
                updated_at = now()
            WHERE (id = $1 OR merged_into = $1) AND status = ANY($3::text[])
            RETURNING id, status, attempts
        ), recorded AS (
            INSERT INTO call_events (call, status, source, detail)
            SELECT id, status, $4, 'attempt ' || attempts
                   || CASE WHEN id <> $1 THEN ', merged into call ' || $1 ELSE '' END
            FROM attempt ORDER BY id
        )
        SELECT attempts FROM attempt WHERE id = $1
        """,
        call_id,
        CallStatus.DIALING,
        [CallStatus.PENDING, CallStatus.DIALING],
        source,
    )
    return int(value) if value is not None else None


async def return_to_pending(
    db: Executor, call_id: int, error_code: int | None, error: str, source: StatusSource
) -> None:
    """The provider certainly did not create the call (throttled, connection refused). The
    calls merged into it are unmerged: each waits again, and the next claim of the number
    merges what is waiting then."""
    await db.execute(
        """
        WITH returned AS (
            UPDATE calls SET status = $4, error_code = $2, error_message = $3,
                             merged_into = NULL, updated_at = now()
            WHERE (id = $1 OR merged_into = $1) AND status = $5
            RETURNING id, status
        )
        INSERT INTO call_events (call, status, source, detail)
        SELECT id, status, $6, $7 FROM returned ORDER BY id
        """,
        call_id,
        error_code,
        error,
        CallStatus.PENDING,
        CallStatus.DIALING,
        source,
        _detail(error_code, error),
    )


async def sid_is_known(db: Executor, sid: str) -> bool:
    """Whether a provider call is already recorded on some call row (not ours to adopt)."""
    return bool(await db.fetchval("SELECT 1 FROM calls WHERE provider_sid = $1", sid))


async def count_possible_duplicate(db: Executor, call_id: int) -> None:
    await db.execute(
        "UPDATE calls SET possible_duplicates = possible_duplicates + 1, updated_at = now()"
        " WHERE id = $1",
        call_id,
    )


async def advance_call(db: Executor, call_id: int, update: CallUpdate) -> bool:
    """Move a call forward to ``update.status``; never backward, never out of a terminal
    status. The rows merged into it share its provider call and move with it. Returns True
    when a row changed."""
    return bool(await advance_line(db, call_id, update))


async def advance_line(db: Executor, call_id: int, update: CallUpdate) -> list[int]:
    """``advance_call``, returning the alerts whose calls changed (what to decide again:
    the alerts the call speaks for, without reading them again)."""
    rows = await db.fetch(
        """
        WITH advanced AS (
            UPDATE calls SET
                status = $2,
                provider_sid = coalesce(provider_sid, $3),
                duration_s = coalesce($4, duration_s),
                answered_by = coalesce($5, answered_by),
                error_code = coalesce($6, error_code),
                error_message = coalesce($7, error_message),
                updated_at = now(),
                ended_at = CASE WHEN call_status_rank($2) = 5 THEN now() ELSE ended_at END
            WHERE (id = $1 OR merged_into = $1)
              AND call_status_rank(status) < call_status_rank($2)
            RETURNING id, status, alert
        ), recorded AS (
            INSERT INTO call_events (call, status, source, detail)
            SELECT id, status, $8, $9 FROM advanced ORDER BY id
        )
        SELECT DISTINCT alert FROM advanced ORDER BY alert
        """,
        call_id,
        update.status,
        update.provider_sid,
        update.duration_s,
        update.answered_by,
        update.error_code,
        update.error_message,
        update.source,
        _detail(update.error_code, update.error_message),
    )
    return [r["alert"] for r in rows]


def _detail(error_code: int | None, error_message: str | None) -> str | None:
    """What a call event says about an error: the provider's code and message."""
    if error_code is None:
        return error_message
    return f"{error_code}: {error_message}" if error_message else str(error_code)


async def apply_callback(
    conn: Connection, call_id: int, update: CallUpdate, sequence: int | None
) -> bool | None:
    """A status callback about a call (and the rows merged into it): its sid, answered-by and
    duration are kept, its status moves forward. None when there is no such call; False when
    nothing changed: a duplicate, or older than a callback applied already (by
    ``SequenceNumber``; the status could not move back anyway: rank only rises)."""
    async with conn.transaction():
        seen = await conn.fetchrow(
            "SELECT callback_sequence FROM calls WHERE id = $1 FOR UPDATE", call_id
        )
        if seen is None:
            return None
        last = seen["callback_sequence"]
        if sequence is not None and last is not None and sequence <= last:
            return False
        await conn.execute(
            """
            UPDATE calls SET
                callback_sequence = greatest(callback_sequence, $2),
                provider_sid = coalesce(provider_sid, $3),
                answered_by = coalesce($4, answered_by),
                duration_s = coalesce($5, duration_s),
                updated_at = now()
            WHERE id = $1 OR merged_into = $1
            """,
            call_id,
            sequence,
            update.provider_sid,
            update.answered_by,
            update.duration_s,
        )
        return await advance_call(conn, call_id, update)


async def record_answered_by(
    db: Executor, call_id: int, answered_by: str, sid: str | None = None
) -> bool:
    """Who picked up, as detection reported it (on the call and the rows merged into it).
    True only the first time: what to do about a machine is decided once."""
    result = await db.execute(
        """
        UPDATE calls SET answered_by = $2, provider_sid = coalesce(provider_sid, $3),
                         updated_at = now()
        WHERE (id = $1 OR merged_into = $1) AND answered_by IS NULL
        """,
        call_id,
        answered_by,
        sid,
    )
    return int(result.split()[-1]) > 0


async def record_provider_sid(db: Executor, call_id: int, sid: str) -> AlertStatus | None:
    """Attach the provider's sid (to the rows merged into the call too) even when the status
    does not move (a callback came first). Returns the status of the call's alert (None: no
    such call), read in the same statement: was it resolved or acknowledged while dialing?"""
    status = await db.fetchval(
        """
        WITH attached AS (
            UPDATE calls SET provider_sid = $2, updated_at = now()
            WHERE (id = $1 OR merged_into = $1) AND provider_sid IS NULL
        )
        SELECT a.status FROM calls c JOIN alerts a ON a.id = c.alert WHERE c.id = $1
        """,
        call_id,
        sid,
    )
    return AlertStatus(status) if status is not None else None


class Observation(NamedTuple):
    """What the provider said about a call (``record_observed_calls``)."""

    call_id: int
    sid: str
    status: str  # in our vocabulary
    answered_by: str | None = None
    duration_s: int | None = None


async def record_observed_calls(
    db: Executor, observed: Sequence[Observation], source: StatusSource
) -> dict[int, tuple[AlertStatus, list[int], bool]]:
    """What the provider said about several calls, in one statement, as
    ``record_provider_sid`` (a call just created), ``record_answered_by`` and
    ``advance_line`` would each record it: for each call and the rows merged into it, the
    sid attached, who answered (the first word kept, unless the status moves), the status
    moved forward where it is behind (a call event each), with the duration. Returns, per
    call, its alert's status (resolved or acknowledged while dialing?), the alerts whose
    calls changed, and whether who answered was learned now."""
    if not observed:
        return {}
    rows = await db.fetch(
        """
        WITH input AS (
            SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::int[])
                AS i(id, sid, status, answered_by, duration_s)
        ), line AS (
            -- Locked first, so that what is compared is the row's latest.
            SELECT c.id AS row_id, i.id AS lead, i.sid, i.status, i.answered_by, i.duration_s,
                   call_status_rank(c.status) < call_status_rank(i.status) AS advancing,
                   c.provider_sid IS NULL AS unattached,
                   i.answered_by IS NOT NULL AND c.answered_by IS NULL AS answering
            FROM input i JOIN calls c ON c.id = i.id OR c.merged_into = i.id
            ORDER BY c.id
            FOR UPDATE OF c
        ), updated AS (
            UPDATE calls c SET
                provider_sid = coalesce(c.provider_sid, l.sid),
                answered_by = CASE WHEN l.advancing THEN coalesce(l.answered_by, c.answered_by)
                                   ELSE coalesce(c.answered_by, l.answered_by) END,
                status = CASE WHEN l.advancing THEN l.status ELSE c.status END,
                duration_s = CASE WHEN l.advancing THEN coalesce(l.duration_s, c.duration_s)
                                  ELSE c.duration_s END,
                updated_at = now(),
                ended_at = CASE WHEN l.advancing AND call_status_rank(l.status) = 5 THEN now()
                                ELSE c.ended_at END
            FROM line l
            WHERE c.id = l.row_id AND (l.advancing OR l.unattached OR l.answering)
            RETURNING c.id, c.status, c.alert, l.lead, l.advancing, l.answering
        ), recorded AS (
            INSERT INTO call_events (call, status, source)
            SELECT id, status, $6 FROM updated WHERE advancing ORDER BY id
        )
        SELECT i.id, a.status AS alert_status,
               coalesce((SELECT array_agg(DISTINCT u.alert ORDER BY u.alert) FROM updated u
                         WHERE u.lead = i.id AND u.advancing), '{}') AS changed,
               EXISTS (SELECT 1 FROM updated u WHERE u.lead = i.id AND u.answering) AS learned
        FROM input i JOIN calls c ON c.id = i.id JOIN alerts a ON a.id = c.alert
        """,
        [o.call_id for o in observed],
        [o.sid for o in observed],
        [o.status for o in observed],
        [o.answered_by for o in observed],
        [o.duration_s for o in observed],
        source,
    )
    return {row["id"]: (AlertStatus(row["alert_status"]), list(row["changed"]),
                        bool(row["learned"])) for row in rows}


async def alert_progress(
    db: Executor, alert_pk: int, *, detection: bool = False
) -> AlertProgress | None:
    """Where the alert's calls stand: ``total`` and ``failed`` over every round, the rest
    in the round being called. ``answered`` counts people: a call answered by a machine (or
    one detection could not tell, ``unknown``) is not an answer, and while ``detection`` is
    on, an answered call is not one before detection said ``human``."""
    row = await db.fetchrow(
        """
        SELECT a.id, a.mode, a.status, a.round, a.rounds, a.next_round_at,
               count(c.id) AS total,
               count(c.id) FILTER (WHERE c.status = $3) AS failed,
               count(c.id) FILTER (WHERE c.round = a.round
                                     AND call_status_rank(c.status) < 5) AS open,
               count(c.id) FILTER (WHERE c.round = a.round AND (
                   (c.status = $2 AND coalesce(c.answered_by, $6) = $6)
                   OR (c.status = $5 AND (c.answered_by = $6
                                          OR (c.answered_by IS NULL AND NOT $7))))
               ) AS answered,
               (SELECT p.id FROM calls p
                 WHERE p.alert = a.id AND p.round = a.round AND p.status = $4
                 ORDER BY p.position LIMIT 1) AS next_pending,
               count(c.id) FILTER (WHERE c.round = a.round
                                     AND call_status_rank(c.status) BETWEEN 1 AND 4) AS active,
               count(c.id) FILTER (WHERE c.round = a.round AND c.status = $5
                                     AND NOT coalesce(c.answered_by = ANY($8), false))
                   AS on_the_line
        FROM alerts a LEFT JOIN calls c ON c.alert = a.id
        WHERE a.id = $1
        GROUP BY a.id
        """,
        alert_pk,
        CallStatus.COMPLETED,
        CallStatus.FAILED,
        CallStatus.PENDING,
        CallStatus.IN_PROGRESS,
        HUMAN,
        detection,
        list(MACHINE_ANSWERS),
    )
    if row is None:
        return None
    return AlertProgress(
        id=row["id"],
        mode=row["mode"],
        status=AlertStatus(row["status"]),
        total=row["total"],
        open=row["open"],
        answered=row["answered"],
        failed=row["failed"],
        next_pending=row["next_pending"] if row["active"] == 0 else None,
        on_the_line=row["on_the_line"],
        round=row["round"],
        rounds=row["rounds"],
        next_round_at=row["next_round_at"],
    )


async def end_round(db: Executor, alert_pk: int, round_: int) -> datetime | None:
    """The round ended unacknowledged and another is left: it is due a round delay from now
    (``next_round_at``, the durable record of it). Returns when; the same time again when
    this round was ended already (two calls ending at once), None when there is no next
    round (a resolve or an ack came first)."""
    due = await db.fetchval(
        """
        WITH ended AS (
            UPDATE alerts SET next_round_at = now() + make_interval(secs => round_delay_s),
                              status = $3, updated_at = now()
            WHERE id = $1 AND round = $2 AND round < rounds AND next_round_at IS NULL
              AND status = ANY($4::text[])
            RETURNING next_round_at
        )
        SELECT coalesce(
            (SELECT next_round_at FROM ended),
            (SELECT next_round_at FROM alerts WHERE id = $1 AND round = $2))
        """,
        alert_pk,
        round_,
        AlertStatus.CALLING,
        [AlertStatus.CALLING, AlertStatus.ANSWERED],
    )
    return due if isinstance(due, datetime) else None


async def start_next_round(conn: Connection, alert_pk: int) -> RoundStart | float | None:
    """The next round of an alert whose round ended unacknowledged: one pending call per
    member again (the alert's own members, in their order). Returns its calls to place; the
    seconds still to wait when it is not due yet; None when there is none (resolved,
    acknowledged, out of rounds). Run again after it started (a crash before its calls were
    queued), it returns the round's calls not placed yet."""
    async with conn.transaction():
        alert = await conn.fetchrow(
            """
            SELECT round, rounds, mode, status, next_round_at,
                   extract(epoch FROM next_round_at - now()) AS wait_s
            FROM alerts WHERE id = $1 FOR UPDATE
            """,
            alert_pk,
        )
        if alert is None or alert["status"] != AlertStatus.CALLING:
            return None
        if alert["next_round_at"] is None:
            if alert["round"] == 1:
                return None
            started = False
        elif alert["wait_s"] > 0.05:
            return float(alert["wait_s"])
        else:
            started = True
            await conn.execute(
                """
                WITH members AS (
                    SELECT DISTINCT ON (phone) position, member_name, phone
                    FROM calls WHERE alert = $1 AND round = 1
                    ORDER BY phone, position
                ), inserted AS (
                    INSERT INTO calls (alert, round, position, member_name, phone)
                    SELECT $1, $2, position, member_name, phone FROM members ORDER BY position
                    ON CONFLICT (alert, round, position) DO NOTHING
                    RETURNING id, status
                ), recorded AS (
                    INSERT INTO call_events (call, status, source, detail)
                    SELECT id, status, $3, $4 FROM inserted ORDER BY id
                )
                UPDATE alerts SET round = $2, next_round_at = NULL, updated_at = now()
                WHERE id = $1
                """,
                alert_pk,
                alert["round"] + 1,
                StatusSource.WORKER,
                f"round {alert['round'] + 1}",
            )
        calls = await conn.fetch(
            """
            SELECT c.id FROM calls c JOIN alerts a ON a.id = c.alert AND c.round = a.round
            WHERE c.alert = $1 AND c.status = $2 ORDER BY c.position
            """,
            alert_pk,
            CallStatus.PENDING,
        )
    return RoundStart(round=alert["round"] + (1 if started else 0), mode=alert["mode"],
                      started=started, pending=[c["id"] for c in calls])


async def set_alert_status(db: Executor, alert_pk: int, status: AlertStatus) -> bool:
    """Set the alert's status unless calling it has stopped (resolved or acknowledged: only a
    resolve moves an acknowledged alert on)."""
    result = await db.execute(
        "UPDATE alerts SET status = $2, updated_at = now()"
        " WHERE id = $1 AND status <> $2 AND NOT status = ANY($3::text[])",
        alert_pk,
        status,
        list(CALLING_STOPPED_ALERT_STATUSES),
    )
    return bool(result == "UPDATE 1")


async def cancel_pending_calls(
    db: Executor, alert_pk: int, reason: str, source: StatusSource
) -> int:
    result = await db.execute(
        """
        WITH canceled AS (
            UPDATE calls SET status = $3, error_message = $2, updated_at = now(),
                             ended_at = now()
            WHERE alert = $1 AND status = $4
            RETURNING id, status
        )
        INSERT INTO call_events (call, status, source, detail)
        SELECT id, status, $5, $2 FROM canceled ORDER BY id
        """,
        alert_pk,
        reason,
        CallStatus.CANCELED,
        CallStatus.PENDING,
        source,
    )
    return int(result.split()[-1])


async def list_calls(
    db: Executor,
    *,
    tenant: str | None = None,
    alert_id: str | None = None,
    status: CallStatus | None = None,
    limit: int = 1000,
    since: datetime | None = None,
    alert: int | None = None,
) -> list[CallRow]:
    rows = await db.fetch(
        """
        SELECT c.id, a.alert_id, a.tenant, c.position, c.member_name, c.phone, c.status,
               c.provider_sid, c.attempts, c.possible_duplicates, c.error_code,
               c.error_message, c.answered_by, c.duration_s, c.created_at, c.updated_at,
               c.ended_at, c.round, c.acknowledged_at, c.acknowledged_by, c.merged_into
        FROM calls c JOIN alerts a ON a.id = c.alert
        WHERE ($1::text IS NULL OR a.tenant = $1)
          AND ($2::text IS NULL OR a.alert_id = $2)
          AND ($3::text IS NULL OR c.status = $3)
          AND ($5::timestamptz IS NULL OR c.created_at >= $5)
          AND ($6::bigint IS NULL OR c.alert = $6)
        ORDER BY c.id DESC
        LIMIT $4
        """,
        tenant,
        alert_id,
        status,
        limit,
        since,
        alert,
    )
    return [CallRow(**{**dict(r), "status": CallStatus(r["status"])}) for r in reversed(rows)]


# --- dead letters -------------------------------------------------------------------------


async def insert_dead_letters(db: Executor, letters: Sequence[NewDeadLetter]) -> None:
    """Write letters once each: the same failure redelivered is not lettered twice."""
    if not letters:
        return
    await db.executemany(
        """
        INSERT INTO dead_letters (source, reason, error, payload, attempts, letter_key, call)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (letter_key) DO NOTHING
        """,
        [
            (d.source, d.reason, d.error, d.payload, d.attempts, d.letter_key, d.call)
            for d in letters
        ],
    )


_DEAD_LETTER_COLUMNS = (
    "id, source, reason, error, payload, attempts, letter_key, call, created_at, replayed_at"
)


async def list_dead_letters(
    db: Executor,
    *,
    source: str | None = None,
    since: datetime | None = None,
    include_replayed: bool = True,
    limit: int = 1000,
) -> list[DeadLetter]:
    rows = await db.fetch(
        f"""
        SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters
        WHERE ($1::text IS NULL OR source = $1)
          AND ($2::timestamptz IS NULL OR created_at >= $2)
          AND ($3 OR replayed_at IS NULL)
        ORDER BY id
        LIMIT $4
        """,  # noqa: S608 - the interpolated part is a constant column list
        source,
        since,
        include_replayed,
        limit,
    )
    return [DeadLetter(**dict(r)) for r in rows]


async def count_dead_letters(db: Executor) -> int:
    return int(await db.fetchval("SELECT count(*) FROM dead_letters"))


async def get_dead_letter(db: Executor, letter_id: int) -> DeadLetter | None:
    row = await db.fetchrow(
        f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1",  # noqa: S608
        letter_id,
    )
    return DeadLetter(**dict(row)) if row else None


async def claim_dead_letter_for_replay(db: Executor, letter_id: int) -> bool:
    """Mark a letter replayed, once: a second replay of the same letter finds it taken."""
    result = await db.execute(
        "UPDATE dead_letters SET replayed_at = now() WHERE id = $1 AND replayed_at IS NULL",
        letter_id,
    )
    return bool(result == "UPDATE 1")


async def unclaim_dead_letter(db: Executor, letter_id: int) -> None:
    await db.execute("UPDATE dead_letters SET replayed_at = NULL WHERE id = $1", letter_id)


async def purge_dead_letters(
    db: Executor, *, letter_id: int | None = None, older_than: datetime | None = None
) -> int:
    result = await db.execute(
        """
        DELETE FROM dead_letters
        WHERE ($1::bigint IS NULL OR id = $1)
          AND ($2::timestamptz IS NULL OR created_at < $2)
        """,
        letter_id,
        older_than,
    )
    return int(result.split()[-1])


async def alert_group_name(db: Executor, alert_pk: int) -> str:
    return str(await db.fetchval("SELECT group_name FROM alerts WHERE id = $1", alert_pk))


async def replayed_from_position(db: Executor, alert_pk: int, position: int) -> int | None:
    """The position of the call that a replay at ``position`` was made from (a replayed
    call is a new row after the alert's last one, and later rounds copy it at the same
    position); None when no replay sits at ``position``."""
    value = await db.fetchval(
        """
        SELECT origin.position
        FROM calls c
        JOIN call_events e ON e.call = c.id AND e.source = $3
        JOIN dead_letters d ON e.detail = 'replay of dead letter ' || d.id::text
        JOIN calls origin ON origin.id = (d.payload->>'call_id')::bigint
        WHERE c.alert = $1 AND c.position = $2 AND origin.alert = $1
        ORDER BY e.id LIMIT 1
        """,
        alert_pk,
        position,
        StatusSource.OPERATOR,
    )
    return None if value is None else int(value)


async def add_replay_call(
    db: Executor, alert_pk: int, member_name: str, phone: str, source: StatusSource, detail: str
) -> int:
    """A replayed call is a new row after the alert's last one: the failed row keeps its
    history (a terminal status never moves back), and the alert is calling again."""
    call_id = await db.fetchval(
        """
        WITH reopened AS (
            UPDATE alerts SET status = $4, updated_at = now()
            WHERE id = $1 AND NOT status = ANY($5::text[])
            RETURNING id
        ), inserted AS (
            INSERT INTO calls (alert, round, position, member_name, phone)
            SELECT $1, (SELECT round FROM alerts WHERE id = $1),
                   (SELECT max(position) + 1 FROM calls WHERE alert = $1), $2, $3
            RETURNING id, status
        ), recorded AS (
            INSERT INTO call_events (call, status, source, detail)
            SELECT id, status, $6, $7 FROM inserted
        )
        SELECT id FROM inserted
        """,
        alert_pk,
        member_name,
        phone,
        AlertStatus.CALLING,
        list(CALLING_STOPPED_ALERT_STATUSES),
        source,
        detail,
    )
    return int(call_id)


async def call_events(db: Executor, call_id: int) -> list[CallEvent]:
    """A call's status history, oldest first."""
    rows = await db.fetch(
        "SELECT id, call, status, source, detail, at FROM call_events WHERE call = $1"
        " ORDER BY id",
        call_id,
    )
    return [
        CallEvent(id=r["id"], call=r["call"], status=CallStatus(r["status"]),
                  source=StatusSource(r["source"]), detail=r["detail"], at=r["at"])
        for r in rows
    ]


# --- alerts read back (the HTTP API, `voicealert alerts`) --------------------------------

_ALERT_COLUMNS = (
    "id, tenant, alert_id, group_name, message, mode, status, event_id, stream_id, duplicates,"
    " last_duplicate_at, received_at, updated_at, resolved_at, acknowledged_at,"
    " acknowledged_by, round, rounds, next_round_at"
)


def _alert_row(row: asyncpg.Record, calls: list[AlertCall]) -> AlertRow:
    return AlertRow(**{**dict(row), "status": AlertStatus(row["status"]), "calls": calls})


async def alerts_with_calls(
    db: Executor, tenant: str, alert_id: str, *, limit: int
) -> list[AlertRow]:
    """The newest ``limit`` alert rows of ``alert_id`` in ``tenant``, each with its calls."""
    rows = await db.fetch(
        f"""
        SELECT {_ALERT_COLUMNS} FROM alerts
        WHERE tenant = $1 AND alert_id = $2
        ORDER BY received_at DESC, id DESC
        LIMIT $3
        """,  # noqa: S608 - the interpolated part is a constant column list
        tenant,
        alert_id,
        limit,
    )
    if not rows:
        return []
    calls = await db.fetch(
        """
        SELECT alert, id, round, position, member_name, phone, status, attempts, error_code,
               error_message, answered_by, duration_s, created_at, updated_at, ended_at,
               acknowledged_at, acknowledged_by
        FROM calls WHERE alert = ANY($1::bigint[])
        ORDER BY alert, round, position
        """,
        [r["id"] for r in rows],
    )
    by_alert: dict[int, list[AlertCall]] = {r["id"]: [] for r in rows}
    for c in calls:
        fields = {k: v for k, v in dict(c).items() if k != "alert"}
        by_alert[c["alert"]].append(AlertCall(**{**fields, "status": CallStatus(c["status"])}))
    return [_alert_row(r, by_alert[r["id"]]) for r in rows]


async def list_alerts(
    db: Executor,
    tenant: str | None,
    *,
    status: AlertStatus | None = None,
    since: datetime | None = None,
    before_id: int | None = None,
    limit: int = 50,
) -> list[AlertRow]:
    """A page of the tenant's alerts (every tenant's when None), newest first (by row id);
    ``before_id`` is the cursor: the id of the last row of the previous page. Calls are not
    read (``calls`` is empty)."""
    rows = await db.fetch(
        f"""
        SELECT {_ALERT_COLUMNS} FROM alerts
        WHERE ($1::text IS NULL OR tenant = $1)
          AND ($2::text IS NULL OR status = $2)
          AND ($3::timestamptz IS NULL OR received_at >= $3)
          AND ($4::bigint IS NULL OR id < $4)
        ORDER BY id DESC
        LIMIT $5
        """,  # noqa: S608 - the interpolated part is a constant column list
        tenant,
        status,
        since,
        before_id,
        limit,
    )
    return [_alert_row(r, []) for r in rows]


async def alert_call_counts(db: Executor, alert_pks: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Alert row id → (calls, calls a person answered: not a machine), for ``alerts list``."""
    rows = await db.fetch(
        """
        SELECT alert, count(*) AS calls,
               count(*) FILTER (WHERE status = ANY($2::text[])
                                  AND coalesce(answered_by, $3) = $3) AS answered
        FROM calls WHERE alert = ANY($1::bigint[]) GROUP BY alert
        """,
        list(alert_pks),
        list(ANSWERED_CALL_STATUSES),
        HUMAN,
    )
    return {r["alert"]: (r["calls"], r["answered"]) for r in rows}


async def duplicate_span(db: Executor, alert_pk: int) -> DuplicateSpan:
    """The triggers this alert's dedup lock suppressed: how many, the first and the last."""
    row = await db.fetchrow(
        """
        SELECT count(d.*) AS count, min(d.received_at) AS first, max(d.received_at) AS last
        FROM alerts a JOIN duplicate_events d
          ON d.tenant = a.tenant AND d.owner_key = a.event_key
        WHERE a.id = $1
        """,
        alert_pk,
    )
    assert row is not None
    return DuplicateSpan(count=row["count"], first=row["first"], last=row["last"])


async def alert_call_events(db: Executor, alert_pk: int) -> list[AlertCallEvent]:
    """Every status change of the alert's calls, in the order they happened."""
    rows = await db.fetch(
        """
        SELECT e.id, e.call, c.round, c.position, c.member_name, c.phone, e.status, e.source,
               e.detail, e.at
        FROM call_events e JOIN calls c ON c.id = e.call
        WHERE c.alert = $1
        ORDER BY e.id
        """,
        alert_pk,
    )
    return [AlertCallEvent(**dict(r)) for r in rows]


async def alert_dead_letters(db: Executor, alert_pk: int, stream_id: str) -> list[DeadLetter]:
    """Letters about the alert: its calls', and its stream entry's (an unknown group)."""
    rows = await db.fetch(
        f"""
        SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letters
        WHERE call IN (SELECT id FROM calls WHERE alert = $1) OR letter_key = 'stream:' || $2
        ORDER BY id
        """,  # noqa: S608 - the interpolated part is a constant column list
        alert_pk,
        stream_id,
    )
    return [DeadLetter(**dict(r)) for r in rows]


# --- what `voicealert status` and the metrics read (worker/health.py) ---------------------


async def applied_migrations(db: Executor) -> dict[int, str]:
    """Version → checksum of every migration applied to this database."""
    rows = await db.fetch("SELECT version, checksum FROM schema_migrations")
    return {r["version"]: r["checksum"] for r in rows}


async def calls_by_status_since(db: Executor, seconds: float) -> dict[str, int]:
    """Calls created within the last ``seconds``, counted by status."""
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM calls"
        " WHERE created_at > now() - make_interval(secs => $1) GROUP BY status",
        seconds,
    )
    return {r["status"]: r["n"] for r in rows}


async def alerts_by_status_since(db: Executor, seconds: float) -> dict[str, int]:
    """Alerts received within the last ``seconds``, counted by status."""
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM alerts"
        " WHERE received_at > now() - make_interval(secs => $1) GROUP BY status",
        seconds,
    )
    return {r["status"]: r["n"] for r in rows}


async def open_alerts_by_status(db: Executor) -> dict[str, int]:
    """Alerts still ringing people, whatever their age."""
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM alerts WHERE status = ANY($1::text[])"
        " GROUP BY status",
        list(OPEN_ALERT_STATUSES),
    )
    return {r["status"]: r["n"] for r in rows}


async def dead_letters_waiting(db: Executor, recent_s: float) -> list[LetterSummary]:
    """Letters not replayed, by source and reason; ``recent``: created in the last
    ``recent_s`` seconds."""
    rows = await db.fetch(
        """
        SELECT source, reason, count(*) AS waiting,
               count(*) FILTER (WHERE created_at > now() - make_interval(secs => $1)) AS recent,
               max(created_at) AS newest
        FROM dead_letters WHERE replayed_at IS NULL
        GROUP BY source, reason ORDER BY count(*) DESC, source, reason
        """,
        recent_s,
    )
    return [LetterSummary(**dict(r)) for r in rows]


async def stuck_calls(db: Executor, older_than_s: float) -> int:
    """Calls at the provider (or being dialed) with no change for ``older_than_s`` seconds."""
    value = await db.fetchval(
        "SELECT count(*) FROM calls WHERE status = ANY($1::text[])"
        " AND updated_at < now() - make_interval(secs => $2)",
        [CallStatus.DIALING, CallStatus.QUEUED, CallStatus.RINGING],
        older_than_s,
    )
    return int(value)


# --- API tokens ---------------------------------------------------------------------------

_TOKEN_COLUMNS = "id, tenant, name, scope, key_id, token_sha256, created_at, revoked_at"  # noqa: S105 - column names, no secret


def _token(row: asyncpg.Record) -> ApiToken:
    fields = {k: v for k, v in dict(row).items() if k != "pg_notify"}
    return ApiToken(**{**fields, "scope": TokenScope(row["scope"])})


async def insert_token(
    db: Executor, tenant: str, name: str, scope: TokenScope, key_id: str, token_sha256: bytes
) -> ApiToken | None:
    """A new live token, or None when the tenant already has a live token of that name."""
    row = await db.fetchrow(
        f"""
        INSERT INTO api_tokens (tenant, name, scope, key_id, token_sha256)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT DO NOTHING
        RETURNING {_TOKEN_COLUMNS}
        """,  # noqa: S608 - the interpolated part is a constant column list
        tenant,
        name,
        scope,
        key_id,
        token_sha256,
    )
    return _token(row) if row else None


async def list_tokens(db: Executor, tenant: str | None = None) -> list[ApiToken]:
    """Every token (revoked ones too), by tenant, then name, then age."""
    rows = await db.fetch(
        f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE ($1::text IS NULL OR tenant = $1)"  # noqa: S608
        " ORDER BY tenant, name, id",
        tenant,
    )
    return [_token(r) for r in rows]


#: Revocations are announced on this channel (the payload is the key id), at commit.
TOKENS_CHANNEL = "voicealert_token_revoked"


async def revoke_token(db: Executor, tenant: str, name: str) -> ApiToken | None:
    """Revoke the tenant's live token of that name, and announce it to every web process
    (NOTIFY, delivered at commit); None when there is none."""
    row = await db.fetchrow(
        f"""
        WITH revoked AS (
            UPDATE api_tokens SET revoked_at = now()
            WHERE tenant = $1 AND name = $2 AND revoked_at IS NULL
            RETURNING {_TOKEN_COLUMNS}
        )
        SELECT revoked.*, pg_notify($3, revoked.key_id) FROM revoked
        """,  # noqa: S608 - the interpolated part is a constant column list
        tenant,
        name,
        TOKENS_CHANNEL,
    )
    return _token(row) if row else None


async def listen_to_token_revocations(conn: Connection, forget: Callable[[str], None]) -> None:
    """Call ``forget(key_id)`` for every revocation announced from now on."""

    def on_notification(_conn: Connection, _pid: int, _channel: str, key_id: object) -> None:
        forget(str(key_id))

    await conn.add_listener(TOKENS_CHANNEL, on_notification)


async def ping(db: Executor) -> None:
    await db.fetchval("SELECT 1")


async def token_by_key_id(db: Executor, key_id: str) -> ApiToken | None:
    row = await db.fetchrow(
        f"SELECT {_TOKEN_COLUMNS} FROM api_tokens WHERE key_id = $1",  # noqa: S608
        key_id,
    )
    return _token(row) if row else None


async def live_key_ids(db: Executor, key_ids: Sequence[str]) -> set[str]:
    """Which of ``key_ids`` belong to tokens that exist and are not revoked."""
    rows = await db.fetch(
        "SELECT key_id FROM api_tokens WHERE key_id = ANY($1::text[]) AND revoked_at IS NULL",
        list(key_ids),
    )
    return {r["key_id"] for r in rows}


# --- the sweeper: what Postgres says should be live in Redis ---------------------------------


async def unfinished_calls(db: Executor, limit: int = 10_000) -> list[UnfinishedCall]:
    """Calls not ended (index ``calls_unfinished_idx``), oldest first."""
    rows = await db.fetch(
        """
        SELECT c.id, c.alert, c.position, c.status, c.merged_into,
               extract(epoch FROM now() - c.updated_at)::float8 AS idle_s,
               a.mode, a.status AS alert_status
        FROM calls c JOIN alerts a ON a.id = c.alert
        WHERE call_status_rank(c.status) < 5
        ORDER BY c.id
        LIMIT $1
        """,
        limit,
    )
    return [UnfinishedCall(**{**dict(r), "status": CallStatus(r["status"]),
                              "alert_status": AlertStatus(r["alert_status"])}) for r in rows]


async def open_alerts(db: Executor, limit: int = 10_000) -> list[OpenAlert]:
    """Alerts still calling, or with calls not ended, with where their round stands."""
    rows = await db.fetch(
        """
        WITH candidates AS (
            SELECT id FROM alerts WHERE status = ANY($1::text[])
            UNION
            SELECT DISTINCT alert FROM calls WHERE call_status_rank(status) < 5
            LIMIT $2
        )
        SELECT a.id, a.status, a.round,
               extract(epoch FROM a.next_round_at - now())::float8 AS next_round_in_s,
               extract(epoch FROM now() - greatest(a.updated_at, max(c.updated_at)))::float8
                   AS idle_s,
               count(c.id) FILTER (WHERE call_status_rank(c.status) BETWEEN 1 AND 4) AS active,
               coalesce(array_agg(c.id ORDER BY c.position) FILTER (WHERE c.status = $3),
                        '{}') AS pending
        FROM candidates k JOIN alerts a ON a.id = k.id
        LEFT JOIN calls c ON c.alert = a.id AND c.round = a.round
        GROUP BY a.id
        ORDER BY a.id
        """,
        list(OPEN_ALERT_STATUSES),
        limit,
        CallStatus.PENDING,
    )
    return [OpenAlert(**{**dict(r), "status": AlertStatus(r["status"]),
                         "pending": list(r["pending"])}) for r in rows]


async def open_dedup_windows(db: Executor) -> list[DedupWindow]:
    """The dedup lock each alert_id should hold now: its latest alert that took one and whose
    window (from when it was stored) is still open, unless a resolve cleared it."""
    rows = await db.fetch(
        """
        SELECT DISTINCT ON (tenant, alert_id) tenant, alert_id, event_key AS owner,
               ceil(extract(epoch FROM received_at + make_interval(secs => dedup_window_s)
                                        - now()))::int AS remaining_s
        FROM alerts
        WHERE received_at > now() - make_interval(secs => $1)
          AND dedup_window_s > 0
          AND received_at + make_interval(secs => dedup_window_s) > now()
          AND NOT status = ANY($2::text[])
        ORDER BY tenant, alert_id, received_at DESC
        """,
        DEDUP_WINDOW_MAX_S,
        [AlertStatus.RESOLVED, *RANG_NOBODY_ALERT_STATUSES],
    )
    return [DedupWindow(**dict(r)) for r in rows if r["remaining_s"] > 0]
