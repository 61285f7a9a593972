"""Shared fixtures: small synthetic releases built in code, once per test session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from build_db.release import layout as R
from build_db.release.cache import CACHE_FILES
from build_db.release.manifest import entry_for, md5_file, write_manifest
from build_db.release.synth import synth


@pytest.fixture(scope="session", autouse=True)
def _own_verified_cache(tmp_path_factory):
    """What readers found intact (store/integrity.py) is remembered in a folder of the test session's, not
    the user's ~/.cache; servers and CLIs the tests start inherit it."""
    import os

    os.environ["HMBA_DB_CACHE"] = str(tmp_path_factory.mktemp("hmba-cache"))


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory) -> Path:
    """~1,500 cells x 400 genes per species: every file of the real release, built in about a second.

    Read-only: tests that damage a release copy it first (see `release_copy`).
    """
    out = tmp_path_factory.mktemp("tiny") / "release"
    return synth(out, scale=0.0008, genes=400, seed=7, quiet=True)


@pytest.fixture
def release_copy(tiny_release, tmp_path) -> Path:
    dst = tmp_path / "release"
    shutil.copytree(tiny_release, dst)
    return dst


def restamp(release: Path, relative_path: str) -> None:
    """Make the manifest agree with a file we changed on purpose (so later checks see the change)."""
    mpath = release / R.manifest_path()
    data = json.loads(mpath.read_text())
    path = release / relative_path
    for kinds in data["file_listing"].values():
        for files in kinds.values():
            for entry in files.values():
                for sub in [entry] if "files" in entry else entry.values():
                    (f,) = sub["files"].values()
                    if f["relative_path"] == relative_path:
                        f["size"] = path.stat().st_size
                        f["file_hash"] = md5_file(path)
    mpath.write_text(json.dumps(data))


def remanifest(release: Path) -> None:
    """Write the manifest anew from the files on disk (after moving or adding files on purpose)."""
    files = sorted(str(p.relative_to(release)) for p in release.rglob("*") if p.is_file())
    listed = [f for f in files if not f.startswith("releases/") and f not in CACHE_FILES]
    write_manifest(release, [entry_for(release, f) for f in listed])


@pytest.fixture(scope="module")
def con(tiny_store):
    """A connection to the tiny store, one per test module (a module may define its own `con`)."""
    from build_db import connect

    c = connect(tiny_store)
    yield c
    c.close()


@pytest.fixture(scope="session")
def source(tiny_release) -> dict:
    """The tiny release's raw matrices as AnnData, per species: what the store must give back."""
    import anndata as ad

    return {s: ad.read_h5ad(tiny_release / R.matrix_path(s, "raw")) for s in R.SPECIES}


@pytest.fixture(scope="session")
def tiny_store(tiny_release, tmp_path_factory) -> Path:
    """The tiny release built into a store with several gene buckets per species. Read-only."""
    from build_db import build

    out = tmp_path_factory.mktemp("tinystore") / "store"
    return build(tiny_release, out, bucket_nnz=20_000, quiet=True).store
