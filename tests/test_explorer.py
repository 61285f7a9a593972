"""The explorer page at `/`, used as a person uses it: in a real Chromium (Debian's, driven by Playwright)
against `hmba-db serve` on the tiny store, through the page's stable `data-testid` hooks, its numbers
checked against the library's. Every test fails on an error in the browser's console."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest

import build_db
from build_db.access.embedding import umap_points
from build_db.analyses import mean_expression
from build_db.release import layout as R
from build_db.tools.browser import CHROMIUM, launch
from build_db.tools.served import Server

GENES = ["DRD1", "PLP1", "AQP4"]


@pytest.fixture(scope="module")
def server(tiny_store):
    s = Server(tiny_store, "--log-level", "warning")
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with launch() as b:
        yield b


@pytest.fixture
def page(browser, server):
    """A fresh browser context (no stored token, no cache); the test fails on any console error."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    p = context.new_page()
    problems: list[str] = []
    p.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    p.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    p.base = server.url
    p.refusals_expected = False  # a test that provokes a 4xx sets it: Chromium logs the answer's status
    yield p
    context.close()
    if p.refusals_expected:
        problems = [m for m in problems if not re.search(r"Failed to load resource: .* status of 4\d\d", m)]
    assert not problems, problems


def open_view(page, **state) -> None:
    query = urllib.parse.urlencode({k: ",".join(v) if isinstance(v, list) else v for k, v in state.items()})
    page.goto(f"{page.base}/?{query}")


def drawn(page, testid: str, attr: str) -> str:
    element = page.wait_for_selector(f"[data-testid={testid}][data-{attr}]", state="attached", timeout=20000)
    return element.get_attribute(f"data-{attr}")


def downloaded_csv(page) -> pd.DataFrame:
    with page.expect_download() as d:
        page.get_by_test_id("download-csv").click()
    return pd.read_csv(d.value.path())


def expected_terms(con, species: str, level: str, min_cells: int = 10, within: str = "all") -> list[str]:
    df = build_db.run_query(con, "dotplot", species=species, genes="DRD1", level=level, within=within)
    return list(dict.fromkeys(df["term_name"]))


def test_type_a_gene_pick_it_and_download_the_plotted_numbers(page, con):
    """Search by keyboard (any case), pick with Enter: the dot plot has one gene and every Group's term;
    its CSV's numbers equal mean_expression, species by species."""
    open_view(page, genes="", level="Group", species="all")
    assert drawn(page, "dotplot", "n-genes") == "0"
    search = page.get_by_test_id("gene-search")
    search.fill("drd")
    page.wait_for_selector("#gene-hits li[data-i]")
    options = page.locator("#gene-hits li[data-i] b").all_inner_texts()
    assert options[:2] == ["DRD1", "DRD2"], options
    search.press("ArrowDown")  # DRD1 (nothing typed matches exactly: no option is active yet)
    search.press("Enter")
    page.wait_for_selector("[data-testid=dotplot][data-n-genes='1']", state="attached")
    assert int(drawn(page, "dotplot", "n-terms")) == len(expected_terms(con, "all", "Group"))
    assert drawn(page, "dotplot", "n-species") == "3"
    page.locator("[data-testid=dotplot] circle.dot[data-species=Human]").first.hover()  # Human's first
    hover = page.get_by_test_id("dotplot-hover").text_content()
    first = build_db.run_query(con, "dotplot", species="Human", genes="DRD1", level="Group").iloc[0]
    assert first["term_name"] in hover and f"{first['n_cells']:,} cells" in hover, hover
    assert f"{first['mean_log2_cpm']:.3f}" in hover and f"{100 * first['fraction_expressing']:.1f}%" in hover
    radius = page.locator("[data-testid=dotplot] circle.dot[data-species=Human]").first.get_attribute("r")
    assert float(radius) == pytest.approx((3 + 17 * first["fraction_expressing"] ** 0.5) / 2, abs=0.01)
    got = downloaded_csv(page)
    assert set(got.columns) >= {"species", "term_name", "gene_symbol", "mean_log2_cpm", "fraction_expressing"}
    for species, rows in got.groupby("species"):
        want = mean_expression(con, species, ["DRD1"], level="Group")
        for r in rows.itertuples():
            assert r.mean_log2_cpm == pytest.approx(want.loc[r.term_name, "DRD1"], rel=1e-9, abs=1e-12)
            assert r.fraction_expressing == pytest.approx(want.loc[r.term_name, "DRD1_fraction"], rel=1e-9)
            assert r.n_cells == want.loc[r.term_name, "n_cells"]
    assert "genes=DRD1" in page.url  # the shareable state


