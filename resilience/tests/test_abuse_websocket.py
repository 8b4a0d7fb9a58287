"""Abuse 7: WebSocket abuse against a real server process in production settings:
oversized, binary and invalid frames, floods, a client that stops reading while a
long reply streams, and thousands of connect/disconnect cycles."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

import pytest
import websockets
from websockets.sync.client import connect

from agentsflow.testing import manage, prepare_platform
from bench.fake_upstream import run_fake_upstream
from resilience import abuse_tools as tools

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def upstream():
    """The fake upstream in a process of its own: a long reply streams at full speed,
    not at what this process's GIL leaves it."""
    with run_fake_upstream(separate_process=True) as base_url:
        yield base_url


WORKERS = 2 if os.environ.get("REDIS_URL") else 1
CYCLES = int(os.environ.get("ABUSE_WS_CYCLES", "2000"))
LONG_REPLY = "tokens-100000+tps-100000"  # as fast as the fake upstream goes
FINAL_REPLY = """
import json, time
from chat.models import Message
reply = Message.objects.filter(role="assistant", model_name="long").order_by("-id").first()
deadline = time.monotonic() + 90
while reply.status == "streaming" and time.monotonic() < deadline:
    time.sleep(1)
    reply.refresh_from_db()
print(json.dumps({"status": reply.status, "tokens": reply.completion_tokens}))
"""


@pytest.fixture(scope="module")
def platform(upstream, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abuse-ws")
    models = tools.fake_models(
        upstream,
        {"name": "echo", "upstream_model": "echo"},
        {"name": "long", "upstream_model": LONG_REPLY, "context_window": 200_000, "max_output_tokens": 100_000},
    )
    return prepare_platform(tools.production_env(tmp, "abuse_ws", **models))


SETTINGS = {"RATE_LIMIT_REGULAR": "100000", "CHAT_STREAM_GRACE_SECONDS": "5"}


@pytest.fixture(scope="module")
def live(platform, tmp_path_factory):
    log = tmp_path_factory.mktemp("abuse-ws-server") / "server.log"
    with tools.serve(platform, SETTINGS, workers=WORKERS, log_path=log) as server:
        yield server


def key_headers(live) -> dict[str, str]:
    return {"Authorization": f"Bearer {live.key}"}


def close_code(ws) -> int:
    """Read until the server closes; its close code."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=10)
    return closed.value.rcvd.code


@contextlib.contextmanager
def ready(live, **kwargs):
    """A socket authenticated by key, past its "ready" event."""
    with connect(live.ws_url, additional_headers=key_headers(live), open_timeout=10, **kwargs) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
        yield ws


def test_abuse7_oversized_binary_and_invalid_frames_are_closed_with_their_codes(live, record_property):
    """A 1 MB frame (the server's frame limit) and a 300 KB one (the platform's message
    limit) close 1009; a binary frame 1003; a text frame of invalid UTF-8 1007; JSON
    nested past the parser's limit is an error event and the socket stays open."""
    codes = {}
    for name, size in (("2 MB", 2 * 1024 * 1024), ("1 MB", 1024 * 1024), ("300 KB", 300 * 1024)):
        with ready(live, max_size=None) as ws:
            ws.send("x" * size)
            codes[name] = close_code(ws)
    with ready(live) as ws:
        ws.send(b"\x00\x01binary")
        codes["binary"] = close_code(ws)
    raw = tools.RawWebSocket(live.server.port, key_headers(live))
    assert json.loads(raw.read_frame()[1])["type"] == "ready"
    raw.send_frame(b'{"type": "ping", "x": "\xff\xfe"}')
    codes["invalid UTF-8"] = raw.close_code()
    raw.close()
    deep = "[" * 1000 + "]" * 1000
    errors = set()
    with ready(live) as ws:
        for field in ("content", "model", "conversation_id", "message_id", "client_id", "type"):
            ws.send(json.dumps({"type": "send", "content": "x", "model": "echo"})[:-1] + f', "{field}": {deep}}}')
            errors.add(json.loads(ws.recv(timeout=10)).get("code"))
        ws.send('{"type": "ping"}')
        pong = json.loads(ws.recv(timeout=10))
    assert codes == {"2 MB": 1009, "1 MB": 1009, "300 KB": 1009, "binary": 1003, "invalid UTF-8": 1007}, codes
    assert errors <= {"parse_error", "invalid"}, errors
    assert pong["type"] == "pong"
    record_property(
        "figure",
        ", ".join(f"{name} → {code}" for name, code in codes.items())
        + f"; JSON nested 1,000 deep in 6 fields → {'/'.join(sorted(errors))}, socket kept",
    )


def test_abuse7_a_message_flood_is_throttled_then_closed_1008(live, record_property):
    """1,000 messages sent as fast as the socket takes them: the first burst is served,
    the rest get "throttled" errors, and the flood is closed with 1008."""
    with ready(live) as ws:
        sent = 0
        try:
            for _ in range(1000):
                ws.send('{"type": "ping"}')
                sent += 1
        except websockets.ConnectionClosed:
            pass
        pongs = throttled = 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                event = json.loads(ws.recv(timeout=10))
                pongs += event["type"] == "pong"
                throttled += event.get("code") == "throttled"
    assert closed.value.rcvd.code == 1008
    assert 0 < pongs < sent and throttled > 0
    record_property("figure", f"{sent} sent: {pongs} answered, {throttled} throttled, then closed 1008")


class PeakMemory:
    """Samples a server's resident memory in a thread; ``growth`` is the peak over the start, in MB."""

    def __init__(self, live) -> None:
        self.pgid, self.baseline = live.server.process.pid, tools.rss_bytes(live.server.process.pid)
        self.peak, self.running = self.baseline, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, tools.rss_bytes(self.pgid))
            time.sleep(0.2)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return (self.peak - self.baseline) / 2**20


