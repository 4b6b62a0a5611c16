"""The global outbound call rate, shared by every replica (VOICEALERT_CALLS_PER_SECOND).

Two parts, both in Redis, both global:

- **The schedule** (``reserve``): a GCRA schedule in one Redis key: reserving N calls returns
  N start times spaced one interval apart, after whatever earlier reservations hold. Jobs are
  scheduled for their slot (arq's deferred score), so no worker sleeps holding a job slot, and
  a storm of 300 calls at 1 CPS is simply a 300-second schedule, the same across replicas.
- **The dial gate** (``admit_dial``), right before each POST: a call may dial only if fewer
  than ``per_window`` dials were admitted in the last ``window_ms``. Slots alone cannot keep
  every second at the rate: between a call's slot and its POST lie the job start and the
  claim transaction, which vary by tens of ms under load, and a replica starved of the CPU
  starts its overdue jobs together. The gate holds the window whatever the jobs do.

The window is ``per_window`` = the rate rounded up (10 at 10/s, 1 at 0.5/s) dials per
``per_window / rate`` seconds plus ``DIAL_MARGIN_MS``: the margin covers what still varies
after the gate (the Redis reply, the HTTP client, the provider receiving the request), so that
the provider too sees no more than the rate in any second. The schedule's interval is the
window divided by ``per_window``, so jobs come due at the pace the gate admits and seldom wait
at it: the long-run rate is the margin's share short of the one set (about 7 %, docs/
contracts.md).
"""

from __future__ import annotations

import asyncio
import math

import redis.asyncio

#: What the window adds to ``per_window / rate`` seconds (see the module docstring): more than
#: the gate-to-provider time varies by on a loaded machine (measured: docs/benchmarks.md).
DIAL_MARGIN_MS = 75.0

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

# The gate: a sorted set of the latest ``per_window`` admitted dials, scored by their Redis
# time in epoch microseconds (exact in a double). Dials asked for together (one per ARGV from
# the third) are taken in order: each is admitted when the set holds fewer than
# ``per_window``, or the ``per_window``-th latest is at least the window old; the check and
# the record are one script, so two replicas cannot both take the last place. Each admitted
# dial is recorded at the Redis time, or one microsecond after the latest recorded if that is
# not earlier (a batch's dials get distinct, consecutive stamps; a stamp is never before the
# dial, so the window between recorded dials is never shorter than between real ones).
# Returns {how many were admitted (the first ones), the first one's stamp (µs), µs the rest
# wait before asking again}.
_ADMIT = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window_us = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local stamp = now_us
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if latest[2] and tonumber(latest[2]) >= stamp then stamp = tonumber(latest[2]) + 1 end
local first = stamp
local count = redis.call('ZCARD', KEYS[1])
local admitted, wait = 0, 0
for i = 3, #ARGV do
  if count >= n then
    local oldest = redis.call('ZRANGE', KEYS[1], -n, -n, 'WITHSCORES')
    local free_at = tonumber(oldest[2]) + window_us
    if free_at > now_us then
      wait = free_at - now_us
      break
    end
  end
  redis.call('ZADD', KEYS[1], stamp, stamp .. ':' .. ARGV[i])
  stamp = stamp + 1
  count = count + 1
  admitted = admitted + 1
end
if admitted > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(n + 1))
  redis.call('PEXPIRE', KEYS[1], math.ceil(window_us / 1000) + 1000)
end
return {admitted, first, wait}
"""


class RateLimiter:
    def __init__(self, client: redis.asyncio.Redis, key: str, calls_per_second: float, *,
                 dials_key: str | None = None) -> None:
        self._key = key
        self._dials_key = dials_key
        self._reserve = client.register_script(_RESERVE)
        self._admit = client.register_script(_ADMIT)
        #: Dials asked for in this turn of the event loop, sent together at its end.
        self._asked: list[tuple[str, asyncio.Future[tuple[bool, int]]]] = []
        self._sending: set[asyncio.Task[None]] = set()
        #: Dials the gate admits per window: the rate rounded up, at least one.
        self.per_window = max(1, math.ceil(calls_per_second))
        #: The gate's window: ``per_window`` calls at the rate set, plus the margin.
        self.window_ms = self.per_window * 1000 / calls_per_second + DIAL_MARGIN_MS
        #: The schedule's spacing: the window shared out, so slots come at the gate's pace.
        self.interval_ms = self.window_ms / self.per_window

    async def reserve(self, count: int, *, not_before_ms: int = 0) -> list[int]:
        """Reserve ``count`` call starts, none before ``not_before_ms``; returns their times
        in epoch milliseconds."""
        if count <= 0:
            return []
        slots = await self._reserve(keys=[self._key], args=[repr(self.interval_ms), str(count),
                                                            str(not_before_ms)])
        return [int(s) for s in slots]

    async def admit_dial(self, tag: str) -> int:
        """Wait until the window lets one more call dial, and count it as dialing now (call
        right before the POST); returns when it was admitted, epoch microseconds (Redis
        clock; dials admitted together get consecutive microseconds). ``tag`` names the
        dial in the record (the call id and attempt).

        The dials asked for in the same turn of the event loop (a chunk's calls reaching
        their POST together) go to the gate in one script, each taking its own place in the
        window in turn, as one script per dial would have given them."""
        if self._dials_key is None:
            raise RuntimeError("this RateLimiter has no dial gate (dials_key)")
        while True:
            admitted, value = await self._ask(tag)
            if admitted:
                return value
            await asyncio.sleep(value / 1_000_000)

    def _ask(self, tag: str) -> asyncio.Future[tuple[bool, int]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[bool, int]] = loop.create_future()
        if not self._asked:
            loop.call_soon(self._send_asked)
        self._asked.append((tag, future))
        return future

    def _send_asked(self) -> None:
        asked, self._asked = self._asked, []
        task = asyncio.get_running_loop().create_task(self._admit_asked(asked))
        self._sending.add(task)  # (a task nobody refers to may be collected while it runs)
        task.add_done_callback(self._sending.discard)

    async def _admit_asked(self, asked: list[tuple[str, asyncio.Future[tuple[bool, int]]]]
                           ) -> None:
        key = self._dials_key
        assert key is not None  # (admit_dial checked)
        try:
            admitted, first, wait = await self._admit(
                keys=[key],
                args=[repr(self.window_ms * 1000), str(self.per_window),
                      *(tag for tag, _ in asked)])
        except asyncio.CancelledError:
            for _, future in asked:
                future.cancel()
            raise
        except Exception as exc:  # each dial fails as its own script's error would fail it
            for _, future in asked:
                if not future.done():
                    future.set_exception(exc)
            return
        admitted, first, wait = int(admitted), int(first), int(wait)
        for i, (_, future) in enumerate(asked):
            # A dial whose caller was cancelled meanwhile stays counted if admitted: the
            # record then holds one dial more than were made, never one fewer.
            if not future.done():
                future.set_result((True, first + i) if i < admitted else (False, wait))