def test_a_pasted_list_and_an_unknown_symbol(page):
    open_view(page, genes="")
    drawn(page, "dotplot", "n-genes")
    search = page.get_by_test_id("gene-search")
    search.fill("plp1, aqp4\nDRDD1")
    search.press("Enter")
    page.wait_for_selector("[data-testid=dotplot][data-n-genes='2']", state="attached")
    message = page.get_by_test_id("gene-message").inner_text()
    assert "DRDD1" in message and "DRD1" in message, message  # the closest symbols that exist
    page.locator("[data-testid=gene-message] button", has_text=re.compile("^DRD1$")).click()
    page.wait_for_selector("[data-testid=dotplot][data-n-genes='3']", state="attached")
    assert page.locator("[data-testid=gene-chips] li span").all_inner_texts() == ["PLP1", "AQP4", "DRD1"]


def test_drill_down_one_level_and_back(page, con):
    """A click on a term's dot shows its children at the next level, with the path in the breadcrumb;
    Back, and a crumb, go up again; the table's term names drill down too (the keyboard's way)."""
    open_view(page, genes=GENES, level="Subclass", species="Human")
    drawn(page, "dotplot", "n-terms")
    subclasses = expected_terms(con, "Human", "Subclass")
    dot = subclasses.index("STR D1 MSN") * len(GENES)  # the rows' order: term, then gene
    page.locator("[data-testid=dotplot] circle.dot").nth(dot).click()
    page.wait_for_function("document.querySelector('#dot-level').value === 'Group'")
    want = expected_terms(con, "Human", "Group", within="STR D1 MSN")
    assert 0 < len(want) < len(expected_terms(con, "Human", "Group"))
    page.wait_for_function(
        f"document.querySelector('[data-testid=dotplot]').dataset.nTerms === '{len(want)}'"
    )
    crumbs = page.get_by_test_id("crumbs").inner_text()
    assert "STR D1 MSN" in crumbs and "CN LGE GABA" in crumbs, crumbs  # its parent Class on the path
    got = downloaded_csv(page)
    assert list(dict.fromkeys(got["term_name"])) == want
    page.go_back()  # the browser's Back is the drill-up
    page.wait_for_function("document.querySelector('#dot-level').value === 'Subclass'")
    page.wait_for_function(
        f"document.querySelector('[data-testid=dotplot]').dataset.nTerms === '{len(subclasses)}'"
    )
    page.locator("summary", has_text="as a table").click()
    page.locator("#dot-table button[data-go=drill]", has_text=re.compile("^STR D1 MSN$")).first.click()
    page.wait_for_function(
        f"document.querySelector('[data-testid=dotplot]').dataset.nTerms === '{len(want)}'"
    )
    page.get_by_test_id("crumbs").get_by_role("button", name="CN LGE GABA").click()  # up to the Subclasses
    page.wait_for_function("document.querySelector('#dot-level').value === 'Subclass'")
    assert "within=CS" in page.url


