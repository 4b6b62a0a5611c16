"""The simulated provider: the embedded default when no Twilio credentials are set.

It places no real call. Each "call" is a small Redis hash (so any replica can follow it)
whose status is derived from the clock: queued, ringing, then the configured outcome. The
demo and the tests therefore run the same code after the provider boundary as production.

Outcomes come from ``VOICEALERT_SIMULATED_OUTCOMES``: one for every call (``completed``),
or per number with a default: ``+14155550101=no-answer,*=completed``. Besides Twilio's final
statuses (``completed``: a person answers and listens, ``no-answer``, ``busy``, ``failed``)
there are ``machine`` (an answering machine picks up: reported as such when the call asked
for machine detection) and ``press-1`` (a person answers and presses 1 half-way through the
call: the provider reports the digit, as Twilio's Gather would post it).
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

MACHINE = "machine"
PRESS_1 = "press-1"
OUTCOMES = frozenset({CallStatus.COMPLETED, CallStatus.NO_ANSWER, CallStatus.BUSY,
                      CallStatus.FAILED, MACHINE, PRESS_1})
#: Outcomes where somebody (or something) picks up.
_ANSWERED = frozenset({CallStatus.COMPLETED, MACHINE, PRESS_1})
#: What detection reports for a machine, by MachineDetection mode (Twilio's words).
_MACHINE_ANSWERED_BY = {"Enable": "machine_start", "DetectMessageEnd": "machine_end_beep"}
log = get_logger(__name__)


def parse_outcomes(spec: str) -> dict[str, str]:
    """``"+1415...=busy,*=completed"`` → ``{"+1415...": "busy", "*": "completed"}``."""
    table: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        number, _, outcome = part.rpartition("=")
        number = number.strip() or "*"
        outcome = outcome.strip()
        if outcome not in OUTCOMES:
            raise ValueError(f"simulated outcome {outcome!r} is not one of "
                             f"{sorted(str(o) for o in OUTCOMES)}")
        table[number] = outcome
    table.setdefault("*", CallStatus.COMPLETED)
    return table


# A call created: its state and its place among the calls to its number, in one script (one
# command and one round trip per call, as a real provider's one POST; a MULTI of four
# commands cost the worker a fifth of its CPU in `bench fanout`, docs/benchmarks.md).
_CREATE = """
redis.call('HSET', KEYS[1], 'to', ARGV[1], 'created', ARGV[2], 'outcome', ARGV[3],
           'canceled', 0, 'ended', 0, 'detection', ARGV[4])
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('EXPIRE', KEYS[2], 86400)
return 1
"""


class SimulatedProvider:
    name = "simulated"

    def __init__(
        self, client: redis.asyncio.Redis, keys: Keys, *, outcomes: str, ring_s: float,
        talk_s: float,
    ) -> None:
        self._redis = client
        self._create = client.register_script(_CREATE)
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
        await self._create(
            keys=[self._keys.simulated_call(sid), self._keys.simulated_calls_to(to)],
            args=[to, repr(now), outcome, options.machine_detection or "", sid])
        log.debug("simulated.call_created", sid=sid, to=to, outcome=outcome)
        return ProviderCall(sid=sid, status=CallStatus.QUEUED, to=to, created_at=_dt(now))

    async def fetch_call(self, sid: str) -> ProviderCall:
        data = await self._redis.hgetall(self._keys.simulated_call(sid))  # type: ignore[misc]
        if not data:
            raise PermanentProviderError(f"simulated call {sid} not found", code=20404)
        fields = {key.decode(): value.decode() for key, value in data.items()}
        return self._state(sid, fields)

    def _state(self, sid: str, fields: dict[str, str]) -> ProviderCall:
        created = float(fields["created"])
        canceled_at, ended_at = float(fields["canceled"]), float(fields.get("ended", 0))
        outcome = fields["outcome"]
        elapsed = (canceled_at or ended_at or time.time()) - created
        call = ProviderCall(sid=sid, status=CallStatus.QUEUED, to=fields["to"],
                            created_at=_dt(created))
        if elapsed < self._ring_s:
            ringing = elapsed >= self._ring_s / 2
            status = CallStatus.RINGING if ringing else CallStatus.QUEUED
            return _with(call, CallStatus.CANCELED if canceled_at else status)
        if outcome not in _ANSWERED:
            return _with(call, outcome)
        detection = fields.get("detection", "")
        answered_by = None
        if detection:
            answered_by = _MACHINE_ANSWERED_BY[detection] if outcome == MACHINE else "human"
        talked = elapsed - self._ring_s
        digits = "1" if outcome == PRESS_1 and talked >= self._talk_s / 2 else None
        if ended_at or talked >= self._talk_s:
            return ProviderCall(
                sid=sid, status=CallStatus.COMPLETED, to=call.to, created_at=call.created_at,
                duration_s=max(1, round(min(talked, self._talk_s))), answered_by=answered_by,
                digits=digits,
            )
        return ProviderCall(sid=sid, status=CallStatus.IN_PROGRESS, to=call.to,
                            created_at=call.created_at, answered_by=answered_by, digits=digits)

    async def find_calls(self, *, to: str, since: datetime) -> list[ProviderCall]:
        sids = await self._redis.zrangebyscore(
            self._keys.simulated_calls_to(to), since.timestamp(), "+inf"
        )
        return [await self.fetch_call(s.decode()) for s in sids]

    async def cancel_call(self, sid: str) -> ProviderCall:
        call = await self.fetch_call(sid)
        if call.status in UNANSWERED_CALL_STATUSES:
            await self._redis.hset(  # type: ignore[misc]
                self._keys.simulated_call(sid), "canceled", str(time.time()))
            return await self.fetch_call(sid)
        return call

    async def hang_up(self, sid: str) -> ProviderCall:
        call = await self.fetch_call(sid)
        if call.status == CallStatus.IN_PROGRESS:
            await self._redis.hset(  # type: ignore[misc]
                self._keys.simulated_call(sid), "ended", str(time.time()))
            return await self.fetch_call(sid)
        return await self.cancel_call(sid)

    async def speak(self, sid: str, twiml: str) -> ProviderCall:
        log.info("simulated.call_redirected", sid=sid)
        return await self.fetch_call(sid)

    async def aclose(self) -> None:
        return None


def _with(call: ProviderCall, status: str) -> ProviderCall:
    return ProviderCall(sid=call.sid, status=status, to=call.to, created_at=call.created_at)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)
