"""agentsflow.uvicorn_ws: uvicorn's WebSocket protocol as production runs it."""

from __future__ import annotations

import asyncio

from uvicorn.config import Config
from uvicorn.server import ServerState

from agentsflow.uvicorn_ws import WebSocketProtocol

HANDSHAKE = (
    b"GET /ws/chat/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.eof_written = False

    def write(self, data) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8002), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True


async def test_the_handshake_is_let_go_once_answered_and_the_socket_stays_open():
    accepted, release = asyncio.Event(), asyncio.Event()

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        accepted.set()
        await release.wait()

    config = Config(app=app, lifespan="off", ws_per_message_deflate=False)
    config.load()
    protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    request = protocol.request  # uvicorn reads it until the answer
    assert request.headers["Upgrade"] == "websocket"
    await asyncio.wait_for(accepted.wait(), 5)
    try:
        assert protocol.request is None and protocol.response is None
        assert not request.headers  # websockets' parser still holds the request: emptied
        assert transport.written.startswith(b"HTTP/1.1 101 Switching Protocols")
        assert b"sec-websocket-extensions" not in transport.written.lower()  # the deflate offer declined
        assert not transport.closing
    finally:
        release.set()
        protocol.connection_lost(None)


async def test_a_refused_frame_is_answered_then_the_connection_lingers_until_the_client_closes():
    """uvicorn closed at once, with the rest of the frame unread: the kernel reset the
    connection and the client often never read its 1009."""
    accepted = asyncio.Event()

    async def app(scope, receive, send):
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        accepted.set()
        while (await receive())["type"] != "websocket.disconnect":
            pass

    config = Config(app=app, lifespan="off", ws_per_message_deflate=False, ws_max_size=1024)
    config.load()
    protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)
    protocol.data_received(HANDSHAKE)
    await asyncio.wait_for(accepted.wait(), 5)
    answered = len(transport.written)
    # The start of a masked 2 MB text frame: its header alone is over the limit.
    protocol.data_received(bytes([0x81, 0xFF]) + (2 * 1024 * 1024).to_bytes(8, "big") + b"mask" + b"x" * 4096)
    close_frame = bytes(transport.written[answered:])
    assert close_frame[:1] == b"\x88" and int.from_bytes(close_frame[2:4], "big") == 1009
    assert transport.eof_written and not transport.closing  # half-closed: the client can read it
    protocol.data_received(b"x" * 65536)  # the rest of the frame: dropped
    assert bytes(transport.written[answered:]) == close_frame
    protocol.eof_received()  # the client closes its side
    assert transport.closing
    protocol.connection_lost(None)
