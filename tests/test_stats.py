"""The statistics tables against a direct scipy computation on the source h5ad files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from build_db import connect
from build_db.release import layout as R
from build_db.store.paths import files_root
from build_db.store.stats import FIELDS


def _source(release, species):
    raw = ad.read_h5ad(release / R.matrix_path(species, "raw"))
    x = raw.X.tocsr().astype(np.float64)
    total = np.asarray(x.sum(axis=1)).ravel()
    log2 = x.copy()
    log2.data = np.log2(x.data / np.repeat(total, np.diff(x.indptr)) * 1e6 + 1)
    scaled = x.copy()
    scaled.data = x.data * 1e6 / np.repeat(total, np.diff(x.indptr))
    return raw.obs_names, x, total, log2, scaled


def _expected(keys: pd.Series, x, total, log2, scaled) -> pd.DataFrame:
    """Per (key, gene) sums by an indicator-matrix product: the textbook computation."""
    keep = keys.notna().to_numpy()
    codes, uniques = pd.factorize(keys[keep])
    rows = np.flatnonzero(keep)
    ind = sp.csr_matrix((np.ones(len(rows)), (codes, rows)), shape=(len(uniques), x.shape[0]))
    gt1, ge1 = scaled.copy(), scaled.copy()
    gt1.data = (scaled.data > 1).astype(float)
    ge1.data = (scaled.data >= 1).astype(float)
    nz = x.copy()
    nz.data = np.ones_like(nz.data)
    sq = log2.multiply(log2)
    mats = dict(
        zip(FIELDS, [ind @ m for m in (nz, x, log2, sq, gt1, ge1)], strict=True),
    )
    out = {f: np.asarray(m.todense()).ravel() for f, m in mats.items()}
    key = np.repeat(np.asarray(uniques, dtype=object), x.shape[1])
    gene = np.tile(np.arange(x.shape[1]), len(uniques))
    df = pd.DataFrame({"key": key, "gene_index": gene, **out})
    df["n_cells"] = np.repeat(np.asarray(ind.sum(axis=1)).ravel(), x.shape[1]).astype(int)
    df["sum_total_counts"] = np.repeat(ind @ total, x.shape[1]).astype(np.int64)
    return df[df.n_expressing > 0].reset_index(drop=True)


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got = got.sort_values(["key", "gene_index"]).reset_index(drop=True)
    want = want.sort_values(["key", "gene_index"]).reset_index(drop=True)
    assert len(got) == len(want) > 0
    assert list(got.key) == list(want.key)
    np.testing.assert_array_equal(got.gene_index, want.gene_index)
    for f in ("n_cells", "sum_total_counts", "n_expressing", "sum_raw", "n_cpm_gt_1", "n_cpm_ge_1"):
        np.testing.assert_array_equal(got[f].to_numpy(np.int64), want[f].to_numpy(np.int64), err_msg=f)
    for f in ("sum_log2_cpm", "sumsq_log2_cpm"):
        np.testing.assert_allclose(got[f], want[f], rtol=1e-12, err_msg=f)


@pytest.mark.parametrize("species", R.SPECIES)
def test_term_statistics_equal_scipy_on_the_source(tiny_release, con, species):
    names, x, total, log2, scaled = _source(tiny_release, species)
    cells = con.execute("select * from cells where species = ? order by cell_index", [species]).df()
    assert list(cells.cell_label) == list(names)
    for level in R.LEVELS:
        want = _expected(cells[f"{level.lower()}_label"], x, total, log2, scaled)
        got = con.execute(
            "select term_label as key, * exclude (term_label) from term_gene_sums "
            "where species = ? and level = ?",
            [species, level],
        ).df()
        _compare(got, want)


@pytest.mark.parametrize(
    "table,column", [("region_group", "region_of_interest_label"), ("donor_group", "donor_label")]
)
def test_region_and_donor_statistics_equal_scipy_on_the_source(tiny_release, con, table, column):
    for species in R.SPECIES:
        _, x, total, log2, scaled = _source(tiny_release, species)
        cells = con.execute("select * from cells where species = ? order by cell_index", [species]).df()
        key = cells.group_label + "|" + cells[column]
        want = _expected(key, x, total, log2, scaled)
        got = con.execute(
            f"select group_label || '|' || {column} as key, * from {table}_gene_sums where species = ?",
            [species],
        ).df()
        _compare(got, want)


def test_every_field_is_additive_up_the_taxonomy(con):
    fields = ", ".join(f"sum(s.{f}) as {f}" for f in ("n_cells", "sum_total_counts", *FIELDS))
    for child, parent in zip(R.LEVELS[1:], R.LEVELS[:-1], strict=True):
        rolled = con.execute(
            f"select s.species, t.parent_term_label as term_label, s.gene_index, {fields} "
            "from term_gene_sums s join taxonomy_terms t on t.term_label = s.term_label "
            "where s.level = ? group by all order by all",
            [child],
        ).df()
        stored = con.execute(
            f"select species, term_label, gene_index, {', '.join(('n_cells', 'sum_total_counts', *FIELDS))} "
            "from term_gene_sums where level = ? order by all",
            [parent],
        ).df()
        # n_cells and sum_total_counts are per group, so summing them over rows counts children with rows.
        assert len(rolled) == len(stored) > 0, (child, parent)
        pd.testing.assert_frame_equal(
            rolled[["species", "term_label", "gene_index"]], stored[["species", "term_label", "gene_index"]]
        )
        for f in FIELDS:
            np.testing.assert_allclose(rolled[f].to_numpy(float), stored[f].to_numpy(float), rtol=1e-12)
    # Group sizes add up too, from the per-level cell counts.
    sizes = con.execute(
        "select c.level, sum(c.n_cells) as children, any_value(p.n_cells) as parent "
        "from term_cell_counts c join taxonomy_terms t on t.term_label = c.term_label "
        "join term_cell_counts p on p.species = c.species and p.term_label = t.parent_term_label "
        "group by c.species, c.level, p.term_label"
    ).df()
    assert len(sizes) > 0 and (sizes.children == sizes.parent).all()


def test_stats_views_give_means_and_variances_with_zeros(tiny_release, con):
    _, x, total, log2, _ = _source(tiny_release, "Human")
    cells = con.execute("select group_label from cells where species = 'Human' order by cell_index").df()
    got = con.execute(
        "select term_label, gene_index, n_cells, mean_log2_cpm, var_log2_cpm, fraction_expressing, "
        "mean_raw, pseudobulk_cpm from term_gene_stats where species = 'Human' and level = 'Group' "
        "and n_cells > 1"
    ).df()
    dense, raw = log2.toarray(), x.toarray()
    for row in got.sample(50, random_state=1).itertuples():
        members = (cells.group_label == row.term_label).to_numpy()
        values = dense[members, row.gene_index]
        assert row.n_cells == members.sum()
        assert row.mean_log2_cpm == pytest.approx(values.mean(), rel=1e-9)
        assert row.var_log2_cpm == pytest.approx(values.var(ddof=1), rel=1e-7, abs=1e-12)
        assert row.fraction_expressing == pytest.approx((values > 0).mean())
        assert row.mean_raw == pytest.approx(raw[members, row.gene_index].mean())
        assert row.pseudobulk_cpm == pytest.approx(
            raw[members, row.gene_index].sum() / total[members].sum() * 1e6
        )


def test_log2_sums_agree_with_the_release_log2_file(tiny_release, con):
    log2 = ad.read_h5ad(tiny_release / R.matrix_path("Macaque", "log2")).X.tocsr()
    cells = con.execute("select subclass_label from cells where species = 'Macaque' order by cell_index").df()
    got = con.execute(
        "select term_label, gene_index, sum_log2_cpm from term_gene_sums "
        "where species = 'Macaque' and level = 'Subclass'"
    ).df()
    for term, part in got.groupby("term_label"):
        members = (cells.subclass_label == term).to_numpy()
        want = np.asarray(log2[members].sum(axis=0, dtype=np.float64)).ravel()[part.gene_index]
        np.testing.assert_allclose(part.sum_log2_cpm, want, rtol=1e-5)


def test_rebuilding_over_a_store_without_statistics_works(tiny_release, tmp_path):
    """A store built by an older hmba-db has no aggregates/: the new catalog cannot bind its views to the
    old store's files, so it binds to staging and the build relocates them after publishing."""
    import shutil

    from build_db import build

    store = build(tiny_release, tmp_path / "s", species=("Marmoset",), quiet=True).store
    shutil.rmtree(files_root(store) / "aggregates")
    build(tiny_release, store, species=("Marmoset",), quiet=True)
    c = connect(store)
    try:
        recorded = c.execute("select value from store_info where key = 'store_path'").fetchall()
        assert recorded == [(str(files_root(store)),)]
        assert c.execute("select count(*) from term_gene_stats").fetchall()[0][0] > 0
    finally:
        c.close()


