"""`make demo`: the official notebook's question answered from a freshly generated release.

Mean log2(CPM+1) of SLC17A6, SLC32A1, PTPRC, PLP1, AQP4, DRD1, DRD2 per Group, for each species, rows in
taxonomy order (DATASET.md section 5, workload 3).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from . import release as R
from .manifest import read_manifest
from .scan import mean_log2_by_term

NOTEBOOK_GENES = ["SLC17A6", "SLC32A1", "PTPRC", "PLP1", "AQP4", "DRD1", "DRD2"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m build_db.demo RELEASE", file=sys.stderr)
        return 2
    release = Path(argv[0])
    _, entries = read_manifest(release)
    species = [s for s in R.SPECIES if any(e.species == s and e.part == "log2" for e in entries)]
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 100)
    for s in species:
        t0 = time.perf_counter()
        table = mean_log2_by_term(release, s, NOTEBOOK_GENES, "Group")
        took = time.perf_counter() - t0
        print(
            f"\n{s}: mean log2(CPM+1) per Group ({len(table)} groups with cells; h5ad scan took {took:.2f} s)"
        )
        print(table.round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
