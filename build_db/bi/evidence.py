"""Evidence (evidence.dev) on the store: the project in bi/evidence/ (our pages), its DuckDB source written
from the store's named analyses, extracted, built into a static site and served on 127.0.0.1.

Evidence draws its pages from an extract it takes at build time (`evidence sources`), so the source's SQL
is the named analyses' own, rendered for a gene panel by `prepare(...).sql`: a page's numbers are those of
`hmba-db query` for the same parameters.

    python -m build_db.bi.evidence up data/demo-store        # what `make bi-evidence` runs
"""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..access.connect import connect
from ..access.queries import built_species, prepare
from ..defaults import NOTEBOOK_GENES
from ..errors import HmbaError

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "bi" / "evidence"
SOURCE = "hmba"
# The notebook's seven genes and the dot plot's default striatal panel.
PANEL = [*NOTEBOOK_GENES, "PPP1R1B", "PENK", "TAC1", "SST", "PVALB", "CHAT", "TH", "SLC6A3"]
PAGES = ("dotplot", "markers", "cells", "region")


def _literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _union(parts: list[str]) -> str:
    return "\nunion all\n".join(parts) + "\n"


def source_queries(store: Path, genes: list[str] | None = None) -> dict[str, str]:
    """The Evidence source's queries by table name: each named analysis rendered for the gene panel (the
    genes the store has), every species and every term its page offers."""
    con = connect(store)
    try:
        species = built_species(con)
        wanted = list(dict.fromkeys(genes or PANEL))
        pairs = set(  # which species has which of the panel's genes, asked once
            con.execute(
                "select distinct species, gene_symbol from genes where gene_symbol in ?", [wanted]
            ).fetchall()
        )
        have = {sym for _, sym in pairs}
        panel = [g for g in wanted if g in have]
        if not panel:
            raise HmbaError(f"{store}: none of the genes {', '.join(wanted)} is in the store; pass --genes")
        queries = {
            "store_info": "select max(value) filter (where key = 'build_id') as build_id, "
            "max(value) filter (where key = 'built_at') as built_at from store_info\n",
            "dotplot": prepare(con, "dotplot", species="all", genes=",".join(panel), level="Group").sql,
        }
        markers, by_region = [], []
        for s in species:
            groups = con.execute(
                "select term_label, any_value(term_name) from term_cell_counts "
                "where species = ? and level = 'Group' and n_cells > 0 group by 1 order by 1",
                [s],
            ).fetchall()
            for label, name in groups:
                sql = prepare(con, "markers", species=s, level="Group", term=label).sql
                markers.append(
                    f"select {_literal(s)} as species, {_literal(name)} as term_name, *\nfrom ({sql})"
                )
            for g in [g for g in panel if (s, g) in pairs]:
                sql = prepare(con, "gene_by_region", species=s, gene=g).sql
                by_region.append(
                    f"select {_literal(s)} as species, row_number() over () as row_order, *\nfrom ({sql})"
                )
        queries["markers"] = _union(markers)
        queries["gene_by_region"] = _union(by_region)
        levels = con.execute("select level, level_order from taxonomy_levels order by level_order").fetchall()
        queries["cells_per_level"] = _union(
            [
                f"select {_literal(level)} as level, {order} as level_order, "
                f"row_number() over () as term_order, *\nfrom ({cells})"
                for level, order in levels
                for cells in [prepare(con, "cells_per_level", species="all", level=level).sql]
            ]
        )
        return queries
    finally:
        con.close()


def write_source(store: Path, genes: list[str] | None = None, project: Path = PROJECT) -> Path:
    """sources/hmba/: the connection (the store's catalog, by a path relative to the folder, as
    @evidence-dev/duckdb joins them; it opens it read-only) and one .sql per extracted table."""
    catalog = (Path(store).absolute() / "catalog.duckdb").resolve()
    if not catalog.exists():
        raise HmbaError(f"{store}: no catalog.duckdb; build the store first (make demo, or hmba-db build)")
    folder = project / "sources" / SOURCE
    queries = source_queries(store, genes)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.sql"):
        old.unlink()
    (folder / "connection.yaml").write_text(
        f"# Written by python -m build_db.bi.evidence for {Path(store).absolute()}\n"
        f"name: {SOURCE}\ntype: duckdb\noptions:\n  filename: {os.path.relpath(catalog, folder)}\n"
    )
    for name, sql in queries.items():
        (folder / f"{name}.sql").write_text(sql)
    return folder


# Evidence's DuckDB-WASM (1.32, DuckDB 1.4) has no Parquet reader built in: it loads the parquet extension
# from DuckDB's extension host when `evidence sources` merges its extract, and again in each reader's
# browser. Where that host cannot be reached, `evidence sources` waits for ever (evidence-dev/evidence#3155,
# duckdb/duckdb-wasm#2010), so we ask first and say so.
EXTENSIONS = "https://extensions.duckdb.org/v1.4.2/wasm_eh/parquet.duckdb_extension.wasm"
NPM_TIMEOUT = 900.0