def test_a_shared_url_gives_the_same_plot(page, browser, server):
    open_view(page, genes=GENES, level="Class", species="Macaque", scale="raw")
    first = (drawn(page, "dotplot", "n-terms"), drawn(page, "dotplot", "n-genes"))
    shared = page.url
    other = browser.new_page()
    try:
        other.goto(shared)
        again = (drawn(other, "dotplot", "n-terms"), drawn(other, "dotplot", "n-genes"))
        assert again == first
        assert other.get_by_test_id("download-csv").get_attribute("href") == page.get_by_test_id(
            "download-csv"
        ).get_attribute("href")
        assert other.locator("#dot-scale").input_value() == "raw"
    finally:
        other.close()


HOVER_JS = """() => {
  const el = document.getElementById('umap');
  el.addEventListener('umap-hover', (ev) => { if (ev.detail.index >= 0) window.hovered = ev.detail.index; });
  return el.pixelOf(0);
}"""

# Each point's colour as drawn: the canvas pixel at its centre (the WebGL buffer is kept for reading).
PIXELS_JS = """(n) => {
  const el = document.getElementById('umap');
  const canvas = el.querySelector('canvas');
  const gl = canvas.getContext('webgl');
  const box = canvas.getBoundingClientRect(), ratio = canvas.width / box.width;
  const out = [];
  for (let i = 0; i < n; i++) {
    const [x, y] = el.pixelOf(i);
    const px = new Uint8Array(4);
    gl.readPixels(Math.floor((x - box.left) * ratio), Math.floor(canvas.height - (y - box.top) * ratio), 1, 1,
      gl.RGBA, gl.UNSIGNED_BYTE, px);
    out.push('#' + Array.from(px.slice(0, 3), (v) => v.toString(16).padStart(2, '0')).join(''));
  }
  return out;
}"""


