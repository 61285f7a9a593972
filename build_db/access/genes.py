"""Gene symbols to genes (gene_index, gene_bucket, identifier) for one species, with closest-match errors,
and the per-store-build cache the access side keeps."""

from __future__ import annotations

import difflib
import itertools
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import duckdb

from ..errors import HmbaError
from ..release import layout as R
from .connect import as_list, store_of


@dataclass(frozen=True)
class GeneMatch:
    symbol: str
    gene_index: int
    gene_bucket: int
    gene_identifier: str
    n_identifiers: int  # > 1 when the symbol names several genes; the first (lowest index) is used


class Resolved(NamedTuple):
    """One asked-for gene in one species: a row of a named query's `selected_genes`."""

    species: str
    order: int  # the position of the symbol or identifier in what was asked
    symbol: str
    identifier: str
    gene_index: int
    gene_bucket: int


def resolve(
    con: duckdb.DuckDBPyConnection,
    tokens: list[str],
    species: list[str],
    *,
    what: str = "genes",
    notes: list[str] | None = None,
) -> list[Resolved]:
    """The one gene resolver: each token a symbol (any case) or else an identifier, in each species.

    A token no species has is an error listing the closest symbols; one that some species lack, or a
    symbol naming several genes (the lowest index is used), adds a line to `notes`. `what` names the
    parameter in those lines (`--param genes` for the CLI, `genes` for Python). `con` needs only the store's
    `genes` table (Spark's resolver is an in-memory DuckDB holding it).

    Example:
        >>> resolve(connect("data/demo-store"), ["DRD1", "ENSG00000149295"], ["Human"])  # doctest: +SKIP
    """
    notes = [] if notes is None else notes
    key = what.split()[-1]
    if not tokens:
        raise HmbaError(f"{what}: give at least one gene symbol", key=key)
    rows: list[Resolved] = []
    unknown: dict[str, list[str]] = {t: [] for t in tokens}
    for s in species:
        find = symbol_finder(con, s)
        found = {t: find(t) for t in tokens}
        ids = identifier_table(con, s) if any(found[t] is None for t in tokens) else {}
        for order, t in enumerate(tokens):
            if found[t] is not None:
                g = found[t]
                if g.n_identifiers > 1:
                    others = con.execute(
                        "select gene_identifier from genes where species = ? and gene_symbol = ? "
                        "order by gene_index",
                        [s, g.symbol],
                    ).fetchall()
                    notes.append(
                        f"{s}: {g.symbol} names {g.n_identifiers} genes ({', '.join(r[0] for r in others)}); "
                        f"using {g.gene_identifier}, give an identifier to choose another"
                    )
                rows.append(Resolved(s, order, g.symbol, g.gene_identifier, g.gene_index, g.gene_bucket))
            elif t in ids:
                index, bucket, symbol = ids[t]
                rows.append(Resolved(s, order, symbol or t, t, int(index), int(bucket)))
            else:
                unknown[t].append(s)
    missing_everywhere = [t for t, where in unknown.items() if len(where) == len(species)]
    if missing_everywhere:
        hints = []
        for t in missing_everywhere[:HINTED]:
            close = closest(con, species[0], t)
            hints.append(f"{t} (closest: {', '.join(close)})" if close else t)
        more = len(missing_everywhere) - HINTED
        raise HmbaError(
            f"{what}: no gene with symbol or identifier {'; '.join(hints)}"
            + (f" and {more:,} more" if more > 0 else "")
            + f" in {', '.join(species)}",
            key=key,
        )
    for t, where in unknown.items():
        if where:
            notes.append(f"{t}: no such gene in {', '.join(where)}; its rows there are missing")
    return rows


