"""The explorer's screenshots for docs/explorer.md and the README (`make docs`, on the demo store): each view
opened from a URL in headless Chromium, once drawn, to docs/img/explorer-<name>.png."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from .browser import launch

NOTEBOOK = "SLC17A6,SLC32A1,PTPRC,PLP1,AQP4,DRD1,DRD2"
MSN = "DRD1,DRD2,PENK,TAC1,PPP1R1B,CHAT,SST"
# name: (the page's state, what says it is drawn, the page height shown)
VIEWS = {
    "dotplot": (
        {"genes": NOTEBOOK, "level": "Group", "species": "all"},
        "[data-testid=dotplot][data-drawn-ms]",
        1350,
    ),
    "drilldown": (
        {"genes": MSN, "level": "Group", "species": "all", "within": "STR D1 MSN"},
        "[data-testid=dotplot][data-drawn-ms]",
        760,
    ),
    "regions": (
        {
            "view": "regions",
            "genes": MSN,
            "gene": "DRD1",
            "species": "Human",
            "tlevel": "Subclass",
            "term": "STR D1 MSN",
        },
        "[data-testid=regions-table] table",
        900,
    ),
    "markers": (
        {
            "view": "markers",
            "genes": MSN,
            "species": "Human",
            "tlevel": "Group",
            "term": "STRd D1 Matrix MSN",
            "n": "15",
        },
        "[data-testid=markers-table] table",
        820,
    ),
    "umap": (
        {"view": "umap", "genes": MSN, "species": "Human", "color": "Group", "gene": "DRD1"},
        "[data-testid=umap][data-drawn-ms]",
        1080,
    ),
    "umap-gene": (
        {"view": "umap", "genes": MSN, "species": "Human", "color": "gene", "gene": "DRD1"},
        "[data-testid=umap][data-drawn-ms]",
        1080,
    ),
    "sql": (
        {
            "view": "sql",
            "sql": "select species, subclass_name, count(*) as cells\nfrom cells\n"
            "where class_name = 'CN LGE GABA'\ngroup by all\norder by species, cells desc",
        },
        "[data-testid=sql-table] table",
        900,
    ),
}


def take(base_url: str, out: Path, width: int = 1300) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with launch() as browser:
        for name, (state, ready, height) in VIEWS.items():
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            page.goto(f"{base_url}/?{urllib.parse.urlencode(state)}")
            page.wait_for_selector(ready, state="attached", timeout=60_000)
            page.wait_for_timeout(300)  # fonts and layout settle
            path = out / f"explorer-{name}.png"
            page.screenshot(path=str(path))
            written.append(path)
            context.close()
    return written
