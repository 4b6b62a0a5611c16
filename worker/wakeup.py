"""Waking arq's job loop when a job comes due, instead of at its next poll.

arq looks at its queue every ``poll_delay_s`` (0.05 s): a call job enqueued just after a
look waits for the next one, and a job deferred to a rate-limit slot starts up to one poll
after its slot. So the job loop (worker/app.py) sleeps in ``JobWakeup.wait`` instead, which
returns at the poll deadline as before, or sooner:

- when a job is enqueued that is due now: every enqueue (``worker.queue.enqueue_many``)
  publishes the earliest start time of the jobs it added on ``Keys.queue_wake``, and each
  replica listens there;
- at the start time of the next deferred job, which the loop reads after a look at the
  queue (``note_due``) when it may have changed (jobs ran, something was announced, the
  last one known came due), or learns from such an announcement.

The poll stays the fallback: a wake lost (the listener reconnecting, Redis away) costs only
the latency it would have saved. Idle, the listener blocks on its socket and the loop still
looks at the queue once per poll delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator

import redis.asyncio

from worker.logs import get_logger
from worker.outages import REDIS_UNAVAILABLE

log = get_logger(__name__)

_DISCONNECTED: tuple[type[BaseException], ...] = (*REDIS_UNAVAILABLE, OSError)

#: How long the listener waits for a message before looking at whether it should stop.
_LISTEN_S = 1.0
#: How long the listener waits before subscribing again after losing its connection.
_RESUBSCRIBE_S = 1.0


class JobWakeup:
    def __init__(self, client: redis.asyncio.Redis, channel: str) -> None:
        self._client = client
        self._channel = channel
        self._ready = False  # a job due now was announced since the loop last looked
        self._due_ms = math.inf  # the earliest start time known to be ahead
        self._changed = asyncio.Event()
        # Whether the queue's earliest deferred job may differ from what the loop last read:
        # idle (nothing announced, nothing running), the loop need not read it again.
        self.stale = True
        self.wakes = 0  # announcements received, for tests and logs

    def announce(self, due_ms: float) -> None:
        """A job starts at ``due_ms`` (epoch ms): look at the queue then, or now if it is due."""
        self.stale = True
        if due_ms <= time.time() * 1000:
            self._ready = True
        elif due_ms < self._due_ms:
            self._due_ms = due_ms
        else:
            return
        self._changed.set()

    def note_due(self, due_ms: float | None) -> None:
        """The earliest deferred job in the queue, read after a look at it (None: none)."""
        self.stale = False
        if due_ms is not None:
            self.announce(due_ms)

    def looking(self) -> None:
        """The loop looks at the queue now: what was due is about to be read."""
        self._ready = False

    async def wait(self, deadline: float) -> None:
        """Sleep until ``deadline`` (the event loop's clock), or until a job comes due."""
        loop = asyncio.get_running_loop()
        while not self._ready:
            now_ms = time.time() * 1000
            if self._due_ms <= now_ms:
                self._due_ms = math.inf
                self.stale = True  # what comes after it is not known
                return
            timeout = min(deadline - loop.time(), (self._due_ms - now_ms) / 1000)
            if timeout <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait()

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """Listen for announcements while the block runs."""
        task = asyncio.create_task(self._listen(), name="job-wakeup")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self) -> None:
        while True:
            try:
                await self._subscribed()
            except _DISCONNECTED as exc:
                # The poll covers the gap; the job loop itself notices if Redis stays away.
                log.debug("wakeup.disconnected", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(_RESUBSCRIBE_S)

    async def _subscribed(self) -> None:
        async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
            await pubsub.subscribe(self._channel)
            while True:
                message = await pubsub.get_message(timeout=_LISTEN_S)
                if message is None:
                    continue
                try:
                    due_ms = float(message["data"])
                except (TypeError, ValueError):
                    continue  # not ours: a wake is only ever a time
                self.wakes += 1
                self.announce(due_ms)
