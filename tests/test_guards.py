"""Nothing lost, one build at a time, early one-line errors: the build's and synth's guards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.errors import HmbaError
from build_db.release import layout as R
from build_db.release.synth import synth
from build_db.store import guard
from build_db.store.build import build

MARMOSET = ("Marmoset",)


@pytest.fixture(scope="module")
def two_species_store(tiny_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("guards") / "store"
    return build(tiny_release, out, species=("Macaque", "Marmoset"), bucket_nnz=20_000, quiet=True).store


def _species(store) -> set[str]:
    return set(json.loads((store / "build.json").read_text())["species"])


def test_a_second_build_says_who_holds_the_lock(tiny_release, tmp_path):
    store = tmp_path / "store"
    with guard.build_lock(store):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "build_db",
                "build",
                str(tiny_release),
                str(store),
                "--species",
                "Marmoset",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert f"another build holds its lock (pid {os.getpid()} on " in line and "wait for it" in line
    assert not store.exists()


def test_the_lock_holds_through_a_symlink(tiny_release, tmp_path):
    """A build through a symlink and one through its target reached one store at once before."""
    real = tmp_path / "real-store"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with guard.build_lock(tmp_path / "link"):
        with pytest.raises(HmbaError, match="another build holds its lock"):
            build(tiny_release, real, species=MARMOSET, quiet=True)
        with pytest.raises(HmbaError, match="another build holds its lock"):
            build(tiny_release, tmp_path / "sub" / ".." / "link", species=MARMOSET, quiet=True)


def test_the_lock_dies_with_its_holder(tmp_path):
    store = tmp_path / "store"
    code = (
        "import sys, time; from build_db.store.guard import build_lock\n"
        f"with build_lock({str(store)!r}):\n    print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(HmbaError, match=rf"another build holds its lock \(pid {p.pid} "):
        with guard.build_lock(store):
            pass
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    with guard.build_lock(store):  # free again: a killed build leaves no stale lock
        pass


def test_narrower_species_needs_force(two_species_store, tiny_release):
    with pytest.raises(HmbaError, match=r"has Macaque, which this build \(--species Marmoset\) would drop"):
        build(tiny_release, two_species_store, species=MARMOSET, bucket_nnz=20_000, quiet=True)
    assert _species(two_species_store) == {"Macaque", "Marmoset"}  # untouched


def test_files_a_build_did_not_write_need_force(two_species_store, tiny_release, tmp_path):
    mine = two_species_store / "my-notes.txt"
    mine.write_text("keep me")
    try:
        r = CliRunner().invoke(main, ["build", str(tiny_release), str(two_species_store), "-q"])
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert "holds my-notes.txt, which a build did not write; move them out, or pass --force" in r.output
        assert mine.read_text() == "keep me" and _species(two_species_store) == {"Macaque", "Marmoset"}
    finally:
        mine.unlink()
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("x")
    with pytest.raises(HmbaError, match=r"holds thesis.tex and is not an hmba-db store .* pass --force"):
        build(tiny_release, folder, species=MARMOSET, quiet=True)
    assert (folder / "thesis.tex").exists()


def test_force_drops_species(tiny_release, tmp_path):
    store = build(
        tiny_release, tmp_path / "s", species=("Macaque", "Marmoset"), bucket_nnz=50_000, quiet=True
    )
    build(tiny_release, store.store, species=MARMOSET, bucket_nnz=50_000, force=True, quiet=True)
    assert _species(store.store) == {"Marmoset"}


def test_bad_targets_and_options_are_one_line(tiny_release, tmp_path, monkeypatch):
    a_file = tmp_path / "store"
    a_file.write_text("not a folder")
    r = CliRunner().invoke(main, ["build", str(tiny_release), str(a_file)])
    assert r.exit_code == 1 and "a file is there, not a folder" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["build", str(tiny_release), str(tmp_path / "x"), "--bucket-nnz", "-5"])
    assert r.exit_code == 2 and "-5 is not in the range x>=1" in r.output
    with pytest.raises(HmbaError, match="--bucket-genes must be at least 1"):
        build(tiny_release, tmp_path / "y", bucket_genes=0)
    monkeypatch.setattr(guard.os, "access", lambda *a: False)
    with pytest.raises(HmbaError, match=r"not writable; build the store in a folder you can write to"):
        build(tiny_release, tmp_path / "ro" / "store", species=MARMOSET, quiet=True)


def test_disk_space_is_checked_before_long_work(tiny_release, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(guard.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 10**6, 10**6))
    said = r"needs ~\d+ MB of staging space \(6 bytes per non-zero .* plus a 1\.1 GB margin, but 1 MB is free"
    with pytest.raises(HmbaError, match=said):
        build(tiny_release, tmp_path / "store", species=MARMOSET, quiet=True)
    assert not (tmp_path / "store").exists()


def test_synth_force_replaces_a_release_never_other_files(tmp_path):
    out = synth(tmp_path / "r", scale=0.0002, genes=200, quiet=True, species=MARMOSET)
    synth(out, scale=0.0002, genes=200, quiet=True, species=MARMOSET, force=True)  # a release: replaced
    (out / "my-analysis.ipynb").write_text("{}")
    with pytest.raises(
        HmbaError, match=r"--force replaces a release, but my-analysis.ipynb is not part of one"
    ):
        synth(out, scale=0.0002, genes=200, quiet=True, species=MARMOSET, force=True)
    assert (out / "my-analysis.ipynb").exists()
    start = time.monotonic()
    r = CliRunner().invoke(main, ["synth", str(out / "my-analysis.ipynb")])
    assert r.exit_code == 1 and "a file is there, not a folder" in r.output and time.monotonic() - start < 5


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_with_a_killed_build(tiny_release, tmp_path):
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "build_db",
            "build",
            str(tiny_release),
            str(tmp_path / "s"),
            "--bucket-nnz",
            "2000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline, procs = time.monotonic() + 60, set()
    while time.monotonic() < deadline and len(procs) < 4:  # fork server, queue manager, two workers
        procs |= _descendants(p.pid)
        time.sleep(0.05)
    assert len(procs) >= 4 and p.poll() is None, "the build ended before its workers could be seen"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(q) for q in procs):
        time.sleep(0.1)
    assert [q for q in procs if _alive(q)] == []


def _damage_chunk(path, dataset: str) -> None:
    """Flip bytes in the middle of a dataset's first stored chunk, as a bad disk or transfer would."""
    import h5py

    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\xff" * min(16, info.size // 2))


