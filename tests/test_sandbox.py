"""The sandbox's hard limits (issue 27): a statement that DuckDB's own memory limit and interrupt do not stop
is stopped from outside (a child process with a capped address space, killed past the time limit), and
hostile input is one line, not a traceback."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from build_db.access.sandbox import MAX_ROWS, Sandbox, UnsafeQuery, check_condition, run_safe
from build_db.cli import main

# Built in one vector operation per row: DuckDB's memory_limit does not bound the list (11.6 GB was seen
# under a 2 GB limit) and its interrupt is never looked at (past 40 s under a 5 s limit).
LIST_BOMB = "select sum(len(range(300000000))) from cells"
SLOW_LISTS = "select sum(len(range(20000000))) from cells"


def _children() -> list[int]:
    """This process's live child processes (from /proc): a stopped sandbox leaves none."""
    me = str(os.getpid())
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                out.append(int(d.name))
    return out


def test_a_list_bomb_is_stopped_by_the_memory_cap(tiny_store):
    before = _children()
    t0 = time.monotonic()
    with pytest.raises(UnsafeQuery, match="memory") as e:
        run_safe(tiny_store, LIST_BOMB, timeout=5, memory_limit="256MB")
    assert time.monotonic() - t0 < 15
    assert "\n" not in str(e.value)
    assert _children() == before


def test_a_statement_that_ignores_the_interrupt_is_killed_at_the_deadline(tiny_store):
    before = _children()
    t0 = time.monotonic()
    with pytest.raises(UnsafeQuery, match=r"longer than the 1 s time limit and was stopped"):
        run_safe(tiny_store, SLOW_LISTS, timeout=1)
    took = time.monotonic() - t0
    assert took < 1 + 2 + 5  # the limit, the grace period, the child's start
    assert _children() == before


def test_a_statement_that_finishes_past_the_deadline_is_a_timeout(tiny_store, monkeypatch):
    """DuckDB looks at an interrupt only between vectors: a statement can finish after the deadline, before
    the kill (CI saw 2.9 s under a 1 s limit answer with 200). Late is late: the answer is refused."""
    from build_db.access import sandbox

    monkeypatch.setattr(sandbox, "GRACE", 120.0)  # no kill: only the child's own watchdog can refuse it
    with Sandbox(tiny_store, workers=1) as box:
        t0 = time.monotonic()
        with pytest.raises(UnsafeQuery, match=r"longer than the 0.5 s time limit"):
            box.run(SLOW_LISTS, timeout=0.5)
        assert time.monotonic() - t0 < 120
        assert box.run("select 3 as z").frame.z.tolist() == [3]  # the same child answers the next one


def test_a_killed_child_is_replaced_and_the_next_statement_answers(tiny_store, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the children's spill folders go
    with Sandbox(tiny_store, workers=1) as sandbox:
        assert len(sandbox.run("select 1 as x").frame) == 1
        # A result cut at max_rows is closed: a half-read one would block the child's connection.
        assert sandbox.run("select * from cells", max_rows=3).truncated
        assert len(sandbox.run("select 1 as x").frame) == 1
        with pytest.raises(UnsafeQuery, match="time limit"):
            sandbox.run(SLOW_LISTS, timeout=0.5)
        result = sandbox.run("select species, count(*) as n from cells group by 1 order by 1")
        assert result.frame.n.sum() > 0
        assert len(list(tmp_path.glob("hmba-db-sandbox-*"))) == 1  # the killed child's folder is gone
    assert not list(tmp_path.glob("hmba-db-sandbox-*"))  # and the last one's with the sandbox


def test_a_cancelled_statement_frees_its_child(tiny_store):
    with Sandbox(tiny_store, workers=1) as sandbox:
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        t0 = time.monotonic()
        with pytest.raises(UnsafeQuery, match="went away"):
            sandbox.run(SLOW_LISTS, timeout=30, cancelled=cancel)
        assert time.monotonic() - t0 < 5
        assert len(sandbox.run("select 2 as y").frame) == 1


def test_hostile_input_is_one_line(tiny_store):
    runner = CliRunner()
    deep = "select " + "(" * 5000 + "1" + ")" * 5000
    r = runner.invoke(main, ["sql", str(tiny_store), "--safe", deep])
    assert r.exit_code == 1 and "nests too deeply" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    r = runner.invoke(
        main, ["sql", str(tiny_store), "--safe", "--max-rows", "99999999999999999999999", "select 1"]
    )
    assert r.exit_code == 1 and f"give a row cap from 0 to {MAX_ROWS:,}" in r.output, r.output
    assert "Traceback" not in r.output and "OverflowError" not in r.output
    with pytest.raises(UnsafeQuery, match="nests too deeply"):
        check_condition("(" * 5000 + "x" + ")" * 5000, {"x"})


def test_bad_limits_are_one_line(tiny_store):
    with pytest.raises(UnsafeQuery, match="bad sandbox limit 'lots'"):
        Sandbox(tiny_store, memory_limit="lots")
    with pytest.raises(UnsafeQuery, match="time limit above 0"):
        run_safe(tiny_store, "select 1", timeout=0)


@pytest.mark.parametrize(
    "sql", ["select 1 as n; /* note */", "select count(*) as n from cells; -- comment", "select 1 as n;;"]
)
def test_a_trailing_comment_is_not_a_second_statement(tiny_store, sql):
    """Editors and BI tools leave a comment after the semicolon: still one statement."""
    assert len(run_safe(tiny_store, sql).frame) == 1
    r = CliRunner().invoke(main, ["sql", str(tiny_store), sql])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(
    "sql, kind", [("LOAD httpfs", "LOAD"), ("install httpfs", "INSTALL"), ("pragma version", "PRAGMA")]
)
def test_a_command_is_refused_in_one_line_naming_it(tiny_store, sql, kind):
    r = CliRunner().invoke(main, ["sql", str(tiny_store), "--safe", sql])
    assert (
        r.exit_code == 1
        and r.output == f"Error: only SELECT queries are allowed (WITH and UNION too), not {kind}\n"
    )
