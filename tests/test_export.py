"""to_anndata: selections of the store come back exactly as the source matrix has them."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from build_db import connect, to_anndata
from build_db.access import export
from build_db.errors import HmbaError
from build_db.release import layout as R


@pytest.mark.parametrize("species", R.SPECIES)
def test_a_whole_species_round_trips_exactly(con, source, species):
    a = to_anndata(con, species)
    src = source[species]
    assert a.shape == src.shape
    assert list(a.obs_names) == list(src.obs_names)
    assert list(a.var_names) == list(src.var_names)
    assert a.X.format == "csr" and a.X.has_sorted_indices
    assert a.X.nnz == src.X.nnz and (a.X != src.X).nnz == 0
    assert a.X.sum() == pytest.approx(float(src.X.sum(dtype=np.float64)))


def test_a_selection_by_condition_and_genes(con, source, tiny_store):
    cells = "group_name in ('Astrocyte', 'Oligo OPALIN') and donor_sex = 'Female'"
    a = to_anndata(tiny_store, "Human", ["PLP1", "DRD1", "AQP4"], cells)
    want = con.execute(
        f"select cell_label, cell_index from cells where species = 'Human' and {cells} order by cell_index"
    ).df()
    assert list(a.obs_names) == list(want.cell_label) and len(want) > 10
    src = source["Human"]
    cols = [int(np.flatnonzero(src.var.gene_symbol == g)[0]) for g in ["PLP1", "DRD1", "AQP4"]]
    expected = src.X[want.cell_index.to_numpy()][:, cols]
    assert (a.X != expected).nnz == 0 and a.X.nnz > 0
    assert list(a.var.gene_symbol) == ["PLP1", "DRD1", "AQP4"]
    assert list(a.var.columns) == [
        "species",
        "gene_index",
        "gene_symbol",
        "gene_bucket",
        "name",
        "mapped_ncbi_identifier",
        "biotype",
    ]
    assert set(a.obs.group_name) == {"Astrocyte", "Oligo OPALIN"} and set(a.obs.donor_sex) == {"Female"}
    assert (
        a.obs.total_counts.to_numpy().tolist()
        == np.asarray(src.X[want.cell_index.to_numpy()].sum(axis=1)).ravel().astype(int).tolist()
    )


def test_a_selection_by_labels_in_small_batches(con, source, monkeypatch):
    monkeypatch.setattr(export, "BATCH_ROWS", 500)
    src = source["Macaque"]
    labels = list(src.obs_names[::7])
    a = to_anndata(con, "Macaque", cells=labels)
    assert list(a.obs_names) == labels
    assert (a.X != src.X[::7]).nnz == 0


def test_the_result_writes_and_reads_as_h5ad(con, tmp_path):
    a = to_anndata(con, "Marmoset", ["PLP1", "MBP"], "class_name = 'OPC-Oligo'")
    a.write_h5ad(tmp_path / "x.h5ad")
    b = ad.read_h5ad(tmp_path / "x.h5ad")
    assert (b.X != a.X).nnz == 0 and list(b.obs_names) == list(a.obs_names)
    assert b.uns["hmba_db"]["cells"] == "class_name = 'OPC-Oligo'"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"cells": "no_such_column = 1"}, r"the cells table has no column 'no_such_column'"),
        # Issue 27: unbalanced parentheses escaped `species = ?` and returned Macaque cells as Marmoset.
        ({"cells": "group_name = 'x') or (species = 'Macaque'"}, r"not one SQL condition"),
        ({"cells": "1=1) union all select * from cells where (1=1"}, r"not one SQL condition"),
        ({"cells": "cell_index in (select cell_index from cells)"}, r"subqueries, tables"),
        ({"cells": "read_text('/etc/hostname') is not null"}, r"function read_text\(\) is not allowed"),
        ({"cells": "species = 'Macaque'"}, r"no Human cell matches"),  # bound to the species asked for
        ({"cells": "group_name = 'Nothing'"}, r"no Human cell matches"),
        ({"cells": ["AAAA-1", "BBBB-2"]}, r"2 cell label\(s\) not in Human, e.g. AAAA-1"),
        ({"genes": ["DRD1", "DRD1"]}, r"DRD1 is given twice"),
        ({"genes": ["DRDX1"]}, r"no gene with symbol or identifier DRDX1 \(closest"),
    ],
)
def test_bad_selections_are_clear_errors(con, kwargs, message):
    with pytest.raises(HmbaError, match=message):
        to_anndata(con, "Human", **kwargs)


def test_scanpy_conventions_and_terms_travel_with_the_export(tiny_store):
    store = tiny_store
    con = connect(store)
    a = to_anndata(con, "Marmoset", ["PLP1"])
    cells = con.execute("select x, y from cells where species = 'Marmoset' order by cell_index").df()
    np.testing.assert_array_equal(a.obsm["X_umap"], cells[["x", "y"]].to_numpy())
    assert "gene_symbol" in a.var.columns and a.var.gene_symbol.tolist() == ["PLP1"]
    uns = a.uns["hmba_db"]
    assert (
        uns["data_licence"] == "CC BY-NC 4.0" and "HMBA-10xMultiome-BG" in uns["citation"] and uns["build_id"]
    )


def test_licence_in_the_catalog_build_json_and_info(tiny_store):
    store = tiny_store
    import json

    from click.testing import CliRunner

    from build_db.cli import main

    con = connect(store)
    about = dict(con.execute("select key, value from licence").fetchall())
    assert about["data_licence"] == "CC BY-NC 4.0" and about["citation"].endswith(
        "s3://allen-brain-cell-atlas/."
    )
    info = json.loads((store / "build.json").read_text())
    assert info["data_licence"] == about["data_licence"] and info["citation"] == about["citation"]
    r = CliRunner().invoke(main, ["info", str(store)])
    assert (
        r.exit_code == 0
        and "licence   CC BY-NC 4.0 (https://creativecommons.org/licenses/by-nc/4.0/)" in r.output
    )


def test_export_anndata_command(tiny_store, tmp_path, con):
    """`hmba-db export anndata` writes what to_anndata returns; one-line errors; no file half-written."""
    import anndata as ad
    from click.testing import CliRunner

    from build_db.cli import main

    out = tmp_path / "astro.h5ad"
    args = [
        "export",
        "anndata",
        str(tiny_store),
        str(out),
        "--species",
        "human",
        "--cells",
        "group_name = 'Astrocyte'",
    ]
    r = CliRunner().invoke(main, [*args, "--genes", "DRD1,PLP1"])
    assert r.exit_code == 0, r.output
    assert "reading " in r.stderr and " cells x 2 genes" in r.stderr
    got = ad.read_h5ad(out)
    want = to_anndata(con, "Human", ["DRD1", "PLP1"], "group_name = 'Astrocyte'")
    assert (got.X != want.X).nnz == 0 and list(got.obs_names) == list(want.obs_names)
    assert list(got.var.gene_symbol) == ["DRD1", "PLP1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "exists; pass --force" in r.output
    r = CliRunner().invoke(main, [*args, "--force", "--genes", "DRDD1"])
    assert r.exit_code == 1 and "no gene with symbol or identifier DRDD1 (closest: DRD1" in r.output
    assert "Traceback" not in r.output and ad.read_h5ad(out).n_vars == 2  # the old file is whole
    r = CliRunner().invoke(main, [*args[:3], str(tmp_path / "x.csv"), *args[4:]])
    assert r.exit_code == 1 and "name the file .h5ad" in r.output
    assert [p.name for p in tmp_path.iterdir()] == ["astro.h5ad"]  # no temporary file left


def test_one_gene_given_as_a_string_is_one_gene(tiny_store, con):
    """`to_anndata(store, "Marmoset", "GAD1")` once asked for the genes G, A, D and 1."""
    a = to_anndata(tiny_store, "Marmoset", "PLP1", "group_name = 'Astrocyte'")
    b = to_anndata(tiny_store, "Marmoset", ["PLP1"], "group_name = 'Astrocyte'")
    assert a.shape == b.shape and a.shape[1] == 1 and (a.X != b.X).nnz == 0
    assert list(a.var.gene_symbol) == ["PLP1"]
    from build_db.access.genes import search_genes
    from build_db.access.taxonomy import list_terms

    assert {h.species for h in search_genes(con, "plp1", "Marmoset")} == {"Marmoset"}
    assert list_terms(con, "Class", "Human") == list_terms(con, "Class", ["Human"])