@pytest.mark.parametrize("dataset", ["X/indptr", "obs/cell_label", "var/gene_identifier"])
def test_damaged_chunk_is_one_line_in_check_and_build(release_copy, tmp_path, dataset):
    from build_db.release import layout as R

    from .conftest import restamp

    rel = R.matrix_path("Marmoset", "raw")
    _damage_chunk(release_copy / rel, dataset)
    restamp(release_copy, rel)  # same size, new md5: only reading the chunk can tell
    r = CliRunner().invoke(main, ["check", str(release_copy), "--species", "Marmoset"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{rel}: " in r.stdout and "download it again" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "build_db",
            "build",
            str(release_copy),
            str(tmp_path / "s"),
            "--species",
            "Marmoset",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert rel.rsplit("/", 1)[1] in line and "download it again" in line


def test_catalog_held_for_writing_elsewhere_is_one_line(tiny_store, tmp_path):
    # A private copy: the shared tiny store may still be open read-only in this process (a connection of
    # an earlier test not yet collected), and DuckDB then refuses the holder its write lock.
    tiny_store = Path(shutil.copytree(tiny_store, tmp_path / "store", symlinks=True))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(tiny_store / 'catalog.duckdb')!r}); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for args in (["sql", str(tiny_store), "select 1"], ["query", str(tiny_store), "cells_per_level"]):
            r = subprocess.run(
                [sys.executable, "-m", "build_db", *args], capture_output=True, text=True, timeout=60
            )
            assert r.returncode == 1 and "Traceback" not in r.stderr
            assert f"another program (pid {holder.pid}, " in r.stderr and "open for writing" in r.stderr
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "ftp://example.org/"])
def test_bad_base_url_is_one_line(tmp_path, url):
    r = CliRunner().invoke(main, ["download", str(tmp_path), "--base-url", url, "--dry-run"])
    assert r.exit_code == 1 and "is not an http(s) address of a bucket" in r.output
    assert "Traceback" not in r.output and not any(tmp_path.iterdir())


