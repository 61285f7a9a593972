"""`to_anndata`: a selection of cells and genes as an AnnData, for scanpy and friends.

Raw counts come from the expression store bucket by bucket, in Arrow batches, and only the wanted rows of
each batch are kept: memory is the output matrix (12 bytes per non-zero while assembling) plus one batch,
whatever the store's size.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

from ..errors import HmbaError
from ..release import layout as R
from .connect import bucket_files, connect, store_of
from .queries import _genes as resolve

if TYPE_CHECKING:
    import anndata

BATCH_ROWS = 1_000_000  # ~12 MB of Arrow per batch


def _cells(con: duckdb.DuckDBPyConnection, species: str, cells) -> pd.DataFrame:
    base = "select * from cells where species = ?"
    if cells is None:
        sql, args = base, [species]
    elif isinstance(cells, str):
        sql, args = f"{base} and ({cells})", [species]
    else:
        labels = [str(c) for c in cells]
        sql, args = f"{base} and cell_label in (select unnest(?))", [species, labels]
    try:
        df = con.execute(f"{sql} order by cell_index", args).df()
    except duckdb.Error as e:
        raise HmbaError(
            f"cells={cells!r}: not a valid condition on the cells table ({' '.join(str(e).split())}); "
            "write SQL such as \"group_name = 'Astrocyte' and donor_sex = 'Female'\"",
            key="cells",
        ) from e
    if cells is not None and not isinstance(cells, str):
        missing = sorted(set(labels) - set(df.cell_label))
        if missing:
            raise HmbaError(
                f"{len(missing):,} cell label(s) not in {species}, e.g. {', '.join(missing[:3])}; "
                "labels look like {cell_barcode}-{barcoded_cell_sample_label}",
                key="cells",
            )
    if df.empty:
        raise HmbaError(f"cells={cells!r}: no {species} cell matches", key="cells")
    return df


def _genes(con: duckdb.DuckDBPyConnection, species: str, genes) -> pd.DataFrame:
    table = con.execute("select * from genes where species = ? order by gene_index", [species]).df()
    if genes is None:
        return table
    seen = pd.Series([str(g) for g in genes])
    if seen.duplicated().any():
        raise HmbaError(
            f"genes: {seen[seen.duplicated()].iloc[0]} is given twice; list each gene once", key="genes"
        )
    notes: list[str] = []
    rows = resolve(con, [str(g) for g in genes], [species], "genes", notes)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return table.set_index("gene_index").loc[[r[4] for r in rows]].reset_index()[table.columns]


def _frame(df: pd.DataFrame, index: str) -> pd.DataFrame:
    """obs/var: indexed by the release's key, text columns with repeats as categoricals (as h5ad stores)."""
    out = df.set_index(index, drop=True)
    out.index = out.index.astype(str)
    for c in out.columns:
        if out[c].dtype == object and out[c].nunique(dropna=True) < max(1, len(out) // 2):
            out[c] = out[c].astype("category")
    return out


def to_anndata(
    store_or_con,
    species: str,
    genes: list[str] | None = None,
    cells: str | list[str] | None = None,
    *,
    dtype=np.float32,
) -> anndata.AnnData:
    """Cells x genes raw counts (CSR) of one species as an AnnData: `obs` from the cells table (indexed by
    cell_label, in matrix order), `var` from the genes table (indexed by gene_identifier, in the order
    given or matrix order).

    `genes`: symbols or identifiers (default: all). `cells`: an SQL condition on the cells table, or a list
    of cell labels (default: all cells of the species).

    Example:
        >>> a = to_anndata("data/demo-store", "Human", ["DRD1"], "group_name = 'BAM'")  # doctest: +SKIP
        >>> a.X.sum(axis=0)  # doctest: +SKIP
    """
    import anndata
    import scipy.sparse as sp

    con = store_or_con if isinstance(store_or_con, duckdb.DuckDBPyConnection) else connect(store_or_con)
    if species not in R.SPECIES:
        raise HmbaError(f"unknown species {species!r}; choose from {', '.join(R.SPECIES)}", key="species")
    obs = _cells(con, species, cells)
    var = _genes(con, species, genes)
    n_species_cells = con.execute("select count(*) from cell_totals where species = ?", [species]).fetchall()[
        0
    ][0]
    row_of = np.full(n_species_cells, -1, dtype=np.int64)
    row_of[obs.cell_index.to_numpy()] = np.arange(len(obs))
    col_of = {int(g): j for j, g in enumerate(var.gene_index)}
    gene_col = np.full(int(var.gene_index.max()) + 1, -1, dtype=np.int64)
    gene_col[list(col_of)] = list(col_of.values())
    rows, cols, data = [], [], []
    where = "" if genes is None else f" where gene_index in ({', '.join(map(str, col_of))})"
    for f in bucket_files(con, species, var.gene_bucket.unique()):
        reader = con.sql(f"select gene_index, cell_index, raw_count from read_parquet(?){where}", params=[f])
        for batch in reader.to_arrow_reader(BATCH_ROWS):
            g = batch.column("gene_index").to_numpy()
            r = row_of[batch.column("cell_index").to_numpy()]
            keep = r >= 0
            rows.append(r[keep].astype(np.int32))
            cols.append(gene_col[g[keep]].astype(np.int32))
            data.append(batch.column("raw_count").to_numpy()[keep].astype(dtype))
    x = sp.csr_matrix(
        (
            np.concatenate(data) if data else np.array([], dtype=dtype),
            (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else []),
        ),
        shape=(len(obs), len(var)),
        dtype=dtype,
    )
    x.sort_indices()
    adata = anndata.AnnData(X=x, obs=_frame(obs, "cell_label"), var=_frame(var, "gene_identifier"))
    # scanpy's conventions: the UMAP in obsm["X_umap"] (NaN for cells without coordinates); var keeps
    # gene_symbol, so `sc.pl.umap(a, color="DRD1", gene_symbols="gene_symbol")` plots by symbol.
    adata.obsm["X_umap"] = obs[["x", "y"]].to_numpy(dtype=np.float64)
    about = dict(con.execute("select key, value from licence").fetchall())
    adata.uns["hmba_db"] = {
        "store": str(store_of(con)),
        "build_id": dict(con.execute("select key, value from store_info").fetchall()).get("build_id", ""),
        "species": species,
        "cells": cells if isinstance(cells, str) else "all" if cells is None else f"{len(obs):,} labels",
        **about,
    }
    return adata
