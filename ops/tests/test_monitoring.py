"""The Prometheus configuration, alert rules and Grafana dashboard: valid for the
real tools, and every metric they name is one the platform exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

OPS = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus; CI installs it)")


@needs_promtool
def test_prometheus_config_and_rules_pass_promtool(tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(
        (OPS / "prometheus" / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/agentsflow-metrics-token", str(tmp_path / "token"))
    )
    (tmp_path / "token").write_text("secret\n")
    shutil.copy(OPS / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    for args in (["check", "config", str(config)], ["check", "rules", str(tmp_path / "alerts.yml")]):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def _exported_families(client) -> set[str]:
    client.get("/health")
    client.get("/api/models")
    return {family.name for family in REGISTRY.collect()}


def _family(name: str) -> str:
    """A sample name's metric family (labelled metrics have no samples until used)."""
    return re.sub(r"_(total|bucket|count|sum|created)$", "", name)


def _expressions() -> list[str]:
    dashboard = json.loads((OPS / "grafana" / "agentsflow.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    alerts = (OPS / "prometheus" / "alerts.yml").read_text()
    expressions += re.findall(r"expr: \|\n((?:\s{10}.*\n)+)", alerts) + re.findall(r"expr: (.+)", alerts)
    return expressions


@pytest.mark.django_db
def test_every_metric_the_dashboard_and_alerts_use_is_exported(client):
    exported = _exported_families(client)
    used = {name for expr in _expressions() for name in re.findall(r"\b((?:agentsflow|django)_[a-z_]+)\b", expr)}
    assert used, "no metric names found"
    missing = sorted(name for name in used if _family(name) not in exported)
    assert not missing, f"not exported: {missing}"


def test_dashboard_panels_are_well_formed():
    dashboard = json.loads((OPS / "grafana" / "agentsflow.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 12
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(target["expr"] for target in panel["targets"])
