"""download against a local HTTP server in the bucket layout: full download then build, resume after a
cut, md5 repair, HTTP errors and timeouts, filtering, pre-existing corruption, disk space."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.release import layout as R
from build_db.release.check import check_release
from build_db.release.download import DownloadError, download, select
from build_db.release.manifest import ours, read_manifest
from build_db.store.build import build

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
    for e in ours(read_manifest(tiny_release)[1]):
        if e.part != "mapmycells":
            assert (dest / e.relative_path).read_bytes() == (tiny_release / e.relative_path).read_bytes()
    # Only our two directories: the other datasets of the manifest (same stems) are never asked for.
    asked = {p for p, _ in faults.requests}
    assert all(p.split("/")[1] in R.DIRECTORIES for p in asked - {R.manifest_path()})
    assert plan.ignored == {"HMBA-10xMultiome-BG-Aligned": 4, "WMB-10X": 3, "WMB-taxonomy": 2}
    assert check_release(dest, md5=True).ok
    # The record is abc_atlas_access's: a sorted list of resolved absolute paths, indent 2.
    text = (dest / "_downloaded_data.json").read_text()
    record = json.loads(text)
    assert record == sorted(str((dest / e.relative_path).resolve()) for e in plan.entries)
    assert text == json.dumps(record, indent=2)
    sidecar = json.loads((dest / "_hmba_db_downloads.json").read_text())
    raw = {e.relative_path: e for e in plan.entries}[RAW]
    assert sidecar[str((dest / RAW).resolve())]["md5"] == raw.file_hash
    assert (dest / "_manifest_last_used.txt").read_text() == "releases/20250630/manifest.json"
    store = build(dest, tmp_path / "store", species=("Marmoset",), quiet=True).store
    assert (store / "catalog.duckdb").exists()
    # A second run fetches nothing: every file is recorded as verified.
    before = len(faults.requests)
    again = download(dest, base_url=url, **FAST)
    assert again.todo == [] and len(faults.requests) == before + 1  # the manifest only


def _client_sees(cache_dir, entries) -> bool:
    """What abc_atlas_access decides for a cache (docs/release.md, 'The bucket and its manifest'): the
    manifest it last used exists under
    releases/, and each file's resolved path is in set(json.load(_downloaded_data.json)), so it is not
    fetched again."""
    cache_dir = cache_dir.resolve()
    last = (cache_dir / "_manifest_last_used.txt").read_text()
    with open(cache_dir / "_downloaded_data.json", "rb") as f:
        done = set(json.load(f))
    return (cache_dir / last).is_file() and all(
        str((cache_dir / e.relative_path).resolve()) in done for e in entries
    )


def test_one_species_fetches_only_its_hmba_files(bucket, tiny_release, tmp_path):
    url, faults = bucket
    plan = download(tmp_path, base_url=url, species=("Human",), **FAST)
    fetched = {p for p, _ in faults.requests} - {R.manifest_path()}
    shared = {spec.relative_path() for spec in R.ALL_CSVS if spec.species is None}
    human = {R.matrix_path("Human", k) for k in R.MATRIX_KINDS} | {R.GENE_TABLES["Human"].relative_path()}
    assert fetched == shared | human
    assert _client_sees(tmp_path, plan.entries)


def test_cache_made_by_the_official_client_is_used(bucket, tiny_release, tmp_path):
    url, faults = bucket
    entries = select(read_manifest(tiny_release)[1], ("Marmoset",), R.PARTS)
    for e in entries:  # the files and records abc_atlas_access leaves behind
        (tmp_path / e.relative_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_release / e.relative_path, tmp_path / e.relative_path)
    (tmp_path / "releases/20250630").mkdir(parents=True)
    shutil.copy(tiny_release / R.manifest_path(), tmp_path / R.manifest_path())
    paths = {str((tmp_path / e.relative_path).resolve()) for e in entries}
    (tmp_path / "_downloaded_data.json").write_text(json.dumps(list(paths), indent=2, sort_keys=True))
    (tmp_path / "_manifest_last_used.txt").write_text("releases/20250630/manifest.json")
    plan = download(tmp_path, base_url=url, species=("Marmoset",), **FAST)
    assert plan.todo == [] and [p for p, _ in faults.requests] == [R.manifest_path()]
    assert set(json.loads((tmp_path / "_downloaded_data.json").read_text())) == paths
    assert _client_sees(tmp_path, entries)
    # A file damaged since (size unchanged, mtime changed) is hashed again and fetched again.
    data = bytearray((tmp_path / RAW).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / RAW).write_bytes(bytes(data))
    download(tmp_path, base_url=url, species=("Marmoset",), **FAST)
    assert (tmp_path / RAW).read_bytes() == (tiny_release / RAW).read_bytes()
    assert [p for p, _ in faults.requests].count(RAW) == 1
    assert _client_sees(tmp_path, entries)


def test_touched_file_is_hashed_not_fetched(bucket, tiny_release, tmp_path):
    url, faults = bucket
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    os.utime(tmp_path / RAW, ns=(1, 1))  # mtime changed, content the same
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert [p for p, _ in faults.requests].count(RAW) == 1
    sidecar = json.loads((tmp_path / "_hmba_db_downloads.json").read_text())
    assert sidecar[str((tmp_path / RAW).resolve())]["mtime_ns"] == 1


def test_a_truncated_recorded_file_is_fetched_again(bucket, tiny_release, tmp_path):
    url, faults = bucket
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    data = (tmp_path / RAW).read_bytes()
    (tmp_path / RAW).write_bytes(data[:100])
    download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    assert (tmp_path / RAW).read_bytes() == data
    assert [p for p, _ in faults.requests].count(RAW) == 2


@pytest.mark.parametrize(
    "record", ['{"/somewhere/else.h5ad": "0123"}', "not json", '{"a": 1'], ids=["hmba-db 0.1", "junk", "cut"]
)
def test_old_or_damaged_record_is_rewritten_as_the_list(bucket, tmp_path, record):
    url, _ = bucket
    (tmp_path / "_downloaded_data.json").write_text(record)
    plan = download(tmp_path, base_url=url, species=("Marmoset",), what=("raw",), **FAST)
    got = json.loads((tmp_path / "_downloaded_data.json").read_text())
    assert isinstance(got, list) and str((tmp_path / RAW).resolve()) in got
    assert all(isinstance(p, str) for p in got) and RAW in plan.present


def test_mapmycells_only_when_asked(bucket, tiny_release, tmp_path):
    url, faults = bucket
    plan = download(tmp_path, base_url=url, species=("Marmoset",), what=("mapmycells",), **FAST)
    names = sorted(e.relative_path.rsplit("/", 1)[1] for e in plan.entries)
    assert names == ["precomputed_stats.HMBA.BG.2025-08-04.h5", "query_markers.HMBA.BG.2025-08-04.json"]
    assert check_release(tmp_path, species=("Marmoset",), parts=("mapmycells",), md5=True).ok
    default = select(read_manifest(tiny_release)[1], R.SPECIES, R.PARTS)
    assert not any(e.kind == "mapmycells" for e in default)


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
    assert not any("Aligned" in ln or "WMB" in ln for ln in lines if ln.startswith("fetch"))
    assert "ignored 9 files of 3 other datasets in the manifest" in r.output
    assert lines[-1].endswith("GB to download")
    assert [p for p, _ in faults.requests] == [R.manifest_path()]
