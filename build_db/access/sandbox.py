"""Untrusted SQL, sandboxed (docs/architecture.md, decision 7): for a shared server that runs other people's
queries.

Two independent layers, so one's miss is caught by the other, and a child process that holds both:

1. sqlglot: exactly one read-only query (SELECT, WITH, UNION/INTERSECT/EXCEPT) whose tables are the
   catalog's own tables and views or its own CTEs; no table functions, no file paths, no functions that
   read files, settings or the environment.
2. DuckDB: a read-only connection with `enable_external_access = false`, `allowed_directories` limited to
   the store (so the views can still read their Parquet files and nothing else), and `lock_configuration`
   so the query cannot undo any of it; plus a time limit (interrupt), a row limit, and resource limits: a
   memory limit, a thread count and a bounded private temp directory for spilling, so one statement
   cannot take the machine (without them `string_agg(repeat(...))` over the expression table reached
   8.1 GB in 4 s).
3. The statement runs in a child process (`sandbox_child.py`) whose address space is capped and which is
   killed past the time limit: DuckDB's memory limit does not bound every allocation (a list-building
   `sum(len(range(300000000)))` reached 11.6 GB under a 2 GB limit) and its interrupt is cooperative (the
   same statement ran past 40 s under a 5 s limit); a statement that ends after its deadline but before
   the kill is refused as late all the same. `Sandbox` keeps warm children for a server; `run_safe` uses
   one for one statement.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import duckdb
import pandas as pd
import sqlglot
from sqlglot import exp

from ..defaults import SQL_MAX_ROWS, SQL_TIMEOUT
from ..store.catalog import CATALOG
from .connect import connect
from .sandbox_child import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_TEMP_LIMIT,
    DEFAULT_THREADS,
    UnsafeQuery,
    safe_connect,
)

# Function names that read files, the network, settings or the environment, or run SQL text.
DENIED_FUNCTIONS = re.compile(
    r"^(read_\w+|\w+_scan|parquet_\w+|sniff_csv|glob|query|query_table|getenv|current_setting|"
    r"duckdb_\w+|pragma_\w+|which_secret|load_\w+|install_\w+|iceberg_\w+|delta_\w+|postgres_\w+|sqlite_\w+|"
    r"mysql_\w+|http\w*|json_execute_serialized_sql|from_substrait\w*|get_substrait\w*|checkpoint|"
    r"force_checkpoint|enable_\w+|disable_\w+|test_\w+|icu_\w+|shell\w*|system)$",
    re.IGNORECASE,
)
QUERY_TYPES = (exp.Select, exp.Union, exp.Intersect, exp.Except)
DEFAULT_TIMEOUT = SQL_TIMEOUT
DEFAULT_MAX_ROWS = SQL_MAX_ROWS
# The child's address space beyond DuckDB's memory limit: Python, the libraries and thread stacks (a child
# that opened the catalog and ran a scan had 1.2 GB of address space, 0.2 GB of it resident).
ADDRESS_SPACE_HEADROOM = 2 * 2**30
GRACE = 2.0  # seconds past the time limit before the child is killed: DuckDB's interrupt stops most at once
MAX_ROWS = 10_000_000  # the largest row cap one can ask for: ~1 GB of Arrow for a narrow table
MAX_TIMEOUT = 3600.0
MAX_DEPTH_MESSAGE = (
    "the query nests too deeply to check; write it with fewer nested parentheses or subqueries"
)


@dataclass
class SafeResult:
    frame: pd.DataFrame
    truncated: bool  # more rows existed than max_rows
    route: dict | None = None  # with route=True: the source that answered, why, and the SQL run


def allowed_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "select table_name from duckdb_tables() where not internal and database_name = current_database() "
        "union select view_name from duckdb_views() where not internal "
        "and database_name in (current_database(), 'temp')"
    ).fetchall()
    return {r[0].lower() for r in rows}


def check_sql(sql: str, allowed: set[str]) -> exp.Expression:
    """Parse and vet a query; raise UnsafeQuery naming the first thing it refuses."""
    try:
        statements = _statements(sql)
    except sqlglot.errors.SqlglotError as e:  # a parse or a tokenizer error
        raise UnsafeQuery(f"not valid SQL: {str(e).splitlines()[0]}") from e
    except RecursionError:
        raise UnsafeQuery(MAX_DEPTH_MESSAGE) from None
    if len(statements) != 1:
        raise UnsafeQuery(f"exactly one statement is allowed, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, QUERY_TYPES):
        raise UnsafeQuery(f"only SELECT queries are allowed (WITH and UNION too), not {_kind(tree)}")
    try:
        _vet(tree, allowed)
    except RecursionError:
        raise UnsafeQuery(MAX_DEPTH_MESSAGE) from None
    return tree


def _statements(sql: str) -> list[exp.Expr]:
    """The statements of a text, without the empty ones and a trailing comment (`select 1; -- note`,
    which editors and BI tools leave: sqlglot gives it as a statement of its own). sqlglot's warning for a
    statement it keeps as a plain command (`LOAD httpfs`) is not printed: the refusal says it."""
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        parsed = sqlglot.parse(sql, read="duckdb")
    finally:
        logger.setLevel(level)
    return [s for s in parsed if s is not None and not isinstance(s, exp.Semicolon)]


def _kind(tree: exp.Expr) -> str:
    """What a statement is, as its author wrote it: LOAD, INSTALL, ATTACH, PRAGMA, ..."""
    if isinstance(tree, exp.Command):
        return str(tree.this).split()[0].upper() if str(tree.this).strip() else "COMMAND"
    return tree.key.upper() if isinstance(tree, exp.Expression) else type(tree).__name__


def _vet(tree: exp.Expression, allowed: set[str]) -> None:
    for node in tree.walk():
        if isinstance(
            node,
            exp.Command
            | exp.Pragma
            | exp.Set
            | exp.Use
            | exp.Copy
            | exp.Attach
            | exp.Detach
            | exp.Create
            | exp.Drop
            | exp.Insert
            | exp.Update
            | exp.Delete
            | exp.Merge
            | exp.Alter,
        ):
            raise UnsafeQuery(f"{_kind(node)} is not allowed inside a query")
        if isinstance(node, exp.Func):
            name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name
            if DENIED_FUNCTIONS.match(name or ""):
                raise UnsafeQuery(
                    f"function {name.lower()}() is not allowed: it reads files, settings or the environment"
                )
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            raise UnsafeQuery(
                f"table functions and file paths are not allowed in FROM: {table.sql('duckdb')}"
            )
        if table.this.quoted and re.search(r"[./\\:]", table.name):
            raise UnsafeQuery(f"file paths are not allowed in FROM: {table.name!r}")
        if table.args.get("db") or table.args.get("catalog"):
            raise UnsafeQuery(
                f"qualified names are not allowed: {table.sql('duckdb')}; use the catalog's tables"
            )
        name = table.name.lower()
        if name not in allowed and name not in ctes:
            raise UnsafeQuery(f"unknown table {table.name!r}; the catalog has {', '.join(sorted(allowed))}")


def check_condition(text: str, columns: set[str], *, what: str = "cells") -> str:
    """A user's SQL condition on one table (`--cells "group_name = 'Astrocyte'"`), checked and written
    again as one parenthesised expression, so it can be ANDed to `species = ?` and never escape it: one
    expression (no statement, no subquery, no table), its columns the table's own, its functions none that
    read files, settings or the environment. Raises UnsafeQuery naming what it refuses.

    Example:
        >>> check_condition("group_name = 'Astrocyte'", {"group_name"})  # doctest: +SKIP
        "(group_name = 'Astrocyte')"
    """
    example = "group_name = 'Astrocyte' and donor_sex = 'Female'"
    hint = f'write one condition on the {what} table, such as "{example}"'
    if not str(text).strip():
        raise UnsafeQuery(f"{what}: an empty condition; {hint}")
    try:
        trees = [t for t in sqlglot.parse(str(text), read="duckdb") if t is not None]
    except sqlglot.errors.SqlglotError as e:  # a parse or a tokenizer error
        raise UnsafeQuery(f"{what}={text!r}: not one SQL condition ({str(e).splitlines()[0]}); {hint}") from e
    except RecursionError:
        raise UnsafeQuery(MAX_DEPTH_MESSAGE) from None
    if (
        len(trees) != 1
        or isinstance(trees[0], exp.Query | exp.Command)
        or not isinstance(trees[0], exp.Expression)
    ):
        raise UnsafeQuery(f"{what}={text!r}: not one SQL condition; {hint}")
    tree = trees[0]
    try:
        nodes = list(tree.walk())
    except RecursionError:
        raise UnsafeQuery(MAX_DEPTH_MESSAGE) from None
    lowered = {c.lower() for c in columns}
    for node in nodes:
        if isinstance(node, exp.Query | exp.Subquery | exp.Table | exp.Placeholder | exp.Star):
            raise UnsafeQuery(f"{what}={text!r}: subqueries, tables and placeholders are not allowed; {hint}")
        if isinstance(node, exp.Column):
            if node.table and node.table.lower() != what:
                raise UnsafeQuery(f"{what}={text!r}: {node.sql('duckdb')} names another table; {hint}")
            if node.name.lower() not in lowered:
                close = difflib.get_close_matches(node.name.lower(), sorted(lowered), n=3, cutoff=0.6)
                also = f" (closest: {', '.join(close)})" if close else ""
                raise UnsafeQuery(f"{what}={text!r}: the {what} table has no column {node.name!r}{also}")
        if isinstance(node, exp.Func):
            name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name
            if DENIED_FUNCTIONS.match(name or ""):
                raise UnsafeQuery(
                    f"{what}={text!r}: function {name.lower()}() is not allowed: it reads files, settings or "
                    "the environment"
                )
    return f"({tree.sql(dialect='duckdb')})"


def run_safe(
    store: Path,
    sql: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_rows: int = DEFAULT_MAX_ROWS,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = DEFAULT_THREADS,
    route: bool = False,
) -> SafeResult:
    """Run one untrusted SELECT against the store's catalog under every sandbox layer, in a child process
    of its own (started for it, ended after it); `route` as Sandbox.run takes it.

    Example:
        >>> run_safe(Path("data/demo-store"), "select count(*) from cells").frame  # doctest: +SKIP
    """
    with Sandbox(store, workers=1, memory_limit=memory_limit, threads=threads, keep_warm=False) as sandbox:
        return sandbox.run(sql, timeout=timeout, max_rows=max_rows, route=route)


def parse_bytes(text: str) -> int:
    """DuckDB's memory sizes ("2GB", "300 MB", "1.5GiB", "64MiB") as bytes; UnsafeQuery when not one."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", str(text), re.IGNORECASE)
    if not m or float(m[1]) <= 0:
        raise UnsafeQuery(f"bad sandbox limit {text!r}; give memory as e.g. 2GB or 500MB")
    unit = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[m[2].upper()]
    return int(float(m[1]) * (1024 if m[3] else 1000) ** unit)


