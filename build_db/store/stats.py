"""Per-cell-type statistics: additive per-(group, gene) sums, computed while a sorted bucket is in memory.

For each species and gene bucket, the sort worker that has just put the bucket's rows in (gene, cell)
order accumulates them, before writing its Parquet file (no second pass over the store), per
(gene, cluster), (gene, Group x region) and (gene, Group x donor): the cells expressing the gene, the sum
of raw counts, the sum and sum of squares of log2(CPM + 1), and the cells with CPM > 1 and CPM >= 1 (the
fields of MapMyCells' precomputed statistics, so the two can be compared). Cluster sums are then summed up
the taxonomy, so a parent term's row is exactly the sum of its children's at every level.

Zeros contribute nothing to any of these sums, so only non-zero contributions are stored: a (term, gene)
pair with no expressing cell has no row, and every row carries the group's cell count (n_cells) so that
means and variances include the zeros. Cells without a cluster (about a third) are in no group.

Each non-zero is counted twice: into its cell's cluster and into its cell's (Group, region, donor) triple,
from which the region x Group and donor x Group sums are added up once per bucket; counting the three
groupings from the rows directly measured 2.5 times slower. Memory per worker: one batch of rows and dense
accumulators of genes in the bucket x (clusters + triples) x 6 fields, whatever the dataset's size.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from ..errors import HmbaError
from ..progress import Reporter, run_pool
from ..release import layout as R
from ..release.normalise import log2_cpm_sql

AGGREGATES = "aggregates"
STATS_WORK = "_stats"  # in the staging folder: the groups' codes and the sort workers' part files
BATCH_ROWS = 262_144  # temporaries stay in cache: measured 0.57 s per 13M rows, 0.73 s at 1M, 1.56 s at 4M
FIELDS = ("n_expressing", "sum_raw", "sum_log2_cpm", "sumsq_log2_cpm", "n_cpm_gt_1", "n_cpm_ge_1")
FLOAT_FIELDS = ("sum_log2_cpm", "sumsq_log2_cpm")
# The three statistics tables: name -> the key columns of a group (besides species and gene_index).
KEYS = {
    "term_gene_sums": ("level", "term_label"),
    "region_group_gene_sums": ("group_label", "region_of_interest_label"),
    "donor_group_gene_sums": ("group_label", "donor_label"),
}
GROUPINGS = {
    "term": "term_gene_sums",
    "region_group": "region_group_gene_sums",
    "donor_group": "donor_group_gene_sums",
}
# Small row groups: a gene has at most a few thousand rows, so a lookup decodes little beyond them. 4,096
# rather than 16,384, measured on the demo store: a 7-gene x 3-species heatmap over HTTP reads 1.8 MiB
# instead of 3.6 and takes 64-70 ms locally instead of 72-75; a whole-level scan (markers) is ~15% slower.
ROW_GROUP = 4_096

# The fields as SQL aggregates over rows `e` (raw_count) joined to cells `c` (total_counts): the expression
# view's log2 formula and this step's CPM thresholds (in integers, exact at CPM = 1). For sums taken again
# from the expression files (verify, MapMyCells exports of a cell selection).
_LOG2 = log2_cpm_sql("e.raw_count", "c.total_counts")
FIELDS_SQL = f"""count(*) as n_expressing,
    sum(e.raw_count) as sum_raw,
    sum({_LOG2}) as sum_log2_cpm,
    sum(pow({_LOG2}, 2)) as sumsq_log2_cpm,
    count(*) filter (where e.raw_count::bigint * 1000000 > c.total_counts) as n_cpm_gt_1,
    count(*) filter (where e.raw_count::bigint * 1000000 >= c.total_counts) as n_cpm_ge_1"""


def final_file(store: Path, table: str, species: str, level: str | None = None) -> Path:
    """One file per species (and level), `aggregates/<table>/species=S[/level=L]/part-0.parquet`, sorted by
    gene: a lookup opens 1 file per species and reads its genes' row groups. Per-bucket files (540 at the
    demo's scale) cost 19 ms of listing per query."""
    d = Path(store) / AGGREGATES / table / f"species={species}"
    return (d / f"level={level}" if level else d) / "part-0.parquet"