def resolve_genes(con: duckdb.DuckDBPyConnection, species: str, symbols: list[str]) -> list[GeneMatch]:
    """Genes of one species by symbol (any case) or identifier, in the order given: `resolve` for one
    species, as GeneMatch (with how many genes the symbol names).

    Example:
        >>> resolve_genes(connect("data/demo-store"), "Human", ["DRD1"])  # doctest: +SKIP
        [GeneMatch(symbol='DRD1', gene_index=3201, gene_bucket=3, gene_identifier='ENSG...', n_identifiers=1)]
    """
    species = R.species_named(species)
    if isinstance(symbols, str):  # one gene given as a string, not its letters
        symbols = [symbols]
    table = symbol_table(con, species)
    return [
        GeneMatch(
            r.symbol,
            r.gene_index,
            r.gene_bucket,
            r.identifier,
            table[r.symbol].n_identifiers if r.symbol in table else 1,
        )
        for r in resolve(con, list(symbols), [species])
    ]


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
    """Up to n known symbols nearest to a token, ignoring case: difflib's ratio on the few symbols that
    share most trigrams with it (the autocomplete's index), not on all ~36,000 (0.1 s a token that way;
    600 made-up genes in one request held a server connection for 40 s)."""
    index = _gene_index(con, species)
    out: list[str] = []
    for i in index.close(str(token).casefold(), n * 4, cutoff=0.6):
        symbol = index.genes[i][1]
        if symbol and symbol not in out:
            out.append(symbol)
    return out[:n]


# Per store build (path and built_at): symbol tables here and the analyses' per-cell term arrays, loaded
# once per process.
CACHE: dict[tuple, Any] = {}


# Per connection, the build it reads (a connection stays on one snapshot for its life): two round trips to
# DuckDB saved per look-up, which is most of resolving a few symbols.
_BUILD_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def forget(root: str) -> None:
    """Drop what the cache holds for one store snapshot (a server moving to a newer build)."""
    for key in [k for k in CACHE if k and k[0] == str(root)]:
        CACHE.pop(key, None)


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


def identifier_table(con: duckdb.DuckDBPyConnection, species: str) -> dict[str, tuple[int, int, str | None]]:
    """identifier -> (gene_index, gene_bucket, symbol) of one species, once per build: a token that is not a
    symbol is looked up here, not by a query each time (a symbol some species lack is one such token)."""
    key = cache_key(con, "identifiers", species)
    if key not in CACHE:
        rows = con.execute(
            "select gene_identifier, gene_index, gene_bucket, gene_symbol from genes where species = ?",
            [species],
        ).fetchall()
        CACHE[key] = {r[0]: (int(r[1]), int(r[2]), r[3]) for r in rows}
    return CACHE[key]


HINTED = 5  # unknown genes given their closest symbols in an error; the rest are counted
PREFIX_HITS = 200  # prefix matches ranked per species: "ncbigene:" alone matches every Macaque gene


@dataclass(frozen=True)
class GeneHit:
    species: str
    gene_identifier: str
    gene_symbol: str | None
    gene_index: int
    match: str  # "exact", "prefix", "contains" or "close"


class _GeneIndex:
    """One species' genes for autocomplete: casefolded symbols and identifiers sorted for prefix look-ups
    (bisect), and the symbols' trigrams for the closest matches (difflib over the few that share one)."""

    def __init__(self, rows: list[tuple]):
        self.genes = [(ident, sym, int(idx)) for ident, sym, idx in rows]
        keys = []
        for i, (ident, sym, _) in enumerate(self.genes):
            keys.append((ident.casefold(), i))
            if sym:
                keys.append((sym.casefold(), i))
        keys.sort()
        self.keys = [k for k, _ in keys]
        self.of = [i for _, i in keys]
        # Every symbol in one string, so "contains" is str.find at C speed, not a Python loop over 36k.
        folded = [(sym or "").casefold() for _, sym, _ in self.genes]
        self.blob = "\n".join(folded)
        self.starts = list(itertools.accumulate((len(f) + 1 for f in folded[:-1]), initial=0))
        self.trigrams: dict[str, list[int]] = {}
        for i, (_, sym, _) in enumerate(self.genes):
            for t in _trigrams(sym.casefold()) if sym else ():  # a gene without a symbol is never close
                self.trigrams.setdefault(t, []).append(i)

    def prefix(self, q: str, n: int) -> list[int]:
        """At most n genes whose symbol or identifier starts with q, in key order."""
        import bisect

        lo = bisect.bisect_left(self.keys, q)
        out = []
        for j in range(lo, min(lo + n, len(self.keys))):
            if not self.keys[j].startswith(q):
                break
            out.append(self.of[j])
        return out

    def contains(self, q: str, n: int) -> list[int]:
        import bisect

        out: list[int] = []
        at = self.blob.find(q)
        while at >= 0 and len(out) < n:
            i = bisect.bisect_right(self.starts, at) - 1
            out.append(i)
            at = self.blob.find(q, self.starts[i + 1] if i + 1 < len(self.starts) else len(self.blob))
        return out

    def close(self, q: str, n: int, cutoff: float = 0.5) -> list[int]:
        shared: dict[int, int] = {}
        for t in _trigrams(q):
            for i in self.trigrams.get(t, ()):
                shared[i] = shared.get(i, 0) + 1
        best = sorted(shared, key=lambda i: -shared[i])[:200]  # difflib on these few only
        scored = []
        for i in best:
            sym = self.genes[i][1].casefold()
            r = difflib.SequenceMatcher(None, q, sym).ratio()
            if r >= cutoff:
                scored.append((-r, len(sym), sym, i))
        return [i for *_, i in sorted(scored)[:n]]


