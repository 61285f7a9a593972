"""The store on Apache Spark (local[2], bound to 127.0.0.1, no UI): every named query's answer equals
DuckDB's, a one-gene query prunes partitions, and the registered tables match the catalog's."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

import build_db
from build_db.access.spark import local_session, register, spark_schema, to_spark_sql
from build_db.cli import main
from build_db.errors import HmbaError
from build_db.store import schema as S


@pytest.fixture(scope="module")
def spark():
    session = local_session("hmba-db-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def registered(spark, tiny_store):
    return register(spark, tiny_store)


def test_register_gives_every_table_and_view(spark, registered, tiny_store):
    assert set(registered) >= {t.name for t in S.ALL}
    con = build_db.connect(tiny_store)
    for name in ("cells", "genes", "taxonomy_terms", "term_cell_counts", "licence", "cell_totals"):
        (n,) = con.execute(f"select count(*) from {name}").fetchall()[0]
        assert spark.table(name).count() == n, name
    # The same columns and the same types as DuckDB's (gene_bucket is an int in both).
    for name in (
        "expression",
        "term_gene_stats",
        "term_gene_means",
        "expression_annotated",
        "donor_group_gene_stats",
    ):
        assert spark.table(name).columns == [r[0] for r in con.execute(f"describe {name}").fetchall()], name
    fields = {f.name: f.dataType.simpleString() for f in spark.table("expression_counts").schema.fields}
    assert fields == {
        "species": "string",
        "gene_bucket": "int",
        "gene_index": "int",
        "cell_index": "int",
        "raw_count": "int",
    }
    # Zeros filled in Spark as in DuckDB: every Subclass, the same means.
    q = (
        "select term_label, has_cells, n_expressing, mean_log2_cpm_all_cells from term_gene_means "
        "where species = 'Human' and gene_symbol = 'DRD1' and level = 'Subclass' order by term_label"
    )
    pd.testing.assert_frame_equal(spark.sql(q).toPandas(), con.execute(q).df(), check_dtype=False)
    # Every non-zero: the sums reconcile with DuckDB's.
    q = "select species, count(*) as n, sum(raw_count) as total from expression group by 1 order by 1"
    local = con.execute(q).df()
    remote = spark.sql(q).toPandas()
    pd.testing.assert_frame_equal(remote, local, check_dtype=False)


@pytest.mark.parametrize("name", list(build_db.list_queries()))
def test_every_named_query_equals_duckdb(spark, registered, tiny_store, name):
    q = build_db.list_queries()[name]
    on_spark = build_db.run_query(tiny_store, name, engine="spark", spark=spark, **q.example)
    on_duckdb = build_db.run_query(tiny_store, name, **q.example)
    assert len(on_duckdb) > 0
    pd.testing.assert_frame_equal(
        on_spark.reset_index(drop=True), on_duckdb.reset_index(drop=True), check_dtype=False, rtol=1e-9
    )
    assert on_spark.attrs["engine"] == "spark"


def test_one_gene_query_prunes_partitions(spark, registered, tiny_store):
    con = build_db.connect(tiny_store)
    index, bucket = con.execute(
        "select gene_index, gene_bucket from genes where species = 'Human' and gene_symbol = 'DRD1'"
    ).fetchall()[0]
    duck = (
        f"select count(*) from expression_counts where species = 'Human' and gene_bucket = {bucket} "
        f"and gene_index = {index}"
    )
    spark.conf.set("spark.sql.adaptive.enabled", "false")  # the scan node as planned, with its metrics
    try:
        df = spark.sql(to_spark_sql(duck))
        assert df.collect()[0][0] == con.execute(duck).fetchall()[0][0]
        plan = df._jdf.queryExecution().executedPlan()
        text = plan.toString()
        filters = text.split("PartitionFilters: [", 1)[1].split("]", 1)[0]
        assert "species" in filters and "gene_bucket" in filters
        scans = [n for n in _nodes(plan) if n.nodeName().startswith("Scan parquet")]
        read = sum(n.metrics().apply("numFiles").value() for n in scans)
    finally:
        spark.conf.unset("spark.sql.adaptive.enabled")
    n_files = len(list(tiny_store.glob("snapshots/*/expression/*/*/*.parquet")))
    assert read == 1 < n_files


def _nodes(plan):
    out, todo = [], [plan]
    while todo:
        node = todo.pop()
        out.append(node)
        children = node.children()
        todo += [children.apply(i) for i in range(children.size())]
    return out


def test_query_command_on_spark(tiny_store):
    r = CliRunner().invoke(
        main,
        [
            "query",
            str(tiny_store),
            "gene_set_by_level",
            "--param",
            "genes=DRD1",
            "--engine",
            "spark",
            "--format",
            "csv",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == "term_name,gene_symbol,mean_log2_cpm,fraction_expressing,n_cells"
    shown = CliRunner().invoke(
        main,
        ["query", str(tiny_store), "dotplot", "--param", "genes=DRD1", "--engine", "spark", "--show-sql"],
    )
    # Translated by sqlglot: DuckDB sorts NULLs last by default, Spark first, so the order is spelled out.
    assert shown.exit_code == 0 and "term_order NULLS LAST" in shown.output


def test_spark_errors_are_one_line(spark, tmp_path, tiny_store, monkeypatch):
    with pytest.raises(HmbaError, match="build.json: not found"):
        register(spark, tmp_path)
    old = tmp_path / "old"
    shutil.copytree(tiny_store, old, symlinks=True)
    for p in old.glob("snapshots/*/tables/term_cell_counts.parquet"):
        p.unlink()
    with pytest.raises(HmbaError, match="term_cell_counts.parquet: missing; .*rebuild"):
        register(spark, old)
    with pytest.raises(HmbaError, match="engine='nope'"):
        build_db.run_query(tiny_store, "dotplot", engine="nope", genes="DRD1")
    # No Java: one line saying what to install (checked before Spark starts a JVM).
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HmbaError, match="Spark needs Java 17"):
        local_session()
    assert os.environ["PATH"] == str(tmp_path)


def test_schemas_cover_every_column():
    for t in (*S.TABLES, *S.VIEWS):
        assert spark_schema(t).count("`") == 2 * len(t.columns)
