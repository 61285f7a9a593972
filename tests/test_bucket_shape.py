"""The real bucket's shape (docs/release.md, 'The bucket and its manifest', 3.1, 3.5, 4): a manifest of the
whole bucket, each directory and
kind with its own version and nested files, one gene.csv for all species, cells outside cell_metadata,
files and columns that only enrich."""

from __future__ import annotations

import json
import shutil

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.release import layout as R
from build_db.release.check import check_release
from build_db.release.manifest import Layout, read_manifest
from build_db.store.build import build
from build_db.store.verify import verify_store

from .conftest import remanifest

MARMOSET = ("Marmoset",)


def _cells(store) -> pd.DataFrame:
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    return con.execute("select * from cells order by species, cell_index").df()


def test_cells_outside_cell_metadata_are_kept_and_reconciled(tiny_release, tiny_store):
    info = json.loads((tiny_store / "build.json").read_text())
    report = check_release(tiny_release)
    cells = _cells(tiny_store)
    for sp in R.SPECIES:
        counts = info["metadata"]["cells"][sp]
        mine = cells[cells.species == sp]
        outside = mine[~mine.in_cell_metadata]
        # The build, check and the table agree on how many, and there are some (about 0.5%).
        assert counts["not_in_cell_metadata"] == report.cells_outside_metadata[sp] == len(outside) > 0
        assert counts["cell_metadata_rows_without_matrix_cell"] == 0
        assert outside[["cluster_alias", "group_label", "donor_label", "x"]].isna().all().all()
        # Every non-zero of the source is in the store: the cells' totals add up to the matrix's sum.
        assert int(mine.total_counts.sum()) == info["species"][sp]["sum"] and len(mine) == counts["cells"]
    assert verify_store(tiny_store) == []
    r = CliRunner().invoke(main, ["info", str(tiny_store)])
    assert r.exit_code == 0 and "not in cell_metadata" in r.output
    human = next(ln for ln in r.output.splitlines() if ln.startswith("Human "))
    assert f"{info['metadata']['cells']['Human']['not_in_cell_metadata']:<21,}" in human


def test_statistics_leave_out_cells_outside_cell_metadata(tiny_store):
    con = duckdb.connect(str(tiny_store / "catalog.duckdb"), read_only=True)
    per_term, assigned = con.execute(
        "select (select sum(n_cells) from term_cell_counts where level = 'Neighborhood'), "
        "(select count(*) from cells where neighborhood_label is not null)"
    ).fetchone()
    assert per_term == assigned


def _move(release, rel_from: str, rel_to: str) -> None:
    (release / rel_to).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(release / rel_from, release / rel_to)


