"""Group commit: single posts that arrive while a commit is in flight share the next.

A hot domain's throughput is capped by its lock: one commit at a time. Instead of
queueing N posts for N commits, the posts waiting when a commit ends go together
into the next one (write.register_each), each still answered on its own: its
Registration, or its own StoreError (a conflict fails that post, never its
neighbours, and leaves no trace). A batch (POST of a list) is all or nothing and
keeps its own transaction (write.register_sources).

At most IN_FLIGHT commits run at once per process: one on SQLite, whose single
writer thread takes them in turn anyway; two on PostgreSQL, so that the next group
is on its way while the database works on one.
"""

import asyncio
import weakref
from dataclasses import dataclass

from django.db import connection

from aggregates import db
from aggregates.store.registration import NewSource, Registration
from aggregates.store.write import register_each

MOST = 500  # sources in one commit: bounds the time one group holds the lock


@dataclass(slots=True)
class _Waiting:
    source: NewSource
    answer: asyncio.Future


class GroupCommit:
    """The posts of one event loop waiting for a commit."""

    def __init__(self, in_flight: int):
        self.in_flight = in_flight
        self.running = 0
        self.waiting: list[_Waiting] = []
        self.tasks: set[asyncio.Task] = set()  # the loop keeps only weak references

    async def register(self, source: NewSource) -> Registration:
        """Register one source; raises its StoreError."""
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append(_Waiting(source, answer))
        if self.running < self.in_flight:
            self._start()
        return await answer

    def _start(self) -> None:
        group, self.waiting = self.waiting[:MOST], self.waiting[MOST:]
        self.running += 1
        task = asyncio.get_running_loop().create_task(self._commit(group))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _commit(self, group: list[_Waiting]) -> None:
        try:
            outcomes = await db.write(register_each, [w.source for w in group])
        except Exception as exc:  # the database failed: every post hears it
            outcomes = [exc] * len(group)
        finally:
            self.running -= 1
            if self.waiting and self.running < self.in_flight:
                self._start()
        for waiting, outcome in zip(group, outcomes, strict=True):
            if waiting.answer.done():  # its client went away; it is written anyway
                continue
            if isinstance(outcome, Exception):
                waiting.answer.set_exception(outcome)
            else:
                waiting.answer.set_result(outcome)


_groups: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GroupCommit] = (
    weakref.WeakKeyDictionary()
)


async def register(source: NewSource) -> Registration:
    """Register one source together with the others arriving meanwhile."""
    loop = asyncio.get_running_loop()
    group = _groups.get(loop)
    if group is None:
        group = _groups[loop] = GroupCommit(
            in_flight=1 if connection.vendor == "sqlite" else 2
        )
    return await group.register(source)
