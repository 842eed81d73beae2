"""Botlnek's Python client and CLI; importable without Django or its settings."""

from aggregates.client.http import BotlnekError, Client

__all__ = ["BotlnekError", "Client"]
