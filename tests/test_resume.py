"""A build stopped anywhere (Ctrl-C, or `kill -9`) and run again finishes by itself with an exact store, and
leaves no process and no staging behind: at every step's start, and at points inside steps. `make test`
runs one species through each step; the slow run (`make bench`) runs the three species' every step with
both signals at several points."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from build_db.store.paths import staging_dir
from build_db.store.verify import verify_store

STEP = re.compile(r"^step \[(\d+) of (\d+)\]")
FINGERPRINT = """
select 'gene-major', species, count(*), sum(raw_count), sum(hash(gene_index, cell_index, raw_count))
from expression_counts group by all
union all
select 'cell-major', species, count(*), sum(raw_count), sum(hash(cell_rank, gene_index, raw_count))
from expression_by_cell group by all
union all
select 'statistics', species, count(*), sum(sum_raw), sum(hash(level, term_label, gene_index, n_expressing))
from term_gene_sums group by all
union all
select 'region statistics', species, count(*), sum(sum_raw), sum(hash(group_label, region_of_interest_label,
    gene_index, n_expressing))
from region_group_gene_sums group by all
union all
select 'cells', species, count(*), sum(total_counts), sum(hash(cell_label, cluster_alias, donor_label))
from cells group by all
order by 1, 2
"""


def command(release: Path, store: Path, species: str) -> list[str]:
    return [
        sys.executable, "-m", "build_db", "build", str(release), str(store),
        "--species", species, "--bucket-nnz", "5000",
    ]  # fmt: skip


def fingerprint(store: Path) -> list[tuple]:
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    try:
        return con.execute(FINGERPRINT).fetchall()
    finally:
        con.close()


def interrupt(cmd: list[str], step: int, sig: int, delay: float) -> tuple[int | None, str, int]:
    """Run the build in a session of its own; `delay` seconds after step `step` starts, send `sig` to the
    whole session, as Ctrl-C in a terminal reaches every process. (return code, what it printed after,
    the session id)."""
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    sent = False
    for line in p.stderr:
        m = STEP.match(line)
        if m and int(m[1]) == step:
            time.sleep(delay)
            try:
                os.killpg(p.pid, sig)
                sent = True
            except ProcessLookupError:
                pass
            break
    rest = p.communicate(timeout=120)[1]
    finished = any(line.startswith("built ") for line in rest.splitlines())  # the signal came too late
    return (p.returncode if sent and not finished else None), rest, p.pid


def stopped(said: str) -> None:
    """What Ctrl-C prints besides the steps it had reached: one line, no traceback."""
    other = [ln for ln in said.splitlines() if ln.strip() and not ln.startswith(("step [", "  "))]
    assert len(other) == 1 and other[0].startswith("Error: interrupted; run the same command again"), said


def session_members(sid: int) -> list[str]:
    """Processes still alive in the killed build's session (its workers, fork server, manager)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


@pytest.fixture(scope="module")
def reference(tiny_release, tmp_path_factory):
    """Each species built once without interruption: the numbers every resumed build must give."""
    out = {}
    for species in ("Marmoset", "Human", "Macaque"):
        store = tmp_path_factory.mktemp("ref") / species
        subprocess.run(command(tiny_release, store, species), check=True, capture_output=True)
        out[species] = fingerprint(store)
    return out


def check_resumes(tiny_release, tmp_path, reference, species, step, sig, delay) -> None:
    store = tmp_path / f"store-{step}-{sig}"
    cmd = command(tiny_release, store, species)
    code, said, sid = interrupt(cmd, step, sig, delay)
    if code is not None and sig == signal.SIGINT:
        assert code == 1
        stopped(said)
    deadline = time.monotonic() + 10
    while session_members(sid) and time.monotonic() < deadline:  # workers notice their parent's death
        time.sleep(0.1)
    assert not session_members(sid), f"left running after the stop: {session_members(sid)}"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    if code is not None and step > 2:  # the steps the stopped build finished are kept, not run again
        kept = again.stderr.count("done before the build was stopped: kept")
        assert kept >= step - 2, again.stderr
    assert fingerprint(store) == reference[species]
    info = json.loads((store / "build.json").read_text())
    assert list(info["step_seconds"]) == [
        "check",
        f"scatter:{species}",
        f"sort:{species}",
        "metadata",
        "statistics",
        "catalog",
        "verify",
    ]
    assert not verify_store(store, jobs=1)
    assert not staging_dir(store).exists()
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp") or "building" in p.name]


