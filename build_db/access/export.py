"""`to_anndata`: a selection of cells and genes as an AnnData, for scanpy and friends.

Two ways to read the counts, whichever reads fewer rows:
- by gene, from the gene-major files (`expression_counts`), bucket by bucket: every cell of the wanted
  genes is read and the unwanted cells dropped. Best for a few genes.
- by cell, from the cell-major projection (`expression_by_cell`): the selection's cells are a few ranges
  of taxonomy order (`cell_rank`), and only those ranges' row groups are read. Best for all the genes of a
  term, a donor or a region; the rows are placed straight into the CSR matrix (8 bytes per non-zero).
Either way the counts arrive in Arrow batches: memory is the output matrix plus one batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd

from ..errors import HmbaError, StoreError
from ..release import layout as R
from ..store.catalog import views_of
from .connect import StoreOrConnection, as_list, bucket_files, connect, store_of
from .genes import resolve
from .sandbox import check_condition

if TYPE_CHECKING:
    import anndata

BATCH_ROWS = 1_000_000  # ~12 MB of Arrow per batch
# Rank ranges of the selection closer than this many cells are read as one: a row group holds ~40 cells of
# a full-scale nucleus (~2,800 non-zeros each), so a smaller gap saves no reading. At most MAX_RANGES.
MERGE_GAP_CELLS = 64
BY_CELL_BATCH_ROWS = 4_000_000  # ~48 MB of Arrow: fewer, larger batches for the slice copies
MAX_RANGES = 64  # DuckDB tests each row against every range: few, wide ranges
# How much dearer a row read by cell is than one read by gene (the range filter, the copy): a judgement.
BY_CELL_ROW_COST = 2.0
# auto reads by cell only for a selection of at most this many ranges (a term or a few): DuckDB tests every
# row against each range, and at --scale 0.1 the first 10,000 cells (64 ranges, less than half the rows)
# took 13.2 s by cell against 7.8 s by gene.
AUTO_MAX_RANGES = 8


def cells_condition(con: duckdb.DuckDBPyConnection, cells: str) -> str:
    """A user's condition on the cells table, vetted as one expression over its columns (parenthesised: it
    cannot escape the species it is ANDed to); an HmbaError naming the problem otherwise."""
    columns = {d[0] for d in con.execute("select * from cells limit 0").description}
    return check_condition(cells, columns)


def _cells(con: duckdb.DuckDBPyConnection, species: str, cells) -> pd.DataFrame:
    sql = "select * from cells where species = ?"
    args: list[object] = [species]
    if isinstance(cells, str):
        sql += f" and {cells_condition(con, cells)}"
    elif cells is not None:
        labels = [str(c) for c in cells]
        sql += " and cell_label in (select unnest(?))"
        args.append(labels)
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
    rows = resolve(con, [str(g) for g in genes], [species], notes=notes)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return table.set_index("gene_index").loc[[r.gene_index for r in rows]].reset_index()[table.columns]


def _by_cell(con, species: str, obs: pd.DataFrame, var: pd.DataFrame, genes, read: str) -> bool:
    """Whether to read the cell-major projection: asked for, or (auto) it holds fewer rows to read."""
    if read not in ("auto", "by_gene", "by_cell"):
        raise HmbaError(f"read={read!r}; choose auto, by_gene or by_cell", key="read")
    has_view = "expression_by_cell" in views_of(con)
    if read == "by_cell" and not has_view:
        raise HmbaError(
            f"{store_of(con)}: no expression_by_cell (built by an older hmba-db); rebuild the store, or use "
            "read='by_gene'",
            key="read",
        )
    if read != "auto":
        return read == "by_cell"
    if not has_view:
        return False
    n_genes = con.execute("select count(*) from genes where species = ?", [species]).fetchall()[0][0]
    per_rank = con.execute(
        "select coalesce(genes_detected, 0) as n from cells where species = ? order by cell_rank", [species]
    ).fetchnumpy()["n"]
    before = np.concatenate([[0], np.cumsum(per_rank, dtype=np.int64)])
    by_gene = float(before[-1]) * len(var) / max(1, n_genes)  # the wanted genes' rows, at the average gene's
    # The rows of the rank ranges read, unwanted cells inside them included, each row costing more (the
    # range filter): a selection scattered over the taxonomy (every 10th cell, a donor) reads by gene.
    ranges = np.array(_rank_ranges(obs.cell_rank.to_numpy()), dtype=np.int64).reshape(-1, 2)
    by_cell = float((before[ranges[:, 1] + 1] - before[ranges[:, 0]]).sum())
    return len(ranges) <= AUTO_MAX_RANGES and by_cell * BY_CELL_ROW_COST < by_gene


def _rank_ranges(ranks: np.ndarray) -> list[tuple[int, int]]:
    """The selection's cell ranks as at most MAX_RANGES inclusive ranges, gaps under MERGE_GAP_CELLS
    closed (the extra cells are read and dropped)."""
    ranks = np.unique(ranks)
    if len(ranks) == 0:
        return []
    gaps = np.diff(ranks)
    cut = np.flatnonzero(gaps > MERGE_GAP_CELLS)
    if len(cut) >= MAX_RANGES:  # keep the widest gaps open
        cut = np.sort(cut[np.argsort(gaps[cut], kind="stable")[-(MAX_RANGES - 1) :]])
    starts = np.concatenate([[0], cut + 1])
    ends = np.concatenate([cut, [len(ranks) - 1]])
    return [(int(ranks[a]), int(ranks[b])) for a, b in zip(starts, ends, strict=True)]


def _read_by_cell(con, species, obs, row_of, gene_col, n_vars: int, dtype):
    """CSR straight from the cell-major rows. Each cell's genes arrive together and sorted, so with all
    genes the row lengths are known beforehand (cells.genes_detected) and every cell's run is copied into
    its row as one slice (~90k slices for 283M non-zeros, against 10 passes per non-zero element-wise)."""
    import scipy.sparse as sp

    ranges = _rank_ranges(obs.cell_rank.to_numpy())
    where = " or ".join(f"cell_rank between {a} and {b}" for a, b in ranges)
    reader = con.sql(
        f"select cell_index, gene_index, raw_count from expression_by_cell where species = ? and ({where})",
        params=[species],
    ).to_arrow_reader(BY_CELL_BATCH_ROWS)
    n_obs = len(obs)
    batches: Iterable[tuple]
    if gene_col is None:
        lengths = obs.genes_detected.fillna(0).to_numpy(np.int64)
        batches = (
            (
                b.column("cell_index").to_numpy(),
                b.column("gene_index").to_numpy(),
                b.column("raw_count").to_numpy(),
            )
            for b in reader
        )
    else:  # a subset of genes: row lengths only known once read; keep the rows (12 bytes each), then place
        kept = [_kept(b, row_of, gene_col) for b in reader]
        lengths = np.bincount(np.concatenate([k[0] for k in kept]), minlength=n_obs)
        batches = kept
        row_of = np.arange(n_obs)  # _kept already gave output rows
    indptr = np.zeros(n_obs + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=dtype)
    filled = indptr[:-1].copy()  # where each row's next value goes
    for cells, genes, values in batches:
        m = len(cells)
        if m == 0:
            continue
        starts = np.flatnonzero(np.concatenate([[True], cells[1:] != cells[:-1]]))
        ends = np.append(starts[1:], m)
        rows = row_of[cells[starts]]
        for a, b, r in zip(starts.tolist(), ends.tolist(), rows.tolist(), strict=True):
            if r < 0:  # a cell inside a merged range that the selection leaves out
                continue
            at = int(filled[r])
            if at + b - a > indptr[r + 1]:
                raise StoreError(
                    f"{store_of(con)}: cell {obs.cell_label.iloc[r]} holds more counts in expression_by_cell "
                    "than cells.genes_detected says; run hmba-db verify"
                )
            indices[at : at + b - a] = genes[a:b]
            data[at : at + b - a] = values[a:b]
            filled[r] = at + b - a
    if not np.array_equal(filled, indptr[1:]):
        bad = int(np.flatnonzero(filled != indptr[1:])[0])
        raise StoreError(
            f"{store_of(con)}: cell {obs.cell_label.iloc[bad]} has {filled[bad] - indptr[bad]:,} counts in "
            f"expression_by_cell, {indptr[bad + 1] - indptr[bad]:,} expected; run hmba-db verify"
        )
    return sp.csr_matrix((data, indices, indptr), shape=(n_obs, n_vars))


def _kept(batch, row_of: np.ndarray, gene_col: np.ndarray):
    """A batch's rows of selected cells and genes: output row, output column, count."""
    r = row_of[batch.column("cell_index").to_numpy()]
    g = batch.column("gene_index").to_numpy()
    cols = gene_col[np.minimum(g, len(gene_col) - 1)]
    keep = (r >= 0) & (cols >= 0) & (g < len(gene_col))
    v = batch.column("raw_count").to_numpy()
    if keep.all():
        return r, cols.astype(np.int32), v
    return r[keep], cols[keep].astype(np.int32), v[keep]


