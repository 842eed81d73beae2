"""Liveness and readiness probes, outside /api/ and without authentication."""

import asyncio
import logging

from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

from aggregates import db

logger = logging.getLogger("botlnek.health")


async def livez(request: HttpRequest) -> JsonResponse:
    """The process answers; touches nothing else."""
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone() == (1,)


_channels: dict[asyncio.AbstractEventLoop, str] = {}


async def _channel_layer_ok() -> bool:
    """A message sent to this process's own health channel comes back."""
    layer = get_channel_layer()
    loop = asyncio.get_running_loop()
    if loop not in _channels:  # one channel per process, not one per probe
        _channels[loop] = await layer.new_channel("botlnek.healthz.")
    channel = _channels[loop]
    await layer.send(channel, {"type": "healthz"})
    received = await asyncio.wait_for(layer.receive(channel), timeout=2)
    return received["type"] == "healthz"


async def healthz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and the channel layer both answer."""
    checks = {}
    try:
        checks["database"] = "ok" if await db.read(_database_ok) else "failing"
    except Exception as exc:
        logger.warning("database check failed: %s", exc)
        checks["database"] = "unreachable"
    try:
        checks["channel_layer"] = "ok" if await _channel_layer_ok() else "failing"
    except Exception as exc:
        logger.warning("channel layer check failed: %s", exc)
        checks["channel_layer"] = "unreachable"
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", **checks},
        status=200 if healthy else 503,
    )
