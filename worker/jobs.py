"""How the call jobs run under arq, so that none is dropped while its call is not over.

arq drops a job for good when it fails: an exception, or its ``job_timeout`` (a timeout is a
failure, not a retry). A call whose job is dropped stays ``dialing`` or ``ringing`` forever.
So every job runs inside ``call_job``, and:

- **Postgres unreachable** (refused, or a bounded operation timed out) is not the job's fault:
  arq's ``Retry`` with backoff; arq keeps the job queued meanwhile.
- **Follow-up jobs** (``poll_call``, ``cancel_call``) that have more to do finish normally and
  ask to run again (``run_again_in``): the same job id is enqueued afresh once arq has
  finished the run, so following a call is not an arq "retry" (no retry count, no ``↻`` line)
  and the next round is a new job that a timeout of this one cannot take away.
- **Anything else** (the job timed out, or raised what nobody expected) is put back with
  backoff by ``after_job_end`` and logged (``job.rescheduled``). Every job is idempotent and
  re-reads its call, so running it again is safe; a job arq kept itself (a ``Retry``, a
  cancellation at shutdown) is still queued, and enqueueing it again is a no-op.

**Rate slots.** A ``place_call`` job is queued at a slot of the global call rate, and a run
at its slot may dial. A run that is not at a slot of its own (a call that waited for its
number, a put-back run) carries ``slot: false`` and takes a fresh slot before dialing
(``holds_rate_slot``), so no call exceeds the rate by having waited.

**Chunks.** Calls whose rate slots fall close together (a fan-out at a high call rate) are
placed by one job, a list of calls (``worker.services.call_chunks``), and the calls it
placed are followed by one poll job (a list of call ids); each call keeps its own rules (its
slot, its retries, its lookup). Only one run may handle a call at a time, or a run seeing
the call ``dialing`` could look it up while another run's POST is in flight and dial again:
a chunk takes each of its calls with arq's in-progress key of the call's own job
(``take_calls``), which a single job for that call then waits for, and leaves out the
calls whose single job is queued or running. What a chunk does not finish for a call
(waiting for its number, a retry, a failure) goes on in the call's single job
(``hand_off``).

What is lost between arq dropping a run and ``after_job_end`` (a crash in that instant) is
recreated by the sweeper from Postgres.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any, cast

from arq import Retry
from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.typing import WorkerCoroutine

from worker.logs import get_logger
from worker.outages import DATABASE_UNAVAILABLE
from worker.queue import ScheduledJob, enqueue_many, job_id
from worker.retries import backoff_s
from worker.services import Services, job_expiry_ms

log = get_logger(__name__)

JobFunction = Callable[[dict[str, Any], int], Coroutine[Any, Any, str]]
#: A chunk job's function: its argument is a list (of call ids, or of ``[call id, slot]``).
ChunkFunction = Callable[[dict[str, Any], list[Any]], Coroutine[Any, Any, str]]

#: arq keeps a running job's in-progress lock for its timeout plus this margin (worker/app.py
#: shortens arq's 10 s): how long a replica that died may still look like it runs a job.
IN_PROGRESS_MARGIN_S = 5.0

# What a run left in arq's per-run ctx for after_job_end (the same dict).
_RUN = "voicealert.run"
_RETURNED = "voicealert.returned"
_RUN_AGAIN_S = "voicealert.run_again_s"
_RUN_AGAIN_AT_SLOT = "voicealert.run_again_at_slot"
_HOLDS_SLOT = "voicealert.holds_slot"
_RUN_AGAIN_ARG = "voicealert.run_again_arg"
#: The job keyword that marks a run as not starting at a rate slot of its own.
SLOT_KWARG = "slot"


def run_again_in(ctx: dict[str, Any], delay_s: float, *, at_slot: bool = True,
                 arg: Any = None) -> None:
    """Ask for this job to run again in ``delay_s`` seconds, once the current run ends;
    ``at_slot`` False: that time is not a rate slot reserved for it (``holds_rate_slot``);
    ``arg``: a chunk's next run, with what is left of its list."""
    ctx[_RUN_AGAIN_S] = max(0.0, delay_s)
    ctx[_RUN_AGAIN_AT_SLOT] = at_slot
    if arg is not None:
        ctx[_RUN_AGAIN_ARG] = arg


def run_again_delay(ctx: dict[str, Any]) -> tuple[float, bool] | None:
    """What ``run_again_in`` asked for in this (a chunk's per-call) ctx: the delay and
    whether it is at a slot; None when the run is over."""
    delay = ctx.get(_RUN_AGAIN_S)
    return None if delay is None else (float(delay), bool(ctx.get(_RUN_AGAIN_AT_SLOT, True)))


def call_ctx(ctx: dict[str, Any], *, holds_slot: bool) -> dict[str, Any]:
    """The ctx one call of a chunk runs with: the chunk's services, its own run state."""
    return {"services": ctx["services"], _HOLDS_SLOT: holds_slot}


def holds_rate_slot(ctx: dict[str, Any]) -> bool:
    """Whether this run starts at a rate slot reserved for it (see the module)."""
    return bool(ctx.get(_HOLDS_SLOT, True))


