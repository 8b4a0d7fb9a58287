import json
from collections import Counter
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from agentsflow.testing import fresh_database_env, prepare_platform, run_server
from core.management.commands.loadtest import EndpointStats, parse_mix, percentile


def test_percentile_nearest_rank():
    ordered = [float(n) for n in range(1, 101)]
    assert percentile(ordered, 0.5) == 50 and percentile(ordered, 0.99) == 99 and percentile(ordered, 1.0) == 100
    assert percentile([], 0.5) is None


def test_transport_errors_count_as_errors():
    """A request that never got an answer is recorded under its exception's name."""
    stats = EndpointStats(latencies=[0.01, 0.02, 30.0], statuses=Counter({"200": 2, "ReadTimeout": 1}))
    summary = stats.summary(elapsed=1.0)
    assert summary["error_rate"] == round(1 / 3, 4)
    assert summary["statuses"] == {"200": 2, "ReadTimeout": 1}


def test_mix_is_validated():
    assert parse_mix("health=2,chat=1") == {"health": 2, "chat": 1}
    for bad in ("teleport=1", "health=x", "health=0"):
        with pytest.raises(CommandError):
            parse_mix(bad)


def test_arguments_are_bounded():
    with pytest.raises(CommandError, match="--duration"):
        call_command("loadtest", "--duration", "99999")
    with pytest.raises(CommandError, match="--concurrency"):
        call_command("loadtest", "--concurrency", "0")


@pytest.mark.server
def test_loadtest_against_a_real_server(tmp_path):
    env = {**fresh_database_env("loadtest", tmp_path), "AGENTSFLOW_VAR_DIR": str(tmp_path), "ACCESS_LOG": "false"}
    platform = prepare_platform(env, scopes="chat,conversations:read")
    with run_server(env) as server:
        out = StringIO()
        call_command(
            "loadtest",
            "--base-url",
            server.url,
            "--key",
            platform.key,
            "--duration",
            "2",
            "--concurrency",
            "4",
            "--mix",
            "health=1,models=1,conversations=1",
            "--max-requests",
            "150",
            "--json",
            stdout=out,
        )
    result = json.loads(out.getvalue())
    assert 0 < result["total"]["requests"] <= 150 + 4  # bounded by count (workers finish their request)
    assert set(result["endpoints"]) == {"health", "models", "conversations"}
    for row in result["endpoints"].values():
        assert row["requests"] > 0 and row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert set(row["statuses"]) <= {"200", "429"}
