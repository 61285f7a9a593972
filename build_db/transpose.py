"""Stream a cell-major CSR h5ad into gene-bucketed, (gene, cell)-sorted Parquet, in bounded memory.

Two passes (DESIGN.md decision 4):

1. scatter: read CSR row blocks (this is where gzip decompression, the cost floor, happens), validate
   them, take per-cell totals, and append each block's non-zeros to one staging file per gene bucket.
   Row ranges are independent, so the two cores each scatter half the rows into their own files.
2. sort: per bucket, read its staging files in row order and counting-sort by gene. The staging rows of a
   bucket are already in cell order, so a stable sort by gene alone gives (gene, cell) order, in O(n).
   Then write one Parquet file. Buckets are independent too: one per core at a time.

Memory is bounded by one scatter block and one bucket whatever the matrix size; a bucket's size is
chosen from the matrix's non-zero count so that it stays near BUCKET_TARGET_NNZ.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ReleaseError
from .h5ad import CsrReader

# ~80M non-zeros per bucket gives ~64 buckets for Human at full scale (5 billion non-zeros): the layout
# DESIGN.md measured at 3-5 ms per gene, and a sort that needs ~1 GB per worker.
BUCKET_TARGET_NNZ = 80_000_000
# 4M non-zeros per scatter block: ~150 MB of scratch per worker, large enough that h5py's per-call
# overhead is noise (each block spans ~200 gzip chunks of 20,000 values).
SCATTER_BLOCK_NNZ = 4_000_000
# Row groups of 122,880 rows (DuckDB's vector size x 60): one gene's rows sit in one or two groups.
ROW_GROUP = 122_880
SORT_BLOCK = 8_000_000  # staging rows per step of the counting sort

STAGING = np.dtype([("gene", "<u2"), ("cell", "<i4"), ("count", "<i4")])
MAX_BUCKET_GENES = 65_536  # gene offsets within a bucket are uint16 in staging


@dataclass(frozen=True)
class BucketPlan:
    n_genes: int
    genes_per_bucket: int

    @property
    def n_buckets(self) -> int:
        return max(1, math.ceil(self.n_genes / self.genes_per_bucket))

    def gene_range(self, k: int) -> tuple[int, int]:
        return k * self.genes_per_bucket, min(self.n_genes, (k + 1) * self.genes_per_bucket)

    def bucket_of(self, genes: np.ndarray) -> np.ndarray:
        return genes // self.genes_per_bucket


def plan_buckets(n_genes: int, nnz: int, target_nnz: int = BUCKET_TARGET_NNZ) -> BucketPlan:
    """Contiguous gene ranges of equal width, as many as the non-zeros need at ~target_nnz each."""
    n = max(1, min(n_genes, math.ceil(nnz / max(1, target_nnz))))
    per = max(1, math.ceil(n_genes / n))
    n_min = math.ceil(n_genes / MAX_BUCKET_GENES)
    if n < n_min:
        per = math.ceil(n_genes / n_min)
    return BucketPlan(n_genes, per)


@dataclass
class BucketStats:
    """What the source said about one bucket, reconciled against the store by verify."""

    nnz: int = 0
    sum: int = 0
    cell_sum: int = 0  # sum of cell_index over non-zeros: catches a value moved to another cell
    gene_weighted: int = 0  # sum of gene_index * count: catches a value moved to another gene

    def add(self, other: BucketStats) -> None:
        self.nnz += other.nnz
        self.sum += other.sum
        self.cell_sum += other.cell_sum
        self.gene_weighted += other.gene_weighted


def row_split(indptr: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Split rows into `parts` contiguous ranges of about equal non-zeros."""
    n = len(indptr) - 1
    if n == 0:
        return [(0, 0)]
    targets = np.linspace(0, indptr[-1], parts + 1)[1:-1]
    cuts = [0, *np.searchsorted(indptr, targets).tolist(), n]
    cuts = sorted(set(min(max(c, 0), n) for c in cuts))
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a] or [(0, n)]


def _blocks(indptr: np.ndarray, r0: int, r1: int, block_nnz: int):
    """Row ranges within [r0, r1) of at most ~block_nnz non-zeros (at least one row each)."""
    start = r0
    while start < r1:
        stop = int(np.searchsorted(indptr, indptr[start] + block_nnz, side="right")) - 1
        stop = min(max(stop, start + 1), r1)
        yield start, stop
        start = stop