class Sandbox:
    """Warm child processes (`sandbox_child.py`) running untrusted statements for one store, `workers` at
    once; a child that was killed (past the time limit or its memory cap) is replaced by a fresh one.

    The statement is vetted here (`check_sql`) before any child sees it; each child holds DuckDB's sandbox
    and resource limits (`safe_connect`) under an address-space cap of memory_limit + 2 GiB.
    """

    def __init__(
        self,
        store: Path,
        *,
        workers: int = 1,
        memory_limit: str = DEFAULT_MEMORY_LIMIT,
        threads: int = DEFAULT_THREADS,
        temp_limit: str = DEFAULT_TEMP_LIMIT,
        keep_warm: bool = True,
    ):
        self.store = Path(store).absolute()
        self.keep_warm = keep_warm  # replace a child stopped at a limit at once (a server), or when needed
        self.memory_limit = memory_limit
        self.address_space = parse_bytes(memory_limit) + ADDRESS_SPACE_HEADROOM
        parse_bytes(temp_limit)
        if int(threads) < 1:
            raise UnsafeQuery(f"bad sandbox limit threads={threads}; give threads >= 1")
        self.config = {
            "store": str(self.store),
            "memory_limit": memory_limit,
            "threads": int(threads),
            "temp_limit": temp_limit,
            "address_space": self.address_space,
        }
        con = connect(self.store)
        try:
            self.allowed = allowed_tables(con) - {"store_info"}
        finally:
            con.close()
        self.workers = max(1, int(workers))
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._started = 0
        self._lock = threading.Lock()
        self._children: set[_Child] = set()
        self._closed = False
        self._to_start: queue.Queue[bool] = queue.Queue()
        self._starter: threading.Thread | None = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._to_start.put(False)
        with self._lock:
            self._closed = True
            children, self._children = list(self._children), set()
        for child in children:
            child.stop()

    def run(
        self,
        sql: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_rows: int = DEFAULT_MAX_ROWS,
        cancelled: threading.Event | None = None,
        route: bool = False,
    ) -> SafeResult:
        """Vet and run one statement; `cancelled` (set by a server when its client goes away) stops it;
        `route`: answered from the source that holds it cheapest (access/router.py), in the child."""
        if not isinstance(max_rows, int) or not 0 <= max_rows <= MAX_ROWS:
            raise UnsafeQuery(f"max_rows={max_rows}: give a row cap from 0 to {MAX_ROWS:,}")
        if not 0 < float(timeout) <= MAX_TIMEOUT:
            raise UnsafeQuery(f"timeout={timeout}: give a time limit above 0 and at most {MAX_TIMEOUT:g} s")
        check_sql(sql, self.allowed)
        child = self._acquire(timeout, cancelled)
        try:
            header, payload = child.ask(
                {"sql": sql, "max_rows": max_rows, "timeout": timeout, "route": route},
                timeout + GRACE,
                cancelled,
            )
        except _Late:
            self._drop(child, replace=True)
            raise UnsafeQuery(
                f"the query ran longer than the {timeout:g} s time limit and was stopped"
            ) from None
        except _Died:
            self._drop(child, replace=True)
            raise UnsafeQuery(
                f"the query needed more memory than the sandbox's {_gib(self.address_space)} cap and was "
                "stopped; filter or aggregate more, or ask for a larger --memory-limit"
            ) from None
        except _Cancelled:
            self._drop(child)
            raise
        if header["ok"] or header["kind"] == "error":
            self._idle.put(child)
        else:
            # A child that hit a limit is replaced, not reused: one stopped at its memory limit kept its
            # address space nearly full, and every later statement there ran out of memory.
            self._drop(child, replace=True)
        if header["ok"]:
            import pyarrow as pa

            table = pa.ipc.open_stream(payload).read_all()
            return SafeResult(table.to_pandas(), bool(header["truncated"]), header.get("route"))
        if header["kind"] == "timeout":
            raise UnsafeQuery(f"the query ran longer than the {timeout:g} s time limit and was stopped")
        if header["kind"] == "memory":
            raise UnsafeQuery(
                f"the query needed more than the sandbox's {self.memory_limit} memory limit and was stopped; "
                "filter or aggregate more, or ask for a larger --memory-limit"
            )
        raise UnsafeQuery(header["message"])

    def _acquire(self, timeout: float, cancelled: threading.Event | None = None) -> _Child:
        """An idle child, or a new one while fewer than `workers` run; waits up to `timeout` (then the
        busy refusal), and stops waiting when `cancelled` is set (the caller went away)."""
        end = time.monotonic() + timeout
        while True:
            if cancelled is not None and cancelled.is_set():
                raise _Cancelled("the client went away; the query was stopped")
            with self._lock:
                if self._closed:
                    raise UnsafeQuery("the sandbox is closed")
                start = self._idle.empty() and self._started < self.workers
                if start:
                    self._started += 1
            if start:
                return self._start()
            left = end - time.monotonic()
            if left <= 0:
                raise UnsafeQuery(
                    f"the sandbox's {self.workers} worker(s) stayed busy for {timeout:g} s; try again shortly"
                )
            try:
                child = self._idle.get(timeout=min(left, 0.1))
            except queue.Empty:
                continue
            with self._lock:
                if child in self._children:
                    return child

    def _start(self) -> _Child:
        """A new child, counted in `_started` by the caller."""
        try:
            child = _Child(self.config)
        except BaseException:
            with self._lock:
                self._started -= 1
            raise
        with self._lock:
            closed = self._closed
            if not closed:
                self._children.add(child)
        if closed:
            child.stop()
            raise UnsafeQuery("the sandbox is closed")
        return child

    def _drop(self, child: _Child, *, replace: bool = False) -> None:
        """Stop a child; with `replace`, start its successor now (in the background), so the next statement
        finds a warm child rather than waiting for one to start."""
        child.stop()
        with self._lock:
            self._children.discard(child)
            self._started -= 1
            replace = replace and self.keep_warm and not self._closed and self._started < self.workers
            if replace:
                self._started += 1

        if replace:
            with self._lock:
                if self._starter is None:
                    # One thread that lives as long as the sandbox starts the successors: a child dies with
                    # the thread that started it (PR_SET_PDEATHSIG follows the thread, not the process).
                    self._starter = threading.Thread(
                        target=self._warm, name="hmba-sandbox-start", daemon=True
                    )
                    self._starter.start()
            self._to_start.put(True)

    def _warm(self) -> None:
        while self._to_start.get():
            try:
                self._idle.put(self._start())
            except (UnsafeQuery, OSError):
                pass  # the next statement starts one itself, and says why if it cannot


