"""Which server answers which path, in one place.

Production runs two servers behind one nginx (see README, "Serving"): granian
WSGI for ordinary API traffic, where Django's sync stack is several times faster,
and uvicorn ASGI for everything that streams or waits: WebSockets, SSE replies,
the model-calling async views. nginx's routing (ops/render.py) is generated from
``ASGI_PATHS``, and ops/tests/test_routing.py checks that every async view and
every WebSocket route is covered, so the two cannot drift apart.

Under WSGI an async view would still answer, but in a throw-away event loop per
request: a stream would hold a blocking thread for its whole life and a
generation started by the request would die with that loop.
"""

from __future__ import annotations

import re

# Anchored regular expressions, valid both for Python's ``re`` and nginx's PCRE.
ASGI_PATHS: tuple[str, ...] = (
    r"^/ws/",  # WebSockets (chat.routing)
    r"^/v1/",  # the OpenAI-compatible API: async views, streamed completions
    r"^/api/chat$",  # one-shot send (JSON or SSE)
    r"^/api/conversations/\d+/messages$",  # list (GET) and send (POST, JSON or SSE)
    r"^/api/messages/\d+/(?:cancel|regenerate|stream)$",  # cancel, regenerate (SSE), resume (SSE)
)


def nginx_asgi_regex() -> str:
    """``ASGI_PATHS`` as one nginx ``location ~`` regular expression."""
    return "|".join(f"(?:{pattern})" for pattern in ASGI_PATHS)


_ASGI = re.compile(nginx_asgi_regex())  # the very expression nginx routes by


def served_by_asgi(path: str) -> bool:
    """True when nginx sends ``path`` to the ASGI server."""
    return _ASGI.search(path) is not None
