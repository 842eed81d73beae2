"""The product's settings plus the anchor app and its URLs."""

from botlnek_site.settings import *  # noqa: F403
from botlnek_site.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "bench.anchor"]
ROOT_URLCONF = "bench.anchor.urls"
