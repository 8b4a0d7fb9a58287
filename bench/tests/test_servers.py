"""bench.servers' measuring parts against a real wrk: the Lua script sends the key
and reports figures the benchmark parses; the summary ranks candidates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.servers import Results, Run, cpu_seconds, markdown, summarize, wrk

REQUIRED = os.environ.get("AGENTSFLOW_REQUIRE_SERVICES") == "1"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: set = set()

    def do_GET(self):
        type(self).seen.add(self.headers.get("Authorization"))
        status = 200 if self.path == "/ok" else 404
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(not shutil.which("wrk") and not REQUIRED, reason="needs wrk (Debian's wrk; CI installs it)")
def test_wrk_sends_the_key_and_reports_figures(http_server):
    _Handler.seen.clear()
    report = wrk(http_server + "/ok", "afk_bench", duration=1, connections=2, threads=1)
    assert _Handler.seen == {"Bearer afk_bench"}
    assert report["requests"] > 0 and report["duration_us"] > 0
    assert 0 < report["latency_us"]["p50"] <= report["latency_us"]["p99"] <= report["latency_us"]["max"]
    assert report["errors"]["status"] == 0
    failing = wrk(http_server + "/missing", "afk_bench", duration=1, connections=2, threads=1)
    assert failing["errors"]["status"] == failing["requests"] > 0  # non-2xx answers are counted as errors


def test_summary_ranks_by_median_and_keeps_every_round():
    results = Results()
    for rps in (100, 300, 200):
        results.add(
            "a", "health", Run(rps=rps, p50_ms=1, p99_ms=rps / 10, errors=0, peak_connections=2, cpu_ms_per_request=1.5)
        )
    for rps in (50, 400, 60):
        results.add(
            "b", "health", Run(rps=rps, p50_ms=2, p99_ms=9, errors=1, peak_connections=5, cpu_ms_per_request=rps / 100)
        )
    summary = summarize(results, ["a", "b"], ["health"])
    assert summary["health"]["a"] == {
        "rps_median": 200,
        "rps_runs": [100, 300, 200],
        "p50_ms": 1,
        "p99_ms": 20,
        "errors": 0,
        "peak_pg_connections": 2,
        "cpu_ms_per_request": 1.5,
        "ratio_to_best": 1.0,
    }
    assert summary["health"]["b"]["ratio_to_best"] == 0.3 and summary["health"]["b"]["errors"] == 3
    assert summary["health"]["b"]["cpu_ms_per_request"] == 0.6
    meta = dict(command="x", date="d", machine="m", wrk="-t1", rounds=3, duration=1, load_before="1", load_after="2")
    table = markdown(summary, meta)
    assert table.index("| a | 200 |") < table.index("| b | 60 |")


def test_cpu_seconds_counts_a_process_group():
    """A child in a session of its own burns 0.3 s of CPU, then waits: that time shows
    under its process group (and an unknown group counts nothing)."""
    spin = "import sys, time\nwhile time.process_time() < 0.3: pass\nprint('spun', flush=True)\nsys.stdin.read()"
    busy = subprocess.Popen(
        [sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert busy.stdout.readline().strip() == "spun"
        assert 0.29 <= cpu_seconds({busy.pid}) < 2.0
        assert cpu_seconds({2**22 + 12345}) == 0
    finally:
        busy.stdin.close()
        busy.wait(10)
