"""The dedup lock: ``SET NX EX`` on a tenant-scoped key, owned by the event that took it.

Owner = the event's identity (``event_key``), so a redelivery or a retried XADD of the same
event re-enters its own lock instead of being counted as its own duplicate. Only the owner
releases it (compare-and-delete), and it is released whenever the event ends with zero
calls, so a corrected retry within the window is not suppressed. Decisions for a batch go
to Redis in one pipelined round trip (EVALSHA; redis-py loads a script the server lacks
before running the pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio

from worker.keys import Keys

_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return {1, ARGV[1]} end
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return {1, owner} end
if not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return {1, ARGV[1]}
end
return {0, owner}
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
        self._acquire = client.register_script(_ACQUIRE)
        self._release = client.register_script(_RELEASE)

    async def acquire_many(self, requests: Sequence[LockRequest]) -> list[LockDecision]:
        """One decision per request, in order (later requests see earlier ones' locks)."""
        if not requests:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for r in requests:
                await self._acquire(keys=[self._keys.dedup_lock(r.tenant, r.alert_id)],
                                    args=[r.owner, str(r.window_s)], client=pipe)
            results = await pipe.execute()
        return [LockDecision(acquired=bool(ok), owner=_text(owner)) for ok, owner in results]

    async def release(self, tenant: str, alert_id: str, owner: str) -> bool:
        released = await self._release(keys=[self._keys.dedup_lock(tenant, alert_id)],
                                       args=[owner])
        return bool(released)

    async def clear(self, tenant: str, alert_id: str) -> None:
        """Drop the lock whoever holds it: a resolve ends the incident it guarded."""
        await self._redis.delete(self._keys.dedup_lock(tenant, alert_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
