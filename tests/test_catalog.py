"""The catalog: every table and view resolves with its documented columns, joins are one-to-one, the
notebook's answer equals a direct computation on the source h5ad, and any client can open it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import duckdb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from build_db.access.analyses import mean_expression, mean_expression_from_rows, resolve_genes
from build_db.access.connect import connect
from build_db.cli import main
from build_db.errors import HmbaError, ReleaseError
from build_db.release import layout as R
from build_db.store import schema as S
from build_db.store.build import build
from build_db.store.catalog import CATALOG, relocate
from build_db.store.paths import files_root

from .conftest import restamp

ROOT = Path(__file__).resolve().parents[1]
DUCKDB1_PYTHON = Path(os.environ.get("HMBA_DUCKDB1_PYTHON", ROOT / ".venv-duckdb1" / "bin" / "python"))


@pytest.fixture(scope="module")
def store(tiny_release, tmp_path_factory):
    return build(tiny_release, tmp_path_factory.mktemp("cat") / "store", bucket_nnz=20_000, quiet=True).store


@pytest.fixture(scope="module")
def con(store):
    c = connect(store)
    yield c
    c.close()


def csv(release, spec):
    return pd.read_csv(release / spec.relative_path(), dtype=str, keep_default_na=False)


@pytest.mark.parametrize("obj", S.ALL, ids=lambda t: t.name)
def test_every_table_and_view_resolves_with_its_documented_columns(con, obj):
    rel = con.sql(f"select * from {obj.name} limit 5")
    assert rel.columns == obj.column_names
    assert len(rel.fetchall()) > 0
    kind = "views" if obj.kind == "view" else "tables"
    comment = con.execute(
        f"select comment from duckdb_{kind}() where {kind[:-1]}_name = ?", [obj.name]
    ).fetchall()
    assert comment == [(obj.description,)]
    cols = dict(
        con.execute(
            "select column_name, comment from duckdb_columns() where table_name = ?", [obj.name]
        ).fetchall()
    )
    assert cols == {c.name: c.description for c in obj.columns}


def test_cells_are_one_row_per_matrix_cell(tiny_release, con):
    for species in R.SPECIES:
        raw = ad.read_h5ad(tiny_release / R.matrix_path(species, "raw"), backed="r")
        cells = con.execute(
            "select cell_index, cell_label from cells where species = ? order by cell_index", [species]
        ).df()
        assert list(cells.cell_index) == list(range(raw.n_obs))
        assert list(cells.cell_label) == list(raw.obs_names)
        genes = con.execute(
            "select gene_index, gene_identifier from genes where species = ? order by gene_index", [species]
        ).df()
        assert list(genes.gene_index) == list(range(raw.n_vars))
        assert list(genes.gene_identifier) == list(raw.var_names)
    assert (
        con.execute("select count(*), count(distinct cell_label) from cells").fetchall()[0]
        == (sum(round(R.REAL_CELLS[s] * 0.0008) for s in R.SPECIES),) * 2
    )
    assert con.execute("select count(*) from clusters").fetchall() == [(1435,)]
    assert con.execute("select count(*) from taxonomy_terms").fetchall() == [(1548,)]


def test_cells_carry_the_release_metadata(tiny_release, con):
    every = con.sql("select * from cells").df().set_index("cell_label")
    meta = csv(tiny_release, R.CELL_METADATA).set_index("cell_label")
    # Matrix cells that cell_metadata.csv leaves out are kept, flagged, with NULL metadata and no taxonomy.
    listed = every.index.isin(meta.index)
    assert (every.in_cell_metadata == listed).all() and 0 < (~listed).sum() < 0.02 * len(every)
    outside = every[~listed]
    assert (
        outside[["donor_label", "library_label", "region_of_interest_label", "cluster_alias"]]
        .isna()
        .all()
        .all()
    )
    assert outside.total_counts.notna().all() and outside.species.notna().all()
    cells = every[listed]
    meta = meta.loc[cells.index]
    libs = csv(tiny_release, R.LIBRARY).set_index("library_label")
    donors = csv(tiny_release, R.DONOR).set_index("donor_label")
    assert (cells.donor_label == meta.donor_label).all() and (cells.library_label == meta.library_label).all()
    assert (
        cells.region_of_interest_label == libs.loc[cells.library_label, "region_of_interest_label"].values
    ).all()
    assert (cells.donor_sex == donors.loc[cells.donor_label, "donor_sex"].values).all()
    assert (cells.species == donors.loc[cells.donor_label, "species_genus"].values).all()
    marmoset = cells.species == "Marmoset"
    assert cells.umi_count[marmoset].isna().all() and cells.doublet_score[marmoset].isna().all()
    assert (cells.umi_count[~marmoset] == cells.total_counts[~marmoset]).all()  # synth writes row sums
    members = csv(tiny_release, R.CELL_MEMBERSHIP).set_index("cell_label")
    assigned = cells.index.isin(members.index)
    assert (cells.cluster_alias[assigned] == members.loc[cells.index[assigned], "cluster_alias"]).all()
    levels = [f"{S.LEVEL_PREFIX[lv]}_{p}" for lv in R.LEVELS for p in ("label", "name", "color", "order")]
    assert cells.loc[assigned, levels].notna().all().all()
    assert cells.loc[~assigned, levels].isna().all().all()  # left joins: unassigned cells kept, NULL taxonomy
    emb = csv(tiny_release, R.EMBEDDING).set_index("cell_label")
    np.testing.assert_allclose(cells.x[assigned], emb.loc[cells.index[assigned], "x"].astype(float))
    assert cells.region_color.notna().all() and cells.species_color.notna().all()


def test_expression_view_equals_the_log2_file(tiny_release, con):
    log2 = ad.read_h5ad(tiny_release / R.matrix_path("Macaque", "log2"))
    rows = con.sql("select cell_index, gene_index, log2_cpm from expression where species = 'Macaque'").df()
    x = log2.X.toarray()
    np.testing.assert_allclose(rows.log2_cpm, x[rows.cell_index, rows.gene_index], rtol=1e-6)
    assert len(rows) == log2.X.nnz


def test_notebook_question_equals_numpy_on_the_source(tiny_release, con):
    genes = ["SLC17A6", "SLC32A1", "PTPRC", "PLP1", "AQP4", "DRD1", "DRD2"]
    members = csv(tiny_release, R.CELL_MEMBERSHIP).set_index("cell_label")
    tree = csv(tiny_release, R.CLUSTER_MEMBERSHIP)
    group_of = tree[tree.cluster_annotation_term_set_name == "Group"].set_index("cluster_alias")
    for species in R.SPECIES:
        raw = ad.read_h5ad(tiny_release / R.matrix_path(species, "raw"))
        x = raw.X.toarray().astype(np.float64)
        cpm = np.log2(x / x.sum(axis=1, keepdims=True) * 1e6 + 1)
        symbols = list(raw.var.gene_symbol.astype(str))
        keep = raw.obs_names.isin(members.index)
        group = group_of.loc[
            members.loc[raw.obs_names[keep], "cluster_alias"], "cluster_annotation_term_name"
        ]
        want = pd.DataFrame(cpm[keep][:, [symbols.index(g) for g in genes]], columns=genes).groupby(
            group.values
        )
        got = mean_expression(con, species, genes, "Group")
        # The statistics and the non-zeros give the same table.
        pd.testing.assert_frame_equal(
            got, mean_expression_from_rows(con, species, genes, "Group"), rtol=1e-12
        )
        assert set(got.index) == set(want.groups)
        np.testing.assert_allclose(
            got[genes].to_numpy(), want.mean().loc[got.index].to_numpy(), rtol=1e-9, atol=1e-12
        )
        frac = want.agg(lambda v: (v > 0).mean()).loc[got.index]
        np.testing.assert_allclose(got[[f"{g}_fraction" for g in genes]].to_numpy(), frac.to_numpy())
        assert list(got.n_cells) == list(want.size().loc[got.index])
        order = con.execute("select term_name, term_order from taxonomy_terms where level = 'Group'").df()
        order = order.set_index("term_name").term_order
        assert list(order.loc[got.index]) == sorted(order.loc[got.index])


def test_unknown_symbol_lists_the_closest(con):
    with pytest.raises(
        HmbaError,
        match=r"genes: no gene with symbol or identifier DRD7 \(closest: DRD[12], DRD[12]\) in Human",
    ):
        resolve_genes(con, "Human", ["DRD7"])
    (m,) = resolve_genes(con, "Human", ["MATR3"])
    assert m.n_identifiers == 2  # a symbol with two identifiers says so


def _run_elsewhere(python: Path, store: Path, cwd: Path) -> str:
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
        "print(duckdb.__version__); "
        "print(c.sql(\"select count(*) from expression where species = 'Human'\").fetchall()[0][0]); "
        'print(c.sql("select count(*) from expression_annotated "\n'
        "            \"where gene_symbol = 'DRD1'\").fetchall()[0][0]); "
        "print(c.sql('select count(*) from cells').fetchall()[0][0])"
    )
    out = subprocess.run(
        [str(python), "-c", code, str(store / CATALOG)], cwd=cwd, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_opens_from_another_directory_without_setup(store, con, tmp_path):
    out = _run_elsewhere(Path(sys.executable), store, tmp_path).split()
    want = con.sql("select count(*) from expression where species = 'Human'").fetchall()[0][0]
    assert int(out[1]) == want and int(out[3]) == con.sql("select count(*) from cells").fetchall()[0][0]


def test_opens_with_duckdb_1x(store, con, tmp_path):
    """BI drivers embed DuckDB 1.x: the catalog's storage version and SQL must suit them."""
    if not DUCKDB1_PYTHON.exists():
        pytest.fail(f"{DUCKDB1_PYTHON} is missing; `make test` creates it (a virtualenv with duckdb 1.1.3)")
    out = _run_elsewhere(DUCKDB1_PYTHON, store, tmp_path).split()
    assert out[0].startswith("1.")
    assert int(out[1]) == con.sql("select count(*) from expression where species = 'Human'").fetchall()[0][0]


