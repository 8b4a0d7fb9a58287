"""uvicorn's WebSocket protocol as production runs it (ops/run-asgi.sh: ``--ws
agentsflow.uvicorn_ws:WebSocketProtocol``).

uvicorn's websockets-sansio protocol keeps the handshake's request and response
(their parsed headers: ~4.5 KB) for as long as the socket is open, though it
reads them only until the handshake is answered. Here they are let go once it
is. websockets' parser keeps the request object itself (a local of its
``ServerProtocol.parse`` generator, which runs for the socket's life), so its
headers are emptied in place.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "request", None) is not None:
            self.request.headers.clear()  # the scope has its own copy of them
            self.request = self.response = None
