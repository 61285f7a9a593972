"""`make demo`: the official notebook's question answered from a freshly built store, and by the old way.

Mean log2(CPM+1) of SLC17A6, SLC32A1, PTPRC, PLP1, AQP4, DRD1, DRD2 per Group, for each species, rows in
taxonomy order (docs/release.md, 'What people ask of it', workload 3), printed and drawn as a heatmap. The
store answers with one query per species that reads only the seven genes' buckets and row groups; the baseline
scans the whole log2 h5ad as the notebooks do. Both answers are timed and must agree.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..access.analyses import mean_expression
from ..access.connect import connect
from ..defaults import NOTEBOOK_GENES
from ..errors import HmbaError
from .scan import mean_log2_by_term


def heatmap(tables: dict[str, pd.DataFrame], genes: list[str], order: list[str], out: Path) -> Path:
    """One panel per species on shared rows (Groups in taxonomy order; blank where a species has no cells
    of a Group), genes as columns, one color scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [g for g in order if any(g in t.index for t in tables.values())]
    fig, axes = plt.subplots(
        1, len(tables), figsize=(2.2 * len(tables) + 3.5, 0.16 * len(rows) + 1.6), squeeze=False, sharey=True
    )
    vmax = max(float(t[genes].to_numpy().max()) for t in tables.values())
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#dddddd")
    for i, (ax, (species, t)) in enumerate(zip(axes[0], tables.items(), strict=True)):
        values = t.reindex(rows)[genes].to_numpy(dtype=float)
        im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(species)
        ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=7)
        if i == 0:
            ax.set_yticks(range(len(rows)), rows, fontsize=5)
    fig.colorbar(im, ax=axes[0].tolist(), label="mean log2(CPM+1)", shrink=0.6)
    fig.suptitle("Marker genes per Group (grey: no cells of the Group in that species)")
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m build_db.demo RELEASE STORE [HEATMAP.png]", file=sys.stderr)
        return 2
    release, store = Path(argv[0]), Path(argv[1])
    png = Path(argv[2]) if len(argv) == 3 else store.parent / "demo-heatmap.png"
    con = connect(store)
    species = [r[0] for r in con.execute("select distinct species from cells order by species").fetchall()]
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 100)
    tables = {}
    for s in species:
        mean_expression(con, s, NOTEBOOK_GENES, "Group")  # warm the caches once
        t0 = time.perf_counter()
        table = mean_expression(con, s, NOTEBOOK_GENES, "Group")
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        scanned = mean_log2_by_term(release, s, NOTEBOOK_GENES, "Group")
        scan_took = time.perf_counter() - t0
        diff = np.abs(
            table.loc[scanned.index, NOTEBOOK_GENES].to_numpy() - scanned[NOTEBOOK_GENES].to_numpy()
        ).max()
        print(
            f"\n{s}: mean log2(CPM+1) per Group, {len(table)} groups: store query {took * 1000:.0f} ms, "
            f"h5ad scan {scan_took * 1000:.0f} ms; answers agree to {diff:.1e}"
        )
        print(table[[*NOTEBOOK_GENES, "n_cells"]].round(2).to_string())
        if not diff < 1e-4:
            raise HmbaError(f"{s}: the store and the h5ad scan disagree by {diff}")
        tables[s] = table
    order = [
        r[0]
        for r in con.execute(
            "select term_name from taxonomy_terms where level = 'Group' order by term_order"
        ).fetchall()
    ]
    print(f"\nheatmap written to {heatmap(tables, NOTEBOOK_GENES, order, png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
