"""nginx's split between the WSGI and ASGI servers (agentsflow/serving.py) covers
every async view and every WebSocket route, and nothing that WSGI serves better."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import iscoroutinefunction
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.resolvers import RoutePattern

from agentsflow.serving import ASGI_PATHS, nginx_asgi_regex, served_by_asgi
from chat.routing import websocket_urlpatterns
from ops.render import NginxConfig, render

SAMPLES = {
    "int": "7",
    "slug": "some-slug",
    "str": "word",
    "path": "a/b",
    "uuid": "12345678-1234-5678-1234-567812345678",
}


def _sample(pattern) -> str:
    """A concrete path segment that ``pattern`` matches."""
    if isinstance(pattern, RoutePattern):
        return re.sub(r"<(?:(\w+):)?\w+>", lambda m: SAMPLES[m.group(1) or "str"], str(pattern))
    text = str(pattern).lstrip("^").rstrip("$").replace("\\Z", "")
    text = re.sub(r"\(\?P<\w+>[^)]*\)", "x", text)  # named groups: one plain word fits all of ours
    return text.replace("\\", "")


def _endpoints(resolver=None, prefix: str = "/"):
    """(sample path, view) for every URL pattern, includes followed."""
    for entry in (resolver or get_resolver()).url_patterns:
        path = prefix + _sample(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _endpoints(entry, path)
        elif isinstance(entry, URLPattern):
            yield path, entry.callback


def _is_async(view) -> bool:
    view_class = getattr(view, "view_class", None)
    return iscoroutinefunction(view) or bool(view_class and getattr(view_class, "view_is_async", False))


def _served(endpoints):
    """(path, the view that really answers it): a pattern shadowed by an earlier one
    (the catch-all ``^v1/`` behind /v1/'s own) is judged by the view that wins."""
    seen = {}
    for path, _ in endpoints:
        if not path.startswith("/admin/"):  # the admin's regexes are not sampled faithfully; all sync
            seen.setdefault(path, resolve(path).func)
    return list(seen.items())


ENDPOINTS = list(_endpoints())
SERVED = _served(ENDPOINTS)
ASYNC = [(path, view) for path, view in SERVED if _is_async(view)]
SYNC = [(path, view) for path, view in SERVED if not _is_async(view)]


def test_the_samples_reach_their_views():
    """Guards the sample generator itself: samples that missed their patterns would test nothing."""
    own = sum(resolve(path).func is view for path, view in ENDPOINTS if not path.startswith("/admin/"))
    assert own >= len(SERVED) - 2 and len(SERVED) > 25 and len(ASYNC) >= 7


@pytest.mark.parametrize(("path", "view"), ASYNC, ids=[path for path, _ in ASYNC])
def test_every_async_view_is_routed_to_asgi(path, view):
    assert served_by_asgi(path), f"{path} ({view.__module__}.{view.__name__}) is async but nginx sends it to WSGI"


def test_every_websocket_route_is_routed_to_asgi():
    for entry in websocket_urlpatterns:
        assert served_by_asgi("/" + _sample(entry.pattern))


@pytest.mark.parametrize(("path", "view"), SYNC, ids=[path for path, _ in SYNC])
def test_sync_views_stay_on_wsgi(path, view):
    assert not served_by_asgi(path), f"{path} is a sync view: it is faster under WSGI"


def test_the_streaming_endpoints_are_the_known_ones():
    """The list, spelled out once more, so a change to it is a deliberate one."""
    for path in (
        "/ws/chat/",
        "/v1/chat/completions",
        "/v1/models",
        "/api/chat",
        "/api/conversations/12/messages",
        "/api/messages/12/stream",
        "/api/messages/12/cancel",
        "/api/messages/12/regenerate",
    ):
        assert served_by_asgi(path), path
    for path in ("/health", "/api/me", "/api/keys", "/api/conversations", "/api/conversations/12", "/api/messages/12"):
        assert not served_by_asgi(path), path
    # Anchored: a path that merely contains a streaming one does not match.
    assert not served_by_asgi("/api/chat/extra") and not served_by_asgi("/x/api/chat")


def test_the_nginx_location_is_generated_from_the_list():
    config = render(NginxConfig())
    location = re.search(r'location ~ "([^"]+)" \{(.*?)\n        \}', config.split("# Streams, WebSockets")[1], re.S)
    assert location.group(1) == nginx_asgi_regex()
    assert all(pattern in location.group(1) for pattern in ASGI_PATHS)
    body = location.group(2)
    assert "proxy_pass http://agentsflow_asgi;" in body
    assert "proxy_buffering off;" in body


def test_the_websocket_location_is_the_asgi_location_with_small_buffers():
    """/ws/ has a location of its own (1k buffers, held for a socket's whole life)
    that must keep what the ASGI location gives it: routing, limits, timeouts."""
    assert r"^/ws/" in ASGI_PATHS
    config = render(NginxConfig()).split("# Streams, WebSockets")[1]
    asgi = re.search(r'location ~ "[^"]+" \{(.*?)\n        \}', config, re.S).group(1)
    websockets = re.search(r"location \^~ /ws/ \{(.*?)\n        \}", config, re.S).group(1)
    for line in asgi.strip().splitlines():
        if not line.strip().startswith("#"):
            assert line.strip() in websockets, line
    assert "proxy_buffer_size 1k;" in websockets


def test_no_location_drops_the_forwarding_headers():
    """A proxy_set_header inside a location replaces every server-level one: Host,
    X-Forwarded-For and the WebSocket upgrade would silently vanish there."""
    config = render(NginxConfig())
    server = config.split("    server {", 1)[1]
    blocks = server.split("\n        location ")
    assert "proxy_set_header Upgrade $http_upgrade;" in blocks[0] and len(blocks) > 8
    for block in blocks[1:]:
        assert "proxy_set_header" not in block
