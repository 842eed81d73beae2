"""`/ws/dashboard?path=<page URL>`: pushes a dashboard page's live parts.

The socket names the page it serves by the page's own URL; resolving it gives the
view, whose @live_parts renderer (aggregates.views) re-renders the live parts. A
page of a domain listens to that domain's versions (for an aggregate's page, only
that aggregate's) and rule events; a page of no domain listens to every domain,
and looks for new ones every DOMAINS_EVERY seconds.
"""

import asyncio
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import QueryDict
from django.urls import Resolver404, resolve

from aggregates import daphne_transport, db, limits, store, streams
from aggregates.errors import NotFound
from aggregates.live import hub
from aggregates.live.websocket import SubscribeConsumer

NOT_FOUND = 4404  # the page is gone, or has no live parts


class DashboardConsumer(AsyncWebsocketConsumer):
    """The first push goes out as soon as the socket opens, so whatever was
    committed between rendering the page and opening the socket shows up too."""

    channel_layer_alias = SubscribeConsumer.channel_layer_alias
    RENDER_EVERY = 0.25  # seconds: at most four renders a second per page
    DOMAINS_EVERY = 2  # seconds: how soon a page of every domain sees a new one

    async def connect(self) -> None:
        user = self.scope.get("user")
        public = settings.BOTLNEK_PUBLIC_DASHBOARD
        if not (public or (user is not None and user.is_authenticated)):
            await self.close()
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        path, _, page_query = query.get("path", ["/"])[0].partition("?")
        try:
            match = resolve(path)
        except Resolver404:
            match = None
        self.render_live = getattr(match.func, "live_parts", None) if match else None
        if self.render_live is None:
            await self.close(code=NOT_FOUND)
            return
        self.kwargs = match.kwargs
        self.query = QueryDict(page_query)
        self.aggregate = self.kwargs.get("aggregate")
        if "domain" in self.kwargs:
            self.domains = [self.kwargs["domain"]]
        else:
            self.domains = list(await db.read(store.latest_positions_all))
        self.pressure = daphne_transport.attach(self.base_send, self.scope)
        await self.accept()
        # A logged-in user's sockets count towards the live connections limit.
        self.holder = limits.holder_of(None, user)
        self.counted = self.holder is not None and limits.connections().open(
            self.holder
        )
        if self.holder is not None and not self.counted:
            reason = limits.connections().refusal(self.holder)
            if not self.pressure.close(1008, reason):
                await self.close(code=1008, reason=reason)
            return
        self.dirty = asyncio.Event()
        self.dirty.set()
        self.feeds = [
            feed
            for domain in self.domains
            for feed in (streams.DomainVersions(domain), streams.DomainRules(domain))
        ]
        try:
            for feed in self.feeds:
                await hub.hub().listen(feed, self)
        except BaseException:
            await self.disconnect(1011)  # Channels will not: connect() failed
            raise
        self.renderer = asyncio.ensure_future(self._render())
        self.finder = None
        if "domain" not in self.kwargs:  # every domain: also those made later
            self.finder = asyncio.ensure_future(self._find_new_domains())

    async def _find_new_domains(self) -> None:
        """A page of every domain listens to a domain created after it opened
        (within DOMAINS_EVERY seconds), and shows it."""
        while True:
            await asyncio.sleep(self.DOMAINS_EVERY)
            try:
                known = await db.read(store.latest_positions_all)
            except Exception:
                continue  # the database is away: the next look
            for domain in sorted(set(known) - set(self.domains)):
                self.domains.append(domain)
                for feed in (
                    streams.DomainVersions(domain),
                    streams.DomainRules(domain),
                ):
                    self.feeds.append(feed)
                    await hub.hub().listen(feed, self)
                self.dirty.set()

    def offer(self, frame: streams.Frame | None) -> None:
        """A version of the domain, or None: some rule of it recorded events."""
        if frame is None or self.aggregate is None or frame.aggregate == self.aggregate:
            self.dirty.set()

    async def _render(self) -> None:
        while True:
            await self.dirty.wait()
            # A browser that stopped reading gets no more renders (what changed
            # meanwhile comes in one render once it reads again), never a buffer
            # growing with every change.
            await self.pressure.writable()
            self.dirty.clear()
            try:
                html = await db.read(self.render_live, self.query, **self.kwargs)
            except NotFound:
                await self.close(code=NOT_FOUND)
                return
            await self.send(text_data=html)
            await asyncio.sleep(self.RENDER_EVERY)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted", False):
            self.counted = False
            limits.connections().close(self.holder)
        for task in (getattr(self, "renderer", None), getattr(self, "finder", None)):
            if task is not None:
                task.cancel()
        for feed in getattr(self, "feeds", []):
            await hub.hub().unlisten(feed, self)
