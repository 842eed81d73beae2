from django.urls import path

from aggregates.consumers import DashboardConsumer, SubscribeConsumer

websocket_urlpatterns = [
    path("ws/subscribe", SubscribeConsumer.as_asgi()),
    path("ws/dashboard", DashboardConsumer.as_asgi()),
]