def _bad(path: Path, row: int, label_of, what: str, fix: str) -> ReleaseError:
    label = ""
    if label_of is not None:
        try:
            label = f" (cell {label_of(row)})"
        except Exception:  # the label is a courtesy; the row number is the fact
            pass
    return ReleaseError(f"{path}: row {row}{label}: {what}; {fix}", path=path, key=row)


def validate_block(
    path: Path, r0: int, ip: np.ndarray, data: np.ndarray, idx: np.ndarray, n_genes: int, label_of=None
) -> np.ndarray:
    """Check one CSR block; return its values as int64. `ip` is the block's indptr rebased to 0."""
    fix_counts = "raw counts must be non-negative integers: is this the -log2 file, or a damaged download?"
    if len(data) and not np.issubdtype(data.dtype, np.integer):
        frac = np.flatnonzero(~np.isfinite(data) | (data != np.floor(data)))
        if len(frac):
            row = r0 + int(np.searchsorted(ip, frac[0], side="right")) - 1
            raise _bad(path, row, label_of, f"non-integral count {data[frac[0]]!r}", fix_counts)
    values = data.astype(np.int64)
    neg = np.flatnonzero(values < 0)
    if len(neg):
        row = r0 + int(np.searchsorted(ip, neg[0], side="right")) - 1
        raise _bad(path, row, label_of, f"negative count {data[neg[0]]!r}", fix_counts)
    if len(idx):
        out = np.flatnonzero((idx < 0) | (idx >= n_genes))
        if len(out):
            row = r0 + int(np.searchsorted(ip, out[0], side="right")) - 1
            raise _bad(
                path,
                row,
                label_of,
                f"gene index {idx[out[0]]} outside 0..{n_genes - 1}",
                "the matrix is damaged: download it again",
            )
        # Within a row, column indices must strictly increase; a step <= 0 at a row start is fine.
        step = np.diff(idx.astype(np.int64))
        first_of_row = np.zeros(len(idx), dtype=bool)
        first_of_row[ip[:-1][ip[:-1] < len(idx)]] = True
        badpos = np.flatnonzero((step <= 0) & ~first_of_row[1:]) + 1
        if len(badpos):
            row = r0 + int(np.searchsorted(ip, badpos[0], side="right")) - 1
            kind = "duplicate" if idx[badpos[0]] == idx[badpos[0] - 1] else "unsorted"
            raise _bad(
                path,
                row,
                label_of,
                f"{kind} gene index {idx[badpos[0]]} within the row",
                "CSR rows must have sorted, unique column indices: re-write the file with anndata",
            )
    return values


def scatter(path: Path, plan: BucketPlan, r0: int, r1: int, staging: Path, tag: str, progress=None) -> dict:
    """Pass 1 for rows [r0, r1): staging files `<staging>/b<K>.<tag>.bin`, per-cell totals, bucket stats."""
    staging.mkdir(parents=True, exist_ok=True)
    files = {}
    stats = [BucketStats() for _ in range(plan.n_buckets)]
    totals = np.zeros(r1 - r0, dtype=np.int64)
    detected = np.zeros(r1 - r0, dtype=np.int32)
    try:
        with CsrReader(path) as m:
            if m.shape[1] != plan.n_genes:
                raise ReleaseError(f"{path}: {m.shape[1]} genes, expected {plan.n_genes}", path=path)
            indptr = m.indptr()
            if (np.diff(indptr) < 0).any():
                row = int(np.flatnonzero(np.diff(indptr) < 0)[0])
                raise _bad(path, row, None, "X/indptr decreases", "the matrix is damaged: download it again")
            if indptr[-1] != m.nnz:
                raise ReleaseError(
                    f"{path}: X/indptr ends at {indptr[-1]} but X/data holds {m.nnz} values; "
                    "the file is truncated: download it again",
                    path=path,
                )
            for a, b in _blocks(indptr, r0, r1, SCATTER_BLOCK_NNZ):
                lo, hi = int(indptr[a]), int(indptr[b])
                try:
                    data = m.data[lo:hi]
                    idx = m.indices[lo:hi]
                except (OSError, RuntimeError) as e:
                    raise ReleaseError(
                        f"{path}: rows {a}..{b - 1} cannot be read ({e}); the file is damaged "
                        "or truncated: download it again",
                        path=path,
                        key=a,
                    ) from e
                ip = indptr[a : b + 1] - lo
                values = validate_block(path, a, ip, data, idx, plan.n_genes, m.obs_label)
                n_rows = b - a
                per_row = np.diff(ip)
                local = np.repeat(np.arange(n_rows, dtype=np.int32), per_row)
                totals[a - r0 : b - r0] = np.bincount(local, weights=values, minlength=n_rows).astype(
                    np.int64
                )
                detected[a - r0 : b - r0] = per_row
                genes = idx.astype(np.int64)
                bucket = plan.bucket_of(genes)
                order = np.argsort(bucket.astype(np.uint16), kind="stable")  # radix sort, keeps cell order
                bounds = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=plan.n_buckets))])
                cells = local.astype(np.int64) + a
                for k in np.flatnonzero(np.diff(bounds)):
                    sel = order[bounds[k] : bounds[k + 1]]
                    rec = np.empty(len(sel), dtype=STAGING)
                    g0 = plan.gene_range(int(k))[0]
                    rec["gene"] = genes[sel] - g0
                    rec["cell"] = cells[sel]
                    rec["count"] = values[sel]
                    if k not in files:
                        files[k] = open(staging / f"b{k:04d}.{tag}.bin", "wb")
                    rec.tofile(files[k])
                    s = stats[k]
                    s.nnz += len(sel)
                    s.sum += int(values[sel].sum())
                    s.cell_sum += int(cells[sel].sum())
                    s.gene_weighted += int((genes[sel] * values[sel]).sum())
                if progress is not None:
                    progress(hi - lo)
    finally:
        for f in files.values():
            f.close()
    if totals.size and totals.max() >= 2**31:
        raise ReleaseError(
            f"{path}: a cell has more than 2^31 UMIs; this is not a raw count matrix", path=path
        )
    np.save(staging / f"totals.{tag}.npy", totals.astype(np.int64))
    np.save(staging / f"detected.{tag}.npy", detected)
    return {"stats": [asdict(s) for s in stats]}


