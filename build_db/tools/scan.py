"""The baseline: answer a gene-set question by scanning a release's log2 h5ad, as users do today.

This is how the official abc_atlas_access notebooks get expression: read the whole log2 matrix in
8,192-row chunks and keep the requested gene columns. It needs no store, so `make demo` can show a real
answer from a fresh release, and later benchmarks and tests use it as the reference the store must match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import HmbaError
from ..release import layout as R
from ..release.h5ad import CsrReader
from ..release.manifest import layout

CHUNK_ROWS = 8192  # the notebooks' chunk size


def cell_terms(release: Path, level: str = "Group") -> pd.DataFrame:
    """cell_label -> term name and order at one taxonomy level, for assigned cells (from the release CSVs)."""
    if level not in R.LEVELS:
        raise HmbaError(f"unknown taxonomy level {level!r}; choose from {', '.join(R.LEVELS)}")
    release = Path(release)
    lay = layout(release)
    members = pd.read_csv(
        release / lay.csv(R.CELL_MEMBERSHIP), dtype=str, usecols=["cell_label", "cluster_alias"]
    )
    tree = pd.read_csv(release / lay.csv(R.CLUSTER_MEMBERSHIP), dtype=str)
    tree = tree[tree.cluster_annotation_term_set_name == level]
    terms = pd.read_csv(release / lay.csv(R.TERM), dtype=str, usecols=["label", "term_order"])
    tree = tree.merge(terms, left_on="cluster_annotation_term_label", right_on="label")
    out = members.merge(
        tree[["cluster_alias", "cluster_annotation_term_name", "term_order"]], on="cluster_alias"
    )
    out = out.rename(columns={"cluster_annotation_term_name": level.lower(), "term_order": "term_order"})
    out["term_order"] = out.term_order.astype(int)
    return out.set_index("cell_label")[[level.lower(), "term_order"]]


def resolve_symbols(release: Path, species: str, symbols: list[str]) -> dict[str, int]:
    """Gene symbol -> column index in the species matrix (first identifier when a symbol repeats).

    Joined on the gene identifier, never on row position: the gene table may be one `gene.csv` for every
    species, and its order is not promised to be the matrix's.
    """
    release = Path(release)
    lay = layout(release)
    genes = pd.read_csv(release / lay.csv(R.GENE_TABLES[species]), dtype=str, keep_default_na=False)
    with CsrReader(release / lay.matrix(species, "log2")) as m:
        column = {g: i for i, g in enumerate(m.var_names())}
    genes = genes[genes.gene_identifier.isin(column)]
    out = {}
    for s in symbols:
        hits = genes.gene_identifier[genes.gene_symbol == s]
        if len(hits) == 0:
            raise HmbaError(f"{lay.csv(R.GENE_TABLES[species])}: no gene with symbol {s!r} in {species}")
        out[s] = column[hits.iloc[0]]
    return out


def mean_log2_by_term(release: Path, species: str, symbols: list[str], level: str = "Group") -> pd.DataFrame:
    """Mean log2(CPM+1) of each gene per taxonomy term over all assigned cells, rows in taxonomy order.

    Scans the whole log2 h5ad in 8,192-row chunks, like the official notebooks do.
    """
    release = Path(release)
    cols = resolve_symbols(release, species, symbols)
    terms = cell_terms(release, level)
    with CsrReader(release / layout(release).matrix(species, "log2")) as m:
        labels = m.obs_names()
        indptr = m.indptr()
        names = terms[level.lower()].reindex(labels)
        assigned = names.notna().to_numpy()
        values = np.zeros((len(labels), len(cols)), dtype=np.float64)
        picks = np.array(list(cols.values()))
        for start in range(0, m.shape[0], CHUNK_ROWS):
            stop = min(m.shape[0], start + CHUNK_ROWS)
            values[start:stop] = m.rows(start, stop, indptr)[:, picks].toarray()
    df = pd.DataFrame(values[assigned], columns=list(cols))
    df[level.lower()] = names.to_numpy()[assigned]
    order = terms.drop_duplicates(level.lower()).set_index(level.lower())["term_order"]
    means = df.groupby(level.lower()).mean()
    means["n_cells"] = df.groupby(level.lower()).size()
    return means.loc[sorted(means.index, key=lambda t: order[t])]
