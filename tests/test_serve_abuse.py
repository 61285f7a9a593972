"""A lab's server stays up and private under abuse (issue 32): user text runs under the sandbox's caps, one
class of slow requests cannot starve another, a busy server says 503, an empty token or a nan limit is
refused at start, the Host header is checked, a sandbox child that hit a limit is replaced."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from build_db.cli import main
from build_db.errors import HmbaError
from build_db.tools.served import Server

from .asgi import call

API = "/api/v1"


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_the_export_condition_runs_under_the_sandbox_caps(tiny_store):
    """`cells=length(repeat(cell_label, 80000)) > 0` took a server from 411 MiB to 5.9 GB when the condition
    ran in its own process; in the sandbox it is refused there and the server's memory does not move."""
    s = Server(tiny_store, "--sql-memory-limit", "300MB")
    try:
        assert s.get(f"{API}/health")[0] == 200
        before = _peak_rss_mb(s.proc.pid)
        bomb = "length(repeat(cell_label, 400000)) > 0"
        status, h, body = s.get(f"{API}/export/anndata?species=Human&genes=PLP1&cells={bomb}")
        error = json.loads(body)["error"]
        assert status == 400 and "memory" in error and "\n" not in error, body
        assert _peak_rss_mb(s.proc.pid) - before < 200
        # The user's mistake in a condition is a 400, not the store's 503
        status, h, body = s.get(f"{API}/export/anndata?species=Human&genes=PLP1&cells=group_name > 5")
        assert status == 400 and "run hmba-db verify" not in json.loads(body)["error"], body
        status, h, body = s.get(
            f"{API}/export/anndata?species=Human&genes=PLP1&cells=group_name = 'Astrocyte'"
        )
        assert status == 200 and h["Content-Type"] == "application/x-hdf5"
    finally:
        assert s.stop() == 0


def test_a_flood_of_unknown_genes_is_refused_at_once(tiny_store):
    s = Server(tiny_store)
    try:
        made_up = ",".join(f"NOTAGENE{i}" for i in range(600))
        t0 = time.monotonic()
        status, h, body = s.get(f"{API}/query/dotplot?genes={made_up}")
        error = json.loads(body)["error"]
        assert status == 400 and "and 595 more" in error and time.monotonic() - t0 < 10, error
        status, h, body = s.get(f"{API}/query/dotplot?genes=" + ",".join(f"G{i}" for i in range(1001)))
        assert status == 400 and "at most 1,000" in json.loads(body)["error"]
        status, h, body = s.get(f"{API}/query/dotplot?genes=DRDX1")  # a typo still gets its closest symbol
        assert status == 400 and "closest: DRD1" in json.loads(body)["error"]
    finally:
        assert s.stop() == 0


def _asgi(app, method: str, path: str, body: bytes = b""):
    return call(app, method, path, body)


@pytest.fixture
def one_connection(tiny_store):
    from build_db.serve import app as A

    app = A.create_app(A.ServeConfig(store=str(tiny_store), pool_size=1, sql_timeout=3.0))
    yield app
    app.state.stores.close()


def test_sql_waiting_on_the_sandbox_holds_no_reader_connection(one_connection):
    """Four 30-s /sql statements once made gene search take 28 s: the statement holds a sandbox child, never
    one of the readers' connections."""
    slow = json.dumps(
        {"sql": "select count(*) from cells a, cells b, cells c, cells d", "timeout": 3}
    ).encode()

    async def both():
        sql = asyncio.ensure_future(_asgi(one_connection, "POST", f"{API}/sql", slow))
        await asyncio.sleep(1.0)  # the statement is running in the sandbox
        t0 = time.monotonic()
        status, _ = await _asgi(one_connection, "GET", f"{API}/query/dotplot?genes=PLP1")
        took = time.monotonic() - t0
        sql_status, _ = await sql
        return status, took, sql_status

    status, took, sql_status = asyncio.run(both())
    assert status == 200 and took < 1.5, took
    assert sql_status == 504


def test_a_busy_server_says_503_with_retry_after(tiny_store, monkeypatch):
    from build_db.serve import app as A
    from build_db.serve import snapshots

    real = A.execute

    def slow(con, rendered):
        if rendered.query.name == "cells_per_level":
            con.execute("select count(*) from range(100000000000) a").fetchall()
        return real(con, rendered)

    monkeypatch.setattr(A, "execute", slow)
    monkeypatch.setattr(A, "POOL_WAIT", 0.5)
    monkeypatch.setattr(snapshots, "POOL_WAIT", 0.5)
    app = A.create_app(A.ServeConfig(store=str(tiny_store), pool_size=1, timeout=4.0))
    try:

        async def both():
            hog = asyncio.ensure_future(_asgi(app, "GET", f"{API}/query/cells_per_level"))
            await asyncio.sleep(0.5)
            got = await _asgi(app, "GET", f"{API}/query/dotplot?genes=AQP4")
            return got, await hog

        (status, body), (hog_status, _) = asyncio.run(both())
        assert status == 503 and "busy" in json.loads(body)["error"], body
        assert hog_status == 504
    finally:
        app.state.stores.close()


def test_a_queued_sql_past_the_server_deadline_is_504_not_the_client_s_fault(tiny_store, monkeypatch):
    from build_db.access import sandbox as SB
    from build_db.serve import app as A

    def stuck(
        self, sql, *, timeout, max_rows, cancelled=None, route=False
    ):  # waits for a child that never frees up
        while not cancelled.is_set():
            time.sleep(0.05)
        raise SB._Cancelled("the client went away; the query was stopped")

    monkeypatch.setattr(SB.Sandbox, "run", stuck)
    monkeypatch.setattr(A, "SANDBOX_GRACE", 0.0)
    app = A.create_app(A.ServeConfig(store=str(tiny_store), sql_timeout=0.2))
    try:
        t0 = time.monotonic()
        status, body = asyncio.run(_asgi(app, "POST", f"{API}/sql", json.dumps({"sql": "select 1"}).encode()))
        assert status == 504 and "limit" in json.loads(body)["error"] and time.monotonic() - t0 < 6, body
    finally:
        app.state.stores.close()


