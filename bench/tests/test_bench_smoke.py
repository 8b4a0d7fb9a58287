"""The whole benchmark pipeline on a tiny seed: seeding with COPY, the production
servers, wrk, the WebSocket clients, the loadtest and the report. It checks that
every figure was measured and that nothing failed, never how fast anything was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentsflow.testing import BASE_DIR, fresh_database_env, pg_admin_connection
from bench import orm_cost

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.postgres, pytest.mark.redis]

HTTP_FIGURES = ("ceiling", "models", "models_anonymous", "conversations", "conversations_db", "chat")


@pytest.fixture
def results(tmp_path) -> dict:
    if shutil.which("wrk") is None:
        if os.environ.get("AGENTSFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail("wrk is not installed (.ci/run installs it)")
        pytest.skip("needs wrk (apt-get install wrk)")
    base, _, name = os.environ["DATABASE_URL"].rpartition("/")
    database_url = f"{base}/{name.split('?')[0]}_benchsmoke"
    command = [sys.executable, "-m", "bench.run", "--tiny", "--reseed", "--no-profile"]
    command += ["--database-url", database_url, "--out", str(tmp_path)]
    finished = subprocess.run(command, cwd=BASE_DIR, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    data = json.loads((tmp_path / "latest.json").read_text())
    data["_stdout"], data["_markdown"] = finished.stdout, (tmp_path / "latest.md").read_text()
    data["_logs"] = "\n".join(p.read_text()[-3000:] for p in sorted((tmp_path / "logs").glob("*.log")))
    return data


def test_the_benchmark_measures_every_figure_without_errors(results):
    figures = {f["id"]: f for f in results["http"]}
    for name in HTTP_FIGURES:
        figure = figures[name]
        assert figure["requests"] > 0, figure
        assert all(code.startswith("2") for code in figure["statuses"]), figure
        assert figure["errors_other"] == 0 and not figure["socket_errors"], figure
    analytics = figures["analytics"]
    assert analytics.get("skipped") or analytics["errors_other"] == 0

    stream = results["stream"]
    assert stream["finals"] == {"complete": stream["sockets"]}, (stream["error_messages"], results["_logs"])
    assert stream["deltas_received"] == stream["deltas_expected"] > 0
    assert stream["latency_ms"]["p50"] is not None
    split = stream["cpu_seconds_by_process"]
    assert set(split) >= {"asgi", "nginx", "ws clients", "fake model", "redis", "postgres"}
    assert split["asgi"] > 0 and split["ws clients"] > 0 and split["fake model"] > 0

    held = results["held"]
    assert held["held"] == held["requested"] and held["failed"] == 0
    assert held["server_gauge"] == held["requested"]
    assert held["memory_held"]["rss_mb"] > held["memory_before"]["rss_mb"] > 0

    cache = results["cache"]
    assert cache["loadtest"]["requests"] > 0 and cache["loadtest"]["errors_other"] == 0
    assert 0 < cache["cache"]["ratio"] <= 1
    assert set(cache["cache"]["families"]) >= {"apikey", "models"}

    auth = results["auth"]
    assert auth["memory_tier_p50_us"] > 0 and auth["redis_tier_p50_us"] > 0 and auth["database_p50_us"] > 0
    assert results["errors"]["other"] == 0


def test_the_report_has_the_table_and_the_machine(results):
    markdown = results["_markdown"]
    assert "| figure | req/s (or value) |" in markdown
    for figure in results["http"]:
        assert figure["label"] in markdown and figure["label"][:40] in results["_stdout"]
    machine = results["machine"]
    assert machine["nproc"] >= 1 and machine["memory_gb"] > 0 and machine["git_sha"]
    assert str(Path(results["setup"]["topology"])) and "granian" in results["setup"]["topology"]


def test_the_stream_figure_on_its_own(tmp_path):
    """bench.stream_figure against this checkout as of HEAD: every delta arrives, and
    the report splits the CPU by process."""
    command = [sys.executable, "-m", "bench.stream_figure", "--rounds", "1", "--sockets", "6"]
    command += ["--tokens-per-second", "20", "--tokens", "20", "--baseline", "HEAD"]
    command += ["--output", str(tmp_path / "figure")]
    finished = subprocess.run(command, cwd=BASE_DIR, capture_output=True, text=True, timeout=300, check=False)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-5000:]
    runs = json.loads((tmp_path / "figure.json").read_text())["runs"]
    assert set(runs) == {"before", "after"}
    for run in (r for label_runs in runs.values() for r in label_runs):
        assert run["finals"] == {"complete": 6} and run["deltas_received"] == run["deltas_expected"] == 120
        assert run["cpu_seconds_by_process"]["asgi"] > 0
    report = (tmp_path / "figure.md").read_text()
    assert "| before |" in report and "| after |" in report and "| asgi |" in report


def test_orm_cost_times_each_statement_of_a_send_and_leaves_the_database_as_it_was(tmp_path):
    """bench.orm_cost on a database of its own: a row for each of the send's six
    statements, both ways, and no rows left behind (it rolls its work back)."""
    env = {**os.environ, **fresh_database_env("ormcost", tmp_path)}
    command = [sys.executable, "-m", "bench.orm_cost", "--rounds", "1", "--calls", "3"]
    finished = subprocess.run(command, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    rows = {line[:26].strip(): line[26:].split() for line in finished.stdout.splitlines()[2:]}
    assert set(rows) == {*orm_cost.STATEMENTS, "a send, all six"}
    assert all(len(figures) == 3 and float(figures[0]) > 0 and float(figures[1]) > 0 for figures in rows.values())
    database = env["DATABASE_URL"].rsplit("/", 1)[1]
    with pg_admin_connection(env["DATABASE_URL"], dbname=database) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (0,)
