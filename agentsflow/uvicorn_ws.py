"""uvicorn's WebSocket protocol as production runs it (ops/run-asgi.sh: ``--ws
agentsflow.uvicorn_ws:WebSocketProtocol``).

uvicorn's websockets-sansio protocol keeps the handshake's request and response
(their parsed headers: ~4.5 KB) for as long as the socket is open, though it
reads them only until the handshake is answered. Here they are let go once it
is: 10,000 held sockets, ~45 MB less.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class WebSocketProtocol(WebSocketsSansIOProtocol):
    async def send(self, message) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "request", None) is not None:
            self.request = self.response = None
