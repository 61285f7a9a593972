"""The store as the server sees it: one snapshot per request, the newest build between requests.

A request takes the current snapshot (`Stores.session`): a pool of read-only connections to that build's
own catalog (never the store's `catalog.duckdb` link, which a rebuild swaps), and the build's sandbox for
untrusted SQL. A rebuild publishes a new snapshot; the next request notices (one `readlink` of the link) and
opens it, while requests already running finish on theirs, so no answer mixes two builds. A snapshot that
is no longer current closes its connections when its last request ends. Nothing here writes to the store.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from ..access import genes as G
from ..access.connect import connect
from ..errors import HmbaError
from ..store.paths import files_root, is_url

if TYPE_CHECKING:
    from ..access.sandbox import Sandbox

log = logging.getLogger("hmba-db.serve")
POOL_SIZE = 4  # connections per snapshot: requests beyond wait their turn (DuckDB runs 2 threads each)
POOL_WAIT = 30.0  # seconds a request waits for a free connection before a 503
# Exports (minutes, GBs) get connections of their own, so they never hold the readers' pool; beyond these
# many at once an export waits EXPORT_WAIT s, then is told to come back (503).
EXPORT_SLOTS = 2
EXPORT_WAIT = 5.0
RETRY_OPEN = 30.0  # seconds before a build that would not open (damaged, half-written) is tried again


class Busy(HmbaError):
    """Every connection stayed in use: the server is overloaded (a 503)."""


class _Slot:
    """What a pool queue held, as taken: put back (perhaps replaced) when given back."""

    def __init__(self, value):
        self.value = value


@contextlib.contextmanager
def _taken(pool: queue.Queue, wait: float, busy: str):
    """An item of a pool for the block, waiting at most `wait` seconds for one (then Busy, saying `busy`)."""
    try:
        slot = _Slot(pool.get(timeout=max(0.0, wait)))
    except queue.Empty:
        raise Busy(busy) from None
    try:
        yield slot
    finally:
        pool.put(slot.value)


class Snapshot:
    """One build of the store, its connections and its sandbox, open while requests use it."""

    def __init__(self, where: Path | str, pool_size: int, sandbox_options: dict):
        self.where = where
        self._pool: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        self._exports: queue.Queue[duckdb.DuckDBPyConnection | None] = queue.Queue()
        self._all: list[duckdb.DuckDBPyConnection] = []
        try:
            for i in range(pool_size):
                con = connect(where, check_files=i == 0)  # the files checked once per snapshot
                self._all.append(con)
                self._pool.put(con)
        except BaseException:
            for con in self._all:
                with contextlib.suppress(duckdb.Error):
                    con.close()
            raise
        for _ in range(EXPORT_SLOTS):
            self._exports.put(None)  # opened on first use
        info = dict(self._all[0].execute("select key, value from store_info").fetchall())
        self.build_id = info.get("build_id") or info.get("built_at", "")
        self.info = info
        self._pool_size = pool_size
        self.users = 0
        self.retired = False
        self._lock = threading.Lock()
        self._sandbox_options = sandbox_options
        self._sandbox: Sandbox | None = None

    @contextlib.contextmanager
    def connection(self, wait: float = POOL_WAIT):
        """A connection of the readers' pool, for at most `wait` seconds of waiting (then Busy)."""
        busy = (
            f"all {self._pool_size} of the server's connections stayed busy for {wait:.3g} s; try again soon"
        )
        with _taken(self._pool, wait, busy) as slot:
            yield slot.value

    @contextlib.contextmanager
    def export_connection(self, wait: float = EXPORT_WAIT):
        """A connection of the exports' own (EXPORT_SLOTS at once): a long export never holds a reader's."""
        busy = f"the server's {EXPORT_SLOTS} export slots stayed busy for {wait:.3g} s; try again in a minute"
        with _taken(self._exports, wait, busy) as slot:
            if slot.value is None:  # opened on first use
                slot.value = connect(self.where, check_files=False)
                with self._lock:
                    self._all.append(slot.value)
            yield slot.value

    def sandbox(self):
        """The sandbox's child processes for this build, started on first use."""
        if is_url(self.where):
            raise HmbaError(
                "untrusted SQL runs on a local store only (its sandbox allows no network access); serve a "
                "local copy of the store for /api/v1/sql"
            )
        with self._lock:
            if self._sandbox is None:
                from ..access.sandbox import Sandbox

                self._sandbox = Sandbox(Path(self.where), **self._sandbox_options)
            return self._sandbox

    def close(self) -> None:
        for con in self._all:
            with contextlib.suppress(duckdb.Error):
                con.close()
        if self._sandbox is not None:
            self._sandbox.close()
        G.forget(str(self.where))


class Stores:
    """The served store: its current snapshot, swapped for the newest build between requests."""

    def __init__(self, store: Path | str, *, pool_size: int = POOL_SIZE, sandbox_options: dict | None = None):
        self.store = store if is_url(store) else Path(store).absolute()
        self.pool_size = pool_size
        self.sandbox_options = sandbox_options or {}
        self._lock = threading.Lock()
        self._failed: dict[object, float] = {}  # a build that would not open: when to try it again
        self._current = self._open(self._where())

    def _where(self) -> Path | str:
        return self.store if is_url(self.store) else files_root(Path(self.store))

    def _open(self, where: Path | str) -> Snapshot:
        return Snapshot(where, self.pool_size, self.sandbox_options)

    def current(self) -> Snapshot:
        """The newest build (opened on first sight), taken by the caller until it calls `release`."""
        where = self._where()
        with self._lock:
            if where != self._current.where and time.monotonic() >= self._failed.get(where, 0.0):
                try:
                    new = self._open(where)
                except (HmbaError, duckdb.Error) as e:  # half-deleted, damaged: stay on the build we have
                    log.warning("cannot open %s (%s); still serving %s", where, e, self._current.where)
                    self._failed[where] = time.monotonic() + RETRY_OPEN
                else:
                    old, self._current = self._current, new
                    old.retired = True
                    log.info("now serving build %s (%s)", new.build_id, where)
                    if old.users == 0:
                        old.close()
            snap = self._current
            snap.users += 1
            return snap

    def hold(self, snap: Snapshot) -> Snapshot:
        """One more user of a snapshot already taken (work that may outlive the request that took it)."""
        with self._lock:
            snap.users += 1
        return snap

    def release(self, snap: Snapshot) -> None:
        with self._lock:
            snap.users -= 1
            close = snap.retired and snap.users == 0
        if close:
            snap.close()

    @contextlib.contextmanager
    def session(self):
        """(snapshot, connection) for one request: both stay on one build until the request ends."""
        snap = self.current()
        try:
            with snap.connection() as con:
                yield snap, con
        finally:
            self.release(snap)

    @contextlib.contextmanager
    def snapshot(self):
        snap = self.current()
        try:
            yield snap
        finally:
            self.release(snap)

    def close(self) -> None:
        with self._lock:
            self._current.close()
