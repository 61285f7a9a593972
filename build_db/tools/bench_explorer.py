"""`make bench` (and `make bench-full`): the explorer page timed in headless Chromium on `hmba-db serve`.

    python -m build_db.tools.bench_explorer STORE [--json OUT]

Each time is the page's own clock (`performance.now()` when the plot's drawn hook is set, which the page
records as `data-drawn-ms`): the first dot plot of 10 genes x Group x every species after opening a shared
URL in a fresh browser context (nothing cached: the page's modules and every answer fetched, the median
of 3); a gene added -> the dot plot redrawn (the median of 5, new genes each time); the UMAP of 200,000
cells of the largest species (or all its cells when fewer) with a gene, opened from a URL (the median of 3);
and each page opened once more in the same browser (its HTTP and code caches warm, as for a returning
visitor).
Chromium here draws WebGL in software (SwiftShader: no GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import urllib.parse
from pathlib import Path
from typing import Any

from .bench_serve import _genes
from .browser import launch
from .served import Server

WAIT_MS = 60_000


def _open(browser, url: str, selector: str, attr: str = "drawn-ms") -> tuple[float, Any]:
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    page.goto(url)
    element = page.wait_for_selector(f"{selector}[data-{attr}]", state="attached", timeout=WAIT_MS)
    return float(element.get_attribute(f"data-{attr}")), page


def measure(store: Path) -> dict:
    import build_db

    info = build_db.store_info(store)
    species = [s["species"] for s in info["species"]]
    big = max(info["species"], key=lambda s: s["cells"])["species"]
    pool = _genes(store, 40)
    first = pool[:10]
    out: dict = {"store": str(store), "species": species, "build_id": info["build_id"]}
    server = Server(store, "--log-level", "warning")
    try:
        with launch() as browser:
            q = urllib.parse.urlencode({"genes": ",".join(first), "level": "Group", "species": "all"})
            opened = []
            for _ in range(3):
                ms, page = _open(browser, f"{server.url}/?{q}", "[data-testid=dotplot]")
                opened.append(ms)
                page.context.close()
            out["first_dotplot_ms"] = statistics.median(opened)
            ms, page = _open(browser, f"{server.url}/?{q}", "[data-testid=dotplot]")
            page.goto(f"{server.url}/?{q}&again=1")  # a second visit: the browser's cache and code cache warm
            page.wait_for_selector("[data-testid=dotplot][data-drawn-ms]", state="attached", timeout=WAIT_MS)
            out["dotplot_second_visit_ms"] = float(
                page.get_attribute("[data-testid=dotplot]", "data-drawn-ms")
            )
            added = []
            for k, gene in enumerate(pool[10:15], start=11):
                t0 = page.evaluate(
                    f"() => {{ const t = performance.now(); hmbaExplorer.addGene({gene!r}); return t; }}"
                )
                page.wait_for_function(
                    f"document.querySelector('[data-testid=dotplot]').dataset.nGenes === '{k}'",
                    timeout=WAIT_MS,
                )
                added.append(float(page.get_attribute("[data-testid=dotplot]", "data-drawn-ms")) - t0)
            out["gene_added_ms"] = statistics.median(added)
            page.context.close()
            q = urllib.parse.urlencode(
                {"view": "umap", "species": big, "genes": first[0], "gene": first[0], "points": 200000}
            )
            drawn, points = [], 0
            for _ in range(3):
                ms, page = _open(browser, f"{server.url}/?{q}", "[data-testid=umap]")
                drawn.append(ms)
                points = int(page.get_attribute("[data-testid=umap]", "data-n-points"))
                page.goto(f"{server.url}/?{q}&again=1")
                page.wait_for_selector("[data-testid=umap][data-drawn-ms]", state="attached", timeout=WAIT_MS)
                again = float(page.get_attribute("[data-testid=umap]", "data-drawn-ms"))
                page.context.close()
            out["umap"] = {
                "species": big,
                "points": points,
                "ms": statistics.median(drawn),
                "second_visit_ms": again,
            }
    finally:
        server.stop()
    return out


def table(m: dict) -> str:
    u = m["umap"]
    rows = [
        (
            "first dot plot, 10 genes x Group x "
            + ", ".join(m["species"])
            + ", a shared URL, nothing cached",
            f"{m['first_dotplot_ms']:.0f} ms",
            "<= 1,500 ms",
        ),
        (
            "the same, a second visit (the browser's caches warm)",
            f"{m['dotplot_second_visit_ms']:.0f} ms",
            "",
        ),
        ("a gene added -> the dot plot redrawn", f"{m['gene_added_ms']:.0f} ms", "<= 300 ms"),
        (
            f"UMAP of {u['points']:,} {u['species']} cells with a gene, WebGL",
            f"{u['ms']:.0f} ms",
            "<= 2,000 ms",
        ),
        ("the same, a second visit", f"{u['second_visit_ms']:.0f} ms", ""),
    ]
    lines = ["| in headless Chromium | measured (median) | target |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--json", type=Path, default=None, help="Also write the numbers here.")
    a = ap.parse_args(argv)
    m = measure(a.store)
    if a.json:
        a.json.write_text(json.dumps(m, indent=1))
    print(table(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