def _trigrams(text: str) -> set[str]:
    padded = f"  {text} "
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


def _gene_index(con: duckdb.DuckDBPyConnection, species: str) -> _GeneIndex:
    key = cache_key(con, "gene_index", species)
    if key not in CACHE:
        rows = con.execute(
            "select gene_identifier, gene_symbol, gene_index from genes where species = ? "
            "order by gene_index",
            [species],
        ).fetchall()
        CACHE[key] = _GeneIndex(rows)
    return CACHE[key]


def search_genes(
    con: duckdb.DuckDBPyConnection, q: str, species: list[str], limit: int = 20
) -> list[GeneHit]:
    """Autocomplete over gene symbols and identifiers of the given species, ignoring case: exact matches
    first, then prefix matches (shorter first), then symbols containing the text, then the closest symbols
    (a typo: `DRDD1` finds DRD1). Each hit names its species, identifier and symbol.

    Example:
        >>> search_genes(connect("data/demo-store"), "drd", ["Human"], 5)  # doctest: +SKIP
    """
    q = str(q).strip().casefold()
    species = as_list(species, "species") or []  # "Human" is one species
    if not q:
        return []
    ranked: list[tuple[tuple, GeneHit]] = []
    indexes: list[tuple[int, str, _GeneIndex, set[int]]] = [
        (order, s, _gene_index(con, s), set()) for order, s in enumerate(species)
    ]

    def add(order: int, s: str, index: _GeneIndex, seen: set, i: int, match: str, rank: int, near=0) -> None:
        if i not in seen:
            seen.add(i)
            ident, sym, gene_index = index.genes[i]
            # Ranked by what matched: the identifier for "ncbigene:1002", else the symbol; the closest
            # matches by their place in difflib's order (most similar first), the others shorter first.
            name = ident.casefold() if ident.casefold().startswith(q) else (sym or ident).casefold()
            key = (rank, near or len(name), name, order)
            ranked.append((key, GeneHit(s, ident, sym, gene_index, match)))

    for order, s, index, seen in indexes:
        for i in index.prefix(q, PREFIX_HITS):
            ident, sym, _ = index.genes[i]
            exact = q in (ident.casefold(), (sym or "").casefold())
            add(order, s, index, seen, i, "exact" if exact else "prefix", 0 if exact else 1)
    found_exact = any(hit.match == "exact" for _, hit in ranked)
    for order, s, index, seen in indexes:
        if len(seen) < limit and len(q) >= 2:
            for i in index.contains(q, limit):
                add(order, s, index, seen, i, "contains", 2)
        if len(seen) < limit and len(q) >= 3 and not found_exact:  # a typo: nothing is spelt so
            for near, i in enumerate(index.close(q, limit), start=1):
                add(order, s, index, seen, i, "close", 3, near)
    ranked.sort(key=lambda r: r[0])
    return [hit for _, hit in ranked[:limit]]
