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
        """One decision per request, in order, as if each had been tried in turn."""
        if not requests:
            return []
        first: dict[tuple[str, str], LockRequest] = {}
        for r in requests:
            first.setdefault((r.tenant, r.alert_id), r)
        holders = await self.holders(list(first.values()))
        return [LockDecision(holders[r.tenant, r.alert_id] == r.owner,
                             holders[r.tenant, r.alert_id]) for r in requests]

    async def holders(self, firsts: Sequence[LockRequest]) -> dict[tuple[str, str], str]:
        """Each lock's holder after trying ``firsts``, one request per distinct lock: the
        first of a batch's requests for it, which takes it if it is free.

        That request is the only one of the batch that can change the lock; every later
        request for it finds it held by this holder, and is acquired only if it is that
        holder (``acquire_many``). So a batch costs one script call reading each distinct
        lock once, however many entries ask for it."""
        if not firsts:
            return {}
        args: list[str | int] = []
        for r in firsts:
            args += (r.owner, r.window_s)
        answer = await self._acquire_many(
            keys=[self._keys.dedup_lock(r.tenant, r.alert_id) for r in firsts], args=args
        )
        return {(r.tenant, r.alert_id): _text(raw) for r, raw in zip(firsts, answer, strict=True)}

    async def release(self, tenant: str, alert_id: str, owner: str) -> bool:
        released = await self._release(keys=[self._keys.dedup_lock(tenant, alert_id)],
                                       args=[owner])
        return bool(released)

    async def clear(self, tenant: str, alert_id: str) -> None:
        """Drop the lock whoever holds it: a resolve ends the incident it guarded."""
        await self._redis.delete(self._keys.dedup_lock(tenant, alert_id))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
