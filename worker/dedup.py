"""The dedup lock: ``SET NX EX`` on a tenant-scoped key, owned by the event that took it.

Owner = the event's identity (``event_key``), so a redelivery or a retried XADD of the same
event re-enters its own lock instead of being counted as its own duplicate. Only the owner
releases it (compare-and-delete), and it is released whenever the event ends with zero
calls, so a corrected retry within the window is not suppressed. A batch's decisions are
one script call (one EVALSHA, one round trip, whatever the batch size; redis-py loads a
script the server lacks): a storm of 1,000 entries for one alert costs one command, not
1,000, and the script reads each key once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio

from worker.keys import Keys

# KEYS[i] is request i's lock, ARGV[2i-1] and ARGV[2i] its owner and window. Returns the
# holder of each lock after its request: the request's own owner means acquired (new, or
# re-entered without extending it). Atomic, so the batch's requests see each other's locks
# in order; ``held`` remembers what the script read or set, so each key is read once.
_ACQUIRE_MANY = """
local held = {}
local out = {}
for i, key in ipairs(KEYS) do
  local owner = ARGV[2 * i - 1]
  local current = held[key]
  if current == nil then current = redis.call('GET', key) end
  if not current then
    redis.call('SET', key, owner, 'EX', ARGV[2 * i])
    current = owner
  end
  held[key] = current
  out[i] = current
end
return out
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
        """One decision per request, in order (later requests see earlier ones' locks)."""
        if not requests:
            return []
        keys = [self._keys.dedup_lock(r.tenant, r.alert_id) for r in requests]
        args: list[str | int] = []
        for r in requests:
            args += (r.owner, r.window_s)
        holders = await self._acquire_many(keys=keys, args=args)
        decisions = []
        for request, raw in zip(requests, holders, strict=True):
            owner = _text(raw)
            decisions.append(LockDecision(acquired=owner == request.owner, owner=owner))
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
