"""log2(CPM+1), the release's normalisation of raw counts (its log2 h5ad holds log2(raw / rowsum x 1e6 + 1)
as float32): declared once, in numpy and as SQL, for everything that derives it from the stored counts."""

from __future__ import annotations

import numpy as np

PER_MILLION = 1e6


def log2_cpm(raw, totals) -> np.ndarray:
    """log2(raw / totals x 1e6 + 1) in float64, element-wise (totals: each count's cell's total counts)."""
    return np.log2(
        np.asarray(raw, dtype=np.float64) / np.asarray(totals, dtype=np.float64) * PER_MILLION + 1.0
    )


def log2_cpm_sql(raw: str, totals: str) -> str:
    """The same as an SQL expression over two column expressions (DuckDB and Spark agree on it)."""
    return f"log2({raw} / {totals} * 1e6 + 1)"
