"""`/ws/subscribe`: many subscriptions per connection over one websocket.

The connection parses and checks subscribe frames, then hands each to a
Subscription (subscription.py) with itself as the sink.
"""

import asyncio
import json
import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from pydantic import ValidationError

from aggregates import daphne_transport, db, limits, metrics, store
from aggregates.errors import NotFound, field_errors, summary
from aggregates.live.subscription import Ended, SubscribeIn, Subscription
from aggregates.rules.read import get_rule
from aggregates.streams import Frame, RuleFrame

logger = logging.getLogger("botlnek.live")


def _missing(domain: str, rule: str | None) -> str:
    """Why a subscription cannot start: the domain or rule does not exist."""
    try:
        if rule is not None:
            get_rule(domain, rule)
        else:
            store.get_domain(domain)
    except NotFound as exc:
        return exc.detail
    return ""


class SubscribeConsumer(AsyncWebsocketConsumer):
    # No layer channel per socket (an alias that names no layer gives None): the
    # process's hub feeds every subscription, and a channel per socket would cost a
    # Redis subscription per connection (1,000 of them outlast daphne's 5 s
    # handshake timeout).
    channel_layer_alias = "botlnek-sockets-are-fed-by-the-hub"
    transport = "websocket"

    async def connect(self) -> None:
        self.token = self.scope.get("api_token")
        user = self.scope.get("user")
        if self.token is None and not (user is not None and user.is_authenticated):
            await self.close()
            return
        self.subscriptions: dict[str, Subscription] = {}
        self.closing = False
        self.pressure = daphne_transport.attach(self.base_send, self.scope)
        await self.accept()
        self.holder = limits.holder_of(self.token, user)
        self.counted = self.holder is not None and limits.connections().open(
            self.holder
        )
        if self.holder is not None and not self.counted:
            self.closing = True
            reason = limits.connections().refusal(self.holder)
            if not self.pressure.close(1008, reason):
                await self.close(code=1008, reason=reason)

    async def disconnect(self, code: int) -> None:
        # Called twice after an overflow (by overflow(), then by the close): the
        # holder's place is given back once, and before anything that could fail.
        if getattr(self, "counted", False):
            self.counted = False
            limits.connections().close(self.holder)
        for subscription in list(getattr(self, "subscriptions", {}).values()):
            await subscription.stop()

    async def send_json(self, data: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(data, ensure_ascii=False))

    async def subscribed(self, subscription: Subscription, latest: int) -> None:
        # A rule subscription's cursor is its seq, a domain's its position.
        cursor = (
            "seq" if subscription.follows.stream.kind == "rule_event" else "position"
        )
        await self.send_json(
            {"type": "subscribed", "id": subscription.id, cursor: latest}
        )

    def is_slow(self) -> bool:
        return self.pressure.paused

    async def send_frame(
        self, subscription: Subscription, frame: Frame | RuleFrame
    ) -> None:
        # A reader that stopped reading holds this up; frames then pile up in the
        # subscription's queue until overflow() ends the connection.
        await self.pressure.writable()
        text = await frame.text(subscription.mode, subscription.id)
        limit = self.pressure.max_message_size
        if limit and len(text.encode()) > limit:
            # The server would refuse to send it; say why instead of failing
            # silently, and end this subscription: resuming could not get past it.
            detail = (
                f"version {frame.version} of {frame.aggregate!r} makes a frame over "
                f"this server's {limit}-byte limit: subscribe in delta mode, or run "
                "daphne with a larger --websocket_max_message_size"
            )
            await self.error("frame_too_large", detail, subscription.id)
            self.subscriptions.pop(subscription.id, None)
            self._ended = asyncio.ensure_future(subscription.stop())
            raise Ended
        await self.send(text_data=text)

    async def error(self, code: str, detail: str, id: Any = None) -> None:
        frame = {"type": "error", "error": code, "detail": detail}
        if isinstance(id, str):
            frame["id"] = id
        await self.send_json(frame)

    async def receive(self, text_data: str | None = None, bytes_data=None) -> None:
        if self.closing:
            return  # refused or overloaded: the close is on its way
        try:
            message = json.loads(text_data if text_data is not None else bytes_data)
        except (ValueError, TypeError, RecursionError):
            await self.error("invalid_json", "a frame must be one JSON object")
            return
        if not isinstance(message, dict):
            await self.error("invalid", "a frame must be one JSON object")
            return
        kind = message.get("type")
        if kind == "subscribe":
            await self._subscribe(message)
        elif kind == "unsubscribe":
            await self._unsubscribe(message)
        else:
            await self.error(
                "invalid",
                "type must be 'subscribe' or 'unsubscribe'",
                message.get("id"),
            )

    async def _subscribe(self, message: dict) -> None:
        try:
            request = SubscribeIn.model_validate(message)
        except ValidationError as exc:
            detail = summary(field_errors(exc.errors()))
            await self.error("invalid", detail, message.get("id"))
            return
        if request.id in self.subscriptions:
            await self.error(
                "invalid", f"subscription {request.id!r} exists", request.id
            )
            return
        limit = settings.BOTLNEK_WS_MAX_SUBSCRIPTIONS
        if len(self.subscriptions) >= limit:
            detail = (
                f"this connection already holds {limit} subscriptions "
                "(BOTLNEK_WS_MAX_SUBSCRIPTIONS): unsubscribe one, or open another"
            )
            await self.error("too_many_subscriptions", detail, request.id)
            return
        if self.token is not None and not self.token.can_read(request.domain):
            detail = f"this token may not read domain {request.domain!r}"
            await self.error("forbidden", detail, request.id)
            return
        missing = await db.read(_missing, request.domain, request.rule)
        if missing:
            await self.error("not_found", missing, request.id)
            return
        subscription = Subscription(self, request)
        self.subscriptions[request.id] = subscription
        subscription.task = asyncio.ensure_future(self._run(subscription))

    async def _run(self, subscription: Subscription) -> None:
        try:
            await subscription.run()
        except Ended:
            return  # the sink told its client why
        except Exception:
            logger.exception("subscription %s failed", subscription.id)
            # The client resumes from its last position on a new connection.
            await self.close(code=1011)

    async def _unsubscribe(self, message: dict) -> None:
        subscription = self.subscriptions.pop(str(message.get("id")), None)
        if subscription is None:
            await self.error("not_found", "no such subscription", message.get("id"))
            return
        await subscription.stop()

    def overflow(self) -> None:
        """Too many frames waiting: drop the connection rather than grow memory."""
        if not self.closing:
            self.closing = True
            logger.warning("closing a subscriber that fell behind (1013)")
            metrics.slow_consumer_disconnected(self.transport)
            reason = "too many pending frames; resume from your last position"
            # Stop taking frames at once; what was sent stays for the reader.
            self._stopping = asyncio.ensure_future(self.disconnect(1013))
            if not self.pressure.close(1013, reason):
                self._closing = asyncio.ensure_future(
                    self.close(code=1013, reason=reason)
                )
