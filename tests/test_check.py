"""`check` finds each kind of defect and names the file and the fix; a clean release passes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.release import layout as R
from build_db.release.check import check_release

from .conftest import restamp

RAW = R.matrix_path("Human", "raw")


def messages(release, **kw) -> list[str]:
    return [str(p) for p in check_release(release, **kw).problems]


def test_clean_release_exits_zero(tiny_release):
    result = CliRunner().invoke(main, ["check", str(tiny_release), "--md5"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK: 21 files checked with md5; Human/raw 1,346 x 400")
    # The bucket's shape is fine, and said on stderr: other datasets ignored, cells outside cell_metadata.
    assert "9 files of 3 other datasets of the bucket ignored" in result.stderr
    assert result.stderr.count("cells are not in cell_metadata.csv") == 3


def test_missing_manifest(tmp_path):
    msgs = messages(tmp_path)
    assert len(msgs) == 1 and "manifest.json: manifest not found" in msgs[0]


def test_missing_file(release_copy):
    (release_copy / RAW).unlink()
    msgs = messages(release_copy)
    assert msgs == [
        f"{RAW}: missing; download it again from the release bucket or leave it out with --species/--what"
    ]
    # Restricting to the species that are present makes the release usable.
    assert messages(release_copy, species=("Macaque", "Marmoset")) == []
    assert messages(release_copy, parts=("log2", "metadata", "taxonomy")) == []


def test_wrong_size(release_copy):
    with open(release_copy / R.DONOR.relative_path(), "a") as f:
        f.write("extra\n")
    (msg,) = messages(release_copy)
    assert (
        msg.startswith(R.DONOR.relative_path() + ": size ") and "manifest says" in msg and "truncated" in msg
    )


def test_wrong_md5_only_with_md5(release_copy):
    path = release_copy / R.TERM.relative_path()
    data = bytearray(path.read_bytes())
    data[-3] = ord("x") if data[-3] != ord("x") else ord("y")  # same size, different content
    path.write_bytes(bytes(data))
    assert messages(release_copy) == []
    (msg,) = messages(release_copy, md5=True)
    assert msg.startswith(R.TERM.relative_path() + ": md5 ") and "differs from the manifest's" in msg


def test_missing_column(release_copy):
    rel = R.DONOR.relative_path()
    df = pd.read_csv(release_copy / rel, dtype=str).drop(columns=["species_genus"])
    df.to_csv(release_copy / rel, index=False)
    restamp(release_copy, rel)
    (msg,) = messages(release_copy)
    assert msg.startswith(f"{rel}: missing column species_genus (header has donor_label,")


def test_extra_and_reordered_columns_are_fine(release_copy):
    rel = R.GENE_TABLES["Macaque"].relative_path()
    df = pd.read_csv(release_copy / rel, dtype=str)
    df["chromosome"] = "1"
    df[["gene_symbol", "chromosome", "gene_identifier", "name"]].to_csv(release_copy / rel, index=False)
    restamp(release_copy, rel)
    assert messages(release_copy) == []


def test_cell_metadata_rows_and_matrix_cells_are_counted_not_fatal(release_copy):
    before = check_release(release_copy)
    rel = R.CELL_METADATA.relative_path()
    df = pd.read_csv(release_copy / rel, dtype=str, keep_default_na=False)
    human = df.index[df.feature_matrix_label == "HMBA-10xMultiome-BG-Human"]
    extra = df.loc[human[:2]].assign(cell_label=["NOMATRIX-1", "NOMATRIX-2"])
    pd.concat([df.drop(human[:3]), extra]).to_csv(release_copy / rel, index=False)
    restamp(release_copy, rel)
    after = check_release(release_copy)
    assert after.problems == []
    assert after.cells_outside_metadata["Human"] == before.cells_outside_metadata["Human"] + 3
    assert before.metadata_rows_without_cell["Human"] == 0 and after.metadata_rows_without_cell["Human"] == 2
    assert after.cells_outside_metadata["Macaque"] == before.cells_outside_metadata["Macaque"] > 0
    assert any("2 rows for HMBA-10xMultiome-BG-Human have no cell in the matrix" in n for n in after.notes)
    # No cell in common: the matrix and the metadata are from different releases.
    df[df.feature_matrix_label != "HMBA-10xMultiome-BG-Human"].to_csv(release_copy / rel, index=False)
    restamp(release_copy, rel)
    (msg,) = messages(release_copy, species=("Human",), parts=("raw", "metadata"))
    assert msg == (
        f"{RAW}: none of its 1,346 cells is in {rel} (which lists 0 cells for HMBA-10xMultiome-BG-Human); "
        "matrix and metadata are from different releases: download it again from the release bucket"
    )


def test_shape_disagrees_with_gene_table(release_copy):
    rel = R.GENE_TABLES["Marmoset"].relative_path()
    df = pd.read_csv(release_copy / rel, dtype=str)
    df.iloc[:-1].to_csv(release_copy / rel, index=False)
    restamp(release_copy, rel)
    msgs = messages(release_copy)
    assert len(msgs) == 2
    assert "400 genes but metadata/HMBA-10xMultiome-BG/20250630/marmoset_gene.csv has 399 rows" in msgs[0]


def test_gene_identifiers_disagree(release_copy):
    rel = R.GENE_TABLES["Human"].relative_path()
    df = pd.read_csv(release_copy / rel, dtype=str)
    df.loc[5, "gene_identifier"] = "ENSG99999999999"
    df.to_csv(release_copy / rel, index=False)
    restamp(release_copy, rel)
    msgs = messages(release_copy)
    assert len(msgs) == 2 and "(column 5) is not in" in msgs[0]


def test_truncated_h5ad(release_copy):
    path = release_copy / RAW
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    restamp(release_copy, RAW)
    msgs = messages(release_copy)
    assert any(m.startswith(f"{RAW}: not a readable HDF5/h5ad file") for m in msgs), msgs


def test_not_csr(release_copy):
    import h5py

    with h5py.File(release_copy / RAW, "a") as f:
        f["X"].attrs["encoding-type"] = "csc_matrix"
    restamp(release_copy, RAW)
    (msg,) = messages(release_copy)
    assert msg == f"{RAW}: 'X' has encoding 'csc_matrix', expected 'csr_matrix' (cells x genes)"


def test_damaged_manifest_entry(release_copy):
    mpath = release_copy / R.manifest_path()
    data = json.loads(mpath.read_text())
    entry = data["file_listing"]["HMBA-10xMultiome-BG"]["metadata"]["donor"]["files"]["csv"]
    entry["file_hash"] = "not-a-digest"
    mpath.write_text(json.dumps(data))
    (msg,) = messages(release_copy)
    assert "entry HMBA-10xMultiome-BG/metadata/donor" in msg and "is not an md5 hex digest" in msg


def test_cli_prints_one_line_per_problem_and_exits_one(release_copy):
    (release_copy / RAW).unlink()
    (release_copy / R.LIBRARY.relative_path()).unlink()
    result = (
        CliRunner(mix_stderr=False).invoke(main, ["check", str(release_copy)])
        if _mix()
        else CliRunner().invoke(main, ["check", str(release_copy)])
    )
    assert result.exit_code == 1
    lines = [ln for ln in result.stdout.splitlines() if ln]
    assert len(lines) == 2 and all(": missing;" in ln for ln in lines)


def _mix() -> bool:
    import inspect

    return "mix_stderr" in inspect.signature(CliRunner).parameters


@pytest.mark.parametrize(
    "args,error",
    [
        (["--species", "Mouse"], "unknown species Mouse"),
        (["--what", "raw,bogus"], "unknown part bogus"),
    ],
)
def test_cli_rejects_bad_options(tiny_release, args, error):
    result = CliRunner().invoke(main, ["check", str(tiny_release), *args])
    assert result.exit_code == 2 and error in result.output


def test_files_are_found_where_the_manifest_says(release_copy):
    """A directory may carry another version than the release (the taxonomy is documented under both
    20250630 and 20250531): paths come from the manifest, not from the release version."""
    import shutil

    from build_db.store.build import build

    old = release_copy / "metadata" / R.TAXONOMY_DIR / "20250630"
    new = release_copy / "metadata" / R.TAXONOMY_DIR / "20250531"
    shutil.move(old, new)
    mpath = release_copy / R.manifest_path()
    data = json.loads(mpath.read_text())
    for entry in data["file_listing"][R.TAXONOMY_DIR]["metadata"].values():
        f = entry["files"]["csv"]
        f["relative_path"] = f["relative_path"].replace("/20250630/", "/20250531/")
        f["url"] = f["url"].replace("/20250630/", "/20250531/")
        f["version"] = "20250531"
    mpath.write_text(json.dumps(data))
    assert messages(release_copy) == []
    store = build(release_copy, release_copy.parent / "store", species=("Marmoset",), quiet=True).store
    assert (store / "catalog.duckdb").exists()


@pytest.mark.parametrize("axis", ["obs", "var"])
def test_a_label_given_twice_is_refused(release_copy, axis):
    """Two rows with one cell label (or two columns with one gene identifier) built silently before."""
    import anndata as ad

    path = release_copy / RAW
    a = ad.read_h5ad(path)
    names = list(getattr(a, f"{axis}_names"))
    names[3] = names[2]
    setattr(a, f"{axis}_names", names)
    a.write_h5ad(path)
    restamp(release_copy, RAW)
    msgs = messages(release_copy, species=("Human",))
    what = "cell label" if axis == "obs" else "gene identifier"
    assert any(m.startswith(f"{RAW}: {axis} holds the {what} {names[2]!r} more than once") for m in msgs), (
        msgs
    )


def test_an_empty_matrix_is_refused_by_check(release_copy):
    import anndata as ad

    path = release_copy / RAW
    a = ad.read_h5ad(path)
    a[:0].copy().write_h5ad(path)
    restamp(release_copy, RAW)
    msgs = messages(release_copy, species=("Human",), parts=("raw",))
    assert any("holds 0 cells x 400 genes and 0 non-zeros: nothing to build" in m for m in msgs), msgs


def test_a_byte_order_mark_is_named(release_copy):
    rel = R.DONOR.relative_path()
    path = release_copy / rel
    path.write_bytes("\ufeff".encode() + path.read_bytes())
    restamp(release_copy, rel)
    (msg,) = messages(release_copy)
    assert msg.startswith(f"{rel}: the header starts with a byte-order mark") and "plain UTF-8" in msg


def test_a_species_the_manifest_lacks_is_said_once(release_copy):
    from .conftest import remanifest

    for path in release_copy.rglob("*Marmoset*.h5ad"):
        path.unlink()
    remanifest(release_copy)
    (msg,) = messages(release_copy, species=("Marmoset",))
    assert "lists no Marmoset matrix (it has Human, Macaque); leave Marmoset out of --species" in msg
