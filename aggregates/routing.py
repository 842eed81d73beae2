from django.urls import path

from aggregates.consumers import SubscribeConsumer

websocket_urlpatterns = [
    path("ws/subscribe", SubscribeConsumer.as_asgi()),
]
