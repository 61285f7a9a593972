"""MapMyCells reference files from a store: `precomputed_stats.h5` and `query_markers.json` for one species,
for all its cells (from the statistics, in seconds) or a selection of them (summed from the expression
store, one gene bucket at a time).

The layout is cell_type_mapper's (its `docs/input_data_files/precomputed_stats_file.md`, docs/release.md,
'MapMyCells resources'): JSON datasets as UTF-8 bytes (`metadata`, `cluster_to_row`, `col_names`,
`taxonomy_tree`) and clusters x genes arrays: int64 `n_cells`, float64 `sum` and `sumsq` of log2(CPM+1), int64
`gt0`, `gt1`, `ge1` (cells above 0 CPM, above 1 CPM, at least 1 CPM). Our statistics hold exactly these
fields: `n_expressing`, `sum_log2_cpm`, `sumsq_log2_cpm`, `n_cpm_gt_1`, `n_cpm_ge_1`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb
import h5py
import numpy as np

from ..errors import HmbaError
from ..files import write_atomic
from ..release import layout as R
from ..store.paths import bucket_file
from ..store.stats import FIELDS_SQL
from .connect import connect, store_of
from .export import cells_condition

STATS_FILE = "precomputed_stats.h5"
MARKERS_FILE = "query_markers.json"
# Arrays of the file -> our statistics' field (the h5 holds clusters x genes of each).
FIELDS = {
    "sum": "sum_log2_cpm",
    "sumsq": "sumsq_log2_cpm",
    "gt0": "n_expressing",
    "gt1": "n_cpm_gt_1",
    "ge1": "n_cpm_ge_1",
}
MARKERS_PER_CHILD = 10  # genes per child node by default: a few hundred per parent at most
MIN_FRACTION = 0.25  # a marker is detected in at least this share of its node's cells


@dataclass
class Reference:
    """What an export wrote: the files, and the arrays' shape and provenance."""

    stats: Path
    markers: Path
    species: str
    clusters: list[str]
    genes: list[str]
    n_cells: np.ndarray
    source: str  # "statistics" or "expression"
    markers_by_node: dict[str, list[str]]  # what query_markers.json holds

    def markers_summary(self) -> str:
        distinct = {g for genes in self.markers_by_node.values() for g in genes}
        return (
            f"{len(self.markers_by_node.get('None', [])):,} marker genes at the root, {len(distinct):,} "
            f"distinct over {len(self.markers_by_node):,} parent nodes"
        )