@pytest.fixture
def moved(store, tmp_path):
    """A copy of the store, built at one place and then moved away from it (the old place is gone)."""
    first = tmp_path / "first" / "store"
    shutil.copytree(store, first)
    relocate(first)
    moved = tmp_path / "elsewhere" / "store"
    moved.parent.mkdir()
    first.rename(moved)
    return moved


def test_moved_store_works_read_only(moved, con):
    want = con.sql("select count(*), sum(raw_count) from expression").fetchall()
    c = connect(moved)
    assert c.sql("select count(*), sum(raw_count) from expression").fetchall() == want
    c.close()


def test_relocate_repairs_a_moved_store(moved, con, tmp_path):
    plain = duckdb.connect(str(moved / CATALOG), read_only=True)  # what a BI tool does: no help from us
    with pytest.raises(duckdb.Error, match="No files found"):
        plain.sql("select count(*) from expression").fetchall()
    plain.close()
    result = CliRunner().invoke(main, ["relocate", str(moved)])
    root = files_root(moved)  # the current snapshot, in its new place
    assert root.parent.parent == moved and f"views now read {root} (were " in result.output
    plain = duckdb.connect(str(moved / CATALOG), read_only=True)
    want = con.sql("select count(*) from expression where species = 'Human'").fetchall()[0][0]
    assert plain.sql("select count(*) from expression where species = 'Human'").fetchall()[0][0] == want
    plain.close()
    out = _run_elsewhere(DUCKDB1_PYTHON, moved, tmp_path).split()  # still readable by DuckDB 1.x
    assert int(out[1]) == want


