"""Per-cell-type statistics: one pass over the expression store into additive per-(group, gene) sums.

For each species and gene bucket a worker reads the bucket's Parquet file in batches and accumulates, per
(gene, cluster), (gene, Group x region) and (gene, Group x donor): the cells expressing the gene, the sum
of raw counts, the sum and sum of squares of log2(CPM + 1), and the cells with CPM > 1 and CPM >= 1 (the
fields of MapMyCells' precomputed statistics, so the two can be compared). Cluster sums are then summed up
the taxonomy, so a parent term's row is exactly the sum of its children's at every level.

Zeros contribute nothing to any of these sums, so only non-zero contributions are stored: a (term, gene)
pair with no expressing cell has no row, and every row carries the group's cell count (n_cells) so that
means and variances include the zeros. Cells without a cluster (about a third) are in no group.

Memory per worker: one batch of rows plus dense accumulators of genes-in-bucket x groups x 6 fields
(1,024 x 1,435 x 6 doubles = 70 MB at the largest), whatever the dataset's size.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import release as R
from .errors import HmbaError
from .progress import Reporter, run_pool

AGGREGATES = "aggregates"
BATCH_ROWS = 4_000_000  # ~60 bytes of temporaries per row: ~250 MB per worker
FIELDS = ("n_expressing", "sum_raw", "sum_log2_cpm", "sumsq_log2_cpm", "n_cpm_gt_1", "n_cpm_ge_1")
FLOAT_FIELDS = ("sum_log2_cpm", "sumsq_log2_cpm")
# The three statistics tables: name -> the key columns of a group (besides species and gene_index).
KEYS = {
    "term_gene_sums": ("level", "term_label"),
    "region_group_gene_sums": ("group_label", "region_of_interest_label"),
    "donor_group_gene_sums": ("group_label", "donor_label"),
}
# Small row groups: a gene has at most a few thousand rows, so a lookup decodes little beyond them.
ROW_GROUP = 16_384


@dataclass
class Groups:
    """How one species' cells fall into groups: per-cell codes (saved to `codes`, an .npz the workers
    load) and the labels of each code."""

    species: str
    codes: Path
    clusters: list[str]  # cluster labels in taxonomy order; code = position
    level_terms: dict[str, list[str]]  # level -> term labels in taxonomy order
    level_of_cluster: dict[str, np.ndarray]  # level -> per cluster, the position of its term
    region_groups: list[tuple[str, str]]  # (group_label, region_of_interest_label) per code
    donor_groups: list[tuple[str, str]]  # (group_label, donor_label) per code
    cells: dict[str, np.ndarray]  # grouping -> cells per code
    counts: dict[str, np.ndarray]  # grouping -> sum of the cells' total counts per code (pseudobulk CPM)


def _codes(pairs: list[tuple]) -> tuple[list[tuple], np.ndarray]:
    """Distinct tuples in sorted order and, per input tuple, its position (-1 where any part is NULL)."""
    keys = sorted({p for p in pairs if all(x is not None for x in p)})
    at = {k: i for i, k in enumerate(keys)}
    return keys, np.array([at.get(p, -1) for p in pairs], dtype=np.int32)


def plan_groups(staging: Path, species: str, work: Path) -> Groups:
    """Read the species' cells from the metadata step's cells table and assign every cell its codes."""
    path = Path(staging) / "tables" / "cells.parquet"
    level_cols = ", ".join(f"{lv.lower()}_label, {lv.lower()}_order" for lv in R.LEVELS)
    con = duckdb.connect()
    try:
        cells = con.execute(
            f"select cell_index, total_counts, region_of_interest_label, donor_label, {level_cols} "
            "from read_parquet(?) where species = ? order by cell_index",
            [str(path), species],
        ).df()
    finally:
        con.close()
    n = len(cells)
    if n == 0 or not np.array_equal(cells.cell_index.to_numpy(), np.arange(n)):
        raise HmbaError(f"{path}: {species} cells are not numbered 0..n-1; rebuild the store")
    cells = cells.astype(object).where(cells.notna(), None)
    assigned = cells[cells.cluster_label.notna()]
    # Taxonomy order for every level, from the cells' own term orders.
    level_terms, level_of_cluster = {}, {}
    clusters = list(assigned.drop_duplicates("cluster_label").sort_values("cluster_order").cluster_label)
    cluster_pos = {c: i for i, c in enumerate(clusters)}
    for lv in R.LEVELS:
        p = lv.lower()
        terms = list(assigned.drop_duplicates(f"{p}_label").sort_values(f"{p}_order")[f"{p}_label"])
        if p == "cluster":
            level_terms[lv], level_of_cluster[lv] = terms, np.arange(len(terms))
            continue
        pairs = assigned[["cluster_label", f"{p}_label"]].drop_duplicates()
        if pairs.cluster_label.duplicated().any():
            bad = pairs[pairs.cluster_label.duplicated(keep=False)].iloc[0]
            raise HmbaError(
                f"{path}: cluster {bad.cluster_label} falls in two {lv} terms; the taxonomy must be a tree "
                "(check cluster_to_cluster_annotation_membership.csv)"
            )
        at = {t: i for i, t in enumerate(terms)}
        mapping = np.empty(len(clusters), dtype=np.int64)
        for c, t in zip(pairs.cluster_label, pairs[f"{p}_label"], strict=True):
            mapping[cluster_pos[c]] = at[t]
        level_terms[lv], level_of_cluster[lv] = terms, mapping
    cluster_code = np.array([cluster_pos.get(c, -1) for c in cells.cluster_label], dtype=np.int32)
    groups = list(cells.group_label)
    region_groups, rg = _codes(list(zip(groups, cells.region_of_interest_label, strict=True)))
    donor_groups, dg = _codes(list(zip(groups, cells.donor_label, strict=True)))
    totals = cells.total_counts.to_numpy(np.int64)
    work.mkdir(parents=True, exist_ok=True)
    codes = work / f"{species}.npz"
    by = {"term": cluster_code, "region_group": rg, "donor_group": dg}
    np.savez(codes, totals=totals, **by)
    sizes = {"term": len(clusters), "region_group": len(region_groups), "donor_group": len(donor_groups)}
    return Groups(
        species,
        codes,
        clusters,
        level_terms,
        level_of_cluster,
        region_groups,
        donor_groups,
        {k: np.bincount(c[c >= 0], minlength=sizes[k]) for k, c in by.items()},
        {k: np.bincount(c[c >= 0], weights=totals[c >= 0], minlength=sizes[k]) for k, c in by.items()},
    )


def _accumulate(src: Path, lo: int, n_genes: int, codes: dict, sizes: dict, q) -> dict[str, np.ndarray]:
    """Dense sums per grouping: {name: array (fields, n_genes, n_groups)}."""
    totals = codes["totals"]
    acc = {name: np.zeros((len(FIELDS), n_genes * m)) for name, m in sizes.items()}
    for batch in pq.ParquetFile(src).iter_batches(
        batch_size=BATCH_ROWS, columns=["gene_index", "cell_index", "raw_count"]
    ):
        g = batch.column("gene_index").to_numpy().astype(np.int64) - lo
        c = batch.column("cell_index").to_numpy()
        v = batch.column("raw_count").to_numpy().astype(np.int64)
        tot = totals[c]
        # The expression view's formula, in the same order of operations, so the sums match it.
        log2 = np.log2(v / tot * 1e6 + 1)
        scaled = v * 1_000_000  # CPM compared with 1 in integers: exact at CPM == 1
        weights = (None, v, log2, log2 * log2, scaled > tot, scaled >= tot)
        for name, m in sizes.items():
            k = codes[name][c]
            keep = k >= 0
            key = g[keep] * m + k[keep]
            a = acc[name]
            for i, w in enumerate(weights):
                a[i] += np.bincount(
                    key, weights=None if w is None else w[keep].astype(np.float64), minlength=n_genes * m
                )
        if q is not None:
            q.put(len(v))
    return {name: a.reshape(len(FIELDS), n_genes, sizes[name]) for name, a in acc.items()}


def _table(keys: dict[str, list], bucket: int, gene: np.ndarray, group: tuple, sums: np.ndarray) -> pa.Table:
    cols = {k: pa.array(v, pa.string()).dictionary_encode() for k, v in keys.items()}
    cols["gene_bucket"] = pa.array(np.full(len(gene), bucket, dtype=np.int32))
    cols["gene_index"] = pa.array(gene.astype(np.int32))
    cols["n_cells"] = pa.array(np.rint(group[0]).astype(np.int64))
    cols["sum_total_counts"] = pa.array(np.rint(group[1]).astype(np.int64))
    for i, f in enumerate(FIELDS):
        cols[f] = pa.array(sums[i] if f in FLOAT_FIELDS else np.rint(sums[i]).astype(np.int64))
    return pa.table(cols)


def _part(work: Path, table: str, species: str, level: str | None, bucket: int) -> Path:
    return work / "parts" / table / species / (level or "all") / f"{bucket:04d}.parquet"


def final_file(store: Path, table: str, species: str, level: str | None = None) -> Path:
    """One file per species (and level): `aggregates/<table>/species=S[/level=L]/part-0.parquet`."""
    d = Path(store) / AGGREGATES / table / f"species={species}"
    return (d / f"level={level}" if level else d) / "part-0.parquet"


def bucket_stats(
    src: Path, bucket: int, lo: int, n_genes: int, groups: Groups, work: Path, q=None
) -> dict[str, int]:
    """Worker: the statistics of one bucket's genes, one part file per table (and level); row counts."""
    codes = dict(np.load(groups.codes))
    sizes = {
        "term": len(groups.clusters),
        "region_group": len(groups.region_groups),
        "donor_group": len(groups.donor_groups),
    }
    dense = _accumulate(Path(src), lo, n_genes, codes, sizes, q)
    written = dict.fromkeys(KEYS, 0)
    parts: list[tuple[str, str | None, pa.Table]] = []

    # Taxonomy levels: cluster sums rolled up through a 0/1 membership matrix (counts stay exact: they
    # are integers far below 2^53 in doubles). Rows by gene, then taxonomy order (np.nonzero is row-major).
    for lv in R.LEVELS:
        terms, of = groups.level_terms[lv], groups.level_of_cluster[lv]
        member = np.zeros((len(groups.clusters), len(terms)))
        member[np.arange(len(of)), of] = 1.0
        sums = dense["term"] @ member  # fields x genes x terms
        gi, ti = np.nonzero(sums[0] > 0)
        table = _table(
            {"level": [lv] * len(gi), "term_label": list(np.array(terms, dtype=object)[ti])},
            bucket,
            gi + lo,
            ((groups.cells["term"] @ member)[ti], (groups.counts["term"] @ member)[ti]),
            sums[:, gi, ti],
        )
        parts.append(("term_gene_sums", lv, table))
    for name, table_name, labels in (
        ("region_group", "region_group_gene_sums", groups.region_groups),
        ("donor_group", "donor_group_gene_sums", groups.donor_groups),
    ):
        sums = dense[name]
        gi, pi = np.nonzero(sums[0] > 0)
        key_a, key_b = KEYS[table_name]
        pairs = np.array(labels, dtype=object).reshape(-1, 2)
        table = _table(
            {key_a: list(pairs[pi, 0]), key_b: list(pairs[pi, 1])},
            bucket,
            gi + lo,
            (groups.cells[name][pi], groups.counts[name][pi]),
            sums[:, gi, pi],
        )
        parts.append((table_name, None, table))
    for table_name, lv, table in parts:
        path = _part(Path(work), table_name, groups.species, lv, bucket)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="lz4")
        written[table_name] += table.num_rows
    return written