def _part(work: Path, table: str, species: str, bucket: int, level: str | None = None) -> Path:
    return Path(work) / "parts" / table / species / (level or "all") / f"{bucket:05d}.parquet"


def parts_written(work: Path, species: str, bucket: int) -> bool:
    """Whether a sorted bucket's statistics parts are all there (a resumed build re-sorts it otherwise)."""
    return all(
        _part(work, t, species, bucket, lv).exists()
        for t in KEYS
        for lv in (R.LEVELS if t == "term_gene_sums" else [None])
    )


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

    def size(self, grouping: str) -> int:
        return len(self.cells[grouping])


def _codes(pairs: list[tuple]) -> tuple[list[tuple], np.ndarray]:
    """Distinct tuples in sorted order and, per input tuple, its position (-1 where any part is NULL)."""
    keys = sorted({p for p in pairs if all(x is not None for x in p)})
    at = {k: i for i, k in enumerate(keys)}
    return keys, np.array([at.get(p, -1) for p in pairs], dtype=np.int32)


def plan_groups(cells: pd.DataFrame, totals: np.ndarray, species: str, work: Path, path: str) -> Groups:
    """Assign every cell its codes. `cells`: one row per cell in cell_index order with its region, donor
    and each level's label and order (the check's `cell_groups`); `totals`: each cell's total counts;
    `path`: the file named in errors."""
    cells = cells.copy()
    cells["total_counts"] = totals
    n = len(cells)
    if n == 0 or not np.array_equal(cells.cell_index.to_numpy(), np.arange(n)):
        raise HmbaError(f"{path}: {species} cells are not numbered 0..n-1; run hmba-db check")
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
    # Triples: the distinct (Group x region, Group x donor) pairs of assigned cells, i.e. (Group, region,
    # donor), so one count per row serves both tables.
    assigned_rows = cluster_code >= 0
    pairs, inverse = np.unique(np.stack([rg, dg], axis=1)[assigned_rows], axis=0, return_inverse=True)
    triple = np.full(n, -1, dtype=np.int32)
    triple[assigned_rows] = inverse.ravel()
    work.mkdir(parents=True, exist_ok=True)
    codes = work / f"{species}.npz"
    by = {"term": cluster_code, "region_group": rg, "donor_group": dg}
    np.savez(
        codes,
        totals=totals,
        term=cluster_code,
        triple=triple,
        triple_region_group=pairs[:, 0],
        triple_donor_group=pairs[:, 1],
    )
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