def call_job(name: str, job: JobFunction, chunk: ChunkFunction | None = None) -> WorkerCoroutine:
    """``job`` as arq runs it: outages retried, follow-ups and failures put back; a list
    argument (a chunk job) runs ``chunk``."""

    @wraps(job)
    async def wrapper(ctx: dict[Any, Any], call_id: Any, *_: Any, failures: int = 0,
                      slot: bool = True, **__: Any) -> str:
        ctx[_RUN] = (name, call_id, failures)
        ctx[_HOLDS_SLOT] = slot
        try:
            if isinstance(call_id, list):
                if chunk is None:
                    raise TypeError(f"{name} takes one call id, not a list")
                result = await chunk(ctx, call_id)
            else:
                result = await job(ctx, int(call_id))
        except DATABASE_UNAVAILABLE as exc:
            delay = backoff_s(int(ctx.get("job_try", 1)), base_s=0.5, cap_s=10.0)
            log.warning("job.database_unavailable", job=name, call=call_id,
                        error=f"{type(exc).__name__}: {exc}", retry_in_s=round(delay, 2))
            raise Retry(defer=delay) from exc
        ctx[_RETURNED] = True
        return result

    return cast(WorkerCoroutine, wrapper)


async def after_job_end(ctx: dict[str, Any]) -> None:
    """arq's hook after a run is recorded: enqueue what must run again (see the docstring)."""
    run = ctx.get(_RUN)
    services: Services | None = ctx.get("services")
    if run is None or services is None:
        return
    name, call_id, failures = run
    if ctx.get(_RETURNED):
        delay = ctx.get(_RUN_AGAIN_S)
        if delay is not None:
            await _enqueue(services, ctx["job_id"], name, ctx.get(_RUN_AGAIN_ARG, call_id),
                           delay, failures=0, at_slot=ctx.get(_RUN_AGAIN_AT_SLOT, True))
        return
    failures += 1
    delay = backoff_s(failures, base_s=services.settings.retry_base_s,
                      cap_s=services.settings.retry_cap_s)
    if await _enqueue(services, ctx["job_id"], name, call_id, delay, failures=failures,
                      at_slot=False):
        log.warning("job.rescheduled", job=name, call=call_id, failures=failures,
                    retry_in_s=round(delay, 2))


async def hand_off(services: Services, name: str, call_id: int, delay_s: float, *,
                   failures: int = 0, at_slot: bool) -> bool:
    """What a chunk did not finish for a call goes on in the call's own job (the same as a
    single job's run again, or put back): queued unless that job exists already."""
    jid = job_id(services.keys.prefix, _SINGLE_KIND[name], call_id)
    return await _enqueue(services, jid, name, call_id, delay_s, failures=failures,
                          at_slot=at_slot)


# The kind of a call's own job, by function (worker.queue.JOB_KINDS).
_SINGLE_KIND = {"place_call": "call", "poll_call": "poll"}


# A chunk takes its calls as a single job would be taken (the in-progress key of the call's
# own job, which arq's job loop checks before starting that job), leaving out a call whose
# own job is queued (its job key) or running (its in-progress key): that job handles it. The
# key names the chunk: a run of the same chunk after its replica died (arq starts it again
# once the chunk's own in-progress key has expired) takes over what the dead run held.
_TAKE_CALLS = """
-- KEYS: (in-progress key, job key) per call; ARGV: lifetime (ms), the chunk's job id, then
-- the call ids
local taken = {}
for i = 1, #KEYS / 2 do
  local holder = redis.call('GET', KEYS[2 * i - 1])
  if (not holder or holder == ARGV[2]) and redis.call('EXISTS', KEYS[2 * i]) == 0 then
    redis.call('PSETEX', KEYS[2 * i - 1], ARGV[1], ARGV[2])
    table.insert(taken, ARGV[i + 2])
  end
end
return taken
"""


async def take_calls(services: Services, chunk_id: str, call_ids: list[int]) -> list[int]:
    """The calls of chunk job ``chunk_id`` that this run may handle, each taken as its own
    job would be (see ``_TAKE_CALLS``) until ``release_calls``, or for a job's lifetime if
    the replica dies."""
    if not call_ids:
        return []
    keys: list[str] = []
    for cid in call_ids:
        jid = job_id(services.keys.prefix, "call", cid)
        keys += [in_progress_key_prefix + jid, job_key_prefix + jid]
    lifetime_ms = int((services.settings.call_job_timeout_s + IN_PROGRESS_MARGIN_S) * 1000)
    taken = await services.redis.register_script(_TAKE_CALLS)(
        keys=keys, args=[lifetime_ms, chunk_id, *call_ids])
    return [int(t) for t in taken]


async def release_calls(services: Services, call_ids: list[int]) -> None:
    """The chunk is done with these calls: their own jobs may run."""
    if call_ids:
        await services.redis.delete(*(
            in_progress_key_prefix + job_id(services.keys.prefix, "call", cid)
            for cid in call_ids))


async def _enqueue(services: Services, job_id: str, name: str, subject: Any, delay_s: float,
                   *, failures: int, at_slot: bool) -> bool:
    run_at = int((time.time() + delay_s) * 1000)
    kwargs: dict[str, Any] = {"failures": failures} if failures else {}
    if not at_slot:
        kwargs[SLOT_KWARG] = False
    job = ScheduledJob(name, job_id, (subject,), run_at, kwargs)
    added = await enqueue_many(services.redis, services.keys.queue, [job],
                               expires_ms=job_expiry_ms(services.settings))
    return added > 0
