"""Abuse 8: Schemathesis against /api/schema/ of a real server in production settings:
every operation, authenticated with an all-scopes key, 100 examples each when the long
tests run (`make abuse`), 15 when they are left out (`make test`, CI); ABUSE_EXAMPLES
overrides both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agentsflow.testing import manage, prepare_platform
from resilience import abuse_tools as tools

pytestmark = [pytest.mark.server, pytest.mark.slow]

upstream = tools.upstream
WORKERS = 2 if os.environ.get("REDIS_URL") else 1
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance,ignored_auth"
# Far from any id Hypothesis is likely to draw, so fuzzing DELETE /api/keys/{key_id}
# does not revoke the key the run authenticates with.
KEY_ID = 7_340_033
MOVE_KEY = f"""
from core.models import APIKey, User
User.objects.update(tier="premium")
APIKey.objects.filter(pk=1).update(id={KEY_ID})
print(APIKey.objects.filter(pk={KEY_ID}).count())
"""


def examples(config) -> int:
    if os.environ.get("ABUSE_EXAMPLES"):
        return int(os.environ["ABUSE_EXAMPLES"])
    return 15 if "not long" in (config.option.markexpr or "") else 100


def test_abuse8_schemathesis_finds_no_failure(upstream, tmp_path, record_property, pytestconfig):
    """Examples, coverage and fuzzing phases on every operation, with the checks: no
    server error, status codes and response bodies as documented, and authentication
    never ignored."""
    count = examples(pytestconfig)
    env = tools.production_env(tmp_path, "abuse_fuzz", **tools.fake_models(upstream), CHAT_DEFAULT_MODEL="echo")
    platform = prepare_platform(env)
    assert manage("shell", "-c", MOVE_KEY, env=env).strip().endswith("1")
    limits = {
        "RATE_LIMIT_PREMIUM": "10000000",
        "RATE_LIMIT_ANONYMOUS": "10000000",  # the unauthenticated probes of ignored_auth
        "AUTH_RATE_LIMITS": "100000/s",
        "TOKEN_QUOTA_PREMIUM": "1000000000",
        "ACCESS_LOG": "false",
    }
    with tools.serve(platform, limits, workers=WORKERS, log_path=tmp_path / "server.log") as live:
        command = [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{live.url}/api/schema/",
            "--url",
            live.url,
            "--checks",
            CHECKS,
            "--max-examples",
            str(count),
            "--header",
            f"Authorization: Bearer {live.key}",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "2",
            "--seed",
            "6",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
            "--no-color",
        ]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=3600)
        log = live.server.log()
    output = result.stdout + result.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    operations = re.search(r"Operations:\s+(\d+) selected / (\d+) total", output)
    generated = re.search(r"(\d+) generated", output)
    failures = re.search(r"found (\d+) unique failures?", output)
    figure = f"{operations[1] if operations else '?'} of {operations[2] if operations else '?'} operations, "
    figure += f"{count} examples each: {generated[1] if generated else '?'} test cases, "
    figure += f"{failures[1] if failures else 0} failures"
    record_property("figure", figure)
    assert result.returncode == 0, output[-20000:] + "\n--- server log ---\n" + log[-5000:]
    assert "Traceback" not in log, log[-5000:]
    assert operations and operations[1] == operations[2] and generated, output[-3000:]