@pytest.mark.parametrize(
    "species,level", [("Human", "Subclass"), ("Marmoset", "Group"), ("Macaque", "Cluster")]
)
def test_term_gene_means_is_every_gene_x_every_term_with_zeros(tiny_release, con, species, level):
    """The obvious "mean X per term" view, against numpy on the source matrix: every gene and term of the
    species (zeros where no cell expresses it), NULL means only where the species has no cells of it."""
    _, x, total, log2, _ = _source(tiny_release, species)
    column = f"{level.lower()}_label"
    cells = con.execute(f"select {column} from cells where species = ? order by cell_index", [species]).df()
    got = con.execute(
        "select * from term_gene_means where species = ? and level = ? order by term_order, gene_index",
        [species, level],
    ).df()
    terms = con.execute(
        "select term_label from taxonomy_terms where level = ? order by term_order", [level]
    ).df()
    own = set(cells[column].dropna())
    listed = terms.term_label if level != "Cluster" else terms.term_label[terms.term_label.isin(own)]
    n_genes = x.shape[1]
    assert len(got) == len(listed) * n_genes
    assert list(got.term_label.drop_duplicates()) == list(listed)
    dense, raw = log2.toarray(), x.toarray()
    for label, rows in got.groupby("term_label", sort=False):
        members = (cells[column] == label).to_numpy()
        rows = rows.sort_values("gene_index")
        assert (rows.gene_index.to_numpy() == np.arange(n_genes)).all()
        assert (rows.has_cells == (members.sum() > 0)).all() and (rows.n_cells == members.sum()).all()
        if not members.any():  # a term of the taxonomy this species has no cells of: NULL, not zero
            assert rows.mean_log2_cpm_all_cells.isna().all() and rows.fraction_expressing.isna().all()
            assert (rows.n_expressing == 0).all()
            continue
        values, counts = dense[members], raw[members]
        expressing = (counts > 0).sum(axis=0)
        np.testing.assert_allclose(rows.mean_log2_cpm_all_cells, values.mean(axis=0), rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(rows.n_expressing, expressing)
        np.testing.assert_allclose(rows.fraction_expressing, expressing / members.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            over_expressing = values.sum(axis=0) / expressing
        np.testing.assert_allclose(rows.mean_log2_cpm_expressing, over_expressing, rtol=1e-9)  # nan = nan
        np.testing.assert_allclose(rows.mean_raw_all_cells, counts.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(
            rows.pseudobulk_cpm, counts.sum(axis=0) / total[members].sum() * 1e6, rtol=1e-9
        )
    assert (got.n_expressing == 0).any(), "no zero-filled row: the case this view exists for is not tested"


def test_term_gene_means_labels_are_unique_and_never_null(con):
    genes = con.execute("select species, gene_index, gene_identifier, gene_symbol from genes").df()
    labels = con.execute(
        "select distinct species, gene_index, gene_label from term_gene_means where level = 'Neighborhood'"
    ).df()
    assert len(labels) == len(genes) and labels.gene_label.notna().all()
    assert not labels.duplicated(["species", "gene_label"]).any()
    merged = genes.merge(labels, on=["species", "gene_index"])
    shared = merged.duplicated(["species", "gene_symbol"], keep=False) & merged.gene_symbol.notna()
    unique = ~shared & merged.gene_symbol.notna()
    assert (merged.gene_label[unique] == merged.gene_symbol[unique]).all()
    assert (
        merged.gene_label[merged.gene_symbol.isna()] == merged.gene_identifier[merged.gene_symbol.isna()]
    ).all()
    assert (
        merged.gene_label[shared] == merged.gene_symbol[shared] + " (" + merged.gene_identifier[shared] + ")"
    ).all()
    assert shared.any() and merged.gene_symbol.isna().any(), "the tiny store lacks the cases this tests"
