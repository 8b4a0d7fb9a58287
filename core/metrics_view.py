"""/metrics for Prometheus: loopback and configured networks only, or a bearer token."""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from django.conf import settings
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import multiprocess

from core.exceptions import error_response
from core.net import client_ip


def _from_allowed_network(ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in settings.METRICS_ALLOWED_NETWORKS)


def _has_token(request) -> bool:
    if not settings.METRICS_TOKEN:
        return False
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), settings.METRICS_TOKEN)


def forget_dead_workers() -> None:
    """Drop the live gauges of worker processes that have exited (the server does
    not tell prometheus_client, so open sockets of a dead worker would linger)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)
        except PermissionError:
            pass


def metrics(request):
    if not (_from_allowed_network(client_ip(request.META)) or _has_token(request)):
        return error_response(403, "permission_denied", "Metrics are served to allowed networks or with the token.")
    forget_dead_workers()
    return ExportToDjangoView(request)