def test_sql_command_formats(store):
    r = CliRunner().invoke(
        main,
        [
            "sql",
            str(store),
            "select species, count(*) as n from cells group by 1 order by 1",
            "--format",
            "csv",
        ],
    )
    assert r.exit_code == 0 and r.output.splitlines()[0] == "species,n" and r.output.count("\n") == 4
    r = CliRunner().invoke(main, ["sql", str(store), "-", "--format", "json"], input="select 42 as answer")
    assert r.exit_code == 0 and '"answer":42' in r.output.replace(" ", "")
    r = CliRunner().invoke(main, ["sql", str(store), "select * from no_such_table"])
    assert r.exit_code == 1 and r.output.startswith(
        "Error: Catalog Error: Table with name no_such_table does not"
    )
    assert len(r.output.strip().splitlines()) == 1


def test_sql_streams_large_results(store):
    """csv and json write batch by batch (every row); the aligned table stops at --max-rows and says so."""
    con = connect(store)
    nnz = con.execute("select count(*) from expression_counts").fetchone()[0]
    assert nnz > 65_536  # more than one batch
    r = CliRunner().invoke(main, ["sql", str(store), "--format", "csv", "select * from expression_counts"])
    assert r.exit_code == 0 and r.stdout.count("\n") == nnz + 1
    r = CliRunner().invoke(main, ["sql", str(store), "--format", "json", "select gene_index from expression"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)) == nnz
    r = CliRunner().invoke(main, ["sql", str(store), "--max-rows", "5", "select cell_label from cells"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 6
    assert "stopped at 5 rows: --max-rows" in r.stderr
    r = CliRunner().invoke(
        main,
        [
            "sql",
            str(store),
            "--format",
            "json",
            "select 1.5e-12 as tiny, 2::hugeint as big, 'nan'::double as nan",
        ],
    )
    assert json.loads(r.stdout) == [{"tiny": 1.5e-12, "big": 2, "nan": None}]


def test_info_command(store):
    r = CliRunner().invoke(main, ["info", str(store)])
    assert r.exit_code == 0
    assert "Human" in r.output and "non-zeros" in r.output and "md5" in r.output


def test_connect_errors(tmp_path):
    with pytest.raises(HmbaError, match="catalog.duckdb: not found; build the store first"):
        connect(tmp_path)


def test_catalog_is_read_only(con):
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute("create table x as select 1")


# --- integrity errors at build ---


def _edit(release, spec, change):
    df = csv(release, spec)
    change(df)
    df.to_csv(release / spec.relative_path(), index=False)
    restamp(release, spec.relative_path())


INTEGRITY = {
    "duplicate cell label": (
        R.CELL_METADATA,
        lambda d: (
            d.loc[1, ["cell_label"]].__setitem__("cell_label", d.loc[0, "cell_label"])
            or d.__setitem__(
                "cell_label", [d.cell_label[0] if i == 1 else v for i, v in enumerate(d.cell_label)]
            )
        ),
        r"cell_label \S+ appears 2 times; cell labels must be unique",
    ),
    # A few matrix cells missing from cell_metadata.csv are normal (test_bucket_shape.py); none listed at
    # all means the two files are from different releases.
    "no matrix cell listed": (
        R.CELL_METADATA,
        lambda d: d.__setitem__(
            "cell_label",
            [
                "OTHER-" + v if m == R.matrix_stem("Marmoset") else v
                for v, m in zip(d.cell_label, d.feature_matrix_label, strict=True)
            ],
        ),
        r"none of its [\d,]+ cells is in \S+cell_metadata.csv .* different releases",
    ),
    "donor disagrees with library": (
        R.CELL_METADATA,
        lambda d: d.__setitem__(
            "donor_label", [_other_donor(d, i) if i == 0 else v for i, v in enumerate(d.donor_label)]
        ),
        r"cell \S+ has donor \S+ but its library \S+ has donor \S+",
    ),
    "unknown cluster alias": (
        R.CELL_MEMBERSHIP,
        lambda d: d.__setitem__(
            "cluster_alias", ["Human-99999" if i == 0 else v for i, v in enumerate(d.cluster_alias)]
        ),
        r"names cluster alias Human-99999, which cluster.csv does not list",
    ),
    "bad number": (
        R.CELL_METADATA,
        lambda d: d.__setitem__("umi_count", ["many" if i == 0 else v for i, v in enumerate(d.umi_count)]),
        r"column umi_count has 'many' for cell_label \S+, expected double",
    ),
}


def _other_donor(d, i):
    same = d[(d.feature_matrix_label == d.feature_matrix_label[i]) & (d.donor_label != d.donor_label[i])]
    return same.donor_label.iloc[0]


@pytest.mark.parametrize("name", INTEGRITY)
def test_integrity_errors_stop_the_build(release_copy, tmp_path, name):
    spec, change, message = INTEGRITY[name]
    _edit(release_copy, spec, change)
    with pytest.raises(ReleaseError, match=message):
        build(release_copy, tmp_path / "store", quiet=True)
    assert not (tmp_path / "store").exists()


def test_the_views_derive_log2_cpm_with_the_one_formula():
    """log2(CPM+1) is declared once (release/normalise.py); the two views that derive it in SQL, written
    out in sql/ for DuckDB and Spark alike, must say exactly that."""
    from build_db.release.normalise import log2_cpm_sql
    from build_db.store.catalog import SQL_DIR

    for name, raw, totals in (
        ("expression", "counts.raw_count", "totals.total_counts"),
        ("expression_annotated", "e.raw_count", "c.total_counts"),
    ):
        text = (SQL_DIR / f"{name}.sql").read_text()
        assert f"{log2_cpm_sql(raw, totals)} as log2_cpm" in text, name
