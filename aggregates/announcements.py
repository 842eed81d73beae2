"""What happens after a commit: the seam between the writers and whoever follows.

The store announces versions_committed, the rules engine rule_events_committed, and
the writes of rules and webhooks (whoever calls them: the API, the admin, a
command) rules_changed and webhooks_changed — from transaction.on_commit, never
before the commit. Listeners are connected when the app is ready (aggregates.apps);
the database stays the source of truth, so an announcement only says "something
changed". This module imports nothing of the app: every layer may announce.
"""

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.db import transaction

logger = logging.getLogger("botlnek.events")

T = TypeVar("T")


@dataclass(frozen=True)
class VersionCommitted:
    domain: str
    aggregate: str
    version: int
    position: int


@dataclass(frozen=True)
class RuleEventsCommitted:
    """A rule's log reached `seq`."""

    domain: str
    rule: str
    seq: int


class Announcement(Generic[T]):
    """Things committed, told to every connected listener. Listeners run on the
    committing thread and must not block it; one that fails is logged, since
    what was committed stays committed."""

    def __init__(self, name: str):
        self.name = name
        self.listeners: list[Callable[[Sequence[T]], None]] = []

    def connect(self, listener: Callable[[Sequence[T]], None]) -> None:
        if listener not in self.listeners:
            self.listeners.append(listener)

    @contextmanager
    def listening(self, listener: Callable[[Sequence[T]], None]) -> Iterator[None]:
        """Connected for the duration of a block (tests capture announcements so)."""
        self.listeners.append(listener)
        try:
            yield
        finally:
            self.listeners.remove(listener)

    def send(self, committed: Sequence[T]) -> None:
        for listener in list(self.listeners):
            try:
                listener(committed)
            except Exception:
                logger.exception("%s: listener %r failed", self.name, listener)


versions_committed: Announcement[VersionCommitted] = Announcement("versions committed")
rule_events_committed: Announcement[RuleEventsCommitted] = Announcement(
    "rule events committed"
)
# The keys of domains whose rules, or webhooks, were created, changed or removed.
rules_changed: Announcement[str] = Announcement("rules changed")
webhooks_changed: Announcement[str] = Announcement("webhooks changed")


def on_commit(announcement: Announcement[T], committed: Sequence[T]) -> None:
    """Announce `committed` once the transaction commits (at once outside one)."""
    transaction.on_commit(lambda: announcement.send(committed))
