"""Snapshots: a reader keeps one build's view while the store is rebuilt; new connections see the new build;
old snapshots go only after their grace period, and a reader that outlives it gets an error, never a mix."""

from __future__ import annotations

import threading

import duckdb
import pytest

from build_db import analyses, build, connect
from build_db.errors import HmbaError
from build_db.release.synth import synth
from build_db.store.build import collect_snapshots
from build_db.store.paths import SNAPSHOTS, files_root

MARMOSET = ("Marmoset",)
# Expression joined to the cells' totals (the log2 view) and to the cells' taxonomy: a mix of two builds'
# files would answer neither build's numbers.
QUESTION = (
    "select count(*), sum(e.raw_count), round(sum(e.log2_cpm), 6), count(distinct c.group_name) "
    "from expression e join cells c using (species, cell_index) where c.group_name is not null"
)


@pytest.fixture(scope="module")
def second_release(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("b") / "release", scale=0.0008, genes=400, seed=8, quiet=True)


def _answer(con) -> tuple:
    return con.execute(QUESTION).fetchone()


def test_readers_during_a_rebuild_see_one_build_or_the_other(tiny_release, second_release, tmp_path):
    store = build(tiny_release, tmp_path / "store", species=MARMOSET, quiet=True).store
    old_con = connect(store)
    old = _answer(old_con)
    old_mean = analyses.mean_expression(old_con, "Marmoset", ["PLP1"], "Group")
    seen_long, seen_fresh, errors = [], [], []
    done = threading.Event()

    def reader():
        try:
            while not done.is_set():
                seen_long.append(_answer(old_con.cursor()))
                fresh = connect(store)
                seen_fresh.append(_answer(fresh))
                fresh.close()
        except Exception as e:  # noqa: BLE001 - the test reports any failure of the reader
            errors.append(e)

    t = threading.Thread(target=reader)
    t.start()
    try:
        build(second_release, store, species=MARMOSET, quiet=True)
    finally:
        done.set()
        t.join()
    new_con = connect(store)
    new = _answer(new_con)
    assert errors == [] and old != new
    assert len(seen_long) > 3 and set(seen_long) == {old}  # an open connection keeps its build
    assert set(seen_fresh) <= {old, new}  # a new connection gets one build, never a mix
    # Caches are per build: the same process answers for the new build at once.
    new_mean = analyses.mean_expression(new_con, "Marmoset", ["PLP1"], "Group")
    assert not new_mean.equals(old_mean)
    assert analyses.mean_expression(old_con, "Marmoset", ["PLP1"], "Group").equals(old_mean)
    # Both snapshots are on disk until the old one's grace period ends.
    snaps = sorted(p.name for p in (store / SNAPSHOTS).iterdir())
    assert len(snaps) == 2 and files_root(store).name == snaps[-1]
    assert collect_snapshots(store, keep_old=3600) == []
    assert collect_snapshots(store, keep_old=0) == snaps[:1]
    with pytest.raises(duckdb.Error, match=rf"No files found .*{snaps[0]}"):
        _answer(old_con)  # its build is gone: an error naming it, not the new build's files
    assert _answer(connect(store)) == new


def test_a_copy_reads_its_own_files(tiny_release, second_release, tmp_path):
    import shutil

    store = build(tiny_release, tmp_path / "store", species=MARMOSET, quiet=True).store
    old = _answer(connect(store))
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)  # links become files, as some copy tools do
    build(second_release, store, species=MARMOSET, keep_old=0, quiet=True)
    assert files_root(copy).parent.parent == copy
    assert _answer(connect(copy)) == old  # connect() reads the copy's files
    plain = duckdb.connect(str(copy / "catalog.duckdb"), read_only=True)  # a BI tool: no help from us
    with pytest.raises(duckdb.Error, match="No files found"):
        _answer(plain)  # the original's old build is gone: an error (run relocate), never its new files


def test_keep_old_zero_deletes_the_previous_snapshot(tiny_release, tmp_path):
    store = build(tiny_release, tmp_path / "store", species=MARMOSET, quiet=True).store
    first = files_root(store).name
    build(tiny_release, store, species=MARMOSET, keep_old=0, quiet=True)
    assert [p.name for p in (store / SNAPSHOTS).iterdir()] == [files_root(store).name] != [first]


def test_connect_to_a_missing_store_is_one_line(tmp_path):
    with pytest.raises(HmbaError, match="catalog.duckdb: not found; build the store first"):
        connect(tmp_path / "nothing")
