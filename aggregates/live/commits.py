"""Commits made by other processes on an embedded SQLite database, seen without a
channel layer.

With the embedded default (SQLite and the in-memory channel layer) a process hears
of nobody else's commits: `manage.py demo`, an `import`, a shell, a second server.
SQLite tells, cheaply: `PRAGMA data_version`, asked again on the same connection,
answers another number once any other connection has committed (SQLite keeps it
in memory shared by the connections to the file; asking reads no page). One
connection per process asks every WATCH_SECONDS — whatever the number of
subscribers — and the hub reads where its streams stand only when it moved.
"""

import asyncio
import functools
import sqlite3
from concurrent.futures import ThreadPoolExecutor

WATCH_SECONDS = 0.25


class DataVersion:
    """`PRAGMA data_version` of one SQLite file, on a connection and a thread of
    its own (a connection answers for the commits of *other* connections)."""

    def __init__(self, path: str):
        self.path = path
        self.connection: sqlite3.Connection | None = None
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="botlnek-commits")

    def _read(self) -> int:
        if self.connection is None:
            self.connection = sqlite3.connect(self.path, timeout=5)
        return self.connection.execute("PRAGMA data_version").fetchone()[0]

    async def read(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(self.thread, self._read)


@functools.cache
def of(path: str) -> DataVersion:
    """The one watcher of a file in this process, whichever event loops ask."""
    return DataVersion(path)
