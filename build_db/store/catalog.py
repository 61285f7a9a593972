"""The catalog: `STORE/catalog.duckdb`, the one file every client opens.

Small tables are stored in it (cells, genes, taxonomy, ...); the expression views read the Parquet files
by absolute path, because DuckDB resolves relative paths against the working directory, not the
database file: a BI tool opening the catalog from anywhere finds the data with no init statement. A
moved store is repaired by `hmba-db relocate` (rewrites the views) or, read-only, by connect() (shadows
them with temporary views: `access/connect.py`). The file is written in a storage version DuckDB 1.1 and
later can open, because BI drivers embed their own 1.x DuckDB.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
from pathlib import Path

import duckdb

from ..errors import HmbaError
from ..release import layout as R
from . import integrity
from . import schema as S
from .paths import CATALOG, files_root, is_url, table_file

STORAGE_VERSION = "v1.1.0"  # readable by DuckDB >= 1.1 (tested with 1.1.3), which BI drivers embed
CATALOG_ONLY = ("term_cell_counts", "store_info", "store_files", "licence")  # tables the catalog computes
SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
BY_CELL = ("expression_by_cell", "expression_annotated_by_cell")  # views over the cell-major copy
# Dependencies first; the *_sums views read Parquet files, the *_stats views read them.
VIEW_ORDER = (
    "expression_counts",
    "expression_by_cell",
    "expression",
    "expression_annotated",
    "expression_annotated_by_cell",
    "term_gene_sums",
    "region_group_gene_sums",
    "donor_group_gene_sums",
    "term_gene_stats",
    "term_gene_means",
    "region_group_gene_stats",
    "donor_group_gene_stats",
)


def views_of(con: duckdb.DuckDBPyConnection, database: str | None = None) -> list[str]:
    """The VIEW_ORDER views a catalog has, in that order: a store built by an older hmba-db lacks the newer
    ones (expression_by_cell), and repairing or publishing it must not ask for their files."""
    where = "not temporary" + (f" and database_name = {sql_literal(database)}" if database else "")
    have = {r[0] for r in con.execute(f"select view_name from duckdb_views() where {where}").fetchall()}
    return [name for name in VIEW_ORDER if name in have]


def sql_literal(value: str | Path) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def view_sql(name: str, store: Path | str, files: list[str] | None = None) -> str:
    """A view's SQL from sql/<name>.sql with {store} replaced by the store's absolute path (or a URL).

    With `files` (the store's files, relative paths: `store_files`), each `'{store}/<glob>'` becomes the
    list of the files it matches, named one by one: DuckDB then refuses a query when one is missing, where
    a glob would read the others and answer short."""
    path = SQL_DIR / f"{name}.sql"
    if not path.exists():
        raise HmbaError(f"{path}: missing; the package's sql/ folder is incomplete: reinstall hmba-db")
    text = path.read_text()
    if "{gene_stats_measures}" in text:  # the three *_gene_stats views' shared columns (sql/shared/)
        shared = (SQL_DIR / "shared" / "gene_stats_measures.sql").read_text()
        measures = "\n".join(ln for ln in shared.splitlines() if not ln.startswith("--")).strip()
        text = text.replace("{gene_stats_measures}", measures)
    root = str(store).rstrip("/") if is_url(store) else str(Path(store).absolute())
    if files is not None:

        def listing(m: re.Match) -> str:
            chosen = [f for f in files if fnmatch.fnmatchcase(f, m.group(1))]
            if not chosen:
                raise HmbaError(f"{root}/{m.group(1)}: no files; the store is incomplete: rebuild it")
            return "[" + ", ".join(sql_literal(f"{root}/{f}") for f in chosen) + "]"

        text = re.sub(r"'\{store\}/([^']*)'", listing, text)
    return text.replace("{store}", root.replace("'", "''"))


@contextlib.contextmanager
def _bindable(final: Path, files_at: Path):
    """DuckDB reads a view's files when it creates the view. While a new store sits in staging, make the
    final path resolve: a temporary symlink if nothing is there yet (a rebuild binds to the old store,
    whose files have the same schema)."""
    link, made = None, []
    if final != files_at and not final.exists() and not final.is_symlink():
        made = [p for p in reversed(final.parents) if not p.exists()]
        final.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(files_at, final, target_is_directory=True)
        link = final
    try:
        yield
    finally:
        if link is not None:
            link.unlink()
        for p in reversed(made):  # folders made only for the link: a failed build leaves nothing behind
            with contextlib.suppress(OSError):
                p.rmdir()


def _taxonomy(info: dict) -> tuple[str, str | None]:
    """The taxonomy directory and version a build recorded ("<dir> <version>"); 20250630's before."""
    directory, _, version = info.get("taxonomy", "").partition(" ")
    return (directory or R.TAXONOMY_DIR), (version or None)


def write_catalog(files_at: Path, final: Path, info: dict[str, str]) -> bool:
    """Create `files_at/catalog.duckdb` from `files_at/tables/*.parquet`, views pointing at `final`.

    Returns False when the views had to be bound to `files_at` instead: the caller relocates them once
    the files are at `final`."""
    files_at, final = Path(files_at).absolute(), Path(final).absolute()
    path = files_at / CATALOG
    path.unlink(missing_ok=True)
    con = duckdb.connect()
    con.execute(f"attach {sql_literal(path)} as catalog (storage_version '{STORAGE_VERSION}')")
    con.execute("use catalog")
    for t in S.PARQUET_TABLES:
        cols = ", ".join(f"cast({c.name} as {c.type}) as {c.name}" for c in t.columns)
        order = (
            " order by species" + (", cell_index" if t is S.CELLS else ", gene_index" if t is S.GENES else "")
            if t in (S.CELLS, S.GENES)
            else ""
        )
        con.execute(
            f"create table {t.name} as select {cols} "
            f"from read_parquet({sql_literal(table_file(files_at, t.name))})"
            f"{order}"
        )
    con.execute(
        "create table cell_totals as select species, cell_index, total_counts from cells "
        "order by species, cell_index"
    )
    _term_cell_counts(con)
    con.execute("create table store_info (key varchar, value varchar)")
    con.execute("create table licence (key varchar, value varchar)")
    con.executemany(
        "insert into licence values (?, ?)",
        list(R.terms_of_use(info.get("release_version", ""), *_taxonomy(info)).items()),
    )
    bound_to = final
    # Every data file with its size and CRC-32: the views name them, readers check them (integrity.py).
    # (Not the catalog's own tables copied to Parquet below for Spark: written from the catalog, after this.)
    derived = {table_file(files_at, t).relative_to(files_at).as_posix() for t in CATALOG_ONLY}
    files = integrity.describe(files_at, [f for f in integrity.list_files(files_at) if f not in derived])
    integrity.write_table(con, files)
    names = [f for f, _, _ in files]
    # A store built without the cell-major copy has no expression_by_cell folder, so no view over it.
    views = [v for v in VIEW_ORDER if v not in BY_CELL or (files_at / "expression_by_cell").is_dir()]
    try:
        with _bindable(final, files_at):
            for name in views:
                con.execute(view_sql(name, final, names))
    except duckdb.IOException:
        # The store being replaced lacks files this version writes (built by an older hmba-db): bind to
        # the staging directory and record that, so the builder relocates the views after publishing
        # (and connect() shadows them meanwhile).
        bound_to = files_at
        for name in views:
            con.execute(view_sql(name, files_at, names))
    rows = {**info, "store_path": str(bound_to)}
    con.executemany("insert into store_info values (?, ?)", list(rows.items()))
    for name in CATALOG_ONLY:  # as Parquet too, for engines that do not read catalog.duckdb (Spark)
        target = sql_literal(table_file(files_at, name))
        con.execute(f"copy {name} to {target} (format parquet)")
    write_comments(con)
    con.execute("use memory")
    con.execute("detach catalog")
    con.close()
    return bound_to == final


def _term_cell_counts(con: duckdb.DuckDBPyConnection) -> None:
    per_level = " union all ".join(
        f"select species, '{lv}' as level, {i} as level_order, {p}_label as term_label, "
        f"{p}_name as term_name, {p}_order as term_order, {p}_color as color, total_counts "
        f"from cells where {p}_label is not null"
        for i, (lv, p) in enumerate(S.LEVEL_PREFIX.items())
    )
    con.execute(
        "create table term_cell_counts as "
        "select species, level, level_order, term_label, term_name, term_order, color, "
        "count(*)::bigint as n_cells, sum(total_counts)::bigint as sum_total_counts "
        f"from ({per_level}) group by all order by species, level_order, term_order"
    )


def write_comments(con: duckdb.DuckDBPyConnection) -> None:
    """The descriptions of schema.py as COMMENT ON, for the tables, views and columns the current database
    has (a store built by an older hmba-db lacks some)."""
    have = set(
        con.execute(
            "select table_name, column_name from duckdb_columns() "
            "where database_name = current_database() and schema_name = 'main'"
        ).fetchall()
    )
    for t in S.ALL:
        if not any(name == t.name for name, _ in have):
            continue
        kind = "view" if t.kind == "view" else "table"
        con.execute(f"comment on {kind} {t.name} is {sql_literal(t.description)}")
        for c in t.columns:
            if (t.name, c.name) in have:
                con.execute(f"comment on column {t.name}.{c.name} is {sql_literal(c.description)}")


def relocate(store: Path) -> tuple[str, str]:
    """Point the catalog's views at where the store is now; returns (old path, new path).

    Example:
        >>> relocate(Path("/data/moved/store"))  # doctest: +SKIP
        ('/data/old/store', '/data/moved/store')
    """
    store = Path(store).absolute()
    path = store / CATALOG
    if not path.exists():
        raise HmbaError(f"{path}: not found; {store} is not an hmba-db store (run hmba-db build)", path=path)
    root = files_root(store)
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as e:
        raise HmbaError(
            f"{path}: cannot open for writing ({e}); close other programs using the store and retry",
            path=path,
        ) from e
    try:
        old = recorded_path(con)
        files = integrity.listed(con)
        for name in views_of(con):
            con.execute(view_sql(name, root, None if files is None else [f for f, _, _ in files]))
        write_comments(con)
        con.execute("update store_info set value = ? where key = 'store_path'", [str(root)])
    finally:
        con.close()
    return old or "", str(root)


def recorded_path(con: duckdb.DuckDBPyConnection) -> str | None:
    rows = con.execute("select value from store_info where key = 'store_path'").fetchall()
    return rows[0][0] if rows else None
