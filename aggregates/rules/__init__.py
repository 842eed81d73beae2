"""Rules: declared readiness, evaluated by the server.

    definition.py  what users send (checked once) and its compiled form
    evaluate.py    the state machine per (rule, aggregate): pure, no database
    engine.py      the durable consumer of each domain's positions, and the clock:
                   one transaction per step, events numbered by `seq`
    step.py        what one step does: versions and due moments, in order,
                   applied to the statuses they touch
    neighbours.py  rules across keys: what references cover, their facts as of a
                   position, the inputs an event names
    expect.py      expected keys: a rule's pattern, period and moments
    read.py        listings, why, the event log, receipts, preview
    write.py       create, replace, remove
    api.py         the HTTP endpoints

A version committed ──▶ engine.step (soon after, in each server process; and on
the clock for what time alone changes) ──▶ RuleEvent rows, in seq order
──▶ live delivery (aggregates.live: websocket, SSE) and `botlnek watch --rule`.
"""
