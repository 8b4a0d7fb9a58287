"""WebSocket load client for the benchmarks, run as separate processes (asyncio:
websockets to hold sockets, picows to stream), driven over stdin/stdout by bench.run.

    python -m bench.ws_client hold --url ws://…/ws/chat/ --keys keys.txt --count 5000
        Opens COUNT sockets (API key auth, one key per socket, rotating), waits for
        each one's "ready" event, prints {"event": "held", ...} and holds them until
        it reads a line on stdin; then reports how many were still open and closes.

    python -m bench.ws_client stream --url … --keys keys.txt --sockets 100 --model stream \
        --samples out.bin
        Opens the sockets, prints {"event": "ready"}, waits for a line on stdin, then
        every socket sends one chat message to a model that streams time-stamped
        tokens (bench.fake_upstream's ``stamp``). For every delta event it records
        the receive time and the latency: receive time minus the time the fake
        upstream sent that token (both wall clock, same machine). So a latency is
        everything the platform adds between the model and the client: the HTTP
        stream from the model, the generation task, the channel layer (Redis
        pub/sub), the consumer and the socket, plus this client's own scheduling.
        Samples go to ``--samples`` as int64 pairs (receive ns, latency ns).

Every message on stdout is one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from array import array
from collections import Counter

import orjson
import websockets
from picows import WSCloseCode, WSListener, WSMsgType, ws_connect
from websockets.protocol import State


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (10,000 sockets need 10,000+ descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def say(**event) -> None:
    sys.stdout.write(orjson.dumps(event).decode() + "\n")
    sys.stdout.flush()


async def read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


class Opener:
    """Opens authenticated sockets, a bounded number of handshakes at a time."""

    def __init__(self, url: str, keys: list[str], handshakes: int, compression: str = "deflate") -> None:
        self.url, self.keys = url, keys
        self.compression = None if compression == "none" else compression
        self.limit = asyncio.Semaphore(handshakes)
        self.failures: Counter[str] = Counter()

    async def open(self, index: int):
        async with self.limit:
            try:
                ws = await websockets.connect(
                    self.url,
                    additional_headers={"Authorization": f"Bearer {self.keys[index % len(self.keys)]}"},
                    open_timeout=60,
                    ping_interval=None,  # the server pings every 20 s; answering is enough
                    close_timeout=5,
                    max_queue=None,
                    compression=self.compression,  # browsers offer permessage-deflate too
                )
            except Exception as exc:
                self.failures[type(exc).__name__] += 1
                return None
            try:
                ready = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
            except Exception as exc:
                self.failures[f"ready:{type(exc).__name__}"] += 1
                await ws.close()
                return None
            if ready.get("type") != "ready":
                self.failures[f"not-ready:{ready.get('code') or ready.get('type')}"] += 1
                await ws.close()
                return None
            return ws

    async def open_many(self, count: int, label: str) -> list:
        started = time.monotonic()
        opened: list = []

        async def one(index: int) -> None:
            ws = await self.open(index)
            if ws is not None:
                opened.append(ws)

        async def progress() -> None:
            while True:
                await asyncio.sleep(1)
                say(event="progress", phase=label, open=len(opened), failed=sum(self.failures.values()))

        reporter = asyncio.create_task(progress())
        try:
            await asyncio.gather(*(one(i) for i in range(count)))
        finally:
            reporter.cancel()
        say(
            event=label,
            open=len(opened),
            failed=sum(self.failures.values()),
            failures=dict(self.failures),
            seconds=round(time.monotonic() - started, 2),
        )
        return opened


async def close_all(sockets: list) -> None:
    limit = asyncio.Semaphore(500)

    async def close(ws) -> None:
        async with limit:
            with contextlib.suppress(Exception):
                await ws.close()

    await asyncio.gather(*(close(ws) for ws in sockets))


async def hold(args) -> None:
    opener = Opener(args.url, args.keys, args.handshakes, args.compression)
    sockets = await opener.open_many(args.count, "held")
    await read_line()
    still_open = sum(1 for ws in sockets if ws.state is State.OPEN)
    await close_all(sockets)
    say(event="closed", still_open=still_open)


class StreamListener(WSListener):
    """One socket of ``stream`` mode, on picows (Cython): a frame costs a callback,
    not a future and a task switch, so the client takes less of the CPU it shares
    with the platform it measures. Deltas are timed as their frame is read."""

    def __init__(self, samples: array, report: dict) -> None:
        super().__init__()
        self.samples, self.report = samples, report
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.finished: asyncio.Future = asyncio.get_running_loop().create_future()
        self.transport = None
        self.sent = self.first = self.last = None
        self.deltas = 0
        self._partial = bytearray()

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport) -> None:
        self._end("client:ConnectionClosed")
        if not self.ready.done():
            self.ready.set_result({"type": "closed"})

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type not in (WSMsgType.TEXT, WSMsgType.CONTINUATION):
            return
        now = time.time_ns()
        if not frame.fin or self._partial:
            self._partial += frame.get_payload_as_bytes()
            if not frame.fin:
                return
            raw, self._partial = bytes(self._partial), bytearray()
        else:
            raw = frame.get_payload_as_bytes()
        event = orjson.loads(raw)
        if not self.ready.done():
            self.ready.set_result(event)
            return
        kind = event.get("type")
        if kind == "delta":
            try:
                stamp = int(event["text"])
            except (KeyError, ValueError):
                self.report["unparsable"] += 1
                return
            self.samples.append(now)
            self.samples.append(now - stamp)
            self.deltas += 1
            self.first = self.first or now
            self.last = now
        elif kind in ("done", "error") and "seq" in event:
            self._end(event.get("status") if kind == "done" else f"error:{event.get('code')}")
        elif kind == "error":
            self.report["errors"].append(event.get("message"))
            self._end(f"error:{event.get('code')}")

    def send(self, index: int, model: str) -> None:
        self.sent = time.time_ns()
        message = {"type": "send", "content": f"stream {index}", "model": model}
        self.transport.send(WSMsgType.TEXT, orjson.dumps(message))

    def _end(self, final: str) -> None:
        if not self.finished.done():
            self.finished.set_result(final)

    def outcome(self) -> dict:
        final = self.finished.result() if self.finished.done() else "client:TimeoutError"
        return {"sent": self.sent, "first": self.first, "last": self.last, "deltas": self.deltas, "final": final}


async def open_listeners(args, samples: array, report: dict) -> list[StreamListener]:
    """``args.sockets`` sockets that each got "ready", ``args.handshakes`` opening at once."""
    limit = asyncio.Semaphore(args.handshakes)
    failures: Counter[str] = Counter()
    opened: list[StreamListener] = []
    started = time.monotonic()

    async def one(index: int) -> None:
        async with limit:
            key = args.keys[index % len(args.keys)]
            try:
                transport, listener = await ws_connect(
                    lambda: StreamListener(samples, report),
                    args.url,
                    extra_headers={"Authorization": f"Bearer {key}"},
                    websocket_handshake_timeout=60,
                )
                ready = await asyncio.wait_for(listener.ready, 60)
            except Exception as exc:
                failures[type(exc).__name__] += 1
                return
            if ready.get("type") != "ready":
                failures[f"not-ready:{ready.get('code') or ready.get('type')}"] += 1
                transport.disconnect()
                return
            opened.append(listener)

    async def progress() -> None:
        while True:
            await asyncio.sleep(1)
            say(event="progress", phase="ready", open=len(opened), failed=sum(failures.values()))

    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(one(i) for i in range(args.sockets)))
    finally:
        reporter.cancel()
    say(
        event="ready",
        open=len(opened),
        failed=sum(failures.values()),
        failures=dict(failures),
        seconds=round(time.monotonic() - started, 2),
    )
    return opened


async def stream(args) -> None:
    samples: array = array("q")
    report: dict = {"unparsable": 0, "errors": []}
    listeners = await open_listeners(args, samples, report)
    await read_line()  # "go": every client process starts at once
    for index, listener in enumerate(listeners):
        listener.send(index, args.model)
    # One deadline for every reply, not a timeout a frame.
    if listeners:
        await asyncio.wait([listener.finished for listener in listeners], timeout=args.timeout)
    with open(args.samples, "wb") as out:
        samples.tofile(out)
    for listener in listeners:
        listener.transport.send_close(WSCloseCode.OK)
        listener.transport.disconnect()
    sockets = [listener.outcome() for listener in listeners]
    finals = Counter(str(s["final"]) for s in sockets)
    say(
        event="streamed",
        sockets=sockets,
        finals=dict(finals),
        unparsable=report["unparsable"],
        errors=report["errors"][:5],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_client", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("hold", "stream"):
        p = sub.add_parser(mode)
        p.add_argument("--url", required=True)
        p.add_argument("--keys", required=True, help="a file with one API key a line")
        p.add_argument("--handshakes", type=int, default=100, help="handshakes in flight at once")
        p.add_argument(
            "--compression", choices=("deflate", "none"), default="deflate", help="offered by hold (stream offers none)"
        )
    sub.choices["hold"].add_argument("--count", type=int, required=True)
    sub.choices["stream"].add_argument("--sockets", type=int, required=True)
    sub.choices["stream"].add_argument("--model", required=True)
    sub.choices["stream"].add_argument("--samples", required=True)
    sub.choices["stream"].add_argument("--timeout", type=float, default=120.0, help="seconds a reply may take")
    args = parser.parse_args(argv)
    with open(args.keys) as keys:
        args.keys = [line.strip() for line in keys if line.strip()]
    limit = raise_open_files_limit()
    say(event="started", open_files_limit=limit)
    work = hold(args) if args.mode == "hold" else stream(args)
    try:
        import uvloop
    except ImportError:
        asyncio.run(work)
    else:
        uvloop.run(work)


if __name__ == "__main__":
    main()
