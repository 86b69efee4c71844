"""A loopback TCP proxy in front of PostgreSQL that can take the database away.

The API and the workers connect through it; ``outage(seconds)`` aborts every open connection
and stops listening, so new connections are refused until it listens again on the same port.
The machine's PostgreSQL service itself is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = listen_host
        self.port = listen_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def outage(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for ``seconds``."""
        await self.stop()
        await asyncio.sleep(seconds)
        await self.start()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(client_w)
            return
        self._writers.update((client_w, up_w))
        try:
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        except asyncio.CancelledError:
            pass  # the harness is shutting down; the connections are aborted below
        finally:
            for w in (client_w, up_w):
                self._writers.discard(w)
                _abort(w)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError, asyncio.CancelledError):
        pass
    finally:
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        # RST rather than FIN: the peer sees what a crashed or unreachable database looks like.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()
