"""Webhooks: signed, ordered, at-least-once calls to receivers that hold no socket.

A webhook is a durable cursor over one stream: its domain's versions (by position)
or one rule's events (by seq) — what a websocket subscription follows in memory,
kept in the database instead.

    write.py     create (the secret, shown once), change, remove, replay
    read.py      the webhook with its health, the delivery log
    worker.py    the delivery worker: a process each server process starts, at a
                 lower CPU priority, to run the deliverer off the server's cores
    process.py   that process's entry: the deliverer on its own event loop
    delivery.py  the deliverer: for a webhook with events after
                 its cursor, it takes the webhook's lease, POSTs the events one by
                 one in order (Standard Webhooks headers and signature), and saves
                 the cursor, the attempts and the health as it goes; a failure
                 backs off and retries the same event, a 410 or 24 h of failures
                 pauses the webhook
    posting.py   one attempt: signed, pinned to the checked address, bounded
    progress.py  what delivering did, saved: cursors, attempts, health, backoff
    api.py       the HTTP endpoints
"""
