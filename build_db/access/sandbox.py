"""Untrusted SQL, sandboxed (DESIGN.md decision 7): for a shared server that runs other people's queries.

Two independent layers, so one's miss is caught by the other:

1. sqlglot: exactly one read-only query (SELECT, WITH, UNION/INTERSECT/EXCEPT) whose tables are the
   catalog's own tables and views or its own CTEs; no table functions, no file paths, no functions that
   read files, settings or the environment.
2. DuckDB: a read-only connection with `enable_external_access = false`, `allowed_directories` limited to
   the store (so the views can still read their Parquet files and nothing else), and `lock_configuration`
   so the query cannot undo any of it; plus a time limit (interrupt), a row limit, and resource limits: a
   memory limit, a thread count and a bounded private temp directory for spilling, so one statement
   cannot take the machine (without them `string_agg(repeat(...))` over the expression table reached
   8.1 GB in 4 s).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import sqlglot
from sqlglot import exp

from ..errors import HmbaError
from ..store.catalog import CATALOG
from .connect import connect, first_rows

# Function names that read files, the network, settings or the environment, or run SQL text.
DENIED_FUNCTIONS = re.compile(
    r"^(read_\w+|\w+_scan|parquet_\w+|sniff_csv|glob|query|query_table|getenv|current_setting|"
    r"duckdb_\w+|pragma_\w+|which_secret|load_\w+|install_\w+|iceberg_\w+|delta_\w+|postgres_\w+|sqlite_\w+|"
    r"mysql_\w+|http\w*|json_execute_serialized_sql|from_substrait\w*|get_substrait\w*|checkpoint|"
    r"force_checkpoint|enable_\w+|disable_\w+|test_\w+|icu_\w+|shell\w*|system)$",
    re.IGNORECASE,
)
QUERY_TYPES = (exp.Select, exp.Union, exp.Intersect, exp.Except)
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_ROWS = 100_000
DEFAULT_MEMORY_LIMIT = "2GB"  # a tenth of this machine kind's memory: several sandboxed users fit
DEFAULT_THREADS = 2
DEFAULT_TEMP_LIMIT = "4GB"  # spill space for sorts and joins larger than memory


class UnsafeQuery(HmbaError):
    """A query the sandbox refuses, with the reason."""


@dataclass
class SafeResult:
    frame: pd.DataFrame
    truncated: bool  # more rows existed than max_rows


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
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as e:
        raise UnsafeQuery(f"not valid SQL: {str(e).splitlines()[0]}") from e
    if len(statements) != 1:
        raise UnsafeQuery(f"exactly one statement is allowed, got {len(statements)}")
    tree = statements[0]
    if not isinstance(tree, QUERY_TYPES):
        kind = tree.key.upper() if isinstance(tree, exp.Expression) else type(tree).__name__
        raise UnsafeQuery(f"only SELECT queries are allowed (WITH and UNION too), not {kind}")
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
            raise UnsafeQuery(f"{node.key.upper()} is not allowed inside a query")
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
    return tree


def safe_connect(
    store: Path,
    *,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = DEFAULT_THREADS,
    temp_limit: str = DEFAULT_TEMP_LIMIT,
) -> duckdb.DuckDBPyConnection:
    """A read-only catalog connection with DuckDB's own sandbox and resource limits on, and locked."""
    store = Path(store).absolute()
    con = connect(store, private=True)  # an instance of its own: the locked settings stay here
    root = str(store.resolve())
    spill = tempfile.mkdtemp(prefix="hmba-db-sandbox-")
    weakref.finalize(con, shutil.rmtree, spill, True)
    try:
        con.execute("set memory_limit = ?", [memory_limit])
        con.execute("set threads = ?", [int(threads)])
        con.execute("set temp_directory = ?", [spill])
        con.execute("set max_temp_directory_size = ?", [temp_limit])
    except duckdb.Error as e:
        con.close()
        raise UnsafeQuery(
            f"bad sandbox limit ({' '.join(str(e).split())}); give memory as e.g. 2GB and threads >= 1"
        ) from e
    con.execute("set allowed_directories = [?]", [root + "/"])
    con.execute("set enable_external_access = false")
    con.execute("set lock_configuration = true")
    return con


def run_safe(
    store: Path,
    sql: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    max_rows: int = DEFAULT_MAX_ROWS,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    threads: int = DEFAULT_THREADS,
    con: duckdb.DuckDBPyConnection | None = None,
) -> SafeResult:
    """Run one untrusted SELECT against the store's catalog under both sandbox layers.

    Example:
        >>> run_safe(Path("data/demo-store"), "select count(*) from cells").frame  # doctest: +SKIP
    """
    con = con or safe_connect(store, memory_limit=memory_limit, threads=threads)
    check_sql(sql, allowed_tables(con) - {"store_info"})
    timer = threading.Timer(timeout, con.interrupt)
    timer.start()
    try:
        table, truncated = first_rows(con.sql(sql).to_arrow_reader(min(max_rows + 1, 100_000)), max_rows)
    except duckdb.InterruptException as e:
        raise UnsafeQuery(f"the query ran longer than the {timeout:g} s time limit and was stopped") from e
    except duckdb.OutOfMemoryException as e:
        ((limit,),) = con.execute("select current_setting('memory_limit')").fetchall()
        raise UnsafeQuery(
            f"the query needed more than the sandbox's {limit} memory limit and was stopped; filter or "
            "aggregate more, or ask for a larger --memory-limit"
        ) from e
    except duckdb.Error as e:
        raise UnsafeQuery(" ".join(str(e).split())) from e
    finally:
        timer.cancel()
    return SafeResult(table.to_pandas(), truncated)


__all__ = ["CATALOG", "UnsafeQuery", "SafeResult", "check_sql", "run_safe", "safe_connect"]