def sort_bucket(plan: BucketPlan, k: int, staging: Path, tags: list[str], out: Path) -> int:
    """Pass 2 for bucket k: counting-sort its staging rows by gene and write `out` (atomically)."""
    g0, g1 = plan.gene_range(k)
    width = g1 - g0
    parts = [staging / f"b{k:04d}.{t}.bin" for t in tags]
    parts = [p for p in parts if p.exists()]
    n = sum(p.stat().st_size for p in parts) // STAGING.itemsize
    counts = np.zeros(width, dtype=np.int64)
    for p in parts:
        for block in _read_blocks(p):
            counts += np.bincount(block["gene"], minlength=width)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cells = np.empty(n, dtype=np.int32)
    values = np.empty(n, dtype=np.int32)
    fill = starts.copy()
    for p in parts:  # in row order: earlier tags hold earlier cells
        for block in _read_blocks(p):
            g = block["gene"]
            order = np.argsort(g, kind="stable")  # uint16: radix sort
            gs = g[order]
            per_gene = np.bincount(g, minlength=width)
            block_start = np.cumsum(per_gene) - per_gene
            dest = fill[gs] + (np.arange(len(gs)) - block_start[gs])
            cells[dest] = block["cell"][order]
            values[dest] = block["count"][order]
            fill += per_gene
    genes = np.repeat(np.arange(g0, g1, dtype=np.int32), counts)
    table = pa.table({"gene_index": genes, "cell_index": cells, "raw_count": values})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    write_parquet(table, tmp)
    os.replace(tmp, out)
    for p in parts:
        p.unlink()
    return n


def write_parquet(table: pa.Table, path: Path) -> None:
    # zstd + Parquet V2 pages; delta encoding for the two sorted/near-sorted index columns (cell_index
    # deltas are small within a gene: 30 MB instead of 55 MB per 20M rows in DESIGN.md's measurement),
    # dictionary + RLE for counts, which take few distinct values.
    pq.write_table(
        table,
        path,
        row_group_size=ROW_GROUP,
        compression="zstd",
        data_page_version="2.0",
        use_dictionary=["raw_count"],
        column_encoding={"gene_index": "DELTA_BINARY_PACKED", "cell_index": "DELTA_BINARY_PACKED"},
        write_statistics=True,
    )


def _read_blocks(path: Path):
    n = path.stat().st_size // STAGING.itemsize
    with open(path, "rb") as f:
        for start in range(0, n, SORT_BLOCK):
            yield np.fromfile(f, dtype=STAGING, count=min(SORT_BLOCK, n - start))


def save_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
