"""`make demo`: the official notebook's question answered from a freshly built store, and by the old way.

Mean log2(CPM+1) of SLC17A6, SLC32A1, PTPRC, PLP1, AQP4, DRD1, DRD2 per Group, for each species, rows in
taxonomy order (DATASET.md section 5, workload 3). The store answers with one DuckDB query that reads only
the seven genes' buckets and row groups; the baseline scans the whole log2 h5ad as the notebooks do.
Both answers are printed with their times and must agree.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from . import release as R
from .errors import HmbaError
from .scan import mean_log2_by_term

NOTEBOOK_GENES = ["SLC17A6", "SLC32A1", "PTPRC", "PLP1", "AQP4", "DRD1", "DRD2"]


def store_mean_log2_by_group(
    con: duckdb.DuckDBPyConnection, store: Path, release: Path, species: str, symbols: list[str]
) -> pd.DataFrame:
    """scan.mean_log2_by_term(level="Group")'s answer, from the store (first identifier of a symbol)."""
    genes = con.sql(
        "select gene_symbol, min(gene_index) as gene_index, arg_min(gene_bucket, gene_index) as gene_bucket "
        "from read_parquet(?) where gene_symbol in (select unnest(?::varchar[])) group by gene_symbol",
        params=[str(store / "tables" / "gene_buckets" / f"{species}.parquet"), symbols],
    ).df()
    missing = sorted(set(symbols) - set(genes.gene_symbol))
    if missing:
        raise HmbaError(f"{species}: no gene with symbol {', '.join(missing)} in the store")
    # Literal gene and bucket lists let DuckDB prune folders (gene_bucket) and row groups (gene_index).
    index_list = ", ".join(str(int(i)) for i in genes.gene_index)
    bucket_list = ", ".join(str(int(b)) for b in sorted(set(genes.gene_bucket)))
    tax = R.taxonomy_path
    sql = f"""
        with groups as (
            select m.cluster_alias, m.cluster_annotation_term_name as grp, t.term_order
            from read_csv(?, all_varchar = true) m
            join read_csv(?, all_varchar = true) t on t.label = m.cluster_annotation_term_label
            where m.cluster_annotation_term_set_name = 'Group'
        ),
        cells as (
            select c.cell_index, c.total_counts, g.grp, g.term_order::int as term_order
            from read_parquet(?) c
            join read_csv(?, all_varchar = true) mem on mem.cell_label = c.cell_label
            join groups g on g.cluster_alias = mem.cluster_alias
        ),
        expr as (
            select gene_index, cell_index, raw_count
            from read_parquet(?, hive_partitioning = true, hive_types = {{'gene_bucket': int}})
            where gene_bucket in ({bucket_list}) and gene_index in ({index_list})
        ),
        sums as (
            select c.grp, e.gene_index, sum(log2(e.raw_count / c.total_counts * 1e6 + 1)) as s
            from expr e join cells c using (cell_index)
            group by all
        ),
        sizes as (
            select grp, any_value(term_order) as term_order, count(*) as n_cells from cells group by grp
        )
        select z.grp as "group", z.term_order, z.n_cells, s.gene_index, coalesce(s.s, 0) / z.n_cells as mean
        from sizes z left join sums s using (grp)
    """
    rel = str(release)
    long = con.sql(
        sql,
        params=[
            f"{rel}/{tax(R.CLUSTER_MEMBERSHIP.name)}",
            f"{rel}/{tax(R.TERM.name)}",
            str(store / "tables" / "cell_totals" / f"{species}.parquet"),
            f"{rel}/{tax(R.CELL_MEMBERSHIP.name)}",
            str(store / "expression" / f"species={species}" / "*" / "*.parquet"),
        ],
    ).df()
    symbol_of = dict(zip(genes.gene_index, genes.gene_symbol, strict=True))
    long["gene"] = long.gene_index.map(symbol_of)
    groups = long.drop_duplicates("group").sort_values("term_order").set_index("group")
    wide = long.dropna(subset=["gene"]).pivot_table(
        index="group", columns="gene", values="mean", aggfunc="sum"
    )
    wide = wide.reindex(index=groups.index, columns=symbols).fillna(
        0.0
    )  # groups expressing none of the genes
    wide["n_cells"] = groups["n_cells"]
    return wide


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m build_db.demo RELEASE STORE", file=sys.stderr)
        return 2
    release, store = Path(argv[0]), Path(argv[1])
    con = duckdb.connect()
    species = [s for s in R.SPECIES if (store / "tables" / "cell_totals" / f"{s}.parquet").exists()]
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 100)
    for s in species:
        store_mean_log2_by_group(con, store, release, s, NOTEBOOK_GENES)  # warm the caches once
        t0 = time.perf_counter()
        table = store_mean_log2_by_group(con, store, release, s, NOTEBOOK_GENES)
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        scanned = mean_log2_by_term(release, s, NOTEBOOK_GENES, "Group")
        scan_took = time.perf_counter() - t0
        diff = np.abs(
            table.loc[scanned.index, NOTEBOOK_GENES].to_numpy() - scanned[NOTEBOOK_GENES].to_numpy()
        ).max()
        print(
            f"\n{s}: mean log2(CPM+1) per Group, {len(table)} groups: store query {took * 1000:.0f} ms, "
            f"h5ad scan {scan_took * 1000:.0f} ms; answers agree to {diff:.1e}"
        )
        print(table.round(2).to_string())
        if not diff < 1e-4:
            raise HmbaError(f"{s}: the store and the h5ad scan disagree by {diff}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
