"""/metrics for Prometheus: loopback and configured networks only, or a bearer token."""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django_prometheus.exports import ExportToDjangoView

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


def metrics(request):
    if not (_from_allowed_network(client_ip(request.META)) or _has_token(request)):
        return error_response(403, "permission_denied", "Metrics are served to allowed networks or with the token.")
    return ExportToDjangoView(request)
