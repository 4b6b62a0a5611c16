"""The HTTP API's per-token request rate (VOICEALERT_API_RATE_PER_S, VOICEALERT_API_RATE_BURST).

GCRA in one Redis key per token, shared by every web process: a token may send ``burst``
requests at once, then one every ``1/rate`` seconds. A refused request changes nothing
and learns when the next one will be allowed (``Retry-After``). No per-request keys, and
the key expires once the token is idle.

A request that writes events takes its place in the rate and XADDs them in the same script
(``admit``): one round trip, atomic, so a refused request writes nothing and an admitted
one costs what a bare XADD costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio

from worker.keys import Keys

# Times are microseconds from Redis's own clock, so every web process agrees on "now".
# KEYS[1]: the token's rate key; KEYS[2] (admit only): the stream; ARGV[3..]: the events.
_ACQUIRE = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now_us then tat = now_us end
local new_tat = tat + interval
if new_tat - now_us > tolerance + interval then
  return {0, tat - tolerance - now_us}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
           math.ceil((new_tat - now_us) / 1000) + 1000)
local ids = {}
for i = 3, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', 'event', ARGV[i])
end
return {1, 0, ids}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: float  # when refused: how long until a request would be allowed

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` in whole seconds, at least 1 (HTTP has no fractions)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RequestLimiter:
    def __init__(self, client: redis.asyncio.Redis, keys: Keys, *, per_second: float,
                 burst: int) -> None:
        self._keys = keys
        self._acquire = client.register_script(_ACQUIRE)
        self._interval_us = max(1, round(1_000_000 / per_second))
        self._tolerance_us = self._interval_us * (burst - 1)

    async def acquire(self, key_id: str) -> Verdict:
        """Take a place in the token's rate (a request that writes nothing)."""
        verdict, _ = await self.admit(key_id, None, [])
        return verdict

    async def admit(
        self, key_id: str, stream: str | None, events: Sequence[str]
    ) -> tuple[Verdict, list[str]]:
        """Take a place in the rate and, if allowed, XADD each event (the ``event`` field's
        JSON) to ``stream``; returns the verdict and the entry ids written."""
        keys = [self._keys.api_requests(key_id)] + ([stream] if stream is not None else [])
        reply = await self._acquire(
            keys=keys, args=[str(self._interval_us), str(self._tolerance_us), *events])
        allowed, wait_us = reply[0], reply[1]
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in reply[2]] if allowed else []
        verdict = Verdict(allowed=bool(allowed), retry_after_s=max(0, int(wait_us)) / 1_000_000)
        return verdict, ids