def _merge(parts: list[Path], out: Path) -> None:
    """Concatenate the buckets' parts (gene ranges in order, so the result stays sorted by gene) into one
    file, one part in memory at a time."""
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = None
    for path in parts:
        table = pq.read_table(path)
        table = table.cast(
            pa.schema(
                [
                    pa.field(f.name, pa.dictionary(pa.int32(), pa.string()))
                    if pa.types.is_dictionary(f.type)
                    else f
                    for f in table.schema
                ]
            )
        )
        if writer is None:
            writer = pq.ParquetWriter(
                out,
                table.schema,
                compression="zstd",
                data_page_version="2.0",
                version="2.6",
                write_statistics=True,
            )
        writer.write_table(table, row_group_size=ROW_GROUP)
    if writer is not None:
        writer.close()


def build_stats(staging: Path, species: dict[str, dict], pool, q, rep: Reporter) -> dict[str, dict[str, int]]:
    """The statistics tables of every built species, from the staged expression files."""
    from .builder import bucket_file

    staging = Path(staging)
    shutil.rmtree(staging / AGGREGATES, ignore_errors=True)
    work = staging / "_stats"
    out: dict[str, dict[str, int]] = {}
    for s, info in species.items():
        groups = plan_groups(staging, s, work)
        per, n_genes = info["genes_per_bucket"], info["genes"]
        buckets = range(info["buckets"])
        tasks = {
            k: (
                bucket_stats,
                (
                    bucket_file(staging, s, k),
                    k,
                    k * per,
                    min(n_genes, (k + 1) * per) - k * per,
                    groups,
                    work,
                    q,
                ),
            )
            for k in buckets
        }
        rows = dict.fromkeys(KEYS, 0)

        def done(_k, written, rows=rows):
            for t, n in written.items():
                rows[t] += n

        with rep.bar(info["nnz"], f"{s} statistics", unit="nz") as bar:
            run_pool(pool, q, tasks, bar, done)
        for table in KEYS:
            for lv in R.LEVELS if table == "term_gene_sums" else [None]:
                _merge([_part(work, table, s, lv, k) for k in buckets], final_file(staging, table, s, lv))
        out[s] = rows
        rep.log(
            f"  {s}: {rows['term_gene_sums']:,} term x gene rows, "
            f"{rows['region_group_gene_sums']:,} region x Group x gene, "
            f"{rows['donor_group_gene_sums']:,} donor x Group x gene"
        )
    shutil.rmtree(work, ignore_errors=True)
    return out