def test_every_route_answers_by_its_deadline_whatever_python_does(tiny_store, monkeypatch):
    """Work that never looks at DuckDB's interrupt (pure Python) is answered 504 at the limit; its
    connection comes back when it ends."""
    from build_db.serve import app as A

    monkeypatch.setattr(A, "search_genes", lambda *a, **k: time.sleep(3) or [])
    app = A.create_app(A.ServeConfig(store=str(tiny_store), timeout=0.5))
    try:
        t0 = time.monotonic()
        status, body = asyncio.run(_asgi(app, "GET", f"{API}/genes?q=plp"))
        assert status == 504 and time.monotonic() - t0 < 2.5, (status, body)
    finally:
        app.state.stores.close()


@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_refused_at_start(tiny_store, token, tmp_path):
    r = CliRunner().invoke(main, ["serve", str(tiny_store), "--token", token])
    assert r.exit_code == 1 and "empty" in r.output and "Traceback" not in r.output
    empty = tmp_path / "token"
    empty.write_text(token + "\n")
    r = CliRunner().invoke(main, ["serve", str(tiny_store), "--token-file", str(empty)])
    assert r.exit_code == 1 and "the token file is empty" in r.output
    r = CliRunner().invoke(main, ["serve", str(tiny_store)], env={"HMBA_TOKEN": token})
    assert r.exit_code == 1 and "HMBA_TOKEN is empty" in r.output
    from build_db.serve.app import ServeConfig

    with pytest.raises(HmbaError, match="empty"):
        ServeConfig(store=str(tiny_store), token=token)


def test_the_token_from_a_file_or_the_environment(tiny_store, tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cret-from-file\n")
    for args, env in ((["--token-file", str(secret)], {}), ([], {"HMBA_TOKEN": "s3cret-from-env"})):
        s = Server(tiny_store, *args, env=env)
        try:
            token = "s3cret-from-file" if args else "s3cret-from-env"
            assert s.get(f"{API}/health")[0] == 401
            assert s.get(f"{API}/health", Authorization=f"Bearer {token}")[0] == 200
        finally:
            assert s.stop() == 0
        assert token not in " ".join(s.proc.args)  # not on the command line `ps` shows
    r = CliRunner().invoke(main, ["serve", str(tiny_store), "--token", "a", "--token-file", str(secret)])
    assert r.exit_code == 1 and "give one" in r.output


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_limit_of_nan_is_refused(tiny_store, value):
    for args in (
        ["serve", str(tiny_store), "--timeout", value],
        ["serve", str(tiny_store), "--max-export-mb", value],
        ["sql", str(tiny_store), "select 1", "--safe", "--timeout", value],
        ["build", str(tiny_store), str(tiny_store), "--keep-old", value],
    ):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and "finite" in r.output, (args, r.output)
    from build_db.serve.app import ServeConfig

    with pytest.raises(HmbaError, match="finite"):
        ServeConfig(store=str(tiny_store), timeout=float(value))


def test_the_host_header_is_checked(tiny_store):
    """DNS rebinding: a page at evil.example whose name resolves to 127.0.0.1 must not read the store."""
    s = Server(tiny_store)
    try:
        assert s.get(f"{API}/health", Host="evil.example")[0] == 421
        assert s.get(f"{API}/health", Host=f"evil.example:{s.port}")[0] == 421
        assert s.get("/", Host="evil.example")[0] == 421  # the page too
        for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}", "localhost"):
            assert s.get(f"{API}/health", Host=host)[0] == 200, host
    finally:
        assert s.stop() == 0
    s = Server(tiny_store, "--allowed-hosts", "hmba.lab.example")
    try:
        assert s.get(f"{API}/health", Host="hmba.lab.example")[0] == 200
        assert s.get(f"{API}/health", Host=f"127.0.0.1:{s.port}")[0] == 421
    finally:
        assert s.stop() == 0


def test_a_sandbox_child_that_hit_its_memory_limit_is_replaced(tiny_store):
    from build_db.access.sandbox import Sandbox, UnsafeQuery

    with Sandbox(tiny_store, workers=1, memory_limit="200MB") as box:
        assert box.run("select count(*) as n from cells").frame.n[0] > 0
        (first,) = [c.proc.pid for c in box._children]
        with pytest.raises(UnsafeQuery, match="memory"):
            box.run("select string_agg(repeat(a.cell_label, 2000), ',') from cells a, cells b")
        deadline = time.monotonic() + 30
        while not box._children and time.monotonic() < deadline:  # its successor starts at once
            time.sleep(0.05)
        assert [c.proc.pid for c in box._children] != [first]
        assert (
            not Path(f"/proc/{first}").exists() or "Z" in Path(f"/proc/{first}/stat").read_text().split()[2]
        )
        for _ in range(3):
            assert box.run("select count(*) as n from cells").frame.n[0] > 0


def test_concurrent_requests_on_a_busy_pool_all_answer(tiny_store):
    """A burst wider than the pool: every request answers (200, or a 503 that says busy), none a 500."""
    s = Server(tiny_store)
    statuses: list[int] = []

    def one(i: int) -> None:
        statuses.append(s.get(f"{API}/query/dotplot?genes=PLP1,AQP4&level=Group&min_cells={i}")[0])

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        assert s.stop() == 0
    assert len(statuses) == 24 and set(statuses) <= {200, 503}, statuses


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
