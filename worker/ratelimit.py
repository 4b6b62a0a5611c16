"""The global outbound call rate, shared by every replica (VOICEALERT_CALLS_PER_SECOND).

A GCRA schedule in one Redis key: reserving N calls returns N start times spaced one
interval apart, after whatever earlier reservations hold. Jobs are scheduled for their slot
(arq's deferred score), so no worker sleeps holding a job slot, and a storm of 300 calls at
1 CPS is simply a 300-second schedule, the same across replicas.
"""

from __future__ import annotations

import redis.asyncio

# Slots within one reservation are spaced by the exact interval, which may be a fraction of a
# millisecond (0.1 ms at 10,000 calls/s); a Lua number returned to Redis becomes an integer, so
# slots come back as whole milliseconds. The stored schedule is rounded up to a whole
# millisecond (never faster than the rate set), as replicas of an older version read it.
_RESERVE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local interval = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now_ms then tat = now_ms end
local not_before = tonumber(ARGV[3] or '0')
if tat < not_before then tat = not_before end
local slots = {}
for i = 1, n do
  slots[i] = tat
  tat = tat + interval
end
tat = math.ceil(tat)
redis.call('SET', KEYS[1], tat, 'PX', math.max(tat - now_ms, 1) + 1000)
return slots
"""


class RateLimiter:
    def __init__(self, client: redis.asyncio.Redis, key: str, calls_per_second: float) -> None:
        self._key = key
        self._reserve = client.register_script(_RESERVE)
        self.interval_ms = 1000 / calls_per_second

    async def reserve(self, count: int, *, not_before_ms: int = 0) -> list[int]:
        """Reserve ``count`` call starts, none before ``not_before_ms``; returns their times
        in epoch milliseconds."""
        if count <= 0:
            return []
        slots = await self._reserve(keys=[self._key], args=[repr(self.interval_ms), str(count),
                                                            str(not_before_ms)])
        return [int(s) for s in slots]
