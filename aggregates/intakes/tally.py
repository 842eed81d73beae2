"""Each intake's accepted and refused events, and its last refusal: counted in
memory as events are answered and added to the Intake rows within a second, by
every process alike (an UPDATE per intake per second, not one per event)."""

import asyncio
import threading
from dataclasses import dataclass

from django.db.models import F
from django.utils import timezone

from aggregates import db
from aggregates.models import Intake

SAVE_AFTER_SECONDS = 1.0


@dataclass
class _Counts:
    accepted: int = 0
    refused: int = 0
    last_refusal: str | None = None


class Tally:
    def __init__(self) -> None:
        self.pending: dict[int, _Counts] = {}
        self.lock = threading.Lock()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task] = set()

    def add(
        self, intake_id: int, accepted: int, refused: int, last_refusal: str | None
    ) -> None:
        """Count an answered request's events; saved within SAVE_AFTER_SECONDS."""
        with self.lock:
            counts = self.pending.setdefault(intake_id, _Counts())
            counts.accepted += accepted
            counts.refused += refused
            if last_refusal is not None:
                counts.last_refusal = last_refusal
        loop = asyncio.get_running_loop()
        if self.timer is None or self.timer_loop is not loop or loop.is_closed():
            self.timer_loop = loop
            self.timer = loop.call_later(SAVE_AFTER_SECONDS, self._start_save)

    def _start_save(self) -> None:
        self.timer = None
        task = asyncio.get_running_loop().create_task(self.save())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def save(self) -> None:
        """Add what was counted to the rows now (before they are read)."""
        with self.lock:
            pending, self.pending = self.pending, {}
        if pending:
            counts = {
                pk: (c.accepted, c.refused, c.last_refusal) for pk, c in pending.items()
            }
            await db.write(save_counts, counts)


def save_counts(counts: dict[int, tuple[int, int, str | None]]) -> None:
    """Add (accepted, refused, last refusal) to each intake (by id)."""
    now = timezone.now()
    for intake_id, (accepted, refused, last_refusal) in counts.items():
        refusal = {}
        if last_refusal is not None:
            refusal = {"last_refusal": last_refusal, "last_refusal_at": now}
        Intake.objects.filter(pk=intake_id).update(
            accepted=F("accepted") + accepted,
            refused=F("refused") + refused,
            **refusal,
        )


tally = Tally()
