"""ASGI entry point: `daphne botlnek_site.asgi:application`."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "botlnek_site.settings")

from django.core.asgi import get_asgi_application

# Build Django before importing anything that touches models.
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from aggregates.handlers import APIHandler, route_http  # noqa: E402

application = ProtocolTypeRouter(
    {"http": route_http(api=APIHandler(), site=django_application)}
)
