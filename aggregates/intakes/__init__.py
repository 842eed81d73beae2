"""Intakes: publishers' own events — CloudEvents, storage notifications, any JSON
— registered as sources through a mapping declared once per domain.

- sandbox.py — the templates: Jinja2's sandbox, bounded in time and size;
- events.py — a request's events (CloudEvents binary, structured, batch; JSON);
- definition.py — what users write, checked, and the compiled Mapping;
- write.py / read.py — intakes created, replaced, removed, read;
- take.py — events in, sources out through the one write path, each answered
  alone; and the preview, which saves nothing;
- tally.py — the accepted and refused counts, saved within a second;
- api.py — the routes.
"""
