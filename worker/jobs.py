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

What is lost between arq dropping a run and ``after_job_end`` (a crash in that instant) is
recreated by the sweeper from Postgres.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from functools import wraps
from typing import Any, cast

from arq import Retry
from arq.typing import WorkerCoroutine

from worker.logs import get_logger
from worker.outages import DATABASE_UNAVAILABLE
from worker.queue import ScheduledJob, enqueue_many
from worker.retries import backoff_s
from worker.services import Services, job_expiry_ms

log = get_logger(__name__)

JobFunction = Callable[[dict[str, Any], int], Coroutine[Any, Any, str]]

#: arq keeps a running job's in-progress lock for its timeout plus this margin (worker/app.py
#: shortens arq's 10 s): how long a replica that died may still look like it runs a job.
IN_PROGRESS_MARGIN_S = 5.0

# What a run left in arq's per-run ctx for after_job_end (the same dict).
_RUN = "voicealert.run"
_RETURNED = "voicealert.returned"
_RUN_AGAIN_S = "voicealert.run_again_s"
_RUN_AGAIN_AT_SLOT = "voicealert.run_again_at_slot"
_HOLDS_SLOT = "voicealert.holds_slot"
#: The job keyword that marks a run as not starting at a rate slot of its own.
SLOT_KWARG = "slot"


def run_again_in(ctx: dict[str, Any], delay_s: float, *, at_slot: bool = True) -> None:
    """Ask for this job to run again in ``delay_s`` seconds, once the current run ends;
    ``at_slot`` False: that time is not a rate slot reserved for it (``holds_rate_slot``)."""
    ctx[_RUN_AGAIN_S] = max(0.0, delay_s)
    ctx[_RUN_AGAIN_AT_SLOT] = at_slot


def holds_rate_slot(ctx: dict[str, Any]) -> bool:
    """Whether this run starts at a rate slot reserved for it (see the module)."""
    return bool(ctx.get(_HOLDS_SLOT, True))


def call_job(name: str, job: JobFunction) -> WorkerCoroutine:
    """``job`` as arq runs it: outages retried, follow-ups and failures put back."""

    @wraps(job)
    async def wrapper(ctx: dict[Any, Any], call_id: int, *_: Any, failures: int = 0,
                      slot: bool = True, **__: Any) -> str:
        ctx[_RUN] = (name, call_id, failures)
        ctx[_HOLDS_SLOT] = slot
        try:
            result = await job(ctx, call_id)
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
            await _enqueue(services, ctx["job_id"], name, call_id, delay, failures=0,
                           at_slot=ctx.get(_RUN_AGAIN_AT_SLOT, True))
        return
    failures += 1
    delay = backoff_s(failures, base_s=services.settings.retry_base_s,
                      cap_s=services.settings.retry_cap_s)
    if await _enqueue(services, ctx["job_id"], name, call_id, delay, failures=failures,
                      at_slot=False):
        log.warning("job.rescheduled", job=name, call=call_id, failures=failures,
                    retry_in_s=round(delay, 2))


async def _enqueue(services: Services, job_id: str, name: str, call_id: int, delay_s: float,
                   *, failures: int, at_slot: bool) -> bool:
    run_at = int((time.time() + delay_s) * 1000)
    kwargs: dict[str, Any] = {"failures": failures} if failures else {}
    if not at_slot:
        kwargs[SLOT_KWARG] = False
    job = ScheduledJob(name, job_id, (call_id,), run_at, kwargs)
    added = await enqueue_many(services.redis, services.keys.queue, [job],
                               expires_ms=job_expiry_ms(services.settings))
    return added > 0