# One species: check, scatter, sort, metadata, statistics, catalog, verify, publish. Each step once, the
# signals alternating, at its start or a moment into it (the check step's early stops were already safe).
FAST = [
    (2, signal.SIGKILL, 0.15),
    (3, signal.SIGINT, 0.1),
    (4, signal.SIGKILL, 0.0),
    (5, signal.SIGINT, 0.0),
    (6, signal.SIGKILL, 0.0),
    (7, signal.SIGINT, 0.05),
    (8, signal.SIGKILL, 0.0),
]


@pytest.mark.parametrize("step,sig,delay", FAST, ids=[f"step{s}-{g.name}-{d}" for s, g, d in FAST])
def test_a_stopped_build_resumes_exactly(tiny_release, tmp_path, reference, step, sig, delay):
    check_resumes(tiny_release, tmp_path, reference, "Marmoset", step, sig, delay)


ALL_STEPS = 6 + 2 * 2  # two species: both species' scatter and sort, then the shared steps
_pick = random.Random(2026)
SLOW = [
    (s, g, d)
    for s in range(1, ALL_STEPS + 1)
    for g in (signal.SIGINT, signal.SIGKILL)
    for d in (0.0, round(_pick.uniform(0.01, 0.5), 2))
]


@pytest.mark.slow
@pytest.mark.parametrize("step,sig,delay", SLOW, ids=[f"step{s}-{g.name}-{d}" for s, g, d in SLOW])
def test_every_step_of_a_two_species_build_resumes(tiny_release, tmp_path, reference, step, sig, delay):
    store = tmp_path / "both"
    cmd = command(tiny_release, store, "Human,Macaque")
    code, said, sid = interrupt(cmd, step, sig, delay)
    if code is not None and sig == signal.SIGINT:
        stopped(said)
    time.sleep(1)
    assert not session_members(sid)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    got = fingerprint(store)
    assert got == sorted(reference["Human"] + reference["Macaque"])
    assert not verify_store(store, jobs=1)


def test_a_publish_stopped_before_the_links_resumes(tiny_release, tmp_path, reference, monkeypatch, capsys):
    """Killed between moving the snapshot in and pointing the links at it (a few microseconds wide, hit
    once by CI's kill at the publish step's start): the next build moves it back and resumes, all steps
    kept."""
    from build_db.store import steps
    from build_db.store.build import build

    store = tmp_path / "store"

    symlink = os.symlink

    def killed(target, *args, **kwargs):
        if str(target).startswith("snapshots/"):  # the store's links, not the catalog step's
            raise SystemExit("killed")
        symlink(target, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(steps.os, "symlink", killed)
        with pytest.raises(SystemExit):
            build(tiny_release, store, species=("Marmoset",), bucket_nnz=5000)
    assert not (store / "build.json").exists() and list((store / "snapshots").iterdir())
    capsys.readouterr()
    build(tiny_release, store, species=("Marmoset",), bucket_nnz=5000)
    said = capsys.readouterr().err
    assert "stopped while publishing" in said
    assert said.count("done before the build was stopped: kept") == 6, said  # all but check and publish
    assert fingerprint(store) == reference["Marmoset"]
    build_id = json.loads((store / "build.json").read_text())["build_id"]
    assert [p.name for p in (store / "snapshots").iterdir()] == [build_id]
    assert not list(store.rglob("state.json")) and not staging_dir(store).exists()


def test_a_publish_stopped_between_the_two_links_is_finished(tiny_release, tmp_path, monkeypatch):
    """Killed after the catalog link named the new snapshot, before build.json's: the next build points
    build.json at it too, so the two never name different builds."""
    from build_db.store import steps
    from build_db.store.build import build

    store = tmp_path / "store"
    build(tiny_release, store, species=("Marmoset",), bucket_nnz=5000, quiet=True)
    first = json.loads((store / "build.json").read_text())["build_id"]
    symlink = os.symlink

    def killed(target, *args, **kwargs):
        if str(target).startswith("snapshots/") and str(target).endswith("build.json"):
            raise SystemExit("killed")
        symlink(target, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(steps.os, "symlink", killed)
        with pytest.raises(SystemExit):
            build(tiny_release, store, species=("Marmoset",), bucket_nnz=5000, quiet=True)
    new = Path(os.readlink(store / "catalog.duckdb")).parent.name
    assert new != first and json.loads((store / "build.json").read_text())["build_id"] == first
    steps.recover_publish(store, steps.Reporter(True))
    assert json.loads((store / "build.json").read_text())["build_id"] == new
    assert not list(store.rglob("state.json"))
    assert not verify_store(store, jobs=1)
