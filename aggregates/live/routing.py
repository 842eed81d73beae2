from django.urls import path

from aggregates.live.dashboard import DashboardConsumer
from aggregates.live.websocket import SubscribeConsumer

websocket_urlpatterns = [
    path("ws/subscribe", SubscribeConsumer.as_asgi()),
    path("ws/dashboard", DashboardConsumer.as_asgi()),
]
