"""A TCP proxy that can blackhole its traffic: a network partition on demand.

A refused connection fails fast; a partition does not. Packets are dropped, connections
neither close nor answer, and a client without its own timeouts waits forever. Put this
proxy between a process and a server (``postgresql://...@127.0.0.1:{proxy.port}/db``) and:

- ``stall()``: stop forwarding bytes both ways on every open connection, and leave new
  connections hanging (the kernel completes the handshake; nothing is ever sent on), without
  closing anything;
- ``heal()``: forward again, including what was written meanwhile; held connections go on.

The proxy runs on its own thread and event loop (like the fake Twilio), so tests and
benchmarks on any loop, or none, can drive it::

    with StallProxy("127.0.0.1", 5432) as proxy:
        ...  # point the worker at proxy.port
        proxy.stall(); time.sleep(30); proxy.heal()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from types import TracebackType

_CHUNK = 65_536


class StallProxy:
    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0  # accepted so far

    # ------------------------------------------------------------------ control

    def stall(self) -> None:
        """Blackhole: no byte moves and no new connection proceeds until ``heal()``."""
        self._call(lambda: self._event().clear())

    def heal(self) -> None:
        self._call(lambda: self._event().set())

    @property
    def stalled(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    # --------------------------------------------------------------------- life

    def start(self) -> StallProxy:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = loop.run_until_complete(
                asyncio.start_server(self._accept, self.host, 0, backlog=512))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name="stall-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the stall proxy did not start")
        return self

    def stop(self) -> None:
        """Close every connection and the listener."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> StallProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # ---------------------------------------------------------------- internals

    def _event(self) -> asyncio.Event:
        assert self._flowing is not None, "start() the proxy first"
        return self._flowing

    def _call(self, action: Callable[[], None]) -> None:
        assert self._loop is not None, "start() the proxy first"
        done = threading.Event()

        def run() -> None:
            action()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._event().wait()  # a new connection during a stall hangs here
            up_reader, up_writer = await asyncio.open_connection(self.target_host,
                                                                 self.target_port)
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the peer went away, or stop() is closing everything
        finally:
            self._tasks.discard(task)
            for w in (writer, locals().get("up_writer")):
                if isinstance(w, asyncio.StreamWriter):
                    self._writers.discard(w)
                    w.close()

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._event().wait()
                data = await source.read(_CHUNK)
                if not data:
                    break
                await self._event().wait()  # read during a stall: hold it until healed
                sink.write(data)
                await sink.drain()
        finally:
            with contextlib.suppress(OSError):
                if sink.can_write_eof():
                    sink.write_eof()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._event().set()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)
