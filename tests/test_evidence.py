"""The Evidence project (bi/evidence/): its source is the named analyses' own SQL, and each page's queries,
run on that source's tables as Evidence runs them (DuckDB, the inputs filled in), give the numbers
`run_query` gives. The site's build and pages in Chromium (`make test-bi`) need DuckDB-WASM's parquet
extension from extensions.duckdb.org, which these machines cannot reach: that test says so when it skips."""

from __future__ import annotations

import re
import shutil

import duckdb
import pandas as pd
import pytest

from build_db.access.queries import run_query
from build_db.bi import evidence as E
from build_db.errors import HmbaError
from build_db.store.build import build

BLOCK = re.compile(r"```sql (\w+)\n(.*?)```", re.S)


@pytest.fixture(scope="module")
def store(tiny_release, tmp_path_factory):
    return build(tiny_release, tmp_path_factory.mktemp("evidence") / "store", quiet=True).store


@pytest.fixture(scope="module")
def source(store):
    """The source's tables as `evidence sources` extracts them, in a DuckDB holding them as schema hmba."""
    queries = E.source_queries(store)
    con = duckdb.connect()
    con.execute(f"attach '{store / 'catalog.duckdb'}' as store (read_only)")
    con.execute("use store")
    extracted = {name: con.execute(sql).df() for name, sql in queries.items()}
    pages = duckdb.connect()
    pages.execute("create schema hmba")
    for name, df in extracted.items():
        pages.register(f"_{name}", df)
        pages.execute(f"create table hmba.{name} as select * from _{name}")
    return queries, pages


def page_query(page: str, name: str, **inputs) -> str:
    """One named SQL block of a page, with Evidence's `${inputs.X.value}` filled in."""
    text = (E.PROJECT / "pages" / f"{page}.md").read_text()
    sql = dict(BLOCK.findall(text))[name]
    return re.sub(r"\$\{inputs\.(\w+)\.value\}", lambda m: inputs[m.group(1)], sql)


def close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


def test_every_page_block_runs_on_the_source(source):
    _, pages = source
    inputs = {"species": "Human", "genes": "('DRD1', 'PLP1')", "gene": "DRD1", "level": "Class",
              "group": "Astrocyte"}  # fmt: skip
    for md in sorted((E.PROJECT / "pages").glob("*.md")):
        for name, _ in BLOCK.findall(md.read_text()):
            pages.execute(page_query(md.stem, name, **inputs)).fetchall()  # names a column it lacks: fails


def test_the_region_page_gives_gene_by_region(store, source):
    _, pages = source
    for species, gene in (("Human", "DRD1"), ("Macaque", "PLP1")):
        got = pages.execute(page_query("region", "cells", species=species, gene=gene)).df()
        want = run_query(store, "gene_by_region", species=species, gene=gene)
        assert len(want) > 0
        close(got, want[[*got.columns]])


def test_the_markers_page_gives_markers(store, source):
    _, pages = source
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    groups = con.execute(
        "select term_name, term_label from term_cell_counts where species = 'Human' and level = 'Group' "
        "and n_cells >= 30 order by n_cells desc limit 3"
    ).fetchall()
    for name, label in groups:
        got = pages.execute(page_query("markers", "top", species="Human", group=name)).df()
        want = run_query(store, "markers", species="Human", level="Group", term=label)
        close(got, want.sort_values("t_statistic", ascending=False)[[*got.columns]])


def test_the_cells_and_dotplot_pages(store, source):
    _, pages = source
    for level in ("Class", "Group"):
        got = pages.execute(page_query("cells", "counts", level=level)).df()
        want = run_query(store, "cells_per_level", species="all", level=level)
        close(got, want[[*got.columns]])
        assert (
            got.n_cells.sum()
            == duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
            .execute("select count(*) from cells where cluster_alias is not null")
            .fetchone()[0]
        )
    got = pages.execute(page_query("dotplot", "dots", species="Human", genes="('DRD1', 'PLP1')")).df()
    want = run_query(store, "dotplot", species="Human", genes="DRD1,PLP1", level="Group")
    want = want.sort_values(["term_name", "gene_symbol"])
    close(got, want[[*got.columns]])


def test_the_panel_keeps_the_genes_the_store_has(store):
    queries = E.source_queries(store, ["DRD1", "NOT_A_GENE"])
    assert "NOT_A_GENE" not in queries["dotplot"] and "DRD1" in queries["dotplot"]
    with pytest.raises(HmbaError, match="none of the genes NOT_A_GENE is in the store"):
        E.source_queries(store, ["NOT_A_GENE"])


def test_the_source_folder_names_the_catalog(store, tmp_path):
    folder = E.write_source(store, project=tmp_path)
    said = (folder / "connection.yaml").read_text()
    (relative,) = re.findall(r"filename: (.+)", said)
    assert (folder / relative).resolve() == (store / "catalog.duckdb").resolve()
    assert sorted(p.stem for p in folder.glob("*.sql")) == sorted(E.source_queries(store))


def test_an_unreachable_extension_host_is_one_line_not_a_hang(store, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(E.PROJECT, project, ignore=shutil.ignore_patterns("node_modules", ".evidence", "build"))
    (project / "node_modules" / ".bin").mkdir(parents=True)
    (project / "node_modules" / ".bin" / "evidence").touch()
    monkeypatch.setattr(E, "extensions_reachable", lambda timeout=5.0: "Name or service not known")
    with pytest.raises(HmbaError, match="parquet extension .* cannot reach"):
        E.build_site(store, project=project)
    with pytest.raises(HmbaError, match="Evidence is not installed; run `make bi-evidence`"):
        E.build_site(store, project=tmp_path / "elsewhere")


@pytest.mark.bi
def test_the_site_shows_each_page_with_the_store_numbers(store):
    why = E.extensions_reachable()
    if why is not None:
        pytest.skip(f"DuckDB-WASM's parquet extension is not reachable here ({why})")
    from build_db.tools.browser import launch

    site = E.build_site(store, quiet=True)
    with E.Site(site) as served, launch() as browser:
        page = browser.new_page()
        page.goto(f"{served.url}/region")
        rows = E.read_table(page)
        want = run_query(store, "gene_by_region", species="Human", gene="DRD1")
        assert [r[:2] for r in rows] == want[["region_of_interest_label", "group_name"]].values.tolist()
        assert [float(r[2]) for r in rows] == [round(v, 4) for v in want.mean_log2_cpm]
        for name in E.PAGES:
            page.goto(f"{served.url}/{name}")
            assert E.read_table(page), name
