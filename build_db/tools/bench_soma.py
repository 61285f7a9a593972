"""TileDB-SOMA side of `make bench`, run in its own virtualenv (tiledbsoma pins its own dependencies).

Standalone on purpose: it imports only tiledbsoma, anndata, numpy, pandas and pyarrow, never build_db.

    python bench_soma.py ingest RAW.h5ad URI            -> {"seconds": s, "bytes": n, "peak_rss": b}
    python bench_soma.py query URI CELLS.parquet GENE N -> {"seconds": [...], "answer": {group: [mean, frac]}}
    python bench_soma.py slice URI SLICE.parquet N      -> {"seconds": [...], "shape": .., "nnz": n, ..}

CELLS.parquet holds cell_index, group_name and total_counts of the assigned cells; the query reads one
gene's column of raw counts for all cells (how CELLxGENE Census users fetch a gene), derives log2 CPM
from the totals and averages per Group, like the store's query. SLICE.parquet holds the cell_index of a
selection (one Group); `slice` is `get_anndata` with an obs filter, all genes (the Census user's cell
slice), against the store's to_anndata of the same cells.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


def ingest(h5ad: str, uri: str) -> dict:
    import tiledbsoma.io

    t0 = time.perf_counter()
    tiledbsoma.io.from_h5ad(uri, h5ad, measurement_name="RNA", X_layer_name="data")
    took = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())
    return {
        "seconds": took,
        "bytes": size,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def one_gene(exp, cells: pd.DataFrame, gene: int) -> dict:
    import tiledbsoma

    with exp.axis_query("RNA", var_query=tiledbsoma.AxisQuery(coords=(gene,))) as q:
        t = q.X("data").tables().concat()
    idx = t.column("soma_dim_0").to_numpy()
    raw = t.column("soma_data").to_numpy().astype(np.float64)
    values = pd.Series(raw, index=idx).reindex(cells.cell_index.to_numpy())
    present = values.notna().to_numpy()
    # build_db/release/normalise.py's formula, written out: this script runs in TileDB-SOMA's own
    # environment, which does not have this package.
    log2 = np.where(
        present, np.log2(values.fillna(0).to_numpy() / cells.total_counts.to_numpy() * 1e6 + 1), 0.0
    )
    frame = pd.DataFrame({"group": cells.group_name.to_numpy(), "v": log2, "e": present})
    agg = frame.groupby("group").agg(mean=("v", "mean"), frac=("e", "mean"))
    return {g: [float(r["mean"]), float(r["frac"])] for g, r in agg.iterrows()}


def query(uri: str, cells_path: str, gene: int, repeat: int) -> dict:
    import tiledbsoma

    cells = pd.read_parquet(cells_path)
    times = []
    with tiledbsoma.Experiment.open(uri) as exp:
        answer = one_gene(exp, cells, gene)  # cold run warms caches, like the store's first run
        for _ in range(repeat):
            t0 = time.perf_counter()
            answer = one_gene(exp, cells, gene)
            times.append(time.perf_counter() - t0)
    return {"seconds": times, "answer": answer}


def cell_slice(uri: str, cells_path: str, repeat: int) -> dict:
    import tiledbsoma

    coords = pd.read_parquet(cells_path).cell_index.to_numpy().astype(np.int64)
    times, adata = [], None
    with tiledbsoma.Experiment.open(uri) as exp:
        for _ in range(repeat):
            t0 = time.perf_counter()
            with exp.axis_query("RNA", obs_query=tiledbsoma.AxisQuery(coords=(coords,))) as q:
                adata = q.to_anndata(X_name="data")
            times.append(time.perf_counter() - t0)
    assert adata is not None  # the loop ran at least once
    return {
        "seconds": times,
        "shape": list(adata.shape),
        "nnz": int(adata.X.nnz),
        "sum": float(adata.X.sum(dtype=np.float64)),
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["ingest"] and len(argv) == 3:
        print(json.dumps(ingest(argv[1], argv[2])))
    elif argv[:1] == ["query"] and len(argv) == 5:
        print(json.dumps(query(argv[1], argv[2], int(argv[3]), int(argv[4]))))
    elif argv[:1] == ["slice"] and len(argv) == 4:
        print(json.dumps(cell_slice(argv[1], argv[2], int(argv[3]))))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