def warmed_up(live) -> None:
    """One short reply first, so the baseline has everything a reply needs loaded."""
    with ready(live) as ws:
        ws.send(json.dumps({"type": "send", "content": "warm up", "model": "echo"}))
        while json.loads(ws.recv(timeout=10))["type"] != "done":
            pass
    time.sleep(1)


def test_abuse7_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded(platform, tmp_path, record_property):
    """Side by side on two fresh servers: a client that reads a 100,000-token reply to
    the end, and one with a 4 KB receive buffer that asks for the same reply and never
    reads again. The server lets go of the stalled socket, and the stalled client costs
    no more memory than one that reads everything."""
    with tools.serve(platform, SETTINGS, workers=1, log_path=tmp_path / "reader.log") as live:
        warmed_up(live)
        memory = PeakMemory(live)
        with ready(live) as ws:
            ws.send(json.dumps({"type": "send", "content": "a long one please", "model": "long"}))
            while json.loads(ws.recv(timeout=30))["type"] != "done":
                pass
        reader_growth = memory.stop()

    with tools.serve(platform, SETTINGS, workers=1, log_path=tmp_path / "stalled.log") as live:
        warmed_up(live)
        memory = PeakMemory(live)
        raw = tools.RawWebSocket(live.server.port, key_headers(live), receive_buffer=4096)
        assert raw.status == 101 and json.loads(raw.read_frame()[1])["type"] == "ready"
        raw.send_json({"type": "send", "content": "a long one please", "model": "long"})
        started, released_after, state = time.monotonic(), None, "ESTABLISHED"
        while time.monotonic() - started < 90:
            state = tools.server_side_state(live.server.port, raw.local_port)
            if state not in ("ESTABLISHED", "CLOSE_WAIT"):
                released_after = time.monotonic() - started
                break
            time.sleep(0.5)
        raw.close()
        reply = json.loads(manage("shell", "-c", FINAL_REPLY, env=live.env).strip().splitlines()[-1])
        stalled_growth = memory.stop()
    record_property(
        "figure",
        f"{reply['tokens']:,}-token reply ({reply['status']}); stalled client "
        + (f"dropped after {released_after:.1f} s" if released_after is not None else "still held after 90 s")
        + f"; RSS peak +{stalled_growth:.1f} MB stalled vs +{reader_growth:.1f} MB for a client reading it all",
    )
    # The reply was far larger than what the socket and the kernel's buffers could take.
    assert reply["tokens"] > 40_000, reply
    assert released_after is not None, "the server still holds the socket of a client that stopped reading"
    assert stalled_growth < reader_growth + 32, (stalled_growth, reader_growth)


def connection_counts(live) -> dict[str, int]:
    """The server's connections: PostgreSQL backends of its database, its sockets to Redis."""
    counts = {"redis": tools.connections_to(live.server.process.pid, 6379)} if os.environ.get("REDIS_URL") else {}
    if live.database:
        counts["postgres"] = tools.pg_backends(live.database)
    return counts


def test_abuse7_connect_disconnect_cycles_leak_nothing(live, record_property):
    """Thousands of sockets opened (authenticated, "ready") and closed one after another:
    resident memory grows under 10 %, and the server's PostgreSQL backends and Redis
    connections go back to where they were."""
    for _ in range(100):  # warm-up: pools, caches and allocator arenas reach their working size
        with ready(live):
            pass
    time.sleep(2)
    rss_before, before = tools.rss_bytes(live.server.process.pid), connection_counts(live)
    started = time.monotonic()
    for _ in range(CYCLES):
        with ready(live):
            pass
    elapsed = time.monotonic() - started
    deadline, after = time.monotonic() + 15, connection_counts(live)
    while any(after[name] > before[name] for name in before) and time.monotonic() < deadline:
        time.sleep(1)  # closing handshakes and returns to the pools finish
        after = connection_counts(live)
    rss_after = tools.rss_bytes(live.server.process.pid)
    growth = (rss_after - rss_before) / rss_before * 100
    record_property(
        "figure",
        f"{CYCLES} cycles in {elapsed:.0f} s: RSS {rss_before / 2**20:.0f} → {rss_after / 2**20:.0f} MB ({growth:+.1f} %), "
        + (
            ", ".join(f"{name} connections {before[name]} → {after[name]}" for name in before)
            or "embedded (no services)"
        ),
    )
    assert growth < 10
    assert all(after[name] <= before[name] for name in before), (before, after)
