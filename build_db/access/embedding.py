"""The UMAP of a species as compact columns: coordinates, each cell's cluster (a code into the cluster
list, which carries the five-level path and colours) and, with a gene, its log2(CPM+1); a fixed sample when
there are more cells than asked for, the same cells `umap_by_gene` returns."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np

from ..release import layout as R
from ..release.normalise import log2_cpm
from ..store import schema as S
from .analyses import _cell_terms, gene_rows
from .genes import CACHE, cache_key, resolve_genes

# queries/umap_by_gene.sql's order: a multiplicative hash of cell_index (a bijection on 32-bit integers),
# so the first N cells are a fixed pseudo-random sample, the same on every engine.
HASH_MULTIPLIER = 2654435761


@dataclass
class _Layout:
    cell_index: np.ndarray  # cells with coordinates, in sample order
    x: np.ndarray
    y: np.ndarray


def _layout(con: duckdb.DuckDBPyConnection, species: str) -> _Layout:
    key = cache_key(con, "umap", species)
    if key not in CACHE:
        a = con.execute(
            "select cell_index, x, y from cells where species = ? and x is not null "
            f"order by (cell_index * {HASH_MULTIPLIER}) % 4294967296",
            [species],
        ).fetchnumpy()
        CACHE[key] = _Layout(
            a["cell_index"].astype(np.int64), a["x"].astype(np.float32), a["y"].astype(np.float32)
        )
    return CACHE[key]


def clusters(con: duckdb.DuckDBPyConnection, species: str) -> list[dict]:
    """The species' clusters in taxonomy order (their position is the code `umap_points` gives a cell),
    each with its name and colour at every level."""
    key = cache_key(con, "cluster_paths", species)
    if key not in CACHE:
        cols = ", ".join(
            f"any_value({S.LEVEL_PREFIX[lv]}_name), any_value({S.LEVEL_PREFIX[lv]}_color)" for lv in R.LEVELS
        )
        rows = con.execute(
            f"select cluster_label, {cols} from cells where species = ? and cluster_label is not null "
            "group by cluster_label order by min(cluster_order)",
            [species],
        ).fetchall()
        out = []
        for r in rows:
            entry = {"cluster_label": r[0]}
            for i, lv in enumerate(R.LEVELS):
                entry[S.LEVEL_PREFIX[lv]] = r[1 + 2 * i]
                entry[f"{S.LEVEL_PREFIX[lv]}_color"] = r[2 + 2 * i]
            out.append(entry)
        CACHE[key] = out
    return CACHE[key]


def umap_points(
    con: duckdb.DuckDBPyConnection, species: str, gene: str | None = None, max_points: int = 200_000
) -> dict:
    """At most `max_points` cells with UMAP coordinates: `x`, `y` (float32), `cluster` (int32 code into
    `clusters`, -1 for none) and, with a gene, `value` (its log2(CPM+1), float32, 0 where not detected).
    `n_cells` is how many cells have coordinates, `sampled` whether fewer are returned.

    Example:
        >>> umap_points(connect("data/demo-store"), "Human", "DRD1", 1000)["value"][:5]  # doctest: +SKIP
    """
    lay = _layout(con, species)
    take = lay.cell_index[:max_points]
    terms = _cell_terms(con, species, "Cluster")
    out = {
        "species": species,
        "n_cells": int(len(lay.cell_index)),
        "n_points": int(len(take)),
        "sampled": bool(len(take) < len(lay.cell_index)),
        "x": lay.x[:max_points],
        "y": lay.y[:max_points],
        "cluster": terms.codes[take].astype(np.int32),
        "clusters": clusters(con, species),
        "gene": None,
    }
    if gene is not None:
        (match,) = resolve_genes(con, species, [gene])
        rows = gene_rows(con, species, [match])
        value = np.zeros(len(terms.codes), dtype=np.float32)  # by cell_index
        cells = rows["cell_index"].astype(np.int64)
        value[cells] = log2_cpm(rows["raw_count"], terms.totals[cells])
        out["value"] = value[take]
        out["gene"] = {"gene_symbol": match.symbol, "gene_identifier": match.gene_identifier}
    return out