def extensions_reachable(timeout: float = 5.0) -> str | None:
    """None when DuckDB-WASM's parquet extension can be fetched from here; otherwise why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(EXTENSIONS, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as e:  # the host answered: a browser with the same access gets it
        return None if e.code < 500 else f"HTTP {e.code}"
    except OSError as e:
        return str(getattr(e, "reason", e))


def environment() -> dict:
    # No usage reports to evidence.dev (not ours to send from a lab's data).
    return {**os.environ, "SEND_ANONYMOUS_USAGE_STATS": "no", "DO_NOT_TRACK": "1"}


def npm(*args: str, project: Path = PROJECT) -> None:
    try:
        done = subprocess.run(
            ["npm", "--prefix", str(project), "run", *args],
            cwd=project, env=environment(), capture_output=True, text=True, timeout=NPM_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise HmbaError(
            f"npm run {' '.join(args)} in {project} took over {NPM_TIMEOUT:.0f} s; stopped"
        ) from None
    if done.returncode != 0:
        log = project / f"npm-{args[0]}.log"
        log.write_text(done.stdout + done.stderr)
        said = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
        raise HmbaError(
            f"npm run {' '.join(args)} failed: {said[-1] if said else 'no output'} (all of it: {log})"
        )


def build_site(
    store: Path, genes: list[str] | None = None, project: Path = PROJECT, quiet: bool = False
) -> Path:
    """Write the source, extract it (`evidence sources`), build the static site; returns its folder."""
    if not (project / "node_modules" / ".bin" / "evidence").exists():
        raise HmbaError(f"{project}: Evidence is not installed; run `make bi-evidence` (npm install there)")
    why = extensions_reachable()
    if why is not None:
        raise HmbaError(
            f"Evidence needs DuckDB-WASM's parquet extension from {EXTENSIONS.split('/v1')[0]}, which this "
            f"machine cannot reach ({why}); build the site where it can (readers' browsers fetch it too)"
        )
    t0 = time.monotonic()
    write_source(store, genes, project)
    npm("sources", project=project)
    t1 = time.monotonic()
    npm("build", project=project)
    if not quiet:
        print(
            f"Evidence: extracted in {t1 - t0:.1f} s, built in {time.monotonic() - t1:.1f} s: "
            f"{project / 'build'}",
            file=sys.stderr,
        )
    return project / "build"


class Site:
    """The built site served on 127.0.0.1 (a static folder; a thread of this process)."""

    def __init__(self, folder: Path, port: int = 0):
        handler = functools.partial(_Quiet, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Site:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".wasm": "application/wasm", ".parquet": "application/octet-stream"}  # fmt: skip

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def send_head(self):  # a page written as dotplot.html is asked for as /dotplot
        path = self.translate_path(self.path)
        if not os.path.exists(path) and os.path.exists(path + ".html"):
            self.path = self.path.split("?")[0] + ".html"
        return super().send_head()


def read_table(page, timeout: float = 60_000) -> list[list[str]]:
    """The rows of the page's data table as a reader sees them (cell texts), once it has rows."""
    page.wait_for_selector("table tbody tr", timeout=timeout)
    return page.evaluate(
        """() => [...document.querySelectorAll('table')].at(-1).querySelectorAll('tbody tr')
            .values().map(tr => [...tr.querySelectorAll('td')].map(td => td.textContent.trim())).toArray()"""
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m build_db.bi.evidence", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="write the source, extract, build, and serve until Ctrl-C")
    up.add_argument("store", type=Path)
    up.add_argument("--genes", help=f"the gene panel, comma-separated (default: {','.join(PANEL)})")
    up.add_argument("--port", type=int, default=3000)
    up.add_argument("--shots", type=Path, help="save each page as evidence-<page>.png in this folder, stop")
    args = ap.parse_args(argv)
    try:
        genes = [g.strip() for g in args.genes.split(",") if g.strip()] if args.genes else None
        site = build_site(args.store, genes)
        with Site(site, args.port) as served:
            if args.shots is not None:
                from ..tools.browser import launch

                with launch() as browser:
                    page = browser.new_page(viewport={"width": 1300, "height": 1000})
                    for name in PAGES:
                        page.goto(f"{served.url}/{name}")
                        read_table(page)
                        page.wait_for_timeout(1500)  # the charts' entry animation
                        page.screenshot(path=str(args.shots / f"evidence-{name}.png"))
                        print(args.shots / f"evidence-{name}.png")
                return 0
            print(
                f"Evidence on {served.url}/ ({', '.join(PAGES)}) over {args.store}. Ctrl-C stops it.",
                flush=True,
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("stopping", file=sys.stderr)
    except HmbaError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
