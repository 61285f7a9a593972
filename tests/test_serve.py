"""`hmba-db serve` over HTTP, started as a user starts it: every answer equals the library's (and the CLI's),
every bad input is a 4xx with one line, the sandbox holds, nothing is written to the store, a rebuild is
picked up between requests without mixing builds, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import build_db
from build_db.access.embedding import umap_points
from build_db.access.genes import search_genes
from build_db.cli import main
from build_db.release import layout as R
from build_db.tools.served import Server

API = "/api/v1"


@pytest.fixture(scope="module")
def server(tiny_store):
    s = Server(tiny_store)
    yield s
    assert s.stop() == 0, s.log.read_text()


def _frame(payload: dict) -> pd.DataFrame:
    return pd.DataFrame(payload["rows"], columns=payload["columns"])


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal numbers: JSON floats are the shortest round-trip text, so exactly equal."""
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(
        a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False, check_exact=True
    )


def _files(store: Path) -> dict:
    return {
        str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in store.rglob("*")
        if p.is_file()
    }


def test_health_names_the_build(server, tiny_store):
    status, h = server.json(f"{API}/health")
    info = build_db.store_info(tiny_store)
    assert status == 200 and h["status"] == "ok"
    assert h["build_id"] == info["build_id"] and h["release_version"] == R.VERSION
    assert h["species"] == [s["species"] for s in info["species"]] == list(R.SPECIES)
    assert h["licence"]["data_licence"] == R.DATA_LICENCE


def test_queries_lists_every_named_analysis(server):
    status, q = server.json(f"{API}/queries")
    names = {x["name"]: x for x in q["queries"]}
    assert status == 200 and set(names) == set(build_db.list_queries())
    markers = names["markers"]
    assert {p["name"]: p["default"] for p in markers["params"]}["n"] == "20"
    assert markers["url"] == f"{API}/query/markers"


@pytest.mark.parametrize("name", sorted(build_db.list_queries()))
def test_every_named_query_equals_the_library(server, tiny_store, con, name):
    q = build_db.list_queries()[name]
    params = q.example
    query = "&".join(f"{k}={v}" for k, v in params.items())
    status, payload = server.json(f"{API}/query/{name}?{query}")
    assert status == 200, payload
    expected = build_db.run_query(con, name, **params)
    _same(_frame(payload), expected)
    assert payload["build_id"] == build_db.store_info(con)["build_id"]
    assert payload["sql"] == expected.attrs["sql"] and payload["elapsed_ms"] >= 0


def test_numbers_equal_the_cli_json(server, tiny_store):
    args = ["query", str(tiny_store), "markers", "-p", "level=Subclass", "-p", "term=Astrocyte", "-p", "n=5"]
    r = CliRunner().invoke(main, [*args, "--format", "json"])
    cli = pd.DataFrame(json.loads(r.stdout))
    status, payload = server.json(f"{API}/query/markers?level=Subclass&term=Astrocyte&n=5")
    _same(_frame(payload), cli)


def test_csv_and_parquet(server, con):
    expected = build_db.run_query(con, "dotplot", genes="DRD1,PLP1", level="Class")
    base = f"{API}/query/dotplot?genes=DRD1,PLP1&level=Class"
    status, h, body = server.get(base + "&format=csv")
    assert status == 200 and h["Content-Type"].startswith("text/csv")
    _same(pd.read_csv(io.BytesIO(body), float_precision="round_trip"), expected)
    status, h, body2 = server.get(base, Accept="text/csv")
    assert body2 == body
    status, h, body = server.get(base + "&format=parquet")
    _same(pq.read_table(io.BytesIO(body)).to_pandas(), expected)
    assert h["X-HMBA-Build"]


def test_etag_lets_a_client_reuse_an_answer(server):
    path = f"{API}/query/cells_per_level?level=Group"
    status, h, body = server.get(path)
    assert status == 200 and h["ETag"]
    status, h2, body2 = server.get(path, **{"If-None-Match": h["ETag"]})
    assert status == 304 and body2 == b"" and h2["ETag"] == h["ETag"]
    other = server.get(f"{API}/query/cells_per_level?level=Class")[1]["ETag"]
    assert other != h["ETag"]


