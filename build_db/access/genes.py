"""Gene symbols to genes (gene_index, gene_bucket, identifier) for one species, with closest-match errors,
and the per-store-build cache the access side keeps."""

from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass

import duckdb

from ..errors import HmbaError
from ..release import layout as R
from .connect import store_of


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
    if isinstance(symbols, str):  # one gene given as a string, not its letters
        symbols = [symbols]
    find = symbol_finder(con, species)
    found = [find(s) for s in symbols]
    missing = [s for s, g in zip(symbols, found, strict=True) if g is None]
    if missing:
        hints = [f"{s} (closest: {', '.join(c)})" if (c := closest(con, species, s)) else s for s in missing]
        raise HmbaError(f"{species}: no gene with symbol {'; '.join(hints)}")
    return found


def symbol_finder(con: duckdb.DuckDBPyConnection, species: str):
    """A function: symbol -> the gene it names, exactly as written, else the one symbol equal to it ignoring
    case (drd1 is DRD1; a case-folded form shared by two symbols matches neither); None when unknown.
    Built once per call site: one look-up of the per-build cache, whatever the number of symbols."""
    key = cache_key(con, "finder", species)
    if key not in CACHE:
        table = symbol_table(con, species)
        folded: dict[str, str | None] = {}
        for symbol in table:
            folded[symbol.casefold()] = None if symbol.casefold() in folded else symbol
        CACHE[key] = (table, folded)
    table, folded = CACHE[key]

    def find(token: str) -> GeneMatch | None:
        if token in table:
            return table[token]
        symbol = folded.get(str(token).casefold())
        return table[symbol] if symbol else None

    return find


def closest(con: duckdb.DuckDBPyConnection, species: str, token: str, n: int = 3) -> list[str]:
    """Up to n known symbols nearest to a token, ignoring case."""
    table = symbol_table(con, species)
    by_fold = {s.casefold(): s for s in sorted(table)}
    return [
        by_fold[c] for c in difflib.get_close_matches(str(token).casefold(), list(by_fold), n=n, cutoff=0.6)
    ]


# Per store build (path and built_at): symbol tables here and the analyses' per-cell term arrays, loaded
# once per process.
CACHE: dict[tuple, object] = {}


# Per connection, the build it reads (a connection stays on one snapshot for its life): two round trips to
# DuckDB saved per look-up, which is most of resolving a few symbols.
_BUILD_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cache_key(con: duckdb.DuckDBPyConnection, *parts) -> tuple:
    if con not in _BUILD_OF:
        # The snapshot folder names the build; the build id (or, before snapshots, the build time) as well.
        built = con.execute(
            "select value from store_info where key in ('build_id', 'built_at') order by key"
        ).fetchall()
        _BUILD_OF[con] = (str(store_of(con)), *(b[0] for b in built))
    return (*_BUILD_OF[con], *parts)


def symbol_table(con: duckdb.DuckDBPyConnection, species: str) -> dict[str, GeneMatch]:
    key = cache_key(con, "symbols", species)
    if key not in CACHE:
        rows = con.execute(
            "select gene_symbol, min(gene_index), arg_min(gene_bucket, gene_index), "
            "arg_min(gene_identifier, gene_index), count(*) from genes "
            "where species = ? and gene_symbol is not null group by 1",
            [species],
        ).fetchall()
        CACHE[key] = {r[0]: GeneMatch(r[0], int(r[1]), int(r[2]), r[3], int(r[4])) for r in rows}
    return CACHE[key]
