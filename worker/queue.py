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
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from worker.keys import wake_channel

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
             "answer": CHECK_ANSWER, "round": START_ROUND, "calls": PLACE_CALL, "polls": POLL_CALL}
#: Chunk jobs (one job for several calls: ``chunk_job_id``) and the kind of job each of their
#: calls would otherwise have.
CHUNK_KINDS = {"calls": "call", "polls": "poll"}
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


def chunk_job_id(prefix: str, kind: str, call_ids: Sequence[int]) -> str:
    """The id of a chunk job (``kind`` one of ``CHUNK_KINDS``): its calls, as runs of
    consecutive ids (``calls:101-150,152``), so that what a queued chunk covers is read from
    its id (``chunked_calls``), and the same chunk queued twice is one job."""
    runs: list[str] = []
    ids = sorted(set(call_ids))
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            first, last = ids[start], ids[i - 1]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = i
    return f"{prefix}{kind}:{','.join(runs)}"


def chunk_calls(prefix: str, value: str) -> tuple[str, list[int]] | None:
    """``(the kind its calls would otherwise have, call ids)`` of a chunk job id, or None."""
    kind, _, spec = value.removeprefix(prefix).partition(":")
    single = CHUNK_KINDS.get(kind)
    if not value.startswith(prefix) or single is None:
        return None
    ids: list[int] = []
    for run in spec.split(","):
        first, _, last = run.partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        ids += range(int(first), int(last or first) + 1)
    return single, ids


async def chunked_calls(redis: ArqRedis, queue: str, prefix: str) -> dict[str, set[int]]:
    """The calls of the chunk jobs in ``queue`` (queued, deferred or running: arq removes a
    job from its queue when the job ends), by the kind of job each would otherwise have."""
    covered: dict[str, set[int]] = {single: set() for single in CHUNK_KINDS.values()}
    for raw in await redis.zrange(queue, 0, -1):
        found = chunk_calls(prefix, raw.decode() if isinstance(raw, bytes) else str(raw))
        if found is not None:
            covered[found[0]].update(found[1])
    return covered


async def live_jobs(redis: ArqRedis, job_ids: Sequence[str]) -> set[str]:
    """Which of ``job_ids`` arq still has: queued or deferred (its job key) or running (its
    in-progress key). One pipelined round trip."""
    if not job_ids:
        return set()
    async with redis.pipeline(transaction=False) as pipe:
        for jid in job_ids:
            pipe.exists(job_key_prefix + jid, in_progress_key_prefix + jid)
        found = await pipe.execute()
    return {jid for jid, count in zip(job_ids, found, strict=True) if count}


@dataclass(frozen=True)
class ScheduledJob:
    function: str
    job_id: str
    args: tuple[Any, ...]
    run_at_ms: int
    kwargs: dict[str, Any] = field(default_factory=dict)


_ENQUEUE_MANY = """
-- KEYS: queue, then (job key, result key) per job
-- ARGV: expires_ms, now_ms, wake channel, then (id, score, payload) per job
local added, earliest = 0, nil
for i = 1, (#KEYS - 1) / 2 do
  local job_key, result_key = KEYS[2 * i], KEYS[2 * i + 1]
  local id, score, payload = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
  if redis.call('EXISTS', job_key, result_key) == 0 then
    local ttl = tonumber(score) - tonumber(ARGV[2]) + tonumber(ARGV[1])
    redis.call('PSETEX', job_key, math.max(ttl, 1000), payload)
    redis.call('ZADD', KEYS[1], score, id)
    added = added + 1
    if earliest == nil or tonumber(score) < earliest then earliest = tonumber(score) end
  end
end
if earliest ~= nil then
  redis.call('PUBLISH', ARGV[3], string.format('%d', earliest))
end
return added
"""


async def enqueue_many(
    redis: ArqRedis, queue: str, jobs: Sequence[ScheduledJob], *, expires_ms: int
) -> int:
    """Enqueue ``jobs`` in one round trip; returns how many were new. When any is, the
    earliest start time among them is published on the queue's wake channel
    (worker/wakeup.py), so a job loop sleeping until its next poll starts it on time."""
    if not jobs:
        return 0
    now_ms = int(time.time() * 1000)
    keys: list[str] = [queue]
    argv: list[Any] = [expires_ms, now_ms, wake_channel(queue)]
    for job in jobs:
        keys += [job_key_prefix + job.job_id, result_key_prefix + job.job_id]
        payload = serialize_job(
            job.function, job.args, job.kwargs, None, now_ms, serializer=json_serializer
        )
        argv += [job.job_id, job.run_at_ms, payload]
    # EVALSHA (the script is loaded once per server); registering only hashes the text.
    added = await redis.register_script(_ENQUEUE_MANY)(keys=keys, args=argv)
    return int(added)
