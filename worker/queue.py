"""arq jobs: JSON serialization, job ids, and batched enqueueing.

arq's ``enqueue_job`` is a WATCH/MULTI round trip per job; a fan-out to a 200-member group
enqueues in one Lua call instead, with the same semantics (a job whose id is queued or
running is not enqueued again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

PLACE_CALL = "place_call"
POLL_CALL = "poll_call"
CANCEL_CALL = "cancel_call"
SETTLE_CALL = "settle_call"
CHECK_ANSWER = "check_answer"
START_ROUND = "start_round"


def json_serializer(obj: dict[str, Any]) -> bytes:
    # default=repr: failure results (exceptions) are logged, never read back as objects.
    return json.dumps(obj, default=repr, separators=(",", ":")).encode()


def json_deserializer(data: bytes) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("arq job payload is not a JSON object")
    return value


def job_id(prefix: str, kind: str, call_id: int) -> str:
    """Job ids derive from call ids, so enqueueing the same work twice is a no-op."""
    return f"{prefix}{kind}:{call_id}"


#: The kinds of job id (``job_id``'s ``kind``) and the job function each one runs; a settle
#: job's kind names the status it settles (``settle-completed``), a round's its number
#: (``round-2``).
JOB_KINDS = {"call": PLACE_CALL, "poll": POLL_CALL, "cancel": CANCEL_CALL, "settle": SETTLE_CALL,
             "answer": CHECK_ANSWER, "round": START_ROUND}
#: What the number in a job id is: a call id, except for the jobs about a whole alert.
JOB_SUBJECTS = {START_ROUND: "alert"}


def function_of_kind(kind: str) -> str | None:
    return JOB_KINDS.get(kind.partition("-")[0])


def parse_job_id(prefix: str, value: str) -> tuple[str, int] | None:
    """``(function, number)`` of one of our job ids (the number is a call id, or what
    ``JOB_SUBJECTS`` says), or None."""
    kind, _, call = value.removeprefix(prefix).partition(":")
    function = function_of_kind(kind)
    if not value.startswith(prefix) or function is None or not call.isdigit():
        return None
    return function, int(call)


@dataclass(frozen=True)
class ScheduledJob:
    function: str
    job_id: str
    args: tuple[Any, ...]
    run_at_ms: int
    kwargs: dict[str, Any] = field(default_factory=dict)


_ENQUEUE_MANY = """
-- KEYS: queue, then (job key, result key) per job; ARGV: expires_ms, then (id, score, payload)
local added = 0
for i = 1, (#KEYS - 1) / 2 do
  local job_key, result_key = KEYS[2 * i], KEYS[2 * i + 1]
  local id, score, payload = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if redis.call('EXISTS', job_key, result_key) == 0 then
    local ttl = tonumber(score) - tonumber(ARGV[#ARGV]) + tonumber(ARGV[1])
    redis.call('PSETEX', job_key, math.max(ttl, 1000), payload)
    redis.call('ZADD', KEYS[1], score, id)
    added = added + 1
  end
end
return added
"""


async def enqueue_many(
    redis: ArqRedis, queue: str, jobs: Sequence[ScheduledJob], *, expires_ms: int
) -> int:
    """Enqueue ``jobs`` in one round trip; returns how many were new."""
    if not jobs:
        return 0
    now_ms = int(time.time() * 1000)
    keys: list[str] = [queue]
    argv: list[Any] = [expires_ms]
    for job in jobs:
        keys += [job_key_prefix + job.job_id, result_key_prefix + job.job_id]
        payload = serialize_job(
            job.function, job.args, job.kwargs, None, now_ms, serializer=json_serializer
        )
        argv += [job.job_id, job.run_at_ms, payload]
    argv.append(now_ms)
    # EVALSHA (the script is loaded once per server); registering only hashes the text.
    added = await redis.register_script(_ENQUEUE_MANY)(keys=keys, args=argv)
    return int(added)