def test_gene_autocomplete(server, con):
    status, g = server.json(f"{API}/genes?q=drd&species=all&limit=5")
    assert status == 200
    first = g["hits"][:3]
    assert [h["gene_symbol"] for h in first] == ["DRD1"] * 3 and [h["species"] for h in first] == list(
        R.SPECIES
    )
    ident = first[0]["gene_identifier"]
    status, g = server.json(f"{API}/genes?q={ident.lower()}&species=Human")
    assert g["hits"][0] == {**first[0], "match": "exact"}
    status, g = server.json(f"{API}/genes?q=DRDD1&species=Human")
    assert g["hits"][0]["gene_symbol"] == "DRD1" and g["hits"][0]["match"] == "close"
    assert [asdict_hit(h) for h in search_genes(con, "plp", ["Marmoset"], 3)] == server.json(
        f"{API}/genes?q=plp&species=marmoset&limit=3"
    )[1]["hits"]


def asdict_hit(h):
    return {
        "species": h.species,
        "gene_identifier": h.gene_identifier,
        "gene_symbol": h.gene_symbol,
        "gene_index": h.gene_index,
        "match": h.match,
    }


def test_terms_count_the_cells(server, con):
    status, t = server.json(f"{API}/terms?level=Subclass&species=all")
    assert status == 200 and t["level"] == "Subclass"
    counts = con.execute(
        "select subclass_name, species, count(*) from cells where subclass_name is not null group by all"
    ).fetchall()
    by_name = {x["term_name"]: x["n_cells"] for x in t["terms"]}
    for name, species, n in counts:
        assert by_name[name][species] == n
    orders = [x["term_order"] for x in t["terms"]]
    assert orders == sorted(orders)
    status, d = server.json(f"{API}/terms/STR%20D1%20MSN?species=Human")
    assert status == 200 and d["level"] == "Subclass" and d["parent"]["level"] == "Class"
    assert sum(c["n_cells"]["Human"] for c in d["children"]) == d["n_cells"]["Human"]
    assert (
        sum(r["n_cells"] for r in d["by_region"])
        == d["n_cells"]["Human"]
        == sum(x["n_cells"] for x in d["by_donor"])
    )
    status, d2 = server.json(f"{API}/terms/{d['term_label']}?species=Human")
    assert d2 == d


def test_umap_columns_equal_the_named_query(server, con):
    status, u = server.json(f"{API}/umap?species=Macaque&gene=PLP1&max_points=300")
    assert status == 200 and u["n_points"] == len(u["x"]) == 300 and u["sampled"]
    df = build_db.run_query(con, "umap_by_gene", species="Macaque", gene="PLP1", max_cells=300)
    np.testing.assert_allclose(u["x"], df.x, atol=6e-4)
    np.testing.assert_allclose(u["value"], df.log2_cpm, atol=6e-4)
    groups = [u["clusters"][c]["group"] for c in u["cluster"]]
    assert groups == df.group_name.tolist()
    status, h, body = server.get(f"{API}/umap?species=Macaque&gene=PLP1&max_points=300&format=arrow")
    table = pa.ipc.open_stream(body).read_all()
    meta = json.loads(table.schema.metadata[b"hmba"])
    assert table.num_rows == 300 and meta["n_cells"] == u["n_cells"] and meta["build_id"] == u["build_id"]
    direct = umap_points(con, "Macaque", "PLP1", 300)
    np.testing.assert_array_equal(table.column("x").to_numpy(), direct["x"])
    np.testing.assert_array_equal(table.column("value").to_numpy(), direct["value"])


