"""Common analyses over a store's catalog, returning pandas DataFrames.

Gene symbols are resolved to literal (gene_index, gene_bucket) pairs first, so the expression scan reads
only those genes' folders and row groups.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import duckdb
import pandas as pd

from . import release as R
from . import schema as S
from .errors import HmbaError


@dataclass(frozen=True)
class GeneMatch:
    symbol: str
    gene_index: int
    gene_bucket: int
    gene_identifier: str
    n_identifiers: int  # > 1 when the symbol names several genes; the first (lowest index) is used


def resolve_genes(con: duckdb.DuckDBPyConnection, species: str, symbols: list[str]) -> list[GeneMatch]:
    """Symbol -> gene, for one species. Unknown symbols are an error listing the closest known ones.

    Example:
        >>> resolve_genes(connect("data/demo-store"), "Human", ["DRD1"])  # doctest: +SKIP
        [GeneMatch(symbol='DRD1', gene_index=3201, gene_bucket=3, gene_identifier='ENSG...', n_identifiers=1)]
    """
    if species not in R.SPECIES:
        raise HmbaError(f"unknown species {species!r}; choose from {', '.join(R.SPECIES)}")
    rows = con.execute(
        "select gene_symbol, min(gene_index), arg_min(gene_bucket, gene_index), "
        "arg_min(gene_identifier, gene_index), "
        "count(*) from genes where species = ? and gene_symbol in (select unnest(?::varchar[])) group by 1",
        [species, list(symbols)],
    ).fetchall()
    found = {r[0]: GeneMatch(r[0], int(r[1]), int(r[2]), r[3], int(r[4])) for r in rows}
    missing = [s for s in symbols if s not in found]
    if missing:
        known = [
            r[0]
            for r in con.execute(
                "select distinct gene_symbol from genes where species = ? and gene_symbol is not null",
                [species],
            ).fetchall()
        ]
        hints = []
        for s in missing:
            close = difflib.get_close_matches(s, known, n=3, cutoff=0.6)
            hints.append(f"{s} (closest: {', '.join(close)})" if close else s)
        raise HmbaError(f"{species}: no gene with symbol {'; '.join(hints)}")
    return [found[s] for s in symbols]


def mean_expression(
    con: duckdb.DuckDBPyConnection, species: str, symbols: list[str], level: str = "Group"
) -> pd.DataFrame:
    """Mean log2(CPM+1) and fraction of expressing cells of each gene per taxonomy term, over the cells
    assigned at that level; rows in taxonomy order, one column pair per gene plus n_cells.

    Example:
        >>> mean_expression(connect("data/demo-store"), "Human", ["DRD1", "DRD2"], "Group")  # doctest: +SKIP
    """
    if level not in R.LEVELS:
        raise HmbaError(f"unknown taxonomy level {level!r}; choose from {', '.join(R.LEVELS)}")
    genes = resolve_genes(con, species, symbols)
    p = S.LEVEL_PREFIX[level]
    index_list = ", ".join(str(g.gene_index) for g in genes)
    bucket_list = ", ".join(str(b) for b in sorted({g.gene_bucket for g in genes}))
    long = con.execute(
        f"""
        with assigned as (
            select cell_index, {p}_name as term, {p}_order as term_order
            from cells where species = $species and {p}_name is not null
        ),
        sizes as (
            select term, any_value(term_order) as term_order, count(*) as n_cells from assigned group by term
        ),
        sums as (
            select a.term, e.gene_index, sum(e.log2_cpm) as s, count(*) as n_expressing
            from expression e join assigned a using (cell_index)
            where e.species = $species and e.gene_bucket in ({bucket_list}) and e.gene_index in ({index_list})
            group by all
        )
        select z.term, z.term_order, z.n_cells, s.gene_index, s.s, s.n_expressing
        from sizes z left join sums s using (term)
        """,
        {"species": species},
    ).df()
    terms = long.drop_duplicates("term").sort_values("term_order").set_index("term")
    out = pd.DataFrame(index=terms.index)
    out.index.name = level.lower()
    hits = long.dropna(subset=["gene_index"])
    for g in genes:
        mine = hits[hits.gene_index == g.gene_index].set_index("term")
        out[g.symbol] = (mine["s"].reindex(out.index).fillna(0.0) / terms["n_cells"]).astype(float)
    for g in genes:
        mine = hits[hits.gene_index == g.gene_index].set_index("term")
        out[f"{g.symbol}_fraction"] = (
            mine["n_expressing"].reindex(out.index).fillna(0) / terms["n_cells"]
        ).astype(float)
    out["n_cells"] = terms["n_cells"].astype(int)
    out.attrs["genes"] = genes
    return out
