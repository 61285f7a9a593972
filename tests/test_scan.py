"""The chunked h5ad scan (the baseline and the demo's answer) equals a direct in-memory computation."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from build_db.errors import HmbaError
from build_db.release import layout as R
from build_db.tools.scan import mean_log2_by_term


def test_scan_equals_anndata_groupby(tiny_release, monkeypatch):
    monkeypatch.setattr("build_db.tools.scan.CHUNK_ROWS", 100)  # several chunks even on a tiny matrix
    genes = ["DRD1", "PLP1", "AQP4"]
    got = mean_log2_by_term(tiny_release, "Human", genes, "Subclass")

    a = ad.read_h5ad(tiny_release / R.matrix_path("Human", "log2"))
    members = pd.read_csv(tiny_release / R.CELL_MEMBERSHIP.relative_path(), dtype=str).set_index("cell_label")
    tree = pd.read_csv(tiny_release / R.CLUSTER_MEMBERSHIP.relative_path(), dtype=str)
    tree = tree[tree.cluster_annotation_term_set_name == "Subclass"].set_index("cluster_alias")
    cells = a.obs_names.intersection(members.index)
    subclass = tree.loc[members.loc[cells, "cluster_alias"], "cluster_annotation_term_name"].to_numpy()
    symbols = list(a.var.gene_symbol.astype(str))
    x = a[cells].X.toarray()[:, [symbols.index(g) for g in genes]].astype(np.float64)
    want = pd.DataFrame(x, columns=genes).groupby(subclass).mean()
    assert set(got.index) == set(want.index)
    np.testing.assert_allclose(got[genes].to_numpy(), want.loc[got.index].to_numpy(), rtol=1e-12)
    assert got.n_cells.sum() == len(cells)
    terms = pd.read_csv(tiny_release / R.TERM.relative_path(), dtype=str)
    order = (
        terms[terms.cluster_annotation_term_set_name == "Subclass"].set_index("name").term_order.astype(int)
    )
    assert list(order.loc[got.index]) == sorted(order.loc[got.index])  # taxonomy order


def test_scan_unknown_symbol(tiny_release):
    with pytest.raises(HmbaError, match="no gene with symbol 'NOTAGENE' in Human"):
        mean_log2_by_term(tiny_release, "Human", ["NOTAGENE"])
