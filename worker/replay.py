"""Replaying dead letters (``voicealert dlq replay``): once the cause is fixed, do it again.

An ingest letter goes back onto the stream as the same entry fields and takes the whole
pipeline from the start; a call letter becomes a new pending call to the member's current
number, scheduled like any other. A letter whose cause is not fixed is refused, with why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from arq.connections import ArqRedis

from worker import db
from worker.config import Settings
from worker.db import Connection
from worker.dead_letters import entry_from_payload
from worker.entries import Fields, InvalidEntry, parse_entry
from worker.keys import Keys
from worker.models import CALLING_STOPPED_ALERT_STATUSES, DeadLetter, StatusSource
from worker.services import schedule_calls

# Twilio errors about the number itself: replaying the same number fails again.
NUMBER_ERROR_CODES = frozenset({21211, 21214, 21217})


class ReplayRefused(Exception):
    """The letter's cause is not fixed (or it was replayed already): replaying would only
    fail again, so nothing is done and the operator is told why."""


async def replay(
    conn: Connection, redis: ArqRedis, settings: Settings, letter: DeadLetter
) -> str:
    """Replay one letter; returns what was done. Raises ReplayRefused when it would fail again.

    An ingest letter goes back onto the stream as the same entry fields; a call letter becomes
    a new pending call to the member's current number with fresh attempts. The letter is
    marked replayed first (once), and unmarked if the replay itself cannot be written.
    """
    if letter.replayed_at is not None:
        raise ReplayRefused(f"letter {letter.id} was already replayed at "
                            f"{letter.replayed_at.isoformat(timespec='seconds')}")
    if letter.source == "ingest":
        fields = await _ingest_replay_fields(conn, letter)
        action = _replay_ingest(redis, settings, fields)
    else:
        action = await _prepare_call_replay(conn, redis, settings, letter)
    if not await db.claim_dead_letter_for_replay(conn, letter.id):
        raise ReplayRefused(f"letter {letter.id} is being replayed by someone else")
    try:
        return await action()
    except BaseException:
        await db.unclaim_dead_letter(conn, letter.id)
        raise


async def _ingest_replay_fields(conn: Connection, letter: DeadLetter) -> Fields:
    entry = entry_from_payload(letter.payload)
    if entry is None:
        raise ReplayRefused(f"letter {letter.id} has no stream entry to replay")
    if letter.payload.get("truncated"):
        raise ReplayRefused(f"letter {letter.id} keeps only the first MiB of its entry: "
                            "write the event again instead")
    try:
        event = parse_entry(entry)
    except InvalidEntry as exc:
        raise ReplayRefused(f"letter {letter.id} would fail again: {exc.error}") from None
    if event.is_trigger:
        group = await db.get_group(conn, event.tenant, event.group or "")
        if group is None or not group.members:
            what = "does not exist" if group is None else "has no members"
            raise ReplayRefused(
                f"letter {letter.id} would fail again: group {event.group!r} in tenant "
                f"{event.tenant!r} still {what}; create it with `voicealert groups set` first"
            )
    return entry.fields


def _replay_ingest(
    redis: ArqRedis, settings: Settings, fields: Fields
) -> Callable[[], Awaitable[str]]:
    async def action() -> str:
        entry_id = await redis.xadd(Keys(settings.redis_prefix).events, fields)  # type: ignore[arg-type]
        text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        return f"back on the stream as {text}"

    return action


async def _prepare_call_replay(
    conn: Connection, redis: ArqRedis, settings: Settings, letter: DeadLetter
) -> Callable[[], Awaitable[str]]:
    payload = letter.payload
    call_id = int(payload["call_id"])
    call = await db.get_call(conn, call_id)
    if call is None:
        raise ReplayRefused(f"letter {letter.id}: call {call_id} no longer exists")
    if call.alert_status in CALLING_STOPPED_ALERT_STATUSES:
        raise ReplayRefused(f"letter {letter.id}: alert {call.alert_id!r} was "
                            f"{call.alert_status}")
    group_name = await db.alert_group_name(conn, call.alert)
    group = await db.get_group(conn, call.tenant, group_name)
    # By position (calls are keyed by alert, round, position), the name as a check: a name
    # may have been given twice, or the group reordered since.
    position = await _member_position(conn, call.alert, call.position)
    member = group.members[position] if group and position < len(group.members) else None
    if member is None or member.name != call.member_name:
        now = "nobody" if member is None else repr(member.name)
        raise ReplayRefused(
            f"letter {letter.id} would ring the wrong person: group {group_name!r} changed, "
            f"position {position + 1} is now {now}, not {call.member_name!r}; fire the alert "
            "again instead")
    refused_number = payload.get("code") in NUMBER_ERROR_CODES
    if letter.reason == "provider_rejected" and refused_number and member.phone == call.phone:
        raise ReplayRefused(
            f"letter {letter.id} would fail again: the provider refused {call.member_name}'s "
            f"number ({letter.error}) and it is unchanged; fix it with `voicealert groups set`"
        )

    async def action() -> str:
        new_call = await db.add_replay_call(
            conn, call.alert, call.member_name, member.phone, StatusSource.OPERATOR,
            f"replay of dead letter {letter.id}",
        )
        await schedule_calls(redis, settings, [new_call])
        return f"call {new_call} queued for {call.member_name}"

    return action


#: Replays of replays followed back to the member's own position, at most this many.
_MAX_REPLAY_CHAIN = 100


async def _member_position(conn: Connection, alert_pk: int, position: int) -> int:
    """The member's position in the group for a call at ``position``: a replayed call sits
    after the alert's last row, so follow it back to the call it replays."""
    for _ in range(_MAX_REPLAY_CHAIN):
        origin = await db.replayed_from_position(conn, alert_pk, position)
        if origin is None or origin == position:
            return position
        position = origin
    return position
