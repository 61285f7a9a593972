"""The recipes at the top of docs/sql.md, each run as written on the tiny store and held equal to the same
numbers computed by numpy from the source matrix (the release's raw h5ad): a recipe that answers wrong, or
a new recipe without a reference, fails here."""

from __future__ import annotations

import re
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from build_db.release import layout as R

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql.md"
RECIPES = dict(
    (m.group(1), m.group(0).split("\n", 1)[1])
    for m in re.finditer(r"-- recipe: ([a-z-]+)\n.*?(?=\n```)", DOC.read_text(), flags=re.S)
)


def _matrix(release, species):
    """Raw counts (cells x genes, dense: the tiny release is small) and log2(CPM + 1), from the h5ad."""
    x = ad.read_h5ad(release / R.matrix_path(species, "raw")).X.toarray().astype(np.float64)
    total = x.sum(axis=1, keepdims=True)
    return x, np.log2(x / total * 1e6 + 1)


def _cells(con, species):
    return con.execute("select * from cells where species = ? order by cell_index", [species]).df()


def _gene(con, species, symbol):
    return con.execute(
        "select min(gene_index) from genes where species = ? and gene_symbol = ?", [species, symbol]
    ).fetchall()[0][0]


def _terms(con, level):
    return con.execute(
        "select term_name, term_order from taxonomy_terms where level = ? order by term_order", [level]
    ).df()


def mean_per_term(con, release):
    x, log2 = _matrix(release, "Human")
    cells, g = _cells(con, "Human"), _gene(con, "Human", "DRD1")
    rows = []
    for name in _terms(con, "Subclass").term_name:
        members = (cells.subclass_name == name).to_numpy()
        v = log2[members, g]
        n, k = int(members.sum()), int((v > 0).sum())
        rows.append(
            (name, n > 0, n, v.mean() if n else None, v.sum() / k if k else None, k / n if n else None)
        )
    return rows


def coexpression(con, release):
    x, _ = _matrix(release, "Human")
    cells = _cells(con, "Human")
    d1, d2 = x[:, _gene(con, "Human", "DRD1")] > 0, x[:, _gene(con, "Human", "DRD2")] > 0
    rows = []
    for name in cells.subclass_name.dropna().unique():
        m = (cells.subclass_name == name).to_numpy()
        rows.append((name, int(m.sum()), int((m & d1).sum()), int((m & d2).sum()), int((m & d1 & d2).sum())))
    return sorted(rows, key=lambda r: (-r[4], r[0]))


def every_gene_of_a_selection(con, release):
    x, _ = _matrix(release, "Human")
    cells = _cells(con, "Human")
    m = ((cells.subclass_name == "STR D1 MSN") & (cells.region_of_interest_label == "CaB")).to_numpy()
    symbols = con.execute("select gene_symbol from genes where species = 'Human' order by gene_index").df()
    umis, nnz = x[m].sum(axis=0), (x[m] > 0).sum(axis=0)
    rows = [(i, symbols.gene_symbol[i], int(umis[i]), int(nnz[i])) for i in np.flatnonzero(nnz)]
    return sorted(rows, key=lambda r: (-r[2], r[0]))


def per_cell(con, release):
    _, log2 = _matrix(release, "Human")
    cells = _cells(con, "Human")
    m = (cells.group_name == "STRd D1 Matrix MSN").to_numpy()
    return list(zip(cells.cell_label[m], log2[m, _gene(con, "Human", "DRD1")], strict=True))


def pseudobulk(con, release):
    x, _ = _matrix(release, "Human")
    cells = _cells(con, "Human")
    rows = []
    for donor in sorted(cells.donor_label.dropna().unique()):
        m = ((cells.subclass_name == "STR D1 MSN") & (cells.donor_label == donor)).to_numpy()
        counts = x[m].sum(axis=0)
        rows += [(donor, int(i), int(counts[i])) for i in np.flatnonzero(counts)]
    return sorted(rows, key=lambda r: (r[1], r[0]))


def across_species(con, release):
    means = {}
    for species in R.SPECIES:
        _, log2 = _matrix(release, species)
        cells, g = _cells(con, species), _gene(con, species, "DRD1")
        for name in _terms(con, "Group").term_name:
            m = (cells.group_name == name).to_numpy()
            means[name, species] = log2[m, g].mean() if m.any() else None
    terms = _terms(con, "Group")
    return [
        (name, order, *(means[name, s] for s in R.SPECIES))
        for name, order in zip(terms.term_name, terms.term_order, strict=True)
    ]


REFERENCES = {
    "mean-per-term": mean_per_term,
    "coexpression": coexpression,
    "every-gene-of-a-selection": every_gene_of_a_selection,
    "per-cell": per_cell,
    "pseudobulk": pseudobulk,
    "across-species": across_species,
}


def test_every_recipe_has_a_reference():
    assert len(RECIPES) >= 6 and set(RECIPES) == set(REFERENCES)


def _same(got, want):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w)
        for a, b in zip(g, w, strict=True):
            if b is None or (isinstance(b, float) and np.isnan(b)):
                assert a is None or (isinstance(a, float) and np.isnan(a)), (g, w)
            elif isinstance(b, float | np.floating):
                assert a == pytest.approx(b, rel=1e-9, abs=1e-12), (g, w)
            else:
                assert (a.item() if hasattr(a, "item") else a) == b, (g, w)


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_the_recipe_equals_numpy_on_the_source_matrix(name, con, tiny_release):
    got = [tuple(r) for r in con.execute(RECIPES[name]).fetchall()]
    want = REFERENCES[name](con, tiny_release)
    if name == "across-species":  # pivot's columns are the species, sorted: as R.SPECIES is
        assert [d[0] for d in con.execute(RECIPES[name]).description][2:] == list(R.SPECIES)
    _same(got, want)


def test_the_obvious_wrong_recipes_are_wrong_on_the_tiny_store(con, tiny_release):
    """What the recipes avoid, shown to matter on this very store (else the tests above prove little):
    avg(log2_cpm) over the non-zeros is not the mean over the term's cells, and term_gene_stats lacks the
    terms whose cells do not express the gene."""
    naive = dict(
        con.execute(
            "select subclass_name, avg(log2_cpm) from expression_annotated where species = 'Human' "
            "and gene_symbol = 'DRD1' group by 1"
        ).fetchall()
    )
    right = {r[0]: r[3] for r in mean_per_term(con, tiny_release)}
    assert any(v != pytest.approx(right[k]) for k, v in naive.items() if k is not None)
    stats = con.execute(
        "select count(*) from term_gene_stats where species = 'Human' and gene_symbol = 'DRD1' "
        "and level = 'Subclass'"
    ).fetchall()[0][0]
    assert stats < len(right)
