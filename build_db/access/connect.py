"""Opening a store: `connect()` to its catalog from any directory (repairing a moved store in the session),
and where a connection's files are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

from ..errors import HmbaError, StoreError
from ..store import integrity
from ..store.catalog import CATALOG, recorded_path, sql_literal, view_sql, views_of
from ..store.paths import bucket_file, files_root, is_url


def store_of(con: duckdb.DuckDBPyConnection) -> Path | str:
    """The folder of files a connection reads (its store's snapshot): as connect() set it, else as the
    catalog records it. A URL (a string) for a published store opened over the network."""
    rows = con.execute("select getvariable('hmba_store')").fetchall()
    path = rows[0][0] if rows and rows[0][0] else recorded_path(con)
    if not path:
        raise HmbaError(
            "this connection is not to an hmba-db catalog (no store_info); use build_db.connect(STORE)"
        )
    return path if is_url(path) else Path(path)


def bucket_files(con: duckdb.DuckDBPyConnection, species: str, buckets) -> list[str]:
    """The Parquet files holding these buckets of a species: naming them skips globbing and pruning."""
    root = store_of(con)
    return [str(bucket_file(root, species, int(b))) for b in sorted(set(buckets))]


def connect(
    store: str | os.PathLike,
    *,
    read_only: bool = True,
    threads: int | None = None,
    private: bool = False,
    setup: tuple[str, ...] = (),
    check_files: bool = True,
) -> duckdb.DuckDBPyConnection:
    """Open the store's catalog: a DuckDB connection with every table and view registered.

    Read-only by default, from any working directory. If the store was moved since it was built, the
    expression views are shadowed by temporary views pointing at its new place (run `hmba-db relocate`
    to fix the file itself). `private=True` opens the catalog in a database instance of its own (DuckDB
    otherwise shares one instance per file within a process), so settings made on it, such as the
    sandbox's, touch no other connection.

    Before it answers, every file the build wrote is checked: present, of its size, and (once per user and
    file, store/integrity.py) of its bytes; a damaged store raises StoreError naming the file.
    `check_files=False` skips that (a caller that has just checked the same snapshot).

    A URL (`https://...`, `s3://...`) opens a store published for it (`hmba-db publish`), read-only, over
    DuckDB's httpfs extension; `setup` statements run first (e.g. `CREATE SECRET` for a private bucket).

    Example:
        >>> con = connect("data/demo-store")  # doctest: +SKIP
        >>> con.sql("select species, count(*) from cells group by species").df()  # doctest: +SKIP
    """
    if is_url(store):
        from .remote import connect_url

        return connect_url(str(store), threads=threads, setup=setup)
    store = Path(store).absolute()
    path = store / CATALOG
    if not path.exists():
        raise HmbaError(
            f"{path}: not found; build the store first (hmba-db build RELEASE {store})", path=path
        )
    config: dict[str, str | bool | int | float | list[str]] = {"threads": threads} if threads else {}
    con = None
    try:
        if not private:
            try:
                con = duckdb.connect(str(path), read_only=read_only, config=config)
            except duckdb.ConnectionException as e:
                if "different configuration" not in str(e):
                    raise
                # Another library in this process (e.g. SQLAlchemy) holds the file with other settings.
        if con is None:
            con = duckdb.connect(":memory:", config=config)
            con.execute(
                f"attach {sql_literal(path)} as catalog ({'read_only' if read_only else 'read_write'})"
            )
            con.execute("use catalog")
    except duckdb.IOException as e:
        detail = " ".join(str(e).split())
        if "lock" not in detail.lower():
            raise StoreError(
                f"{path}: cannot open the catalog ({detail}); run hmba-db verify on the store, then "
                "rebuild it",
                path=path,
            ) from e
        holder = re.search(r"held in (.+?) \(PID (\d+)\)", detail)
        who = f" (pid {holder.group(2)}, {holder.group(1)})" if holder else ""
        raise HmbaError(
            f"{path}: another program{who} has the catalog open for writing; close it and retry (readers "
            "never need write access)",
            path=path,
        ) from e
    root = files_root(store)  # the current snapshot: where this build's files are
    files = integrity.listed(con)
    if files is not None and check_files:
        try:
            integrity.check(root, files)  # a missing, resized or changed file: an error, not an answer
        except StoreError:
            con.close()
            raise
    con.execute("set variable hmba_store = ?", [str(root)])  # analyses read the files directly
    # Parquet footers parsed once per file and process, not per query (a snapshot's files never change):
    # most of a warm one-gene query's time otherwise, with one footer per bucket and statistics file.
    con.execute("set parquet_metadata_cache = true")
    recorded = recorded_path(con)
    if recorded is None or Path(recorded) != root:
        names = None if files is None else [f for f, _, _ in files]
        for name in views_of(con):
            temp = view_sql(name, root, names).replace(
                f"create or replace view {name}", f"create or replace temp view {name}", 1
            )
            con.execute(temp)
    return con


# What the public functions take: a store's folder, a published store's URL, or an open connection.
StoreOrConnection = str | os.PathLike | duckdb.DuckDBPyConnection


def as_list(value, key: str) -> list[str] | None:
    """A list parameter (genes, species, cell labels) as a list: one given as a plain string is one item,
    not its letters (`to_anndata(store, "Marmoset", "GAD1")` asked for G, A, D and 1); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    try:
        return [str(v) for v in value]
    except TypeError:
        raise HmbaError(f"{key}: give a list of names, or one name as a string", key=key) from None


def first_rows(reader, max_rows: int):
    """At most max_rows rows of an Arrow batch reader as a table, and whether more existed: reads one batch
    past the limit at most, whatever the result's size, then closes the reader."""
    import pyarrow as pa

    batches, n = [], 0
    for batch in reader:
        batches.append(batch)
        n += batch.num_rows
        if n > max_rows:
            break
    reader.close()  # a half-read DuckDB result blocks its connection: the rest is never wanted
    table = pa.Table.from_batches(batches, schema=reader.schema)
    return table.slice(0, max_rows), n > max_rows
