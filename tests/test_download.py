"""download against a local HTTP server in the bucket layout: full download then build, resume after a
cut, md5 repair, HTTP errors and timeouts, filtering, pre-existing corruption, disk space."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from build_db import release as R
from build_db.builder import build
from build_db.check import check_release
from build_db.cli import main
from build_db.download import DownloadError, download
from build_db.manifest import read_manifest

from .httpserver import serve

RAW = R.matrix_path("Marmoset", "raw")
FAST = {"quiet": True, "backoff": 0.01, "timeout": 2.0}


@pytest.fixture
def bucket(tiny_release):
    server, url, faults = serve(tiny_release)
    yield url, faults
    server.shutdown()


def test_full_download_then_build(bucket, tiny_release, tmp_path):
    url, faults = bucket
    dest = tmp_path / "cache"
    plan = download(dest, base_url=url, **FAST)
    assert len(plan.present) == 6 + len(R.ALL_CSVS)
    for e in read_manifest(tiny_release)[1]:
        assert (dest / e.relative_path).read_bytes() == (tiny_release / e.relative_path).read_bytes()
    assert check_release(dest, md5=True).ok
    record = json.loads((dest / "_downloaded_data.json").read_text())
    assert record[str((dest / RAW).resolve())] == {e.relative_path: e for e in plan.entries}[RAW].file_hash
    store = build(dest, tmp_path / "store", species=("Marmoset",), quiet=True).store
    assert (store / "catalog.duckdb").exists()
    # A second run fetches nothing: every file is recorded as verified.
    before = len(faults.requests)
    again = download(dest, base_url=url, **FAST)
    assert again.todo == [] and len(faults.requests) == before + 1  # the manifest only


def test_cut_mid_file_resumes_with_range(bucket, tiny_release, tmp_path):
    url, faults = bucket
    size = (tiny_release / RAW).stat().st_size
    faults.add(RAW, ("cut", size // 3))
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert (tmp_path / RAW).read_bytes() == (tiny_release / RAW).read_bytes()
    ranges = [r for p, r in faults.requests if p == RAW]
    assert ranges == [None, f"bytes={size // 3}-"]  # resumed where the cut left it, not from zero
    assert faults.bytes_sent[RAW] == size  # every byte sent once


def test_killed_run_resumes_partial_file(bucket, tiny_release, tmp_path):
    url, faults = bucket
    partial = tmp_path / (RAW + ".partial")
    partial.parent.mkdir(parents=True)
    data = (tiny_release / RAW).read_bytes()
    partial.write_bytes(data[:1000])  # what a killed run leaves
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert (tmp_path / RAW).read_bytes() == data and not partial.exists()
    assert [r for p, r in faults.requests if p == RAW] == ["bytes=1000-"]


def test_server_ignoring_range_restarts_cleanly(bucket, tiny_release, tmp_path):
    url, faults = bucket
    partial = tmp_path / (RAW + ".partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 500)
    faults.add(RAW, ("ignore_range", None))
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert (tmp_path / RAW).read_bytes() == (tiny_release / RAW).read_bytes()


def test_corrupted_in_transit_is_detected_and_fetched_again(bucket, tiny_release, tmp_path):
    url, faults = bucket
    faults.add(RAW, ("corrupt", None))
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert (tmp_path / RAW).read_bytes() == (tiny_release / RAW).read_bytes()
    assert len([p for p, _ in faults.requests if p == RAW]) == 2


def test_5xx_and_timeouts_are_retried(bucket, tiny_release, tmp_path):
    url, faults = bucket
    faults.add(RAW, ("status", 503), ("status", 500), ("stall", 3.0))
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert (tmp_path / RAW).read_bytes() == (tiny_release / RAW).read_bytes()
    assert len([p for p, _ in faults.requests if p == RAW]) == 4


def test_persistent_failure_is_a_clear_error(bucket, tmp_path):
    url, faults = bucket
    faults.add(RAW, *[("status", 503)] * 10)
    message = r"Marmoset-raw\.h5ad: HTTP 503 .* after 3 attempt\(s\); try again later"
    with pytest.raises(DownloadError, match=message):
        download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), retries=2, **FAST)
    assert not (tmp_path / RAW).exists()


def test_404_is_not_retried(bucket, tmp_path):
    url, faults = bucket
    message = r"releases/20991231/manifest\.json: 404 not found; check --release"
    with pytest.raises(DownloadError, match=message):
        download(tmp_path, base_url=url, version="20991231", **FAST)
    faults.add(RAW, ("status", 404))
    with pytest.raises(DownloadError, match="404 not found"):
        download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert len([p for p, _ in faults.requests if p == RAW]) == 1


def test_unreachable_server(tmp_path):
    with pytest.raises(DownloadError, match=r"manifest\.json: .*after 2 attempts; check your network"):
        download(tmp_path, base_url="http://127.0.0.1:9/", retries=1, **FAST)


def test_species_and_part_filtering(bucket, tmp_path):
    url, _ = bucket
    plan = download(tmp_path, base_url=url, species=("Macaque",), what=("raw", "metadata"), **FAST)
    got = {e.relative_path for e in plan.entries}
    assert R.matrix_path("Macaque", "raw") in got and R.matrix_path("Macaque", "log2") not in got
    assert (
        R.GENE_TABLES["Macaque"].relative_path() in got and R.GENE_TABLES["Human"].relative_path() not in got
    )
    assert R.CELL_METADATA.relative_path() in got and R.TERM.relative_path() not in got
    assert not (tmp_path / R.matrix_path("Human", "raw")).exists()


def test_pre_existing_corrupted_file_is_replaced(bucket, tiny_release, tmp_path):
    url, faults = bucket
    good = (tiny_release / RAW).read_bytes()
    (tmp_path / RAW).parent.mkdir(parents=True)
    (tmp_path / RAW).write_bytes(bytes([good[0] ^ 1]) + good[1:])  # same size, wrong content
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert (tmp_path / RAW).read_bytes() == good
    # A correct file present but unrecorded (a cache made by another tool) is hashed, not fetched again.
    (tmp_path / "_downloaded_data.json").unlink()
    before = len(faults.requests)
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert len(faults.requests) == before + 1


def test_not_enough_disk(bucket, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    url, _ = bucket
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    message = r"GB to download but 0\.0 GB free .* free space or choose another"
    with pytest.raises(DownloadError, match=message):
        download(tmp_path, base_url=url, **FAST)


def test_cli_dry_run_lists_files(bucket, tmp_path):
    url, faults = bucket
    args = ["download", str(tmp_path), "--base-url", url, "--species", "Marmoset", "--dry-run", "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(RAW in ln and ln.startswith("fetch") for ln in lines)
    assert lines[-1].endswith("GB to download")
    assert [p for p, _ in faults.requests] == [R.manifest_path()]
