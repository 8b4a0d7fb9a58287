"""ASGI entry point: HTTP (streams and model calls) and WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentsflow.settings")
django_asgi_app = get_asgi_application()  # sets up Django before the imports below

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from core.asgi import SizedBody  # noqa: E402
from core.websocket_auth import APIKeyOrSessionAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        # A chunked body is capped and given a length before Django reads it.
        "http": SizedBody(django_asgi_app),
        # Checks the Origin itself: required for cookie sessions, optional for API keys.
        "websocket": APIKeyOrSessionAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
