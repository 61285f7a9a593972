"""The store on Apache Spark: its tables and views registered in a SparkSession, and the named queries run
there through sqlglot (one translation layer: queries/*.sql and sql/*.sql are the only SQL we write).

    from build_db.spark import register
    register(spark, "s3a://my-bucket/hmba-store")     # or a local path, file://, hdfs://
    spark.sql("select * from term_gene_stats where species = 'Human' and gene_symbol = 'DRD1'")

The Parquet files are read with explicit schemas (from store/schema.py), so Spark's types match DuckDB's
(gene_bucket is an int in both) whatever partition discovery would infer. The expression table keeps its
species=/gene_bucket= folders, so a filter on them prunes files the way DuckDB does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pandas as pd
import sqlglot
from sqlglot import exp

from ..errors import HmbaError
from ..store import schema as S
from ..store.catalog import BY_CELL, VIEW_ORDER, view_sql
from ..store.paths import BUILD_JSON, SNAPSHOTS, TABLES, is_url

SPARK_TYPES = {
    "VARCHAR": "string",
    "INTEGER": "int",
    "BIGINT": "bigint",
    "DOUBLE": "double",
    "BOOLEAN": "boolean",
    "SMALLINT": "smallint",
    "FLOAT": "float",
}
# Tables written as Parquet under tables/ (PARQUET_TABLES by the metadata stage, the rest by the catalog).
FILE_TABLES = (*S.PARQUET_TABLES, S.TERM_CELL_COUNTS, S.STORE_INFO, S.STORE_FILES, S.LICENCE)
FILES_PREFIX = "hmba_files_"  # the temporary views of the views' Parquet folders


def spark_schema(table: S.Table) -> str:
    """A table's columns as a Spark DDL schema string."""
    out = []
    for c in table.columns:
        if c.type not in SPARK_TYPES:
            raise HmbaError(f"column {table.name}.{c.name}: no Spark type for DuckDB {c.type}")
        out.append(f"`{c.name}` {SPARK_TYPES[c.type]}")
    return ", ".join(out)


def local_session(app_name: str = "hmba-db"):
    """A SparkSession on this machine (local[2]) bound to 127.0.0.1, without its web UI; a one-line error
    when pyspark or Java is missing."""
    import os
    import shutil

    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise HmbaError("pyspark is not installed; pip install 'hmba-db[spark]' (or pyspark>=4)") from e
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise HmbaError(
            "Spark needs Java 17 or later and none was found (no java on PATH, JAVA_HOME unset); install a "
            "JRE (Debian: apt-get install openjdk-17-jre-headless) or set JAVA_HOME"
        )
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    try:
        return (
            SparkSession.builder.master("local[2]")
            .appName(app_name)
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )
    except Exception as e:  # noqa: BLE001 - py4j and Java failures come as many types
        first = " ".join(str(e).split())[:300]
        raise HmbaError(f"cannot start Spark (local[2]): {first}; check Java (java -version)") from e


def _uri(store) -> str:
    """A Hadoop URI for the store: as given when it is one, else the local path as file://."""
    return str(store).rstrip("/") if is_url(str(store)) else Path(store).absolute().as_uri()


def _hadoop(spark, uri: str):
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def _exists(spark, uri: str) -> bool:
    path, fs = _hadoop(spark, uri)
    return bool(fs.exists(path))


def snapshot_uri(spark, store) -> str:
    """Where the store's current files are: STORE/snapshots/<build id> as build.json names it (links are
    files once a store is copied to object storage), or the store itself for one built before snapshots."""
    uri = _uri(store)
    if not _exists(spark, f"{uri}/{BUILD_JSON}"):
        raise HmbaError(
            f"{uri}/{BUILD_JSON}: not found; is {uri} an hmba-db store (hmba-db build)?", path=uri
        )
    text = "\n".join(r.value for r in spark.read.text(f"{uri}/{BUILD_JSON}", wholetext=True).collect())
    try:
        build_id = json.loads(text).get("build_id")
    except ValueError as e:
        raise HmbaError(f"{uri}/{BUILD_JSON}: not JSON ({e}); copy the store again", path=uri) from e
    snap = f"{uri}/{SNAPSHOTS}/{build_id}"
    return snap if build_id and _exists(spark, snap) else uri