def export_mapmycells(
    store_or_con,
    out: Path,
    species: str,
    *,
    cells: str | None = None,
    min_cells: int = 1,
    markers_per_child: int = MARKERS_PER_CHILD,
    markers_per_node: int | None = None,
    force: bool = False,
) -> Reference:
    """Write `OUT/precomputed_stats.h5` and `OUT/query_markers.json` for one species.

    OUT must be new or empty; `force` replaces a reference there (a folder holding only those two files).
    The files are written into a temporary folder beside OUT and renamed into place, so a failed export
    leaves what was there.

    `cells` is a SQL condition on the `cells` table (e.g. "region_of_interest_label = 'PuR'"): the sums are
    then taken from the expression store for those cells only. Clusters with fewer than `min_cells` (selected)
    cells are left out, and the tree keeps only their ancestors. Markers: `markers_per_child` genes for each
    child of a node, or, with `markers_per_node`, that many genes per node taken in turn from its children's
    rankings (for the thousands per node that cell_type_mapper's own marker selection gives).

    Example:
        >>> export_mapmycells("data/store", "ref", "Human", cells="donor_sex = 'Male'")  # doctest: +SKIP
    """
    out = Path(out)
    _check_out(out, force)
    con = store_or_con if isinstance(store_or_con, duckdb.DuckDBPyConnection) else connect(store_or_con)
    species = _species(con, species)
    if min_cells < 1:
        raise HmbaError(f"--min-cells must be at least 1, got {min_cells}")
    for name, n in (("--markers-per-child", markers_per_child), ("--markers-per-node", markers_per_node)):
        if n is not None and n < 1:
            raise HmbaError(f"{name} must be at least 1, got {n}")
    genes = [
        r[0]
        for r in con.execute(
            "select gene_identifier from genes where species = ? order by gene_index", [species]
        ).fetchall()
    ]
    tree_rows = _clusters(con, species, cells)
    tree_rows = [r for r in tree_rows if r["n"] >= min_cells]
    if not tree_rows:
        raise HmbaError(
            f"no {species} cluster has {min_cells} or more cells"
            + (f" where {cells}" if cells else "")
            + "; widen the selection or lower --min-cells"
        )
    clusters = [r["cluster_label"] for r in tree_rows]
    row_of = {c: i for i, c in enumerate(clusters)}
    arrays = (
        _from_expression(con, species, cells, row_of, len(genes))
        if cells
        else _from_statistics(con, species, row_of, len(genes))
    )
    n_cells = np.array([r["n"] for r in tree_rows], dtype=np.int64)
    tree = _tree(tree_rows)
    info = {
        "producer": "hmba-db export mapmycells",
        "store": str(store_of(con)),
        **dict(con.execute("select key, value from store_info where key <> 'store_path'").fetchall()),
        "species": species,
        "selection": {"cells": cells, "min_cells": min_cells},
        "markers": {"per_node": markers_per_node} if markers_per_node else {"per_child": markers_per_child},
        "source": "expression store" if cells else "statistics",
        "normalization": "log2(CPM+1) from raw counts",
        "n_clusters": len(clusters),
        "n_cells": int(n_cells.sum()),
    }
    markers = query_markers(tree, row_of, genes, n_cells, arrays, markers_per_child, markers_per_node)
    tmp = out.parent / f".{out.name}.writing-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        _write_h5(tmp / STATS_FILE, info, row_of, genes, tree, n_cells, arrays)
        write_atomic(tmp / MARKERS_FILE, json.dumps(markers, indent=1) + "\n")
        _put_in_place(tmp, out)
    except OSError as e:
        raise HmbaError(
            f"{out}: cannot write the reference there ({e.strerror}); choose another folder"
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Reference(
        out / STATS_FILE, out / MARKERS_FILE, species, clusters, genes, n_cells, info["source"], markers
    )


def _check_out(out: Path, force: bool) -> None:
    """OUT new or empty; with `force`, a reference of ours (nothing else in it, which is never deleted)."""
    if out.exists() and not out.is_dir():
        raise HmbaError(f"{out}: a file is there, not a folder; choose a folder for the reference")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not held:
        return
    others = [n for n in held if n not in (STATS_FILE, MARKERS_FILE)]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise HmbaError(
            f"{out}: holds {shown}, which are not a reference of ours; choose a new or empty folder"
        )
    if not force:
        raise HmbaError(f"{out}: holds a reference already ({', '.join(held)}); pass --force to replace it")


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the written folder to OUT, the old reference (if any) out of the way first, then removed."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)  # put the old one back
        raise
    shutil.rmtree(old, ignore_errors=True)


def _species(con, species: str) -> str:
    built = [r[0] for r in con.execute("select distinct species from cells order by 1").fetchall()]
    match = {s.lower(): s for s in built}.get(str(species).lower())
    if match is None:
        raise HmbaError(f"species {species!r} is not in this store; it has {', '.join(built)}")
    return match


def _clusters(con, species: str, cells: str | None) -> list[dict]:
    """Each cluster of the selection with its five-level path (labels, names), alias and cell count."""
    levels = ", ".join(f"{lv.lower()}_label, {lv.lower()}_name" for lv in R.LEVELS) + ", cluster_alias"
    where = f" and {cells_condition(con, cells)}" if cells else ""
    sql = (
        f"select {levels}, count(*) as n, min(cluster_order) as o from cells "
        f"where species = ? and cluster_label is not null{where} group by all order by o"
    )
    try:
        cur = con.execute(sql, [species])
    except duckdb.Error as e:
        raise HmbaError(
            f"--cells {cells!r} is not a condition on the cells table ({' '.join(str(e).split())}); "
            "e.g. --cells \"region_of_interest_label = 'PuR'\""
        ) from e
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _from_statistics(con, species: str, row_of: dict, n_genes: int) -> dict[str, np.ndarray]:
    """The Cluster rows of term_gene_sums (only groups expressing a gene have a row: the rest are zeros)."""
    cols = ", ".join(FIELDS.values())
    table = con.sql(
        f"select term_label, gene_index, {cols} from term_gene_sums where species = $s and level = 'Cluster'",
        params={"s": species},
    ).to_arrow_table()
    return _dense(table, row_of, n_genes)


def _from_expression(con, species: str, cells: str, row_of: dict, n_genes: int) -> dict[str, np.ndarray]:
    """The same sums for the selected cells, from the expression files one bucket at a time (bounded
    memory: one bucket's genes x the clusters), with the statistics step's formulas."""
    con.execute(
        "create or replace temp table mmc_cells as select cell_index, cluster_label as term_label, "
        "total_counts from cells where species = ? and cluster_label is not null and "
        f"{cells_condition(con, cells)}",
        [species],
    )
    root = store_of(con)
    ((n_buckets,),) = con.execute(
        "select max(gene_bucket) + 1 from genes where species = ?", [species]
    ).fetchall()
    out = {k: np.zeros((len(row_of), n_genes)) for k in FIELDS}
    try:
        for k in range(int(n_buckets)):
            table = con.sql(
                f"select c.term_label, e.gene_index, {FIELDS_SQL} "
                "from read_parquet($file) e join mmc_cells c using (cell_index) group by all",
                params={"file": str(bucket_file(root, species, k))},
            ).to_arrow_table()
            part = _dense(table, row_of, n_genes)
            for f in FIELDS:
                out[f] += part[f]
    finally:
        con.execute("drop table if exists mmc_cells")
    return {f: (a if f in ("sum", "sumsq") else a.astype(np.int64)) for f, a in out.items()}


def _dense(table, row_of: dict, n_genes: int) -> dict[str, np.ndarray]:
    labels = table.column("term_label").to_pylist()
    keep = np.array([label in row_of for label in labels], dtype=bool)
    rows = np.array([row_of.get(label, -1) for label in labels], dtype=np.int64)[keep]
    genes = table.column("gene_index").to_numpy()[keep]
    out = {}
    for name, field in FIELDS.items():
        dtype = np.float64 if name in ("sum", "sumsq") else np.int64
        a = np.zeros((len(row_of), n_genes), dtype=dtype)
        a[rows, genes] = table.column(field).to_numpy()[keep]
        out[name] = a
    return out


def _tree(rows: list[dict]) -> dict:
    """cell_type_mapper's taxonomy tree: hierarchy coarse to fine (level labels), a children map per level
    (leaves map to []), and `hierarchy_mapper`/`name_mapper` so results carry the taxonomy's names.

    `name_mapper[level][label]` holds `name` and `alias`, as the tool's own tree (`from_data_release`) does:
    a cluster's alias is its `cluster_alias` (`Human-535`: the tool's CSV prints it as `Cluster_alias`); the
    other levels have no alias in the release, and get their label, which is what the tool's
    `label_to_name(..., name_key="alias")` answers for a node without one."""
    hierarchy = [R.LEVEL_LABELS[lv] for lv in R.LEVELS]
    tree: dict = {"hierarchy": hierarchy}
    tree["hierarchy_mapper"] = {R.LEVEL_LABELS[lv]: lv for lv in R.LEVELS}
    tree["name_mapper"] = {key: {} for key in hierarchy}
    for key in hierarchy:
        tree[key] = {}
    for r in rows:
        for i, lv in enumerate(R.LEVELS):
            key, node = hierarchy[i], r[f"{lv.lower()}_label"]
            alias = r["cluster_alias"] if lv == "Cluster" else node
            tree["name_mapper"][key][node] = {"name": r[f"{lv.lower()}_name"], "alias": alias}
            children = tree[key].setdefault(node, [])
            if i + 1 < len(R.LEVELS):
                child = r[f"{R.LEVELS[i + 1].lower()}_label"]
                if child not in children:
                    children.append(child)
    return tree


def _write_h5(path: Path, info, row_of, genes, tree, n_cells, arrays) -> Path:
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        for name, value in (
            ("metadata", info),
            ("cluster_to_row", row_of),
            ("col_names", genes),
            ("taxonomy_tree", tree),
        ):
            f.create_dataset(name, data=json.dumps(value).encode("utf-8"))
        f.create_dataset("n_cells", data=n_cells)
        for name, a in arrays.items():
            f.create_dataset(name, data=a, chunks=(1, a.shape[1]), compression="gzip", compression_opts=4)
    tmp.replace(path)
    return path


def query_markers(
    tree: dict,
    row_of: dict,
    genes: list[str],
    n_cells,
    arrays,
    per_child: int = MARKERS_PER_CHILD,
    per_node: int | None = None,
) -> dict:
    """Marker genes per parent node, in cell_type_mapper's lookup format: keys "None" (the root) and
    "<level>/<node>", values gene identifiers of `col_names`.

    Each child of a node ranks the genes by how far its mean log2(CPM+1) is above its siblings', among genes
    detected in at least MIN_FRACTION of its cells and above them at all. The node's markers are the first
    `per_child` of each child's ranking (their union); with `per_node`, the children's rankings are taken in
    turn (every child's best, then every child's second, ...) until the node has `per_node` genes or the
    rankings run out, so every child is told apart by as many genes as the others. A node with a single
    child has nothing to choose, and gets an empty list (the tool's own convention)."""
    hierarchy = tree["hierarchy"]
    leaves_under: dict[tuple[int, str], list[int]] = {}
    for depth in range(len(hierarchy) - 1, -1, -1):
        for node, children in tree[hierarchy[depth]].items():
            if depth == len(hierarchy) - 1:
                leaves_under[(depth, node)] = [row_of[node]]
            else:
                leaves_under[(depth, node)] = sum((leaves_under[(depth + 1, c)] for c in children), [])
    parents = [("None", -1, list(tree[hierarchy[0]]))] + [
        (f"{hierarchy[d]}/{node}", d, children)
        for d in range(len(hierarchy) - 1)
        for node, children in tree[hierarchy[d]].items()
    ]
    out: dict[str, list[str]] = {}
    for key, depth, children in parents:
        if len(children) < 2:
            out[key] = []
            continue
        leaves = [leaves_under[(depth + 1, c)] for c in children]
        sums = np.array([arrays["sum"][rows].sum(axis=0) for rows in leaves])
        expressing = np.array([arrays["gt0"][rows].sum(axis=0) for rows in leaves])
        counts = np.array([n_cells[rows].sum() for rows in leaves], dtype=np.float64)
        rankings = []
        for i in range(len(children)):
            mean = sums[i] / counts[i]
            rest = (sums.sum(axis=0) - sums[i]) / max(counts.sum() - counts[i], 1.0)
            score = np.where(expressing[i] >= MIN_FRACTION * counts[i], mean - rest, -np.inf)
            order = np.argsort(-score, kind="stable")
            rankings.append(order[: int(np.count_nonzero(np.isfinite(score) & (score > 0)))])
        out[key] = [genes[g] for g in _take(rankings, per_child, per_node)]
    return out


def _take(rankings: list[np.ndarray], per_child: int, per_node: int | None) -> list[int]:
    """The genes a node keeps from its children's rankings (best first), each gene once."""
    chosen: dict[int, None] = {}  # insertion-ordered set
    if per_node is None:
        for ranking in rankings:
            chosen.update((int(g), None) for g in ranking[:per_child])
        return list(chosen)
    for rank in range(max(len(r) for r in rankings)):
        for ranking in rankings:
            if rank < len(ranking):
                chosen.setdefault(int(ranking[rank]), None)
                if len(chosen) == per_node:
                    return list(chosen)
    return list(chosen)