def test_sql_runs_in_the_sandbox(server, con):
    sql = "select species, count(*) as n from cells group by 1 order by 1"
    status, h, body = server.post(f"{API}/sql", {"sql": sql})
    payload = json.loads(body)
    assert status == 200 and payload["max_rows"] == 1000 and not payload["truncated"]
    _same(_frame(payload), con.execute(sql).df())
    status, h, body = server.post(f"{API}/sql", {"sql": "select cell_label from cells", "max_rows": 7})
    payload = json.loads(body)
    assert len(payload["rows"]) == 7 and payload["truncated"] and "stopped at 7 rows" in payload["notes"][0]
    for hostile, code in [
        ("drop table cells", 400),
        ("select * from read_csv('/etc/passwd')", 400),
        ("select " + "(" * 3000 + "1" + ")" * 3000, 400),
        ("select 1; select 2", 400),
    ]:
        status, h, body = server.post(f"{API}/sql", {"sql": hostile})
        assert status == code and "\n" not in json.loads(body)["error"]
    status, h, body = server.post(
        f"{API}/sql", {"sql": "select sum(len(range(20000000))) from cells", "timeout": 0.5}
    )
    assert status == 504 and "time limit" in json.loads(body)["error"], body
    status, h, body = server.post(f"{API}/sql", {"sql": sql})  # a fresh child took the killed one's place
    assert status == 200


def test_values_past_64_bits_and_tiny_floats_come_back_exact(server):
    """The server's JSON (orjson) takes no integer past 64 bits: such an answer is written the plain way."""
    sql = "select 170141183460469231731687303715884105727::hugeint as big, 1.5e-05::double as tiny"
    status, h, body = server.post(f"{API}/sql", {"sql": sql})
    assert status == 200, body
    assert json.loads(body)["rows"] == [[170141183460469231731687303715884105727, 1.5e-05]]


def test_anndata_download_equals_to_anndata(server, con, tmp_path):
    cells = "group_name = 'Astrocyte'"
    status, h, body = server.get(f"{API}/export/anndata?species=Marmoset&genes=PLP1,AQP4&cells={cells}")
    assert status == 200 and h["Content-Type"] == "application/x-hdf5"
    (tmp_path / "a.h5ad").write_bytes(body)
    got = ad.read_h5ad(tmp_path / "a.h5ad")
    want = build_db.to_anndata(con, "Marmoset", ["PLP1", "AQP4"], cells)
    assert got.shape == want.shape and (got.X != want.X).nnz == 0
    assert list(got.obs_names) == list(want.obs_names) and list(got.var_names) == list(want.var_names)


def test_bad_input_is_a_4xx_with_one_line(server):
    cases = {
        f"{API}/query/nope": (404, "no query named 'nope'"),
        f"{API}/query/dotplot?bogus=1": (400, "has no parameter bogus"),
        f"{API}/query/dotplot?level=Grop": (400, "level=Grop: unknown taxonomy level"),
        f"{API}/query/dotplot?genes=DRDX1": (400, "closest: DRD1"),
        f"{API}/query/dotplot?genes=DRD1&genes=DRD2": (400, "given twice"),
        f"{API}/query/markers?min_fraction=nan": (400, "finite number"),
        f"{API}/query/markers?n=99999999999999999999999": (400, "finite number"),
        f"{API}/query/dotplot?format=xml": (400, "format"),
        f"{API}/terms?level=Species": (400, "unknown taxonomy level"),
        f"{API}/terms/NoSuchTerm": (404, "no taxonomy term"),
        f"{API}/umap?species=Dog": (400, "unknown species"),
        f"{API}/umap?max_points=-1": (400, "max_points"),
        f"{API}/umap?gene=NOTAGENE": (400, "no gene with symbol"),
        f"{API}/genes?q=": (400, "q"),
        f"{API}/export/anndata?species=Human&cells=1=1) or (1=1": (400, "not one SQL condition"),
        f"{API}/export/anndata?species=Human&cells=read_text('/etc/hostname') is not null": (
            400,
            "not allowed",
        ),
        f"{API}/nothing/here": (404, "no such page"),
    }
    for path, (code, text) in cases.items():
        status, h, body = server.get(path.replace(" ", "%20"))
        error = json.loads(body)["error"]
        assert status == code and text in error and "\n" not in error, (path, status, error)
        assert "Traceback" not in error


def test_a_large_export_is_refused_with_413(tiny_store):
    s = Server(tiny_store, "--max-export-mb", "0.05")
    try:
        status, h, body = s.get(f"{API}/export/anndata?species=Human")
        error = json.loads(body)["error"]
        assert status == 413 and "past this server's 0.05 MiB limit" in error
    finally:
        assert s.stop() == 0