def test_versions_per_kind_nested_files_and_a_shared_gene_table(release_copy, tmp_path):
    # The taxonomy under another version, one of its files a folder deeper; one gene.csv for all species.
    for spec in R.TAXONOMY_CSVS:
        name = f"views/{spec.name}.csv" if spec is R.CLUSTER else f"{spec.name}.csv"
        _move(release_copy, spec.relative_path(), f"metadata/{R.TAXONOMY_DIR}/20250531/{name}")
    genes = [pd.read_csv(release_copy / g.relative_path(), dtype=str) for g in R.GENE_TABLES.values()]
    for g in R.GENE_TABLES.values():
        (release_copy / g.relative_path()).unlink()
    pd.concat(genes).to_csv(release_copy / R.metadata_path("gene"), index=False)
    remanifest(release_copy)
    lay = Layout(read_manifest(release_copy)[1])
    assert lay.csv(R.CLUSTER) == f"metadata/{R.TAXONOMY_DIR}/20250531/views/cluster.csv"
    assert lay.shared_gene_table and lay.csv(R.GENE_TABLES["Macaque"]) == R.metadata_path("gene")
    report = check_release(release_copy, md5=True)
    assert report.problems == []
    store = build(release_copy, tmp_path / "store", species=("Marmoset", "Macaque"), quiet=True).store
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    got = con.execute("select species, gene_identifier, gene_symbol from genes order by all").df()
    want = pd.concat(
        [g.assign(species=sp) for sp, g in zip(R.GENE_TABLES, genes, strict=True) if sp != "Human"]
    )[["species", "gene_identifier", "gene_symbol"]]
    want = want.sort_values(["species", "gene_identifier", "gene_symbol"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got.fillna(""), want.fillna(""), check_dtype=False)
    assert con.execute("select count(distinct group_label) from cells").fetchone()[0] > 10


def test_optional_columns_and_files(release_copy, tmp_path):
    cluster = pd.read_csv(release_copy / R.CLUSTER.relative_path(), dtype=str)
    cluster.drop(columns="number_of_cells").to_csv(release_copy / R.CLUSTER.relative_path(), index=False)
    cells = pd.read_csv(release_copy / R.CELL_METADATA.relative_path(), dtype=str)
    cells.drop(columns=["abc_sample_id", "alignment_job_id"]).to_csv(
        release_copy / R.CELL_METADATA.relative_path(), index=False
    )
    for spec in (R.ABBREVIATION, R.ABBREVIATION_MAP):
        (release_copy / spec.relative_path()).unlink()
    remanifest(release_copy)
    report = check_release(release_copy)
    assert report.problems == []
    assert any("cluster.csv: no column number_of_cells" in n for n in report.notes)
    assert any("abbreviation_term.csv: not in the manifest" in n for n in report.notes)
    store = build(release_copy, tmp_path / "store", species=MARMOSET, quiet=True).store
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    assert con.execute("select count(number_of_cells) from clusters").fetchone()[0] == 0
    assert con.execute("select count(*) from abbreviations").fetchone()[0] == 0
    assert con.execute("select count(abc_sample_id), count(*) from cells").fetchone()[0] == 0
    notes = json.loads((store / "build.json").read_text())["metadata"]["notes"]
    assert "cell_metadata.csv: no column alignment_job_id, abc_sample_id; NULL in the store" in notes


def test_a_required_column_missing_is_one_clear_line(release_copy):
    cluster = pd.read_csv(release_copy / R.CLUSTER.relative_path(), dtype=str)
    cluster.drop(columns="cluster_alias").to_csv(release_copy / R.CLUSTER.relative_path(), index=False)
    remanifest(release_copy)
    (msg,) = [str(p) for p in check_release(release_copy).problems]
    assert msg.startswith(f"{R.CLUSTER.relative_path()}: missing column cluster_alias (header has label, ")


def test_entry_of_our_directory_out_of_place_is_a_problem(release_copy):
    mpath = release_copy / R.manifest_path()
    data = json.loads(mpath.read_text())
    entry = data["file_listing"][R.EXPRESSION_DIR]["metadata"]["donor"]["files"]["csv"]
    entry["relative_path"] = f"metadata/{R.EXPRESSION_DIR}/20250630/sub/library.csv"
    # Other datasets' entries are not ours to judge, however odd.
    data["file_listing"]["WMB-10X"]["metadata"]["library"]["files"]["csv"]["relative_path"] = "x/y.csv"
    mpath.write_text(json.dumps(data))
    msgs = [str(p) for p in check_release(release_copy).problems]
    assert "entry HMBA-10xMultiome-BG/metadata/donor" in msgs[0] and "does not match its place" in msgs[0]
    assert not any("WMB" in m or "x/y.csv" in m for m in msgs)


@pytest.mark.parametrize("species", ["Human"])
def test_build_ignores_other_datasets_with_our_stems(tiny_release, tiny_store, species):
    # The Aligned and WMB-10X cell_metadata.csv sit beside ours in the manifest: none of their rows is used.
    cells = _cells(tiny_store)
    assert not cells.cell_label.str.startswith(("ALIGNED", "WMB")).any()
    assert not cells.donor_label.fillna("").str.startswith(("ALIGNED", "WMB")).any()
    listed = pd.read_csv(tiny_release / R.CELL_METADATA.relative_path(), usecols=["cell_label"])
    assert cells.in_cell_metadata.sum() == len(listed)
