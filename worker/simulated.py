"""The simulated provider: the embedded default when no Twilio credentials are set.

It places no real call. Each "call" is a small Redis hash (so any replica can follow it)
whose status is derived from the clock: queued, ringing, then the configured outcome. The
demo and the tests therefore run the same code after the provider boundary as production.

Outcomes come from ``VOICEALERT_SIMULATED_OUTCOMES``: one status for every call
(``completed``), or per number with a default: ``+14155550101=no-answer,*=completed``.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import redis.asyncio

from worker.keys import Keys
from worker.logs import get_logger
from worker.models import UNANSWERED_CALL_STATUSES, CallStatus
from worker.providers import NO_OPTIONS, CallOptions, PermanentProviderError, ProviderCall

OUTCOMES = frozenset({CallStatus.COMPLETED, CallStatus.NO_ANSWER, CallStatus.BUSY,
                      CallStatus.FAILED})
log = get_logger(__name__)


def parse_outcomes(spec: str) -> dict[str, CallStatus]:
    """``"+1415...=busy,*=completed"`` → ``{"+1415...": "busy", "*": "completed"}``."""
    table: dict[str, CallStatus] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        number, _, outcome = part.rpartition("=")
        number = number.strip() or "*"
        outcome = outcome.strip()
        if outcome not in OUTCOMES:
            raise ValueError(f"simulated outcome {outcome!r} is not one of "
                             f"{sorted(o.value for o in OUTCOMES)}")
        table[number] = CallStatus(outcome)
    table.setdefault("*", CallStatus.COMPLETED)
    return table


class SimulatedProvider:
    name = "simulated"

    def __init__(
        self, client: redis.asyncio.Redis, keys: Keys, *, outcomes: str, ring_s: float,
        talk_s: float,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._outcomes = parse_outcomes(outcomes)
        self._ring_s = ring_s
        self._talk_s = talk_s

    async def create_call(
        self, *, to: str, twiml: str, options: CallOptions = NO_OPTIONS
    ) -> ProviderCall:
        sid = "SIM" + uuid.uuid4().hex
        now = time.time()
        outcome = self._outcomes.get(to, self._outcomes["*"])
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.simulated_call(sid),
                mapping={"to": to, "created": now, "outcome": outcome, "canceled": 0},
            )
            pipe.expire(self._keys.simulated_call(sid), 86400)
            pipe.zadd(self._keys.simulated_calls_to(to), {sid: now})
            pipe.expire(self._keys.simulated_calls_to(to), 86400)
            await pipe.execute()
        log.debug("simulated.call_created", sid=sid, to=to, outcome=outcome)
        return ProviderCall(sid=sid, status=CallStatus.QUEUED, to=to, created_at=_dt(now))

    async def fetch_call(self, sid: str) -> ProviderCall:
        data = await self._redis.hgetall(self._keys.simulated_call(sid))  # type: ignore[misc]
        if not data:
            raise PermanentProviderError(f"simulated call {sid} not found", code=20404)
        to = data[b"to"].decode()
        created = float(data[b"created"])
        canceled_at = float(data[b"canceled"])
        return self._state(sid, to, created, data[b"outcome"].decode(), canceled_at)

    def _state(
        self, sid: str, to: str, created: float, outcome: str, canceled_at: float
    ) -> ProviderCall:
        elapsed = (canceled_at or time.time()) - created
        base = ProviderCall(sid=sid, status=CallStatus.QUEUED, to=to, created_at=_dt(created))
        status: str
        if elapsed < self._ring_s / 2:
            status = CallStatus.QUEUED
        elif elapsed < self._ring_s:
            status = CallStatus.RINGING
        elif outcome != CallStatus.COMPLETED:
            status = outcome
        elif elapsed < self._ring_s + self._talk_s:
            status = CallStatus.IN_PROGRESS
        else:
            return ProviderCall(
                sid=sid, status=CallStatus.COMPLETED, to=to, created_at=base.created_at,
                duration_s=max(1, round(self._talk_s)), answered_by="human",
            )
        if canceled_at and status in UNANSWERED_CALL_STATUSES:
            status = CallStatus.CANCELED
        return ProviderCall(sid=sid, status=status, to=to, created_at=base.created_at)

    async def find_calls(self, *, to: str, since: datetime) -> list[ProviderCall]:
        sids = await self._redis.zrangebyscore(
            self._keys.simulated_calls_to(to), since.timestamp(), "+inf"
        )
        return [await self.fetch_call(s.decode()) for s in sids]

    async def cancel_call(self, sid: str) -> ProviderCall:
        key = self._keys.simulated_call(sid)
        call = await self.fetch_call(sid)
        if call.status in UNANSWERED_CALL_STATUSES:
            await self._redis.hset(key, "canceled", str(time.time()))  # type: ignore[misc]
            return await self.fetch_call(sid)
        return call

    async def aclose(self) -> None:
        return None


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
