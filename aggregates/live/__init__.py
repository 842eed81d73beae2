"""Live delivery: how a committed version reaches every subscriber of this process.

    store.write (a commit of sources) ── on commit ──▶ announcements.versions_committed
      ──▶ hub.publish: "domain D reached position P" over the channel layer
      ──▶ hub.Hub (one per process) ──▶ hub.Feed: reads the new versions once
      ──▶ subscription.Subscription: replay, gap healing, no duplicates
      ──▶ a transport: websocket.py (/ws/subscribe), sse.py (/api/stream),
          dashboard.py (/ws/dashboard: the page's live parts, re-rendered)

Rule events take the same way, announced by the rules engine (a Feed per rule,
by seq). The channel layer only ever says that a stream moved; the database is the
source of truth, so a lost notification delays an event and never loses it.
aggregates/daphne_transport.py is the one place that reaches past ASGI into daphne.
"""
