"""uvicorn's WebSocket protocol as production runs it (ops/run-asgi.sh: ``--ws
agentsflow.uvicorn_ws:WebSocketProtocol``).

uvicorn's websockets-sansio protocol keeps the handshake's request and response
(their parsed headers: ~4.5 KB) for as long as the socket is open, though it
reads them only until the handshake is answered. Here they are let go once it
is. websockets' parser keeps the request object itself (a local of its
``ServerProtocol.parse`` generator, which runs for the socket's life), so its
headers are emptied in place.

A frame it refuses (too big: 1009, invalid UTF-8: 1007...) is answered with
its close frame as uvicorn does, but the connection is not closed at once:
uvicorn closed it with the rest of the frame unread, so the kernel reset it and
the client often never read the close frame (it had been hidden by
per-message deflate, which shrank a 2 MB frame to a few KB). Here the server
half-closes, drops whatever still arrives, and closes when the client does or
after LINGER_SECONDS.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

LINGER_SECONDS = 2.0


class WebSocketProtocol(WebSocketsSansIOProtocol):
    lingering = False

    def handle_parser_exception(self) -> None:
        close = self.conn.close_sent
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code, "reason": close.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = self.lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after the close frame: the client reads it, then closes
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self.lingering:  # the rest of a refused frame is dropped
            super().data_received(data)

    def eof_received(self) -> None:
        if self.lingering:
            self.transport.close()

    async def send(self, message) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "request", None) is not None:
            self.request.headers.clear()  # the scope has its own copy of them
            self.request = self.response = None
