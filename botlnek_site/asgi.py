"""ASGI entry point: `daphne botlnek_site.asgi:application`."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botlnek_site.settings")

from django.core.asgi import get_asgi_application

# Build Django before importing anything that touches models.
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from aggregates.api_handler import APIHandler, route_http  # noqa: E402
from aggregates.live.routing import websocket_urlpatterns  # noqa: E402
from aggregates.middleware import WebsocketAuthMiddleware  # noqa: E402
from aggregates.serving import bind_server_loop, start_with_server  # noqa: E402

application = bind_server_loop(
    ProtocolTypeRouter(
        {
            "http": route_http(api=APIHandler(), site=django_application),
            "websocket": WebsocketAuthMiddleware(URLRouter(websocket_urlpatterns)),
        }
    )
)
start_with_server()