def register(spark, store, *, views: bool = True) -> list[str]:
    """Register the store's tables and views as temporary views of `spark`; returns their names.

    `store`: a local path or a Hadoop file-system URI (`s3a://`, `hdfs://`, `file://`, ...).

    Example:
        >>> register(spark, "s3a://my-bucket/hmba-store")  # doctest: +SKIP
        ['cells', 'genes', ..., 'term_gene_stats', ...]
    """
    return _register_at(spark, snapshot_uri(spark, store), views)


def _register_at(spark, root: str, views: bool = True) -> list[str]:
    names = []
    for t in FILE_TABLES:
        path = f"{root}/{TABLES}/{t.name}.parquet"
        if not _exists(spark, path):
            raise HmbaError(
                f"{path}: missing; stores built before hmba-db wrote it need a rebuild (hmba-db build)",
                path=path,
            )
        spark.read.schema(spark_schema(t)).parquet(path).createOrReplaceTempView(t.name)
        names.append(t.name)
    spark.sql("select species, cell_index, total_counts from cells").createOrReplaceTempView("cell_totals")
    names.append("cell_totals")
    if not views:
        return names
    by_name = {v.name: v for v in S.VIEWS}
    for name in VIEW_ORDER:
        if name in BY_CELL and not _exists(spark, f"{root}/expression_by_cell"):
            continue  # a store built without the cell-major copy (hmba-db build --no-cell-major)
        sql = view_sql(name, Path("/{store}"))
        sql = _with_file_views(spark, sql, root, by_name[name])
        select = sqlglot.parse_one(sql, read="duckdb").expression
        spark.sql(f"create or replace temporary view {name} as {select.sql(dialect='spark')}")
        names.append(name)
    return names


def _with_file_views(spark, sql: str, root: str, view: S.Table) -> str:
    """Replace a view's `read_parquet('/{store}/<folder>/...', ...)` by a temporary view of that folder
    read with the view's schema (hive partitions included)."""
    pattern = re.compile(r"read_parquet\(\s*'/\{store\}/([^']*)'.*?\)\s*(?=\n|$)", re.S)
    m = pattern.search(sql)
    if m is None:
        return sql
    folder = m.group(1).split("/*")[0]
    files = f"{FILES_PREFIX}{folder.rsplit('/', 1)[-1]}"
    (
        spark.read.schema(spark_schema(view))
        .option("basePath", f"{root}/{folder}")
        .parquet(f"{root}/{folder}")
        .createOrReplaceTempView(files)
    )
    return sql[: m.start()] + files + sql[m.end() :]


# --- the named queries on Spark ---

_REGISTERED: dict[tuple[str, str], duckdb.DuckDBPyConnection] = {}


def resolver(spark, store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB holding the small tables the parameters are resolved against (the genes, which
    also say the built species, and the taxonomy terms), read from Spark once per session and store."""
    # Per SparkContext (a stopped session's object id may come back) and store.
    key = (spark.sparkContext.applicationId, _uri(store))
    if key not in _REGISTERED:
        root = snapshot_uri(spark, store)  # build.json read once (a Spark job)
        _register_at(spark, root)
        con = duckdb.connect()
        for t in ("genes", "taxonomy_terms", "store_info"):
            con.register(f"_{t}", spark.table(t).toArrow())
            con.execute(f"create table {t} as select * from _{t}")
            con.unregister(f"_{t}")
        con.execute("set variable hmba_store = ?", [root])
        _REGISTERED[key] = con
    return _REGISTERED[key]


def to_spark_sql(duckdb_sql: str) -> str:
    """A rendered query (DuckDB SQL, literals in place) as Spark SQL; a `materialized` CTE (a DuckDB
    planning hint, queries/README.md) as a plain one, which is all Spark's grammar has."""
    tree = sqlglot.parse_one(duckdb_sql, read="duckdb")
    for cte in tree.find_all(exp.CTE):
        cte.set("materialized", None)
    return tree.sql(dialect="spark", pretty=True)


def execute_spark(spark, rendered) -> pd.DataFrame:
    """Run a rendered query (queries.render) on Spark; its errors become one line."""
    sql = to_spark_sql(rendered.sql)
    name = rendered.query.name
    try:
        df = spark.sql(sql).toPandas()
    except Exception as e:  # noqa: BLE001 - Spark's analysis and execution errors
        first = " ".join(str(e).split())[:400]
        raise HmbaError(f"query {name} failed on Spark: {first}", key=name) from e
    df.attrs.update(query=name, sql=sql, notes=rendered.notes, engine="spark")
    return df
