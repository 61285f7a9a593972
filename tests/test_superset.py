"""Apache Superset on the store, end to end: its own environment (`.venv-superset`), its metadata set up,
started on 127.0.0.1, provisioned through its REST API; every chart's numbers from Superset's chart-data API
equal the same question asked of the store; the dashboard draws every chart in Chromium. Run by
`make test-bi` (and `.ci/run`), not by `make test`."""

from __future__ import annotations

import math

import duckdb
import pytest

from build_db.bi import superset as S
from build_db.defaults import NOTEBOOK_GENES
from build_db.store.build import build
from build_db.tools.browser import launch

pytestmark = pytest.mark.bi


@pytest.fixture(scope="module")
def store(tiny_release, tmp_path_factory):
    return build(tiny_release, tmp_path_factory.mktemp("superset") / "store", quiet=True).store


@pytest.fixture(scope="module")
def running(store, tmp_path_factory):
    if not (S.VENV / "bin" / "superset").exists():
        pytest.fail(f"{S.VENV}: no Superset; run `make test-bi`, which installs it")
    home = tmp_path_factory.mktemp("superset-home")
    password = S.initialise(home, quiet=True)
    with S.Superset(home) as server:
        ids = S.provision(server.url, password, store)
        yield server, password, ids


def _same(got: list[tuple], want: list[tuple]) -> bool:
    return len(got) == len(want) and all(
        a[:-1] == b[:-1]
        and (
            a[-1] is None
            and b[-1] is None  # a Group without cells of the species: empty in both
            or a[-1] is not None
            and b[-1] is not None
            and math.isclose(a[-1], b[-1], rel_tol=1e-9, abs_tol=1e-12)
        )
        for a, b in zip(sorted(got, key=str), sorted(want, key=str), strict=True)
    )


def test_every_chart_answers_what_the_store_answers(running, store):
    server, password, ids = running
    api = S.Api(server.url, S.ADMIN, password)
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    for chart in S.charts():
        got, _seconds = S.chart_rows(api, chart, ids["datasets"][chart.dataset])
        want = con.execute(chart.sql).fetchall()
        assert want, chart.name  # a chart of nothing would pass vacuously
        assert _same(got, want), (chart.name, got[:5], want[:5])
        assert S.last_query_ms(api) is not None, chart.name  # Superset logged the query's time
    # The numbers a biologist reads: the notebook's seven genes x every Group of the taxonomy, a Group whose
    # cells do not express a gene at 0 (not a hole), one without Human cells empty.
    heat = S.chart_rows(api, S.charts()[0], ids["datasets"]["term_gene_means"])[0]
    assert {g for g, _, _ in heat} == set(NOTEBOOK_GENES)
    groups = con.execute("select count(*) from taxonomy_terms where level = 'Group'").fetchone()[0]
    assert len({t for _, t, _ in heat}) == groups
    assert any(v == 0 for _, _, v in heat)
    cells = S.chart_rows(api, S.charts()[1], ids["datasets"]["cells"])[0]
    assert (
        sum(n for _, _, n in cells)
        == con.execute("select count(*) from cells where subclass_name is not null").fetchone()[0]
    )
    con.close()


def test_the_connection_is_read_only(running):
    server, password, ids = running
    api = S.Api(server.url, S.ADMIN, password)
    info = api.call("GET", f"/api/v1/database/{ids['database']}/connection")["result"]
    assert '"read_only": true' in info["extra"] and not info["allow_dml"]


def test_provisioning_again_updates_in_place(running, store):
    server, password, ids = running
    again = S.provision(server.url, password, store)
    assert again == ids
    api = S.Api(server.url, S.ADMIN, password)
    assert api.call("GET", "/api/v1/chart/")["count"] == len(S.charts())


def test_the_dashboard_draws_every_chart_in_chromium(running, tmp_path):
    server, password, _ = running
    shot = tmp_path / "dashboard.png"
    with launch() as browser:
        seen = S.open_dashboard(browser, server.url, password, shot)
    names = sorted(c["name"] for c in seen["charts"])
    assert names == sorted(c.name for c in S.charts()), seen
    assert all(c["drawn"] and not c["error"] for c in seen["charts"]), seen
    assert shot.stat().st_size > 20_000