def test_plot_paths_are_checked_before_the_query(tiny_store, tmp_path):
    base = ["query", str(tiny_store), "cells_per_level", "--param", "species=Marmoset"]
    r = CliRunner().invoke(main, [*base, "--plot", str(tmp_path / "p.foo")])
    assert r.exit_code == 1 and "cannot draw a '.foo' file; use one of" in r.output and ".png" in r.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = CliRunner().invoke(main, [*base, "--plot", str(blocker / "p.png")])
    assert r.exit_code == 1 and "cannot write the picture there" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, [*base, "--plot", str(tmp_path / "picture")])
    assert r.exit_code == 0 and f"plot written to {tmp_path / 'picture.png'}" in r.output
    assert (tmp_path / "picture.png").stat().st_size > 1000


def test_a_full_disk_is_one_line(tiny_release, tmp_path, monkeypatch):
    import errno

    from build_db.store import steps

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.parquet"))

    monkeypatch.setattr(steps, "merge_stats", full)
    r = CliRunner().invoke(
        main, ["build", str(tiny_release), str(tmp_path / "s"), "--species", "Marmoset", "-q"]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "x.parquet: No space left on device; free space and run the same command again" in r.output
    assert not (tmp_path / "s").exists()


def _rewrite(release, spec, change) -> None:
    import pandas as pd

    from .conftest import restamp

    df = pd.read_csv(release / spec.relative_path(), dtype=str, keep_default_na=False)
    change(df)
    df.to_csv(release / spec.relative_path(), index=False)
    restamp(release, spec.relative_path())


def _move_group(df) -> None:
    """Move a Group under another Subclass in the term table only (the membership file keeps the old path)."""
    groups = df[df.cluster_annotation_term_set_name == "Group"]
    subclasses = df[df.cluster_annotation_term_set_name == "Subclass"].label.tolist()
    i = groups.index[0]
    df.loc[i, "parent_term_label"] = next(s for s in subclasses if s != df.loc[i, "parent_term_label"])


def _skip_a_level(df) -> None:
    groups = df.index[df.cluster_annotation_term_set_name == "Group"]
    classes = df[df.cluster_annotation_term_set_name == "Class"].label.tolist()
    df.loc[groups[0], "parent_term_label"] = classes[0]


EARLY = {
    "group moved to another subclass": (
        "TERM",
        _move_group,
        r"cluster \S+ puts CS20250428_GROUP_\d+ under CS20250428_SUBCL_\d+, but cluster_annotation_term.csv "
        r"gives CS20250428_GROUP_\d+ the parent CS20250428_SUBCL_\d+",
    ),
    "parent two levels up": (
        "TERM",
        _skip_a_level,
        r"term CS20250428_GROUP_\d+ \(Group\) has parent CS20250428_CLASS_\d+ \(Class\); "
        "a term's parent must be at the level just above it",
    ),
    "bad umi_count": (
        "CELL_METADATA",
        lambda d: d.__setitem__("umi_count", ["many"] + list(d.umi_count[1:])),
        r"column umi_count has 'many' for cell_label \S+, expected double",
    ),
    "unknown library": (
        "CELL_METADATA",
        lambda d: d.__setitem__("library_label", ["L-NOWHERE"] + list(d.library_label[1:])),
        r"cell \S+ names library L-NOWHERE, which library.csv does not list",
    ),
    "unknown cluster alias": (
        "CELL_MEMBERSHIP",
        lambda d: d.__setitem__("cluster_alias", ["Human-99999"] + list(d.cluster_alias[1:])),
        r"names cluster alias Human-99999, which cluster.csv does not list",
    ),
    "duplicate cell label": (
        "CELL_METADATA",
        lambda d: d.__setitem__("cell_label", [d.cell_label[1]] + list(d.cell_label[1:])),
        r"cell_label \S+ appears 2 times",
    ),
}


@pytest.mark.parametrize("name", EARLY)
def test_metadata_defects_are_found_by_check_before_long_work(release_copy, tmp_path, name):
    import re

    from build_db.release import layout as R
    from build_db.store.paths import staging_dir

    spec, change, message = EARLY[name]
    _rewrite(release_copy, getattr(R, spec), change)
    r = CliRunner().invoke(main, ["check", str(release_copy)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (line,) = r.stdout.splitlines()
    assert re.search(message, line), line
    with pytest.raises(HmbaError, match=message):
        build(release_copy, tmp_path / "store", quiet=True)
    assert not staging_dir(tmp_path / "store").exists()  # stopped before the transposition began


def test_explicit_zeros_are_dropped_and_counted(release_copy, tmp_path):
    import h5py
    import numpy as np

    from build_db.release import layout as R
    from build_db.store.paths import files_root
    from build_db.store.verify import verify_store

    from .conftest import restamp

    rel = R.matrix_path("Marmoset", "raw")
    with h5py.File(release_copy / rel, "a") as f:
        data = f["X/data"]
        source_nnz = len(data)
        zeroed = np.arange(5, source_nnz, 997)
        values = data[...]
        values[zeroed] = 0
        data[...] = values
    restamp(release_copy, rel)
    (release_copy / R.matrix_path("Marmoset", "log2")).unlink()  # it no longer matches the raw file
    store = build(release_copy, tmp_path / "store", species=MARMOSET, quiet=True).store
    meta = json.loads((store / "build.json").read_text())["species"]["Marmoset"]
    assert meta["explicit_zeros_dropped"] == len(zeroed) and meta["nnz"] == source_nnz - len(zeroed)
    assert verify_store(store) == []
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    n, zeros, detected = con.execute(
        "select count(*), count(*) filter (raw_count = 0), "
        "(select sum(genes_detected) from cells) from expression_counts"
    ).fetchone()
    assert n == detected == meta["nnz"] and zeros == 0
    assert files_root(store).is_dir()


def test_a_store_in_folders_that_do_not_exist_yet(tiny_release, tmp_path):
    store = build(tiny_release, tmp_path / "a" / "b" / "store", species=MARMOSET, quiet=True).store
    assert (store / "catalog.duckdb").exists() and _species(store) == {"Marmoset"}


def test_a_flipped_byte_in_an_h5ad_stops_the_build(release_copy, tmp_path):
    """Same size, one byte changed: the build hashes every file download or synth did not vouch for, so
    it refuses before transposing anything (it built with exit 0 and a corrupt cell label before)."""
    raw = R.matrix_path("Marmoset", "raw")
    path = release_copy / raw
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    r = CliRunner().invoke(
        main, ["build", str(release_copy), str(tmp_path / "store"), "--species", "Marmoset"]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{raw}: md5 " in r.output and "differs from the manifest's" in r.output, r.output
    assert not (tmp_path / "store").exists()


def test_files_synth_recorded_are_trusted_not_hashed(tiny_release, tmp_path):
    r = CliRunner().invoke(
        main, ["build", str(tiny_release), str(tmp_path / "store"), "--species", "Marmoset"]
    )
    assert r.exit_code == 0, r.output
    assert "md5: 0 file(s) hashed against the manifest" in r.output
    assert "trusted as download or synth recorded them" in r.output


def test_a_read_only_store_is_said_before_the_build(tiny_release, tmp_path, monkeypatch):
    store = tmp_path / "store"
    (store / "snapshots").mkdir(parents=True)
    real = guard.os.access
    monkeypatch.setattr(guard.os, "access", lambda p, mode: real(p, mode) and Path(p) != store / "snapshots")
    with pytest.raises(HmbaError, match=r"snapshots: not writable, so a build cannot publish into it"):
        build(tiny_release, store, species=MARMOSET, quiet=True, force=True)
