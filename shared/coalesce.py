"""uvicorn's HTTP/1.1 protocol with an answer's head and its first body bytes sent as one.

uvicorn writes a response's status line and headers when the app sends
``http.response.start`` and the body with each ``http.response.body``: two socket writes,
and two packets, for a JSON answer. A write on a loopback or LAN socket costs about as much
CPU as a route decision (the kernel delivers the packet in the writer's system call), so
the gateway spent a fifth of its time there (bench/README.md, gateway). Here the protocol's
transport is wrapped: a write that starts an answer's head is held until the next write
(its body), and both leave in one write at once; a head whose body does not come in the
same pass of the event loop leaves alone at the start of the next pass. Nothing waits for
the rest of a busy pass (on a loaded loop that can take milliseconds, which would show in
a stream's time to first chunk), and a stream's later chunks leave as they come. Close,
EOF and a protocol switch send what is pending first; abort drops it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD = b"HTTP/"
"""How every answer's head (status line) starts: a write that begins with it is held for
its body to join it."""


class CoalescingTransport:
    """A transport proxy that sends an answer's head together with its first body bytes."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._pending:
            # The held head's body: both leave now, in one write.
            self._pending.append(bytes(data))
            self.flush()
        elif data[:5] == HEAD:
            # A head: held for its body, at most to the end of this pass.
            self._pending.append(bytes(data))
            self._loop.call_soon(self.flush)
        else:
            # Body bytes after the pass that wrote their head: a stream's next chunk.
            self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def flush(self) -> None:
        """Hand what is pending to the real transport now."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # the peer left or the connection was aborted: nobody to send to
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(p) for p in self._pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.flush()  # a protocol switch (websocket upgrade): the 101 answer goes first
        self._transport.set_protocol(protocol)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # get_extra_info, pause_reading, resume_reading, ...: the real transport's
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """``uvicorn.Config(http=CoalescingHttpToolsProtocol)``: see the module's docstring."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        wrapped = CoalescingTransport(transport, self.loop)
        super().connection_made(wrapped)  # type: ignore[arg-type]
