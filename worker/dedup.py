"""The dedup lock: ``SET NX EX`` on a tenant-scoped key, owned by the event that took it.

Owner = the event's identity (``event_key``), so a redelivery or a retried XADD of the same
event re-enters its own lock instead of being counted as its own duplicate. Only the owner
releases it (compare-and-delete), and it is released whenever the event ends with zero
calls, so a corrected retry within the window is not suppressed. A batch's decisions are
one script call (one EVALSHA, one round trip whatever the batch size; redis-py loads a
script the server lacks) that reads each distinct lock once: a storm of 1,000 entries for
one alert costs one command with one key, not 1,000.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio

from worker.keys import Keys

# KEYS[i] is a lock, ARGV[2i-1] and ARGV[2i] the owner and window of its first request in
# the batch. Returns each lock's holder after that request: the request's own owner means
# acquired (new, or re-entered without extending it).
_ACQUIRE_MANY = """
local holders = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if not holder then
    holder = ARGV[2 * i - 1]
    redis.call('SET', key, holder, 'EX', ARGV[2 * i])
  end
  holders[i] = holder
end
return holders
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class LockRequest:
    tenant: str
    alert_id: str
    owner: str
    window_s: int


@dataclass(frozen=True)
class LockDecision:
    acquired: bool  # True: this event owns the lock (new or re-entered)
    owner: str  # who holds it: this event, or the one this event duplicates


class DedupLock:
    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self._redis = client
        self._keys = keys
        self._acquire_many = client.register_script(_ACQUIRE_MANY)
        self._release = client.register_script(_RELEASE)

    async def acquire_many(self, requests: Sequence[LockRequest]) -> list[LockDecision]:
        """One decision per request, in order, as if each had been tried in turn.

        Only a lock's first request can change it (taking it if it is free); every later
        one finds it held, by that request's owner or by whoever held it before, and is
        acquired only if it is that holder. So Redis decides each distinct lock once, in
        one script call, and the rest follows from the holders."""
        if not requests:
            return []
        first: dict[tuple[str, str], LockRequest] = {}
        for r in requests:
            first.setdefault((r.tenant, r.alert_id), r)
        args: list[str | int] = []
        for r in first.values():
            args += (r.owner, r.window_s)
        answer = await self._acquire_many(
            keys=[self._keys.dedup_lock(tenant, alert_id) for tenant, alert_id in first],
            args=args,
        )
        holders = {lock: _text(raw) for lock, raw in zip(first, answer, strict=True)}
        shared: dict[tuple[bool, str], LockDecision] = {}  # a storm's thousand are one
        decisions = []
        for r in requests:
            holder = holders[r.tenant, r.alert_id]
            outcome = (holder == r.owner, holder)
            decision = shared.get(outcome)
            if decision is None:
                decision = shared[outcome] = LockDecision(*outcome)
            decisions.append(decision)
        return decisions

    async def release(self, tenant: str, alert_id: str, owner: str) -> bool:
        released = await self._release(keys=[self._keys.dedup_lock(tenant, alert_id)],
                                       args=[owner])
        return bool(released)

    async def clear(self, tenant: str, alert_id: str) -> None:
        """Drop the lock whoever holds it: a resolve ends the incident it guarded."""
        await self._redis.delete(self._keys.dedup_lock(tenant, alert_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
