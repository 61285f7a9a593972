"""A published store read over HTTP: `hmba-db publish`, served on 127.0.0.1 with Range requests, opened
from the side environment (.venv-remote: DuckDB 1.5.5 with httpfs from PyPI, as `make test` installs it).
The named queries agree with the local store; the server counts the requests and bytes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner

import build_db
from build_db import analyses
from build_db.cli import main
from build_db.errors import HmbaError
from build_db.store.paths import files_root
from build_db.store.publish import publish
from build_db.tools.httpserve import RangeServer

ROOT = Path(__file__).resolve().parents[1]
REMOTE = Path(os.environ.get("HMBA_REMOTE_VENV", ROOT / ".venv-remote"))
CLIENT = Path(__file__).with_name("remote_client.py")


def _side(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not (REMOTE / "bin" / "python").exists():
        pytest.fail(f"{REMOTE} is missing; `make test` creates it (DuckDB 1.5.5 with httpfs from PyPI)")
    return subprocess.run(
        [str(REMOTE / "bin" / "python"), *args], capture_output=True, text=True, check=check, timeout=300
    )


def _frames(out: str) -> dict[str, pd.DataFrame]:
    found = {}
    for line in out.splitlines():
        d = json.loads(line)
        f = d["frame"]
        found[d.get("name", "")] = pd.DataFrame(f["data"], columns=f["columns"])
    return found


@pytest.fixture(scope="module")
def served(tiny_store, tmp_path_factory):
    """A copy of the tiny store, published for and served at a local URL (path /hmba/store/)."""
    top = tmp_path_factory.mktemp("served")
    store = top / "hmba" / "store"
    shutil.copytree(tiny_store, store, symlinks=True)
    server = RangeServer(top)
    server.thread.start()
    url = server.url + "hmba/store/"
    record = publish(store, url)
    yield store, url, server, record
    server.stop()


def test_published_catalog_names_urls_only(served):
    store, url, _, record = served
    con = duckdb.connect()
    con.execute(f"attach '{store / 'published.duckdb'}' as p (read_only)")
    views = dict(
        con.execute("select view_name, sql from duckdb_views() where database_name = 'p'").fetchall()
    )
    assert {"expression", "expression_counts", "term_gene_stats"} <= set(views)
    for name, sql in views.items():
        assert str(store) not in sql and str(files_root(store)) not in sql, name
    # Every file of each Parquet-reading view is named by URL (no globs: HTTP has no listing).
    n_files = len(list(files_root(store).glob("expression/*/*/*.parquet")))
    assert views["expression_counts"].count(url + "snapshots/") == n_files
    assert "*" not in views["expression_counts"]
    info = dict(con.execute("select key, value from p.store_info").fetchall())
    assert info["base_url"] == url and info["store_path"].startswith(url + "snapshots/")
    # What to upload: the published catalog and every file its views read, all present.
    assert record["files"][0] == "published.duckdb"
    assert all((store / f).is_file() for f in record["files"])
    assert record["bytes"] == sum((store / f).stat().st_size for f in record["files"])


def test_published_catalog_is_readable_by_duckdb_1x(served):
    """The storage-version rule holds for the published catalog: BI drivers' DuckDB 1.1 opens it."""
    store, *_ = served
    py = ROOT / ".venv-duckdb1" / "bin" / "python"
    code = (
        "import duckdb, sys; con = duckdb.connect(); "
        f"con.execute(\"attach '{store / 'published.duckdb'}' as p (read_only)\"); "
        "print(con.execute('select count(*) from p.genes').fetchall()[0][0])"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout
    assert (
        int(out)
        == duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
        .execute("select count(*) from genes")
        .fetchall()[0][0]
    )


def test_every_named_query_agrees_over_http(served, tiny_store):
    _, url, server, _ = served
    server.traffic.reset()
    remote = _frames(_side(str(CLIENT), url, "queries").stdout)
    con = build_db.connect(tiny_store)
    names = list(build_db.list_queries())
    assert sorted(remote) == sorted(names)
    for q in build_db.list_queries().values():
        local = build_db.run_query(con, q.name, **q.example)
        pd.testing.assert_frame_equal(
            remote[q.name].reset_index(drop=True), local.reset_index(drop=True), check_dtype=False, rtol=1e-9
        )
    assert server.traffic.requests > 0
    print(
        f"\nall {len(names)} named queries over HTTP: {server.traffic.requests} requests, "
        f"{server.traffic.bytes_sent:,} bytes"
    )


def test_one_gene_reads_a_fraction_of_the_store(served, tiny_store):
    """A one-gene question over HTTP asks for byte ranges of one bucket's file, not the expression store."""
    store, url, server, record = served
    con = build_db.connect(tiny_store)
    gene, bucket = con.execute(
        "select gene_symbol, gene_bucket from genes where species = 'Marmoset' and gene_symbol = 'PLP1'"
    ).fetchall()[0]
    server.traffic.reset()
    remote = _frames(_side(str(CLIENT), url, "mean", "Marmoset", gene).stdout)[""]
    local = analyses.mean_expression(con, "Marmoset", [gene])  # from the statistics: the same numbers
    pd.testing.assert_frame_equal(
        remote.reset_index(drop=True), local.reset_index(drop=True), check_dtype=False, rtol=1e-9
    )
    expression_paths = [p for p in server.traffic.paths if "/expression/" in p]
    assert expression_paths and {p.split("/gene_bucket=")[1][:4] for p in expression_paths} == {
        f"{bucket:04d}"
    }
    expression_bytes = sum(f.stat().st_size for f in files_root(store).glob("expression/*/*/*.parquet"))
    assert server.traffic.bytes_sent < record["bytes"] / 2
    print(
        f"\none gene (mean_expression) over HTTP: {server.traffic.requests} requests, "
        f"{server.traffic.bytes_sent:,} bytes of a {record['bytes']:,}-byte store "
        f"({expression_bytes:,} of expression)"
    )


def test_plain_duckdb_attach_prunes_to_one_bucket(served, tiny_store):
    """Plain DuckDB users ATTACH the published catalog; a filter on the partition columns reads one file."""
    store, url, server, _ = served
    con = build_db.connect(tiny_store)
    sql = "select count(*), sum(raw_count) from expression_counts where species = 'Human' and gene_bucket = 1"
    local = [list(r) for r in con.execute(sql).fetchall()]
    server.traffic.reset()
    remote = json.loads(_side(str(CLIENT), url, "attach", sql).stdout)["rows"]
    assert [[int(x) for x in r] for r in remote] == [[int(x) for x in r] for r in local]
    read = {
        p.split("/expression/")[1]: n for p, n in server.traffic.bytes_by_path.items() if "/expression/" in p
    }
    wanted = "species=Human/gene_bucket=0001/part-0.parquet"
    # DuckDB binds a file list's schema from its first file: that one's footer is read too, nothing else.
    first = sorted(files_root(store).glob("expression/*/*/*.parquet"))[0].relative_to(
        files_root(store) / "expression"
    )
    assert set(read) <= {wanted, first.as_posix()} and wanted in read
    if first.as_posix() != wanted:
        assert read[first.as_posix()] <= 64 * 1024  # its footer (DuckDB reads the last 16 KiB first)


def test_connect_errors_are_one_line(served, tmp_path):
    store, url, server, _ = served
    # Unreachable: nothing listens on that port.
    r = _side("-m", "build_db.cli", "sql", "http://127.0.0.1:9/nothing/", "select 1", check=False)
    assert r.returncode == 1 and r.stderr.startswith("Error: http://127.0.0.1:9/nothing/published.duckdb: ")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # Published for another base URL (served here under a second path).
    other = server.url + "moved/"
    (store.parents[1] / "moved").symlink_to(store, target_is_directory=True)
    r = _side("-m", "build_db.cli", "sql", other, "select 1", check=False)
    assert r.returncode == 1 and f"published for {url}, opened at {other}" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # A file behind a view missing on the server: the error names it.
    victim = sorted(files_root(store).glob("expression/species=Human/*/*.parquet"))[0]
    hidden = victim.with_suffix(".hidden")
    victim.rename(hidden)
    try:
        bucket = int(victim.parent.name.split("=")[1])
        r = _side(
            "-m",
            "build_db.cli",
            "sql",
            url,
            f"select count(*) from expression_counts where species = 'Human' and gene_bucket = {bucket}",
            check=False,
        )
    finally:
        hidden.rename(victim)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert victim.relative_to(store).as_posix() in r.stderr and "published.json" in r.stderr


def test_safe_sql_is_for_local_stores(served):
    _, url, *_ = served
    r = CliRunner().invoke(main, ["sql", url, "--safe", "select 1"])
    assert r.exit_code == 1 and "--safe runs on a local store only" in r.output
    assert "Traceback" not in r.output


def test_publish_refuses_what_it_cannot_serve(tmp_path, tiny_store):
    with pytest.raises(HmbaError, match="not a base URL"):
        publish(tiny_store, "ftp://example.org/x")
    with pytest.raises(HmbaError, match="build the store first"):
        publish(tmp_path, "https://example.org/x")
    r = CliRunner().invoke(main, ["publish", str(tmp_path), "--base-url", "https://example.org/x"])
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "Traceback" not in r.output


def test_a_rebuild_republishes_for_the_same_url(tiny_release, tmp_path):
    """The published catalog follows the store: a rebuild rewrites it for the new snapshot."""
    from build_db import build

    store = tmp_path / "store"
    build(tiny_release, store, species=("Marmoset",), quiet=True)
    first = publish(store, "https://example.org/hmba/store")
    build(tiny_release, store, species=("Marmoset",), quiet=True, keep_old=0)
    again = json.loads((store / "published.json").read_text())
    assert again["base_url"] == "https://example.org/hmba/store/"
    assert again["build_id"] != first["build_id"]
    assert again["build_id"] == json.loads((store / "build.json").read_text())["build_id"]
    con = duckdb.connect()
    con.execute(f"attach '{store / 'published.duckdb'}' as p (read_only)")
    sql = con.execute("select sql from duckdb_views() where view_name = 'expression_counts'").fetchall()[0][0]
    assert f"snapshots/{again['build_id']}/" in sql and first["build_id"] not in sql


def test_serve_a_published_store(served, con):
    """`hmba-db serve URL` from the side environment: the API answers a published store as the local one."""
    from build_db.tools.served import Server

    _, url, *_ = served
    if not (REMOTE / "bin" / "python").exists():
        pytest.fail(f"{REMOTE} is missing; `make test` creates it (DuckDB 1.5.5 with httpfs from PyPI)")
    s = Server(url, python=str(REMOTE / "bin" / "python"))
    try:
        status, health = s.json("/api/v1/health")
        assert status == 200 and health["build_id"] == build_db.store_info(con)["build_id"]
        status, payload = s.json("/api/v1/query/dotplot?genes=DRD1,PLP1&level=Class")
        assert status == 200, payload
        expected = build_db.run_query(con, "dotplot", genes="DRD1,PLP1", level="Class")
        got = pd.DataFrame(payload["rows"], columns=payload["columns"])
        pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=True)
        status, h, body = s.post("/api/v1/sql", {"sql": "select 1"})
        assert status == 400 and "local store only" in json.loads(body)["error"]
    finally:
        assert s.stop() == 0
