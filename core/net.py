"""The client's IP address, as rate limits and logs must see it."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=1)
def _trusted_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in settings.TRUSTED_PROXIES)


def _trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _trusted_networks())


def client_ip(meta: dict) -> str:
    """``REMOTE_ADDR``, unless it is a trusted proxy: then the right-most address in
    ``X-Forwarded-For`` that is not itself a trusted proxy.

    A client can prepend anything to X-Forwarded-For, but not what our own proxy
    appends, so reading from the right cannot be forged.
    """
    remote = meta.get("REMOTE_ADDR") or ""
    if not _trusted(remote):
        return remote
    forwarded = [part.strip() for part in meta.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    for address in reversed(forwarded):
        if not _trusted(address):
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                return remote  # garbage where our proxy's entry should be: ignore the header
    return remote


def ip_key(group, request) -> str:
    """django-ratelimit key function: the client IP as core.net sees it."""
    return client_ip(request.META)