def _read_by_gene(con, species, var, row_of, gene_col, some_genes: bool, n_obs: int, dtype):
    import scipy.sparse as sp

    col_of = np.flatnonzero(gene_col >= 0)
    rows, cols, data = [], [], []
    where = "" if not some_genes else f" where gene_index in ({', '.join(map(str, col_of))})"
    for f in bucket_files(con, species, var.gene_bucket.unique()):
        reader = con.sql(f"select gene_index, cell_index, raw_count from read_parquet(?){where}", params=[f])
        for batch in reader.to_arrow_reader(BATCH_ROWS):
            g = batch.column("gene_index").to_numpy()
            r = row_of[batch.column("cell_index").to_numpy()]
            keep = r >= 0
            rows.append(r[keep].astype(np.int32))
            cols.append(gene_col[g[keep]].astype(np.int32))
            data.append(batch.column("raw_count").to_numpy()[keep].astype(dtype))
    return sp.csr_matrix(
        (
            np.concatenate(data) if data else np.array([], dtype=dtype),
            (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else []),
        ),
        shape=(n_obs, len(var)),
        dtype=dtype,
    )


def _frame(df: pd.DataFrame, index: str) -> pd.DataFrame:
    """obs/var: indexed by the release's key, text columns with repeats as categoricals (as h5ad stores)."""
    out = df.set_index(index, drop=True)
    out.index = out.index.astype(str)
    for c in out.columns:
        if out[c].dtype == object and out[c].nunique(dropna=True) < max(1, len(out) // 2):
            out[c] = out[c].astype("category")
    return out


def estimate_nnz(
    con: duckdb.DuckDBPyConnection,
    species: str,
    genes: list[str] | None = None,
    cells: str | list[str] | None = None,
) -> tuple[int, int, int]:
    """(cells, genes, non-zeros) of a to_anndata selection, counted before reading it: the cells' genes
    detected for all genes, the genes' stored rows among those cells otherwise (their row groups only).
    `cells`: a condition on the cells table, or cell labels, as to_anndata takes them."""
    species = R.species_named(species)
    genes = as_list(genes, "genes")
    args: list[object] = [species]
    if isinstance(cells, str):
        where = f" and {cells_condition(con, cells)}"
    elif cells is not None:
        where = " and cell_label in (select unnest(?::varchar[]))"
        args.append([str(c) for c in cells])
    else:
        where = ""
    ((n_cells, detected),) = con.execute(
        f"select count(*), coalesce(sum(genes_detected), 0) from cells where species = ?{where}", args
    ).fetchall()
    if genes is None:
        ((n_genes,),) = con.execute("select count(*) from genes where species = ?", [species]).fetchall()
        return int(n_cells), int(n_genes), int(detected)
    var = _genes(con, species, genes)
    files = bucket_files(con, species, var.gene_bucket.unique())
    ((nnz,),) = con.execute(
        f"select count(*) from read_parquet(?) where gene_index in ({', '.join(map(str, var.gene_index))}) "
        f"and cell_index in (select cell_index from cells where species = ?{where})",
        [files, *args],
    ).fetchall()
    return int(n_cells), len(var), int(nnz)


def to_anndata(
    store_or_con: StoreOrConnection,
    species: str,
    genes: list[str] | None = None,
    cells: str | list[str] | None = None,
    *,
    dtype: type = np.float32,
    read: str = "auto",
) -> anndata.AnnData:
    """Cells x genes raw counts (CSR) of one species as an AnnData: `obs` from the cells table (indexed by
    cell_label, in matrix order), `var` from the genes table (indexed by gene_identifier, in the order
    given or matrix order).

    `genes`: symbols or identifiers (default: all). `cells`: an SQL condition on the cells table, or a list
    of cell labels (default: all cells of the species). `read`: "auto" (the layout that reads fewer rows),
    "by_gene" or "by_cell" (module docstring).

    Example:
        >>> a = to_anndata("data/demo-store", "Human", ["DRD1"], "group_name = 'BAM'")  # doctest: +SKIP
        >>> a.X.sum(axis=0)  # doctest: +SKIP
    """
    import anndata

    con = store_or_con if isinstance(store_or_con, duckdb.DuckDBPyConnection) else connect(store_or_con)
    species = R.species_named(species)
    genes = as_list(genes, "genes")  # "GAD1" is one gene
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
    try:
        if _by_cell(con, species, obs, var, genes, read):
            x = _read_by_cell(
                con, species, obs, row_of, gene_col if genes is not None else None, len(var), dtype
            )
        else:
            x = _read_by_gene(con, species, var, row_of, gene_col, genes is not None, len(obs), dtype)
    except (duckdb.IOException, duckdb.InvalidInputException) as e:  # a missing, truncated, damaged file
        raise StoreError(
            f"{store_of(con)}: cannot read its expression files ({' '.join(str(e).split())}); "
            "run hmba-db verify, then rebuild the store"
        ) from e
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