def _accumulate(batches, lo: int, n_genes: int, codes: dict, sizes: dict) -> dict[str, np.ndarray]:
    """Dense sums per grouping: {name: array (fields, n_genes, n_groups)}.

    Rows are counted into two keys per cell, its cluster and its (Group, region, donor) triple; the
    region x Group and donor x Group sums are then added up from the triples, once per bucket."""
    totals = codes["totals"].astype(np.float64)  # exact: totals are far below 2^53
    # CPM <= 1 needs total counts >= 1e6 (raw counts are >= 1): when no cell has that many, as in every
    # real nucleus, the two CPM counts equal n_expressing and need no work per row.
    any_big = bool((codes["totals"] >= 1_000_000).any())
    counted = {"term": sizes["term"], "triple": len(codes["triple_region_group"])}
    acc = {name: np.zeros((len(FIELDS), n_genes * m)) for name, m in counted.items()}
    for g, c, v in batches:
        cluster = codes["term"][c]
        keep = np.flatnonzero(cluster >= 0)  # indexes: 4x faster than boolean masks here
        if len(keep) < len(c):
            c, g, v, cluster = c[keep], g[keep], v[keep], cluster[keep]
        if len(c) == 0:
            continue
        tot = totals[c]
        # The expression view's formula, in the same order of operations, so the sums match it.
        log2 = v / tot
        log2 *= 1e6
        log2 += 1
        np.log2(log2, out=log2)
        sq = log2 * log2
        # Rows are sorted by gene: count into the batch's own gene range only, so the dense work per batch
        # is that range x groups, not the whole bucket's.
        first, last = int(g[0]), int(g[-1])
        g = g.astype(np.int64)
        g -= first
        for name, k in (("term", cluster), ("triple", codes["triple"][c])):
            m = counted[name]
            key = g * m
            key += k
            size = (last - first + 1) * m
            a = acc[name][:, (first - lo) * m : (last - lo + 1) * m]
            a[0] += np.bincount(key, minlength=size)
            a[1] += np.bincount(key, weights=v, minlength=size)
            a[2] += np.bincount(key, weights=log2, minlength=size)
            a[3] += np.bincount(key, weights=sq, minlength=size)
            if any_big:  # counted as "not above", then subtracted from n_expressing
                scaled = v.astype(np.int64) * 1_000_000  # in integers: exact at CPM == 1
                a[4] += np.bincount(key[scaled <= tot], minlength=size)
                a[5] += np.bincount(key[scaled < tot], minlength=size)
    out = {"term": acc["term"].reshape(len(FIELDS), n_genes, counted["term"])}
    # Triples to region x Group and donor x Group: per field, a groups x triples 0/1 matrix times the
    # triples x genes sums.
    triples = acc["triple"].reshape(len(FIELDS), n_genes, counted["triple"])
    for name in ("region_group", "donor_group"):
        to = codes[f"triple_{name}"]
        ok = np.flatnonzero(to >= 0)
        reducer = sp.csr_matrix((np.ones(len(ok)), (ok, to[ok])), shape=(len(to), sizes[name]))
        out[name] = np.stack([triples[f] @ reducer for f in range(len(FIELDS))])
    for a in out.values():
        a[4] = a[0] - a[4]
        a[5] = a[0] - a[5]
    return out


def _dict(labels: list[str], codes: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(labels, pa.string()))


def _table(
    keys: dict[str, pa.Array], bucket: int, gene: np.ndarray, group: tuple, sums: np.ndarray
) -> pa.Table:
    cols = dict(keys)
    cols["gene_bucket"] = pa.array(np.full(len(gene), bucket, dtype=np.int32))
    cols["gene_index"] = pa.array(gene.astype(np.int32))
    cols["n_cells"] = pa.array(np.rint(group[0]).astype(np.int64))
    cols["sum_total_counts"] = pa.array(np.rint(group[1]).astype(np.int64))
    for i, f in enumerate(FIELDS):
        cols[f] = pa.array(sums[i] if f in FLOAT_FIELDS else np.rint(sums[i]).astype(np.int64))
    return pa.table(cols)


def _merge(parts: list[Path], out: Path) -> int:
    """Worker: concatenate the buckets' parts (gene ranges in order, so the result stays sorted by gene)
    into one zstd file, one part in memory at a time; returns its rows."""
    out.parent.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    for path in parts:
        table = pq.read_table(path)
        if writer is None:
            writer = pq.ParquetWriter(
                out,
                table.schema,
                compression="zstd",
                data_page_version="2.0",
                version="2.6",
                # Dictionaries for the labels only: trying them on the sums cost a third of the writing.
                use_dictionary=[f.name for f in table.schema if pa.types.is_dictionary(f.type)],
            )
        writer.write_table(table, row_group_size=ROW_GROUP)
        rows += table.num_rows
    if writer is not None:
        writer.close()
    return rows


def _write_part(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="none")  # read once by _merge: encoding speed over size


