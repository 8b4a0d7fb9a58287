"""ASGI entry point: HTTP (streams and model calls) and WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentsflow.settings")
django_asgi_app = get_asgi_application()  # sets up Django before the imports below

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.routing import websocket_urlpatterns  # noqa: E402
from core.asgi import SizedBody, WebSocketSendDeadline  # noqa: E402
from core.db import RequestThreads  # noqa: E402
from core.websocket_auth import APIKeyOrSessionAuthMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        # A chunked body is capped and given a length before Django reads it; each
        # request's sync work runs on a thread reused from earlier requests.
        "http": SizedBody(RequestThreads(django_asgi_app)),
        # Checks the Origin itself: required for cookie sessions, optional for API keys.
        # A client that stops reading is dropped after WS_SEND_TIMEOUT.
        "websocket": WebSocketSendDeadline(APIKeyOrSessionAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
