"""A TCP proxy on 127.0.0.1 that holds every client write for a while: a slow registry.

Put it between a client and a real registry (``registries: {quay.io: {endpoint: proxy.url}}``)
to keep checks in flight long enough to observe them: a spawn storm, a SIGTERM during a
check, a hub whose service answers slowly. Each chunk the client sends (in practice one HTTP
request) waits ``delay_seconds`` before it goes upstream; answers flow back at once.

It runs in the event loop of the test that starts it (``async with DelayProxy(...)``), so the
test must keep awaiting while traffic flows. Counters tell a test that traffic is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

_CHUNK_BYTES = 64 * 1024


class DelayProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_host``:``upstream_port`` with a delay."""

    def __init__(self, upstream_host: str, upstream_port: int, *, delay_seconds: float) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.delay_seconds = delay_seconds
        self.connections = 0
        """Client connections accepted so far."""
        self.chunks_forwarded = 0
        """Client chunks (≈ requests) that went upstream."""
        self.chunks_waiting = 0
        """Client chunks being held right now."""
        self.holding = asyncio.Event()
        """Set while at least one chunk is held: ``await proxy.holding.wait()``."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            self._writers.add(up_writer)
            await asyncio.gather(
                self._pump(reader, up_writer, delay=True),
                self._pump(up_reader, writer, delay=False),
            )
        except OSError:
            pass
        finally:
            for stream in (writer, up_writer):
                if stream is not None:
                    stream.close()
                    self._writers.discard(stream)
            self._tasks.discard(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, delay: bool
    ) -> None:
        try:
            while chunk := await source.read(_CHUNK_BYTES):
                if delay:
                    self.chunks_waiting += 1
                    self.holding.set()
                    try:
                        await asyncio.sleep(self.delay_seconds)
                    finally:
                        self.chunks_waiting -= 1
                        if not self.chunks_waiting:
                            self.holding.clear()
                    self.chunks_forwarded += 1
                sink.write(chunk)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except (ConnectionError, OSError):
            return
