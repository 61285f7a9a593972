"""Apache Superset on the store: set up its metadata, start it on 127.0.0.1, and provision the HMBA-BG
connection, datasets, charts and the "HMBA-BG markers" dashboard through Superset's own REST API.

Superset runs from its own environment (`.venv-superset`, made by `make bi-superset`); this module only
drives it (subprocesses and HTTP, standard library only), so the project's environment needs no Superset.

    python -m build_db.bi.superset up data/demo-store      # what `make bi-superset` runs
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..defaults import NOTEBOOK_GENES
from ..errors import HmbaError
from ..tools.served import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "bi" / "superset" / "superset_config.py"
VENV = ROOT / ".venv-superset"
DATABASE = "HMBA-BG store"
DASHBOARD = "HMBA-BG markers"
SLUG = "hmba-bg-markers"
# The statistics, the cells, and the non-zeros from each side: expression_annotated for questions about
# genes (sorted by gene), expression_annotated_by_cell for questions about cells (sorted by cell), as
# docs/sql.md says which to use: Superset opens the catalog itself, so no router of ours chooses for it.
DATASETS = (
    "term_gene_stats",
    "term_gene_means",
    "cells",
    "expression_annotated",
    "expression_annotated_by_cell",
)
SUBCLASS = "STR D1 MSN"
ADMIN = "admin"


def _filter(column: str, op: str, value) -> dict:
    return {
        "expressionType": "SIMPLE",
        "clause": "WHERE",
        "subject": column,
        "operator": op,
        "comparator": value,
    }


def _metric(column: str | None, aggregate: str, label: str) -> dict:
    if column is None:
        return {"expressionType": "SQL", "sqlExpression": "COUNT(*)", "label": label}
    return {
        "expressionType": "SIMPLE",
        "column": {"column_name": column},
        "aggregate": aggregate,
        "label": label,
    }


@dataclass
class Chart:
    """One chart: its Superset form data, and the plain question its numbers answer (the test asks
    Superset's chart-data API for `columns` x `metric` and compares with `sql` run on the store)."""

    name: str
    dataset: str
    viz_type: str
    columns: list[str]
    metric: dict
    filters: list[dict]
    sql: str
    params: dict = field(default_factory=dict)
    width: int = 12
    height: int = 60  # Superset's grid units (8 px)

    def form_data(self, dataset_id: int) -> dict:
        return {
            "datasource": f"{dataset_id}__table",
            "viz_type": self.viz_type,
            "adhoc_filters": self.filters,
            "row_limit": 10000,
            **self.params,
        }

    def query_context(self, dataset_id: int, force: bool = False) -> dict:
        """The chart's question as Superset's chart-data API takes it: its columns and metric, filtered,
        with no post-processing, so the rows are the numbers the chart draws."""
        return {
            "datasource": {"id": dataset_id, "type": "table"},
            "force": force,
            "queries": [
                {
                    "columns": self.columns,
                    "metrics": [self.metric],
                    "filters": [
                        {"col": f["subject"], "op": f["operator"], "val": f["comparator"]}
                        for f in self.filters
                    ],
                    "extras": {"where": "", "having": ""},
                    "orderby": [[c, True] for c in self.columns],
                    "row_limit": 10000,
                }
            ],
            "form_data": self.form_data(dataset_id),
            "result_format": "json",
            "result_type": "full",
        }


def _genes_sql(genes: list[str]) -> str:
    return ", ".join(f"'{g}'" for g in genes)


def charts(species: str = "Human") -> list[Chart]:
    """The dashboard's charts: the notebook's marker genes x Group, cells per Subclass per species, DRD1
    by region (a question about a gene) and the UMIs of one Subclass per donor (a question about cells)."""
    genes = list(NOTEBOOK_GENES)
    heat = _metric("mean_log2_cpm_all_cells", "AVG", "mean log2(CPM+1)")
    cells = _metric(None, "COUNT", "cells")
    drd1 = _metric(None, "COUNT", "nuclei expressing DRD1")
    umis = _metric("raw_count", "SUM", "UMIs")
    return [
        Chart(
            name=f"Marker genes x Group ({species})",
            dataset="term_gene_means",  # every Group, zeros filled: no hole where a Group lacks the gene
            viz_type="heatmap_v2",
            columns=["gene_label", "term_name"],
            metric=heat,
            filters=[
                _filter("species", "==", species),
                _filter("level", "==", "Group"),
                _filter("gene_label", "IN", genes),
            ],
            sql=f"""select gene_label, term_name, avg(mean_log2_cpm_all_cells) from term_gene_means
                where species = '{species}' and level = 'Group' and gene_label in ({_genes_sql(genes)})
                group by all order by 1, 2""",
            params={
                "x_axis": "gene_label",  # the genes across, the Groups down: Group names read level
                "groupby": "term_name",
                "metric": heat,
                "sort_x_axis": "alpha_asc",
                "sort_y_axis": "alpha_desc",  # A at the top
                "normalize_across": "heatmap",
                "linear_color_scheme": "superset_seq_1",
                "xscale_interval": 1,
                "yscale_interval": 1,
                "left_margin": "auto",
                "bottom_margin": "auto",
                "show_legend": True,
                "show_percentage": False,
                "show_values": False,
                "value_bounds": [None, None],
            },
            height=130,
        ),
        Chart(
            name="Cells per Subclass, by species",
            dataset="cells",
            viz_type="echarts_timeseries_bar",
            columns=["subclass_name", "species"],
            metric=cells,
            filters=[_filter("subclass_name", "IS NOT NULL", None)],
            sql="""select subclass_name, species, count(*) from cells where subclass_name is not null
                group by all order by 1, 2""",
            params={
                "x_axis": "subclass_name",
                "metrics": [cells],
                "groupby": ["species"],
                "orientation": "vertical",
                "x_axis_sort_asc": True,
                "x_axis_sort_series": "name",
                "x_axis_sort_series_ascending": True,
                "show_legend": True,
                "rich_tooltip": True,
                "xAxisLabelRotation": 45,
                "truncateXAxis": True,
            },
            width=6,
            height=70,
        ),
        Chart(
            name=f"DRD1 by region ({species})",
            dataset="expression_annotated",
            viz_type="echarts_timeseries_bar",
            columns=["region_of_interest_label"],
            metric=drd1,
            filters=[_filter("species", "==", species), _filter("gene_symbol", "==", "DRD1")],
            sql=f"""select region_of_interest_label, count(*) from expression_annotated
                where species = '{species}' and gene_symbol = 'DRD1' group by all order by 1""",
            params={
                "x_axis": "region_of_interest_label",
                "metrics": [drd1],
                "groupby": [],
                "orientation": "vertical",
                "x_axis_sort_asc": True,
                "show_legend": False,
                "rich_tooltip": True,
                "xAxisLabelRotation": 45,
            },
            width=6,
            height=70,
        ),
        Chart(
            name=f"UMIs of {SUBCLASS} per donor ({species}), from the cell-side dataset",
            dataset="expression_annotated_by_cell",
            viz_type="echarts_timeseries_bar",
            columns=["donor_label"],
            metric=umis,
            filters=[_filter("species", "==", species), _filter("subclass_name", "==", SUBCLASS)],
            sql=f"""select donor_label, sum(raw_count) from expression_annotated_by_cell
                where species = '{species}' and subclass_name = '{SUBCLASS}' group by all order by 1""",
            params={
                "x_axis": "donor_label",
                "metrics": [umis],
                "groupby": [],
                "orientation": "vertical",
                "x_axis_sort_asc": True,
                "show_legend": False,
                "rich_tooltip": True,
                "xAxisLabelRotation": 45,
            },
            height=60,
        ),
    ]


# --- the Superset process ------------------------------------------------------------------------------


def environment(home: Path) -> dict:
    if not CONFIG.exists():  # an installed package has no bi/ folder: the Make targets run from a checkout
        raise HmbaError(f"{CONFIG}: not found; run Superset from the project's checkout (make bi-superset)")
    return {
        **os.environ,
        "SUPERSET_CONFIG_PATH": str(CONFIG),
        "HMBA_SUPERSET_HOME": str(Path(home).absolute()),
        "FLASK_APP": "superset",
        "SUPERSET_LOAD_EXAMPLES": "no",
    }


def _bin(venv: Path, name: str) -> str:
    path = Path(venv) / "bin" / name
    if not path.exists():
        raise HmbaError(f"{path}: not installed; run `make bi-superset`, which makes {venv} with Superset")
    return str(path)


def initialise(home: Path, venv: Path = VENV, quiet: bool = False) -> str:
    """Superset's metadata database and its admin user, once per home folder; returns the admin password
    (made at random the first time, kept in HOME/admin_password, readable by its owner only)."""
    home = Path(home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    secret = home / "admin_password"
    env = environment(home)
    superset = _bin(venv, "superset")

    def run(*args: str) -> None:
        done = subprocess.run([superset, *args], env=env, capture_output=True, text=True, cwd=home)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise HmbaError(f"superset {' '.join(args[:2])} failed in {home}: {tail[0]}")

    if not quiet:
        print(f"Superset's metadata in {home}: migrating", file=sys.stderr)
    run("db", "upgrade")
    if not secret.exists():
        password = secrets.token_urlsafe(12)
        run(
            "fab",
            "create-admin",
            "--username",
            ADMIN,
            "--firstname",
            "HMBA",
            "--lastname",
            "admin",
            "--email",
            "admin@localhost",
            "--password",
            password,
        )
        secret.write_text(password + "\n")
        secret.chmod(0o600)
    run("init")
    return secret.read_text().strip()


class Superset:
    """A running Superset (gunicorn, two workers) on 127.0.0.1; stopped by `stop()` or on exit."""

    def __init__(self, home: Path, port: int | None = None, venv: Path = VENV, workers: int = 2):
        self.home = Path(home).absolute()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.home / "superset.log"
        self.proc = subprocess.Popen(
            [
                _bin(venv, "gunicorn"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
                "--threads",
                "4",
                "--timeout",
                "120",
                "--access-logfile",
                "-",
                "superset.app:create_app()",
            ],
            env=environment(self.home),
            cwd=self.home,
            stdout=open(self.log, "a"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HmbaError(f"Superset exited at start; its log: {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise HmbaError(f"Superset did not answer {self.url}/health in 120 s; its log: {self.log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> Superset:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- the REST API ----------------------------------------------------------------------------------------


class Api:
    """Superset's REST API as the admin: a bearer token, and the CSRF token its session asks for."""

    def __init__(self, url: str, user: str, password: str):
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.headers: dict[str, str] = {}
        token = self.call(
            "POST",
            "/api/v1/security/login",
            {"username": user, "password": password, "provider": "db", "refresh": True},
        )
        self.headers["Authorization"] = f"Bearer {token['access_token']}"
        self.headers["X-CSRFToken"] = self.call("GET", "/api/v1/security/csrf_token/")["result"]
        self.headers["Referer"] = self.url

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={**self.headers, "Content-Type": "application/json"},
        )
        try:
            with self.opener.open(req, timeout=300) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            said = e.read().decode(errors="replace")[:500]
            raise HmbaError(f"Superset {method} {path}: HTTP {e.code}: {said}") from None

    def find(self, kind: str, column: str, value: str) -> int | None:
        q = json.dumps({"filters": [{"col": column, "opr": "eq", "value": value}], "page_size": 100})
        found = self.call("GET", f"/api/v1/{kind}/?q={urllib.parse.quote(q)}")["result"]
        return found[0]["id"] if found else None

    def upsert(self, kind: str, column: str, value: str, body: dict, update: dict | None = None) -> int:
        """The object named `value` made with `body`, or, if it exists, updated with `update` (or `body`)."""
        pk = self.find(kind, column, value)
        if pk is None:
            return int(self.call("POST", f"/api/v1/{kind}/", body)["id"])
        self.call("PUT", f"/api/v1/{kind}/{pk}", body if update is None else update)
        return pk


def provision(url: str, password: str, store: Path, species: str = "Human", user: str = ADMIN) -> dict:
    """The store's connection (read-only, no setup statement), its datasets, the charts and the dashboard;
    run again, it updates them in place. Returns the ids by name."""
    catalog = (Path(store).absolute() / "catalog.duckdb").resolve()
    if not catalog.exists():
        raise HmbaError(f"{store}: no catalog.duckdb; build the store first (make demo, or hmba-db build)")
    api = Api(url, user, password)
    db = {
        "database_name": DATABASE,
        "sqlalchemy_uri": f"duckdb:///{Path(store).absolute() / 'catalog.duckdb'}",
        "expose_in_sqllab": True,
        "allow_dml": False,
        "allow_file_upload": False,
        "extra": json.dumps({"engine_params": {"connect_args": {"read_only": True}}}),
    }
    ids: dict = {"database": api.upsert("database", "database_name", DATABASE, db)}
    ids["datasets"] = {}
    for table in DATASETS:
        pk = api.find("dataset", "table_name", table)
        if pk is None:
            pk = int(
                api.call(
                    "POST",
                    "/api/v1/dataset/",
                    {"database": ids["database"], "schema": "main", "table_name": table},
                )["id"]
            )
        else:
            api.call("PUT", f"/api/v1/dataset/{pk}/refresh")  # the columns of a rebuilt store
        ids["datasets"][table] = pk
    dash = {"dashboard_title": DASHBOARD, "slug": SLUG, "published": True}
    ids["dashboard"] = api.upsert("dashboard", "slug", SLUG, dash)
    ids["charts"] = {}
    shown = charts(species)
    for chart in shown:
        ds = ids["datasets"][chart.dataset]
        body = {
            "slice_name": chart.name,
            "viz_type": chart.viz_type,
            "datasource_id": ds,
            "datasource_type": "table",
            "params": json.dumps(chart.form_data(ds)),
            "query_context": json.dumps(chart.query_context(ds)),
            "dashboards": [ids["dashboard"]],
        }
        ids["charts"][chart.name] = api.upsert("chart", "slice_name", chart.name, body)
    layout = _layout([(ids["charts"][c.name], c) for c in shown])
    api.call(
        "PUT",
        f"/api/v1/dashboard/{ids['dashboard']}",
        {"position_json": json.dumps(layout), "json_metadata": json.dumps({"refresh_frequency": 0})},
    )
    return ids


def _layout(placed: list[tuple[int, Chart]]) -> dict:
    """Superset's dashboard layout (position_json, version 2): the charts in rows of twelve columns."""
    layout: dict = {
        "DASHBOARD_VERSION_KEY": "v2",
        "ROOT_ID": {"type": "ROOT", "id": "ROOT_ID", "children": ["GRID_ID"]},
        "GRID_ID": {"type": "GRID", "id": "GRID_ID", "children": [], "parents": ["ROOT_ID"]},
        "HEADER_ID": {"id": "HEADER_ID", "type": "HEADER", "meta": {"text": DASHBOARD}},
    }
    row, used = None, 12
    for pk, chart in placed:
        if used + chart.width > 12:
            row = f"ROW-{len(layout)}"
            layout[row] = {
                "type": "ROW",
                "id": row,
                "children": [],
                "parents": ["ROOT_ID", "GRID_ID"],
                "meta": {"background": "BACKGROUND_TRANSPARENT"},
            }
            layout["GRID_ID"]["children"].append(row)
            used = 0
        cid = f"CHART-{pk}"
        layout[cid] = {
            "type": "CHART",
            "id": cid,
            "children": [],
            "parents": ["ROOT_ID", "GRID_ID", row],
            "meta": {"width": chart.width, "height": chart.height, "chartId": pk, "sliceName": chart.name},
        }
        layout[row]["children"].append(cid)
        used += chart.width
    return layout


def chart_rows(api: Api, chart: Chart, dataset_id: int) -> tuple[list[tuple], float]:
    """The chart's numbers from Superset's chart-data API (cache bypassed), and the seconds it took."""
    t0 = time.perf_counter()
    out = api.call("POST", "/api/v1/chart/data", chart.query_context(dataset_id, force=True))
    seconds = time.perf_counter() - t0
    result = out["result"][0]
    names = [*chart.columns, chart.metric["label"]]
    return [tuple(row[n] for n in names) for row in result["data"]], seconds


def last_query_ms(api: Api) -> float | None:
    """The time Superset's own log gives its last query on the store (`execute_sql`), in ms."""
    q = json.dumps(
        {
            "filters": [{"col": "action", "opr": "eq", "value": "execute_sql"}],
            "order_column": "dttm",
            "order_direction": "desc",
            "page_size": 1,
        }
    )
    found = api.call("GET", f"/api/v1/log/?q={urllib.parse.quote(q)}")["result"]
    return float(found[0]["duration_ms"]) if found else None


def measure(api: Api, ids: dict, store: Path, species: str = "Human", repeat: int = 5) -> list[dict]:
    """Each chart's query, median of `repeat` runs, cache bypassed: the time Superset's log gives its query
    (`execute_sql`), the chart-data request as a client sees it, and the same SQL from Python (DuckDB)."""
    import statistics

    import duckdb

    con = duckdb.connect(str(Path(store) / "catalog.duckdb"), read_only=True)
    out = []
    try:
        for chart in charts(species):
            logged, trips, python = [], [], []
            for _ in range(repeat):
                trips.append(chart_rows(api, chart, ids["datasets"][chart.dataset])[1] * 1000)
                logged.append(last_query_ms(api) or float("nan"))
                t0 = time.perf_counter()
                con.execute(chart.sql).fetchall()
                python.append((time.perf_counter() - t0) * 1000)
            out.append(
                {
                    "chart": chart.name,
                    "superset_sql_ms": statistics.median(logged),
                    "chart_data_ms": statistics.median(trips),
                    "python_ms": statistics.median(python),
                }
            )
    finally:
        con.close()
    return out


def open_dashboard(browser, url: str, password: str, screenshot: Path | None = None) -> dict:
    """Log in as a user would, open the dashboard and wait until every chart drew (ECharts' canvas in each
    chart holder) or showed an error; returns the seconds and each chart's state. The window is tall enough
    for the whole dashboard: Superset draws a chart only once it is scrolled into view."""
    page = browser.new_page(viewport={"width": 1400, "height": 1900})
    try:
        page.goto(f"{url}/login/")
        page.fill("#username", ADMIN)
        page.fill("#password", password)
        page.keyboard.press("Enter")
        page.wait_for_url(lambda u: "/login" not in u, timeout=60_000)
        t0 = time.perf_counter()
        page.goto(f"{url}/superset/dashboard/{SLUG}/")
        page.wait_for_function(
            """() => {
                const holders = [...document.querySelectorAll('[data-test="chart-grid-component"]')];
                const failed = '.alert, [role="alert"], [data-test="alert"]';
                return holders.length > 0 && holders.every(h =>
                    h.querySelector('canvas') || h.querySelector(failed));
            }""",
            timeout=120_000,
        )
        seconds = time.perf_counter() - t0
        states = page.evaluate(
            """() => [...document.querySelectorAll('[data-test="chart-grid-component"]')].map(h => ({
                name: (h.querySelector('[data-test="editable-title"]') || {}).textContent || '',
                drawn: !!h.querySelector('canvas'),
                error: (h.querySelector('.alert, [role="alert"], [data-test="alert"]') || {}).textContent
                    || null,
            }))"""
        )
        if screenshot is not None:
            page.wait_for_timeout(1000)  # the charts' entry animation
            page.screenshot(path=str(screenshot), full_page=True)
        return {"seconds": seconds, "charts": states}
    finally:
        page.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m build_db.bi.superset", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="set up, start on 127.0.0.1, provision, and serve until Ctrl-C")
    up.add_argument("store", type=Path)
    up.add_argument("--home", type=Path, default=ROOT / "data" / "superset")
    up.add_argument("--port", type=int, default=8088)
    up.add_argument("--species", default="Human")
    up.add_argument("--screenshot", type=Path, help="open the dashboard in Chromium, save it here, stop")
    args = ap.parse_args(argv)
    try:
        if not (args.store / "catalog.duckdb").exists():
            raise HmbaError(f"{args.store}: no catalog.duckdb; build a store first (make demo)")
        password = initialise(args.home)
        with Superset(args.home, args.port) as server:
            ids = provision(server.url, password, args.store, args.species)
            print(
                f"Superset on {server.url}/superset/dashboard/{SLUG}/ (log in as {ADMIN}, password in "
                f"{args.home / 'admin_password'}: {password}); {len(ids['charts'])} charts on "
                f"{args.store}." + ("" if args.screenshot else " Ctrl-C stops it."),
                flush=True,
            )
            if args.screenshot is not None:
                from ..tools.browser import launch

                with launch() as browser:
                    seen = open_dashboard(browser, server.url, password, args.screenshot)
                print(
                    f"dashboard drawn in {seen['seconds']:.2f} s (logged in, cold caches): {args.screenshot}"
                )
                for m in measure(Api(server.url, ADMIN, password), ids, args.store, args.species):
                    print(
                        f"  {m['chart']}: Superset's query {m['superset_sql_ms']:.1f} ms, chart-data request "
                        f"{m['chart_data_ms']:.1f} ms; the same SQL from Python {m['python_ms']:.1f} ms"
                    )
                return 0
            try:
                server.proc.wait()
            except KeyboardInterrupt:
                print("stopping Superset", file=sys.stderr)
    except HmbaError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
