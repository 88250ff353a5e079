"""A fault-injection TCP proxy for broker-outage tests, run in the test process.

Clients connect to the proxy's port; the proxy forwards bytes both ways to the upstream
(the real broker). :meth:`FaultProxy.cut` simulates a network outage: every open
connection is dropped, and new ones are black-holed (accepted, then never answered: what a
client sees behind a dead load balancer or a partitioned network) or refused (accepted and
closed at once: what a client sees from a host whose broker process is gone).
:meth:`FaultProxy.restore` ends the outage. The proxy counts the connections clients opened
while it was cut, so a test can tell a client that retries with backoff from one that spins.

>>> import socket
>>> with socket.create_server(("127.0.0.1", 0)) as upstream:
...     with FaultProxy("127.0.0.1", upstream.getsockname()[1]) as proxy:
...         with socket.create_connection(("127.0.0.1", proxy.port)) as client:
...             peer, _ = upstream.accept()
...             client.sendall(b"ping"); peer.recv(4)
...             proxy.cut()
...             client.recv(4)  # the proxy closed the connection
...             peer.close()
...             proxy.restore()
...             proxy.attempts_while_cut
b'ping'
b''
0
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

#: How a cut proxy treats a new connection (see the module docstring).
CutMode = Literal["blackhole", "refuse"]


@dataclass(eq=False)
class _Link:
    """One client connection and, once open, its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``upstream_host:upstream_port`` until cut.

    Parameters
    ----------
    upstream_host, upstream_port
        Where the real broker listens.
    port
        Port to listen on (default: a free one, chosen when the proxy starts).
    host
        Address to listen on.
    """

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0,
                 host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = port
        self.mode: CutMode | None = None  # None: forwarding
        self.cut_at: float | None = None
        self.attempts_while_cut = 0
        self.attempt_times: list[float] = []  # monotonic times of those attempts
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)

    # -- control (called from the test's thread) ------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = self._call(self._start_server())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._call(self._close_all(close_server=True))
            self._server = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def cut(self, mode: CutMode = "blackhole") -> None:
        """Drop every open connection; black-hole or refuse new ones until :meth:`restore`."""
        self.mode = mode
        self.cut_at = time.monotonic()
        self.attempts_while_cut = 0
        self.attempt_times = []
        self._call(self._close_all())

    def restore(self) -> None:
        """Forward again; connections black-holed during the cut are dropped."""
        self.mode = None
        self._call(self._close_all(held_only=True))

    def attempts_per_second(self, since: float | None = None) -> float:
        """Connection attempts per second of cut time (from ``since``, a monotonic time)."""
        start = since if since is not None else self.cut_at
        if start is None:
            return 0.0
        attempts = [t for t in self.attempt_times if t >= start]
        return len(attempts) / max(time.monotonic() - start, 1e-9)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the proxy (runs in the proxy's thread) -------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _start_server(self) -> asyncio.Server:
        return await asyncio.start_server(self._accept, self.host, self.port)

    async def _close_all(self, close_server: bool = False, held_only: bool = False) -> None:
        for link in list(self._links):
            if not held_only or link.upstream is None:
                link.abort()
                self._links.discard(link)
        if close_server and self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        if self.mode is not None:
            self.attempts_while_cut += 1
            self.attempt_times.append(time.monotonic())
            if self.mode == "refuse":
                writer.transport.abort()
            else:
                self._links.add(link)  # held open, never answered, dropped at restore
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        link.upstream = up_writer
        self._links.add(link)
        link.tasks = [asyncio.create_task(self._pump(reader, up_writer, link)),
                      asyncio.create_task(self._pump(up_reader, writer, link))]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    link: _Link) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        if link in self._links:  # one side closed: close both, as a TCP proxy does
            self._links.discard(link)
            link.abort()


@contextlib.contextmanager
def outage(proxy: FaultProxy, mode: CutMode = "blackhole") -> Iterator[FaultProxy]:
    """Cut ``proxy`` for the duration of the ``with`` block."""
    proxy.cut(mode)
    try:
        yield proxy
    finally:
        proxy.restore()
