from django.urls import path

from bench.anchor import views
from botlnek_site.urls import urlpatterns as product

urlpatterns = [
    path("anchor/hello", views.hello),
    path("anchor/insert", views.insert),
    *product,
]