def bucket_stats(batches, bucket: int, lo: int, n_genes: int, groups: Groups, work: Path) -> dict[str, int]:
    """In a sort worker: the statistics of one bucket's genes from its rows in (gene, cell) order
    (`batches` of (gene_index, cell_index, raw_count) arrays), one part file per table (and level); row
    counts."""
    codes = dict(np.load(groups.codes))
    sizes = {name: groups.size(name) for name in GROUPINGS}
    dense = _accumulate(batches, lo, n_genes, codes, sizes)
    written = dict.fromkeys(KEYS, 0)
    # Taxonomy levels: cluster sums rolled up through a sparse 0/1 membership matrix (counts stay exact:
    # they are integers far below 2^53 in doubles). Rows by gene, then taxonomy order (np.nonzero is
    # row-major).
    for lv in R.LEVELS:
        terms, of = groups.level_terms[lv], groups.level_of_cluster[lv]
        member = sp.csc_matrix((np.ones(len(of)), (np.arange(len(of)), of)), shape=(len(of), len(terms)))
        if lv == "Cluster":
            sums = dense["term"]
        else:  # fields x genes x terms
            sums = np.stack([dense["term"][f] @ member for f in range(len(FIELDS))])
        gi, ti = np.nonzero(sums[0] > 0)
        table = _table(
            {"term_label": _dict(terms, ti)},
            bucket,
            gi + lo,
            ((member.T @ groups.cells["term"])[ti], (member.T @ groups.counts["term"])[ti]),
            sums[:, gi, ti],
        )
        _write_part(table, _part(work, "term_gene_sums", groups.species, bucket, lv))
        written["term_gene_sums"] += table.num_rows
    for name, labels in (("region_group", groups.region_groups), ("donor_group", groups.donor_groups)):
        table_name = GROUPINGS[name]
        sums = dense[name]
        gi, pi = np.nonzero(sums[0] > 0)
        key_a, key_b = KEYS[table_name]
        firsts = sorted({a for a, _ in labels})
        seconds = sorted({b for _, b in labels})
        code_a = np.array([firsts.index(a) for a, _ in labels], dtype=np.int32)
        code_b = np.array([seconds.index(b) for _, b in labels], dtype=np.int32)
        table = _table(
            {key_a: _dict(firsts, code_a[pi]), key_b: _dict(seconds, code_b[pi])},
            bucket,
            gi + lo,
            (groups.cells[name][pi], groups.counts[name][pi]),
            sums[:, gi, pi],
        )
        _write_part(table, _part(work, table_name, groups.species, bucket))
        written[table_name] += table.num_rows
    return written


def merge_stats(staging: Path, species: dict[str, dict], pool, q, rep: Reporter) -> dict[str, dict[str, int]]:
    """The statistics files of every built species from the parts the sort workers wrote, one file per
    table (and level), sorted by gene; rows per table."""
    staging = Path(staging)
    shutil.rmtree(staging / AGGREGATES, ignore_errors=True)
    work = staging / STATS_WORK
    out: dict[str, dict[str, int]] = {}
    for s, info in species.items():
        buckets = range(info["buckets"])
        missing = [k for k in buckets if not _part(work, "donor_group_gene_sums", s, k).exists()]
        if missing:
            raise HmbaError(
                f"{_part(work, 'donor_group_gene_sums', s, missing[0])}: missing; the build's statistics "
                "are incomplete: delete the staging folder and build again"
            )
        merges = {
            (t, lv): (_merge, ([_part(work, t, s, k, lv) for k in buckets], final_file(staging, t, s, lv)))
            for t in KEYS
            for lv in (R.LEVELS if t == "term_gene_sums" else [None])
        }
        rows = dict.fromkeys(KEYS, 0)
        with rep.bar(len(merges), f"{s} statistics files", unit="file") as bar:

            def merged(key, n, rows=rows, bar=bar):
                rows[key[0]] += n
                bar.update(1)

            run_pool(pool, q, merges, bar, merged)
        out[s] = rows
        rep.log(
            f"  {s}: {rows['term_gene_sums']:,} term x gene rows, "
            f"{rows['region_group_gene_sums']:,} region x Group x gene, "
            f"{rows['donor_group_gene_sums']:,} donor x Group x gene"
        )
    # The parts stay until the store is published (the build removes them with the scatter runs): a build
    # killed in a later step merges them again when it resumes.
    return out