def test_token(tiny_store):
    s = Server(tiny_store, "--token", "s3cret")
    try:
        status, h, body = s.get(f"{API}/health")
        assert status == 401 and "Bearer" in json.loads(body)["error"] and h["WWW-Authenticate"] == "Bearer"
        assert s.get(f"{API}/health", Authorization="Bearer wrong")[0] == 401
        assert s.get(f"{API}/health", Authorization="Bearer s3cret")[0] == 200
        assert s.get("/openapi.json")[0] == 200  # the description is public, the data are not
    finally:
        assert s.stop() == 0


def test_openapi_describes_every_route(server):
    status, spec = server.json("/openapi.json")
    paths = set(spec["paths"])
    assert {
        f"{API}/{p}" for p in ("health", "queries", "genes", "terms", "umap", "sql", "export/anndata")
    } <= paths
    assert {f"{API}/query/{n}" for n in build_db.list_queries()} <= paths
    markers = {p["name"] for p in spec["paths"][f"{API}/query/markers"]["get"]["parameters"]}
    assert {"term", "level", "n", "min_fraction"} <= markers
    status, h, body = server.get("/api/docs")
    assert status == 200 and b"/api/docs/static/swagger-ui-bundle.js" in body
    assert b"cdn.jsdelivr" not in body and b"unpkg.com" not in body  # works with no internet
    assert server.get("/api/docs/static/swagger-ui-bundle.js")[0] == 200


def test_nothing_is_written_to_the_store(tiny_store, server):
    before = _files(tiny_store)
    for path in ("health", "query/dotplot", "genes?q=plp", "terms", "umap?species=Marmoset&gene=PLP1"):
        assert server.get(f"{API}/{path}")[0] == 200
    server.post(f"{API}/sql", {"sql": "select count(*) from expression"})
    assert _files(tiny_store) == before


def test_rebuild_while_serving(tiny_release, tmp_path):
    """A loop of requests across a rebuild: each answer is the old build's or the new one's, whole."""
    from build_db import build, synth

    other = synth(tmp_path / "other", scale=0.0008, genes=400, seed=11, quiet=True, species=("Marmoset",))
    store = tmp_path / "store"
    build(tiny_release, store, species=("Marmoset",), quiet=True)
    path = f"{API}/query/gene_set_by_level?species=Marmoset&genes=PLP1,AQP4&level=Group"
    expected = {}

    def answer_of(store_dir):
        c = build_db.connect(store_dir)
        expected[build_db.store_info(c)["build_id"]] = build_db.run_query(
            c, "gene_set_by_level", species="Marmoset", genes="PLP1,AQP4", level="Group"
        )
        c.close()

    answer_of(store)
    s = Server(store)
    seen: list[tuple[str, pd.DataFrame]] = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            status, payload = s.json(path)
            assert status == 200, payload
            seen.append((payload["build_id"], _frame(payload)))

    t = threading.Thread(target=loop)
    t.start()
    try:
        time.sleep(0.5)
        build(other, store, species=("Marmoset",), quiet=True, force=True)
        answer_of(store)
        new = build_db.store_info(store)["build_id"]
        deadline = time.monotonic() + 30
        while s.json(f"{API}/health")[1]["build_id"] != new and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join()
        assert s.stop() == 0
    assert set(expected) == {b for b, _ in seen} and len(expected) == 2
    for build_id, frame in seen:
        _same(frame, expected[build_id])
    assert not expected[new].equals(next(iter(expected.values())))  # the two builds do differ


def test_ctrl_c_stops_it_and_its_sandbox(tiny_store):
    s = Server(tiny_store)
    assert s.post(f"{API}/sql", {"sql": "select 1"})[0] == 200  # a sandbox child is running
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == s.proc.pid]
    assert children
    assert s.stop() == 0
    time.sleep(0.5)
    assert not [c for c in children if Path(f"/proc/{c}").exists() and _state(c) != "Z"]


