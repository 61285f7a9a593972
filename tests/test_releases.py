"""Releases after 20250630 (docs/release.md, 'Releases after 20250630'): the taxonomy directory is
`HMBA-BG-taxonomy` (no `-CCN20250428` suffix) at its own version. A release whose manifest names it builds and
answers as the 20250630 layout does; a manifest naming both directories gives the one at the release's own
version; `download --list-releases` says what each version names, and `download --release` fetches it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import build_db
from build_db.cli import main
from build_db.errors import ReleaseError
from build_db.release import layout as R
from build_db.release.cache import CACHE_FILES
from build_db.release.check import check_release
from build_db.release.download import download, select
from build_db.release.manifest import Layout, entry_for, read_manifest, write_manifest

from .httpserver import serve

NEW_DIR, NEW_VERSION = "HMBA-BG-taxonomy", "20261031"


def relocate_taxonomy(release: Path, keep_old: bool = False) -> None:
    """Move (or copy) the taxonomy's folders to the new name and version, and write the manifest of release
    NEW_VERSION (the matrices and metadata stay at 20250630, as the bucket has them)."""
    for kind in ("metadata", R.MAPMYCELLS_KIND):
        old = release / kind / R.TAXONOMY_DIR / R.VERSION
        new = release / kind / NEW_DIR / NEW_VERSION
        new.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if keep_old else shutil.move)(old, new)
    files = sorted(str(p.relative_to(release)) for p in release.rglob("*") if p.is_file())
    listed = [f for f in files if not f.startswith("releases/") and f not in CACHE_FILES]
    shutil.rmtree(release / "releases")
    write_manifest(release, [entry_for(release, f, NEW_VERSION) for f in listed], NEW_VERSION)


@pytest.fixture(scope="module")
def newer(tiny_release, tmp_path_factory) -> Path:
    release = tmp_path_factory.mktemp("newer") / "release"
    shutil.copytree(tiny_release, release)
    relocate_taxonomy(release)
    return release


def test_the_manifest_names_the_taxonomy_directory(newer):
    lay = Layout(read_manifest(newer, NEW_VERSION)[1], NEW_VERSION)
    assert (lay.taxonomy_dir, lay.taxonomy_version) == (NEW_DIR, NEW_VERSION)
    assert lay.csv(R.TERM) == f"metadata/{NEW_DIR}/{NEW_VERSION}/{R.TERM.name}.csv"
    report = check_release(newer, version=NEW_VERSION)
    assert report.ok, report.problems
    assert f"taxonomy: {NEW_DIR}, version {NEW_VERSION}" in " ".join(report.notes)
    # 20250630's manifest is gone: the default release says which versions it found
    with pytest.raises(ReleaseError, match=f"found versions: {NEW_VERSION}; pass --release"):
        read_manifest(newer)


def test_a_newer_taxonomy_directory_builds_and_answers_the_same(newer, tiny_store, tmp_path):
    r = CliRunner().invoke(
        main,
        ["build", str(newer), str(tmp_path / "store"), "--release", NEW_VERSION, "--bucket-nnz", "20000"],
    )
    assert r.exit_code == 0, r.output
    assert f"taxonomy: {NEW_DIR}, version {NEW_VERSION}" in r.output  # said in one line
    store = tmp_path / "store"
    info = json.loads((store / "build.json").read_text())
    assert info["taxonomy"] == f"{NEW_DIR} {NEW_VERSION}" and info["release_version"] == NEW_VERSION
    new, old = build_db.connect(store), build_db.connect(tiny_store)
    licence = dict(new.execute("select key, value from licence").fetchall())
    assert licence["taxonomy"] == f"{NEW_DIR} {NEW_VERSION}" and NEW_DIR in licence["citation"]
    for name, params in (
        ("dotplot", {"species": "all", "genes": "DRD1,PLP1", "level": "Group"}),
        ("markers", {"species": "Human", "level": "Subclass", "term": "Astrocyte", "n": 5}),
        ("cells_per_level", {"level": "Subclass"}),
    ):
        pd.testing.assert_frame_equal(
            build_db.run_query(new, name, **params), build_db.run_query(old, name, **params)
        )
    cols = "species, cell_label, cluster_alias, group_name, x, total_counts"
    assert (
        new.execute(f"select {cols} from cells order by all").fetchall()
        == old.execute(f"select {cols} from cells order by all").fetchall()
    )
    r = CliRunner().invoke(main, ["info", str(store)])
    assert f"taxonomy  {NEW_DIR} {NEW_VERSION}" in r.output


def test_a_manifest_naming_both_takes_the_releases_own(tiny_release, tmp_path):
    """The suffixed directory at 20250630 and the plain one at 20261031 both listed: release 20261031 reads
    the plain one (one colour changed there shows which was read), and download fetches only it."""
    release = tmp_path / "release"
    shutil.copytree(tiny_release, release)
    relocate_taxonomy(release, keep_old=True)
    term = release / "metadata" / NEW_DIR / NEW_VERSION / f"{R.TERM.name}.csv"
    df = pd.read_csv(term, dtype=str, keep_default_na=False)
    df.loc[0, "color_hex_triplet"] = "#123456"
    df.to_csv(term, index=False)
    files = sorted(str(p.relative_to(release)) for p in release.rglob("*") if p.is_file())
    listed = [f for f in files if not f.startswith("releases/") and f not in CACHE_FILES]
    write_manifest(release, [entry_for(release, f, NEW_VERSION) for f in listed], NEW_VERSION)
    _, entries = read_manifest(release, NEW_VERSION)
    assert {e.directory for e in entries} >= {R.TAXONOMY_DIR, NEW_DIR}
    lay = Layout(entries, NEW_VERSION)
    assert lay.taxonomy_dir == NEW_DIR and lay.ignored.get(R.TAXONOMY_DIR)
    chosen = select(entries, R.SPECIES, ("taxonomy",), NEW_VERSION)
    assert chosen and {e.directory for e in chosen} == {NEW_DIR}
    report = check_release(release, version=NEW_VERSION)
    assert report.ok, report.problems
    store = build_db.build(
        release, tmp_path / "store", species=("Marmoset",), version=NEW_VERSION, quiet=True
    )
    label = df.loc[0, "label"]
    con = build_db.connect(store.store)
    assert con.execute("select color from taxonomy_terms where term_label = ?", [label]).fetchall() == [
        ("#123456",)
    ]


def test_list_releases_and_download_a_newer_one(newer, tiny_release, tmp_path):
    bucket = tmp_path / "bucket"
    shutil.copytree(newer, bucket)
    (bucket / "releases" / R.VERSION).mkdir(parents=True)
    shutil.copy(tiny_release / R.manifest_path(), bucket / R.manifest_path())  # 20250630's, beside
    server, url, _ = serve(bucket)
    try:
        r = CliRunner().invoke(main, ["download", "--list-releases", "--base-url", url])
        assert r.exit_code == 0, r.output
        lines = r.output.splitlines()
        assert (
            lines[0].startswith(f"{R.VERSION}  ") and f"{R.EXPRESSION_DIR} (expression_matrices" in lines[0]
        )
        assert f"{R.TAXONOMY_DIR} (mapmycells {R.VERSION}, metadata {R.VERSION})" in lines[0]
        assert f"download --release {R.VERSION} reads {R.EXPRESSION_DIR} and {R.TAXONOMY_DIR}" in lines[1]
        assert (
            lines[2].startswith(f"{NEW_VERSION}  ")
            and f"{NEW_DIR} (mapmycells {NEW_VERSION}, metadata {NEW_VERSION})" in lines[2]
        )
        assert f"download --release {NEW_VERSION} reads {R.EXPRESSION_DIR} and {NEW_DIR}" in lines[3]
        plan = download(
            tmp_path / "cache", version=NEW_VERSION, base_url=url, species=("Marmoset",), quiet=True
        )
        assert any(e.directory == NEW_DIR for e in plan.entries)
        assert check_release(tmp_path / "cache", species=("Marmoset",), version=NEW_VERSION, md5=True).ok
    finally:
        server.shutdown()
    r = CliRunner().invoke(main, ["download"])
    assert r.exit_code == 2 and "give DEST" in r.output