class _Late(Exception):
    pass


class _Died(Exception):
    pass


class _Cancelled(UnsafeQuery):
    """The caller went away (a server's client disconnected): the statement was stopped."""


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


class _Child:
    """One sandbox child process and the two pipes to it."""

    def __init__(self, config: dict):
        self.log = tempfile.TemporaryFile()  # the child's stderr, read only to say why it could not start
        # The child's spill folder is ours: a child killed past its limits cannot remove it itself.
        self.spill = tempfile.mkdtemp(prefix="hmba-db-sandbox-")
        config = {**config, "spill": self.spill}
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "build_db.access.sandbox_child",
                str(req_r),
                str(ans_w),
                json.dumps(config),
            ],
            pass_fds=(req_r, ans_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            close_fds=True,
        )
        os.close(req_r)
        os.close(ans_w)
        self.requests = Connection(req_w, readable=False)
        self.answers = Connection(ans_r, writable=False)
        try:
            ready = self._recv(60.0, None)
        except (_Late, _Died):
            err = self._stderr()
            self.stop()
            raise UnsafeQuery(f"the sandbox could not start{': ' + err if err else ''}") from None
        if not ready.get("ok"):
            self.stop()
            raise UnsafeQuery(
                f"bad sandbox limit ({ready['message']}); give memory as e.g. 2GB and threads >= 1"
            )

    def ask(self, request: dict, deadline: float, cancelled) -> tuple[dict, bytes | None]:
        self.requests.send_bytes(json.dumps(request).encode())
        header = self._recv(deadline, cancelled)
        payload = self.answers.recv_bytes() if header.get("ok") else None
        return header, payload

    def _recv(self, seconds: float, cancelled) -> dict:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise _Late()
            if cancelled is not None and cancelled.is_set():
                raise _Cancelled("the client went away; the query was stopped")
            try:
                if self.answers.poll(min(left, 0.1)):
                    return json.loads(self.answers.recv_bytes())
            except (EOFError, OSError):
                raise _Died() from None
            if self.proc.poll() is not None and not self.answers.poll(0):
                raise _Died()

    def _stderr(self) -> str:
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return ""
        self.log.seek(0)
        lines = [x for x in self.log.read().decode(errors="replace").splitlines() if x.strip()]
        return lines[-1] if lines else ""

    def stop(self) -> None:
        for c in (self.requests, self.answers):
            try:
                c.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        shutil.rmtree(self.spill, ignore_errors=True)


__all__ = ["CATALOG", "Sandbox", "UnsafeQuery", "SafeResult", "check_sql", "run_safe", "safe_connect"]