def _ppid(p: Path) -> int:
    try:
        return int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_bad_store_and_port_are_one_line(tiny_store, tmp_path, server):
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "not found; build the store first" in r.output
    r = CliRunner().invoke(main, ["serve", str(tiny_store), "--port", str(server.port)])
    assert r.exit_code == 1 and "is in use by another program" in r.output
    assert "Traceback" not in r.output
    r = CliRunner().invoke(main, ["serve", str(tiny_store), "--host", "0.0.0.0", "--port", str(server.port)])
    assert "warning: listening on 0.0.0.0: the store's data become reachable from the network" in r.output


os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")


# --- in-process: the time limit and a client that goes away, on a pool of one connection ---


def _asgi_get(app, path: str, *, disconnect_after: float | None = None):
    """One GET through the ASGI app (tests/asgi.py): (status, body), or (None, b"") if it went away first."""
    import asyncio

    from .asgi import call

    return asyncio.run(call(app, "GET", path, disconnect_after=disconnect_after))


@pytest.fixture
def slow_app(tiny_store, monkeypatch):
    """The app with one connection and a 0.5 s limit, and a named query that runs for minutes."""
    from build_db.serve import app as A

    real = A.execute

    def slow(con, rendered):
        if rendered.query.name == "cells_per_level":
            con.execute("select count(*) from range(100000000000) a").fetchall()  # interruptible, long
        return real(con, rendered)

    monkeypatch.setattr(A, "execute", slow)
    app = A.create_app(A.ServeConfig(store=str(tiny_store), timeout=0.5, pool_size=1))
    yield app
    app.state.stores.close()


def test_past_the_time_limit_is_504_and_frees_the_connection(slow_app):
    t0 = time.monotonic()
    status, body = _asgi_get(slow_app, f"{API}/query/cells_per_level")
    assert status == 504 and "0.5 s limit" in json.loads(body)["error"] and time.monotonic() - t0 < 5
    status, body = _asgi_get(slow_app, f"{API}/query/dotplot")  # the only connection is free again
    assert status == 200


def test_a_client_that_goes_away_frees_its_work(slow_app):
    slow_app.state.config.timeout = 600  # only the disconnect can stop it now
    t0 = time.monotonic()
    _asgi_get(slow_app, f"{API}/query/cells_per_level", disconnect_after=0.3)
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    status, body = _asgi_get(slow_app, f"{API}/query/dotplot")
    assert status == 200 and time.monotonic() - t0 < 5


# --- schemathesis: generated requests from /openapi.json, bounded; no answer may be a server error ---


def test_no_generated_request_is_a_server_error(server):
    """Every operation of /openapi.json, 25 generated requests each (deterministic): 0 server errors, and
    every refusal is one line of JSON."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures, calls = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            nonlocal calls
            calls += 1
            response = case.call(base_url=server.url, timeout=60)
            if response.status_code >= 500 and response.status_code != 504:
                failures.append(
                    (case.method, case.path, case.query, response.status_code, response.text[:200])
                )
            elif response.status_code >= 400:
                error = response.json().get("error")
                if not isinstance(error, str) or "\n" in error:
                    failures.append((case.method, case.path, case.query, "not one line", response.text[:200]))

        check()
    assert calls > 100 and failures == [], failures


def test_sql_is_routed_and_says_so(server):
    """POST /api/v1/sql answers from the source that holds the answer (here the statistics), with the rows
    the question as written gives, and says which source and why; route=false runs it as written."""
    sql = (
        "select gene_symbol, sum(raw_count) as n, count(*) as cells from expression_annotated "
        "where subclass_name = 'STR D1 MSN' group by 1 order by n desc, gene_symbol limit 10"
    )
    status, h, body = server.post(f"{API}/sql", {"sql": sql})
    routed = json.loads(body)
    assert (
        status == 200
        and routed["route"]["source"] == "statistics"
        and "term_gene_sums" in routed["route"]["sql"]
    )
    status, h, body = server.post(f"{API}/sql", {"sql": sql, "route": False})
    plain = json.loads(body)
    assert (
        plain["route"] is None and plain["rows"] == routed["rows"] and plain["columns"] == routed["columns"]
    )