def test_the_umap_draws_the_stated_points(page, con):
    full = umap_points(con, "Human", "DRD1", 10**6)
    open_view(page, view="umap", species="Human", genes=GENES, gene="DRD1")
    assert int(drawn(page, "umap", "n-points")) == full["n_points"]
    assert f"all {full['n_points']:,}" in page.get_by_test_id("umap-note").inner_text()
    # the mouse over the first cell: the card names the cell the page says is under it
    x, y = page.evaluate(HOVER_JS)
    page.mouse.move(x, y)
    page.wait_for_function("window.hovered !== undefined")
    i = page.evaluate("window.hovered")
    card = page.get_by_test_id("umap-hover").inner_text()
    path = full["clusters"][int(full["cluster"][i])]
    assert all(f"{lv}: {path[lv.lower()]}" in card for lv in R.LEVELS), card
    assert f"DRD1: log2(CPM+1) {full['value'][i]:.3f}" in card
    # drag pans by as much as the mouse moved; the wheel zooms around the mouse (the cell under it stays)
    box = page.locator("[data-testid=umap] canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 50, cy + 30, steps=5)
    page.mouse.up()
    x2, y2 = page.evaluate("document.getElementById('umap').pixelOf(0)")
    assert (x2 - x, y2 - y) == (pytest.approx(50, abs=0.5), pytest.approx(30, abs=0.5))
    page.mouse.move(x2, y2)
    page.mouse.wheel(0, -400)
    page.wait_for_timeout(100)
    assert page.evaluate("document.getElementById('umap').pixelOf(0)") == [
        pytest.approx(x2, abs=0.5),
        pytest.approx(y2, abs=0.5),
    ]
    far = page.evaluate("document.getElementById('umap').pixelOf(1)")
    page.dblclick("[data-testid=umap] canvas")  # back to the whole UMAP
    assert page.evaluate("document.getElementById('umap').pixelOf(0)") == [
        pytest.approx(x, abs=0.5),
        pytest.approx(y, abs=0.5),
    ]
    assert far != page.evaluate("document.getElementById('umap').pixelOf(1)")
    open_view(page, view="umap", species="Human", genes=GENES, color="Group", points="50")
    assert drawn(page, "umap", "n-points") == "50"
    assert drawn(page, "umap", "sampled") == "true"
    assert f"sample of 50 of the {full['n_cells']:,}" in page.get_by_test_id("umap-note").inner_text()
    got = downloaded_csv(page)
    sample = umap_points(con, "Human", None, 50)
    assert len(got) == 50
    # drawn where they are, in their Group's colour (a point another one covers aside)
    want = [sample["clusters"][int(k)]["group_color"].lower() for k in sample["cluster"]]
    seen = page.evaluate(PIXELS_JS, 50)
    assert sum(a == b for a, b in zip(seen, want, strict=True)) >= 45, list(zip(seen, want, strict=True))
    assert got["x"].to_numpy() == pytest.approx(sample["x"].astype(float), abs=6e-4)  # 3 decimals on the wire


def test_markers_a_click_adds_the_gene(page, con):
    open_view(
        page, view="markers", genes=["PLP1"], species="Human", tlevel="Subclass", term="Astrocyte", n="5"
    )
    page.wait_for_selector("[data-testid=markers-table] table")
    want = build_db.run_query(con, "markers", species="Human", level="Subclass", term="Astrocyte", n=5)
    assert page.locator("[data-testid=markers-table] td:first-child").all_inner_texts() == list(
        want["gene_symbol"]
    )
    page.locator("[data-testid=markers-table] th button", has_text="fraction_in").click()  # sorts
    first = want["gene_symbol"].iloc[0]
    page.locator("[data-testid=markers-table] button[data-add]", has_text=re.compile(f"^{first}$")).click()
    page.wait_for_function(f"new URL(location.href).searchParams.get('genes') === 'PLP1,{first}'")
    page.get_by_role("tab", name="Dot plot").click()
    page.wait_for_selector("[data-testid=dotplot][data-n-genes='2']", state="attached")


def test_one_gene_across_regions_and_donors(page, con):
    open_view(
        page, view="regions", genes=GENES, gene="PLP1", species="Human", tlevel="Class", term="OPC-Oligo"
    )
    page.wait_for_selector("[data-testid=regions-table] table")
    want = build_db.run_query(
        con, "gene_in_term", species="Human", gene="PLP1", level="Class", term="OPC-Oligo"
    )
    n_regions = int((want["dimension"] == "region").sum())
    assert drawn(page, "regions-plot", "n-bars") == str(n_regions)
    assert drawn(page, "donors-plot", "n-bars") == str(len(want) - n_regions)
    # each bar as tall as its mean (to the pixel, on the plot's own axis), its hover text the row's numbers
    regions = want[want["dimension"] == "region"].reset_index(drop=True)
    bars = page.locator("[data-testid=regions-plot] rect.bar")
    heights = [float(bars.nth(i).get_attribute("height")) for i in range(n_regions)]
    top = int(regions["mean_log2_cpm"].idxmax())
    assert max(heights) == heights[top] > 0
    for h, m in zip(heights, regions["mean_log2_cpm"], strict=True):
        assert h == pytest.approx(heights[top] * m / regions["mean_log2_cpm"].max(), abs=0.02)
    bars.nth(top).hover()
    card = page.get_by_test_id("regions-plot-hover").inner_text()
    assert regions["name"][top] in card and f"{regions['mean_log2_cpm'][top]:.3f}" in card, card
    got = downloaded_csv(page)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_copy_as_python_runs_and_answers_the_same(page, server, tiny_store):
    open_view(page, genes=GENES, level="Class", species="Human")
    drawn(page, "dotplot", "n-terms")
    plotted = downloaded_csv(page)
    page.get_by_test_id("copy-python").click()
    page.wait_for_selector("[data-testid=copy-text]:not([hidden])")
    code = page.get_by_test_id("copy-text").inner_text()
    assert str(tiny_store) in code and '"dotplot"' in code
    scope: dict = {}
    exec(code.split("# or from this server")[0], scope)  # the store, through the library
    pd.testing.assert_frame_equal(scope["frame"], plotted, check_dtype=False)
    scope = {}
    exec("#" + code.split("# or from this server")[1], scope)  # the server, through pandas alone
    pd.testing.assert_frame_equal(scope["frame"], plotted, check_dtype=False)
    page.get_by_test_id("copy-sql").click()
    page.wait_for_function("document.querySelector('[data-testid=copy-text]').dataset.kind === 'sql'")
    assert "term_gene_stats" in page.get_by_test_id("copy-text").inner_text()


def test_hostile_sql_shows_the_sandbox_refusal(page, server):
    open_view(page, view="sql", sql="select count(*) as n from cells where species = 'Human'")
    page.wait_for_selector("[data-testid=sql-table] table")
    status, _, body = server.post(
        "/api/v1/sql", {"sql": "select count(*) as n from cells where species = 'Human'"}
    )
    assert page.locator("[data-testid=sql-table] td").inner_text().replace(",", "") == str(
        json.loads(body)["rows"][0][0]
    )
    hostile = "select * from read_csv('/etc/passwd')"
    page.refusals_expected = True
    page.get_by_test_id("sql-text").fill(hostile)
    page.get_by_test_id("sql-run").click()
    page.wait_for_function("document.querySelector('[data-testid=sql-error]').textContent.length > 0")
    status, _, body = server.post("/api/v1/sql", {"sql": hostile})
    assert status == 400
    shown = page.get_by_test_id("sql-error").inner_text()
    assert shown == json.loads(body)["error"] and "\n" not in shown


def test_every_view_draws_without_console_errors(page):
    """Each tab in turn, with the page's own controls: the fixture fails on any console error."""
    open_view(page, genes=GENES)
    drawn(page, "dotplot", "n-terms")
    for tab, ready in [
        ("Regions & donors", "[data-testid=regions-table] table"),
        ("Markers", "[data-testid=markers-table] table"),
        ("UMAP", "[data-testid=umap][data-n-points]"),
        ("SQL", "[data-testid=sql-text]"),
        ("Dot plot", "[data-testid=dotplot][data-n-terms]"),
    ]:
        page.get_by_role("tab", name=tab).click()
        page.wait_for_selector(ready, state="attached")
    assert "licensed" in page.get_by_test_id("licence").inner_text()
    assert page.get_by_test_id("build").inner_text().count("build") == 1


def test_a_server_with_a_token_asks_for_it(browser, tiny_store):
    s = Server(tiny_store, "--token", "s3cret", "--log-level", "warning")
    context = browser.new_context()
    try:
        p = context.new_page()
        p.goto(s.url + "/?genes=DRD1")
        p.wait_for_selector("#token-form:not([hidden])")
        p.fill("#token-input", "s3cret")
        p.click("#token-form button")
        assert drawn(p, "dotplot", "n-genes") == "1"
        with p.expect_download() as d:  # the CSV link sends the token too
            p.get_by_test_id("download-csv").click()
        assert list(csv.reader(io.StringIO(Path(d.value.path()).read_text())))[0][0] == "species"
    finally:
        context.close()
        assert s.stop() == 0


def test_the_sql_console_says_which_source_answered(page, server, tiny_store):
    """A question the statistics hold is answered from them, and the console says so; its copy as Python
    runs the same routed question through build_db.sql and gets the same rows."""
    sql = (
        "select gene_symbol, sum(raw_count) as counts from expression_annotated "
        "where species = 'Human' and subclass_name = 'STR D1 MSN' group by 1 order by counts desc, 1 limit 5"
    )
    open_view(page, view="sql", sql=sql)
    page.wait_for_selector("[data-testid=sql-table] table")
    status = page.locator("#sql-status")
    assert "answered from statistics" in status.inner_text()
    assert "term_gene_sums" in status.get_attribute("title")
    shown = downloaded_csv(page)
    page.get_by_test_id("copy-python").click()
    page.wait_for_selector("[data-testid=copy-text]:not([hidden])")
    code = page.get_by_test_id("copy-text").inner_text()
    scope: dict = {}
    exec(code, scope)
    assert scope["frame"].attrs["route"]["source"] == "statistics"
    pd.testing.assert_frame_equal(scope["frame"], shown, check_dtype=False)
