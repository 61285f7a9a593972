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


class Busy(HmbaError):
    """Every connection stayed in use: the server is overloaded (a 503)."""


class Snapshot:
    """One build of the store, its connections and its sandbox, open while requests use it."""

    def __init__(self, where: Path | str, pool_size: int, sandbox_options: dict):
        self.where = where
        self._pool: queue.Queue[duckdb.DuckDBPyConnection] = queue.Queue()
        self._all: list[duckdb.DuckDBPyConnection] = []
        for _ in range(pool_size):
            con = connect(where)
            self._all.append(con)
            self._pool.put(con)
        info = dict(self._all[0].execute("select key, value from store_info").fetchall())
        self.build_id = info.get("build_id") or info.get("built_at", "")
        self.info = info
        self.users = 0
        self.retired = False
        self._lock = threading.Lock()
        self._sandbox_options = sandbox_options
        self._sandbox: Sandbox | None = None

    @contextlib.contextmanager
    def connection(self):
        try:
            con = self._pool.get(timeout=POOL_WAIT)
        except queue.Empty:
            raise Busy(
                f"all {len(self._all)} connections stayed busy for {POOL_WAIT:g} s; try again shortly"
            ) from None
        try:
            yield con
        finally:
            self._pool.put(con)

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
        self._current = self._open(self._where())

    def _where(self) -> Path | str:
        return self.store if is_url(self.store) else files_root(Path(self.store))

    def _open(self, where: Path | str) -> Snapshot:
        return Snapshot(where, self.pool_size, self.sandbox_options)

    def current(self) -> Snapshot:
        """The newest build (opened on first sight), taken by the caller until it calls `release`."""
        where = self._where()
        with self._lock:
            if where != self._current.where:
                try:
                    new = self._open(where)
                except (HmbaError, duckdb.Error) as e:  # half-deleted, unreadable: stay on the build we have
                    log.warning("cannot open %s (%s); still serving %s", where, e, self._current.where)
                else:
                    old, self._current = self._current, new
                    old.retired = True
                    log.info("now serving build %s (%s)", new.build_id, where)
                    if old.users == 0:
                        old.close()
            snap = self._current
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
