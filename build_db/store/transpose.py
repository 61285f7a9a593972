"""Stream a cell-major CSR h5ad into gene-bucketed, (gene, cell)-sorted Parquet, in bounded memory.

Two passes (docs/architecture.md, decision 4):

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

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

# The bucket sizes a user may change (--bucket-nnz, --bucket-genes), as build_db/defaults.py explains them.
# At most MAX_BUCKET_GENES genes per bucket whatever the non-zero count: the counting sort writes one
# stream per gene, and a few hundred streams stay cache-friendly where 36,601 do not (measured: 2.6x
# faster sort of 47M non-zeros with 36 buckets than with 1).
from ..defaults import BUCKET_TARGET_NNZ, MAX_BUCKET_GENES
from ..errors import ReleaseError
from ..release.h5ad import CsrReader
from .schema import EXPRESSION_BY_CELL_FILE, EXPRESSION_FILE

# 4M non-zeros per scatter block: ~150 MB of scratch per worker, large enough that h5py's per-call
# overhead is noise (each block spans ~200 gzip chunks of 20,000 values).
SCATTER_BLOCK_NNZ = 4_000_000
# Row groups of 122,880 rows (DuckDB's vector size x 60): one gene's rows sit in one or two groups.
ROW_GROUP = 122_880
SORT_BLOCK = 4_000_000  # staging rows per step of the counting sort (~100 MB of scratch)


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


def plan_buckets(
    n_genes: int, nnz: int, target_nnz: int = BUCKET_TARGET_NNZ, max_genes: int = MAX_BUCKET_GENES
) -> BucketPlan:
    """Contiguous gene ranges of equal width, as many as the non-zeros need at ~target_nnz each."""
    n = max(1, min(n_genes, math.ceil(nnz / max(1, target_nnz))))
    n = max(n, math.ceil(n_genes / max(1, max_genes)))
    return BucketPlan(n_genes, max(1, math.ceil(n_genes / n)))


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
            raise _bad(path, row, label_of, f"non-integral count {data[frac[0]].item()}", fix_counts)
    values = data.astype(np.int64)
    neg = np.flatnonzero((values < 0) | (values >= 2**31))
    if len(neg):
        row = r0 + int(np.searchsorted(ip, neg[0], side="right")) - 1
        what = "negative" if values[neg[0]] < 0 else "implausibly large (>= 2^31)"
        raise _bad(path, row, label_of, f"{what} count {data[neg[0]].item()}", fix_counts)
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
        step = np.diff(idx)  # column indices < 2^31 - 1: no overflow in their own dtype
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


STAGED = (("gene", np.uint16), ("cell", np.int32), ("count", np.int32))  # one file per column
# Staged runs are written as LZ4 frames, one per block and column, cells as deltas (ascending within a
# gene): ~2.7 bytes per non-zero on disk instead of 10, at ~650 MB/s per core to compress (measured; zstd
# packs to ~1.5 bytes but at ~200 MB/s it would add more to the build than the disk it saves is worth).
STAGING_CODEC = "lz4"


# A frame's header: its packed length (8 bytes) and the itemsize of its values (1 byte), so counts are
# staged in 16 bits when a block's fit (all but a few blocks of a real matrix): 0.9 bytes instead of 1.3.
_DTYPES = {1: np.uint8, 2: np.uint16, 4: np.int32}


def _write_frame(f, values: np.ndarray) -> None:
    values = np.ascontiguousarray(values)
    packed = pa.compress(values, codec=STAGING_CODEC, asbytes=True)
    f.write(len(packed).to_bytes(8, "little") + values.dtype.itemsize.to_bytes(1, "little"))
    f.write(packed)


def _narrow(counts: np.ndarray) -> np.ndarray:
    """Counts as uint16 when they all fit (they are >= 1), else as they are."""
    return counts.astype(np.uint16) if len(counts) and int(counts.max()) < 65_536 else counts


def _read_frame(h, n: int) -> np.ndarray:
    size = int.from_bytes(h.read(8), "little")
    itemsize = h.read(1)[0]
    raw = pa.decompress(h.read(size), decompressed_size=int(n) * itemsize, codec=STAGING_CODEC, asbytes=True)
    return np.frombuffer(raw, dtype=_DTYPES[itemsize])


def _read_frames(h, dtype, sizes) -> np.ndarray:
    """The frames of consecutive blocks of `sizes` values each, as one array of `dtype`."""
    parts = [_read_frame(h, n) for n in sizes]
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype=dtype)


def _undo_steps(steps: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Values staged as steps from the previous value, the sum restarting at each segment (`lengths`
    values each; empty segments allowed), as int64."""
    sums = np.cumsum(steps, dtype=np.int64)
    at = np.cumsum(lengths) - lengths
    base = np.zeros(len(lengths), dtype=np.int64)
    filled = lengths > 0
    base[filled] = sums[at[filled]] - steps[at[filled]]
    return sums - np.repeat(base, lengths)


def _staged(staging: Path, k: int, tag: str, column: str) -> Path:
    return staging / f"b{k:04d}.{tag}.{column}"


@dataclass(frozen=True)
class CellPlan:
    """The cell-major projection's buckets: contiguous ranges of taxonomy order (cells.cell_rank) of about
    `target_nnz` non-zeros each. `rank_of[cell_index]` is the cell's rank, `bounds[k]` the first rank of
    bucket k (bounds[-1] = the number of cells), `bucket_of[cell_index]` its bucket."""

    rank_of: np.ndarray
    bounds: np.ndarray
    bucket_of: np.ndarray

    @property
    def n_buckets(self) -> int:
        return len(self.bounds) - 1

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, rank_of=self.rank_of, bounds=self.bounds, bucket_of=self.bucket_of)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> CellPlan:
        with np.load(path) as z:
            return cls(z["rank_of"], z["bounds"], z["bucket_of"])


def plan_cells(order: np.ndarray, row_nnz: np.ndarray, target_nnz: int = BUCKET_TARGET_NNZ) -> CellPlan:
    """Cut the taxonomy order (`order[rank] = cell_index`) into ranges of about `target_nnz` non-zeros."""
    n = len(order)
    rank_of = np.empty(n, dtype=np.int32)
    rank_of[order] = np.arange(n, dtype=np.int32)
    ends = np.cumsum(row_nnz[order], dtype=np.int64)
    total = int(ends[-1]) if n else 0
    pieces = max(1, math.ceil(total / max(1, target_nnz)))
    cuts = np.searchsorted(ends, np.arange(1, pieces) * (total / pieces), side="left") + 1
    bounds = np.unique(np.concatenate([[0], np.minimum(cuts, n), [n]])).astype(np.int64)
    bucket_of = (np.searchsorted(bounds, rank_of, side="right") - 1).astype(np.int32)
    return CellPlan(rank_of, bounds, bucket_of)


def _cell_staged(staging: Path, k: int, tag: str, column: str) -> Path:
    return staging / f"c{k:04d}.{tag}.{column}"


CELL_STAGED = ("cell", "length", "gene", "count")  # per row, per row, per non-zero, per non-zero


def _stage_rows(block: sp.csr_matrix, first_row: int, bucket_of, staging, tag, files, blocks, stats) -> None:
    """Append a CSR block's rows, whole and in row order, to the staging of their cell buckets: per row its
    cell and length, per non-zero its gene (as the step from the row's previous gene, in 16 bits) and
    count."""
    perm = np.argsort(bucket_of, kind="stable")
    ks, firsts = np.unique(bucket_of[perm], return_index=True)
    lasts = np.append(firsts[1:], len(perm))
    rows = block[perm]  # CSR row gather: genes stay sorted within a row
    ip = rows.indptr.astype(np.int64)
    for k, r0, r1 in zip(ks.tolist(), firsts.tolist(), lasts.tolist(), strict=True):
        lo, hi = int(ip[r0]), int(ip[r1])
        lengths = np.diff(ip[r0 : r1 + 1]).astype(np.int32)
        cells = (perm[r0:r1] + first_row).astype(np.int32)
        genes = rows.indices[lo:hi].astype(np.int32, copy=False)
        counts = rows.data[lo:hi]
        steps = np.diff(genes, prepend=np.int32(0))
        starts = (ip[r0:r1] - lo)[lengths > 0]
        steps[starts] = genes[starts]  # a row starts from gene 0
        if k not in files:
            files[k] = [open(_cell_staged(staging, k, tag, name), "wb") for name in CELL_STAGED]
            blocks[k] = []
        for f, values in zip(
            files[k], (cells, lengths, steps.astype(np.uint16), _narrow(counts)), strict=True
        ):
            _write_frame(f, values)
        blocks[k].append((r1 - r0, hi - lo))
        wide = counts.astype(np.int64)
        s = stats[k]
        s.nnz += hi - lo
        s.sum += int(wide.sum())
        s.cell_sum += int((cells.astype(np.int64) * lengths).sum())
        s.gene_weighted += int((genes.astype(np.int64) * wide).sum())


def scatter(
    path: Path,
    plan: BucketPlan,
    r0: int,
    r1: int,
    staging: Path,
    tag: str,
    progress=None,
    cells: CellPlan | None = None,
) -> dict:
    """Pass 1 for rows [r0, r1): per-bucket staging files, per-cell totals, per-bucket source stats.

    Each CSR block is sorted by gene (a stable radix sort on uint16 keeps cell order inside a gene) and
    appended to its buckets' files as one run per gene; the block lengths go to `b<K>.<tag>.blocks.npy`
    so the sort pass can merge runs without sorting again. With a cell plan, the block's rows are also
    appended, whole, to the staging of their cell buckets (`c<K>.<tag>.*`) for the cell-major projection.
    """
    if plan.n_genes > 65_536:
        raise ReleaseError(
            f"{path}: {plan.n_genes} genes; staging keys are 16-bit (at most 65,536 genes)", path=path
        )
    staging.mkdir(parents=True, exist_ok=True)
    files: dict[int, list] = {}
    blocks: dict[int, list[int]] = {}
    stats = [BucketStats() for _ in range(plan.n_buckets)]
    cell_files: dict[int, list] = {}
    cell_blocks: dict[int, list[tuple[int, int]]] = {}
    cell_stats = [BucketStats() for _ in range(cells.n_buckets if cells else 0)]
    totals = np.zeros(r1 - r0, dtype=np.int64)
    detected = np.zeros(r1 - r0, dtype=np.int32)
    zeros = 0
    bucket_starts = np.arange(plan.n_buckets + 1, dtype=np.int64) * plan.genes_per_bucket
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
                zero = values == 0
                if zero.any():  # explicit zeros stored in the matrix: not expression; dropped, counted
                    zeros += int(zero.sum())
                    rows = np.repeat(np.arange(b - a), np.diff(ip))
                    kept = np.diff(ip) - np.bincount(rows[zero], minlength=b - a)
                    ip = np.concatenate([[0], np.cumsum(kept)])
                    values, idx = values[~zero], idx[~zero]
                per_row = np.diff(ip)
                nonempty = np.flatnonzero(per_row)
                if len(nonempty):  # exact integer row sums; reduceat would misreport empty rows, so skip them
                    totals[a - r0 + nonempty] = np.add.reduceat(values, ip[nonempty])
                detected[a - r0 : b - r0] = per_row
                block = sp.csr_matrix((values.astype(np.int32), idx, ip), shape=(b - a, plan.n_genes))
                _stage_block(plan, block, a, bucket_starts, staging, tag, files, blocks, stats)
                if cells is not None:
                    _stage_rows(
                        block, a, cells.bucket_of[a:b], staging, tag, cell_files, cell_blocks, cell_stats
                    )
                if progress is not None:
                    progress(hi - lo)
    finally:
        for handles in (*files.values(), *cell_files.values()):
            for f in handles:
                f.close()
    for k, sizes in blocks.items():
        np.save(staging / f"b{k:04d}.{tag}.blocks.npy", np.asarray(sizes, dtype=np.int64))
    for k, pairs in cell_blocks.items():
        np.save(_cell_staged(staging, k, tag, "blocks.npy"), np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    if totals.size and totals.max() >= 2**31:
        raise ReleaseError(
            f"{path}: a cell has more than 2^31 UMIs; this is not a raw count matrix", path=path
        )
    np.save(staging / f"totals.{tag}.npy", totals)
    np.save(staging / f"detected.{tag}.npy", detected)
    return {
        "stats": [asdict(s) for s in stats],
        "cell_stats": [asdict(s) for s in cell_stats],
        "explicit_zeros": zeros,
    }


def _stage_block(
    plan, block: sp.csr_matrix, first_row: int, bucket_starts, staging, tag, files, blocks, stats
) -> None:
    # CSR -> CSC is a counting sort in scipy's C++ (13 ns per non-zero, against 57 for a numpy radix
    # argsort and three gathers): it yields the block in (gene, cell) order, cells sorted within a gene.
    csc = block.tocsc()
    gene_ptr = csc.indptr.astype(np.int64)
    cells32 = csc.indices.astype(np.int32, copy=False) + np.int32(first_row)
    values32 = csc.data
    bounds = gene_ptr[np.minimum(bucket_starts, plan.n_genes)]
    sizes = np.diff(bounds)
    per_gene = np.diff(gene_ptr)
    offsets = np.repeat((np.arange(plan.n_genes) % plan.genes_per_bucket).astype(np.uint16), per_gene)
    # Source statistics per bucket, as exact integers (bincount's float weights could round past 2^53).
    present = np.flatnonzero(sizes)
    at = bounds[present]
    wide = values32.astype(np.int64)
    sum_v = np.add.reduceat(wide, at)
    sum_c = np.add.reduceat(cells32.astype(np.int64), at)
    expressed = np.flatnonzero(per_gene)
    gene_sums = np.zeros(plan.n_genes, dtype=np.int64)
    gene_sums[expressed] = np.add.reduceat(wide, gene_ptr[expressed])
    weighted = np.arange(plan.n_genes, dtype=np.int64) * gene_sums
    for i, kk in enumerate(present):
        k = int(kk)
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        if k not in files:
            files[k] = [open(_staged(staging, k, tag, name), "wb") for name, _ in STAGED]
            blocks[k] = []
        f_gene, f_cell, f_count = files[k]
        _write_frame(f_gene, offsets[lo:hi])
        _write_frame(f_cell, np.diff(cells32[lo:hi], prepend=np.int32(0)))  # undone by a cumsum on read
        _write_frame(f_count, _narrow(values32[lo:hi]))
        blocks[k].append(hi - lo)
        s = stats[k]
        s.nnz += hi - lo
        s.sum += int(sum_v[i])
        s.cell_sum += int(sum_c[i])
        s.gene_weighted += int(weighted[bucket_starts[k] : min(bucket_starts[k + 1], plan.n_genes)].sum())


def sort_bucket(plan: BucketPlan, k: int, staging: Path, tags: list[str], out: Path, on_sorted=None) -> int:
    """Pass 2 for bucket k: merge its gene-sorted staging runs into (gene, cell) order; write `out`.

    Rows of one gene arrive in cell order (scatter blocks in row order, tags in row order), so each run
    is copied to the next free place of its gene: a counting sort with sequential writes, no comparison.
    `on_sorted(g0, counts, cells, values)`, given, is called with the sorted rows (see gene_slices) before
    the file is written: the statistics are taken there, while the bucket is in memory.
    """
    g0, g1 = plan.gene_range(k)
    width = g1 - g0
    tags = [t for t in tags if _staged(staging, k, t, "gene").exists()]
    if not tags and out.exists():
        # Killed after the file was published and its staging removed, before the state was saved: done,
        # but for its statistics, which a resumed build may have lost: taken again from the file, whose
        # rows are the sorted rows.
        if on_sorted is not None:
            t = pq.read_table(out, columns=["gene_index", "cell_index", "raw_count"])
            genes = t.column("gene_index").to_numpy() - g0
            on_sorted(
                g0,
                np.bincount(genes, minlength=width).astype(np.int64),
                t.column("cell_index").to_numpy().astype(np.int32, copy=False),
                t.column("raw_count").to_numpy().astype(np.int32, copy=False),
            )
        return pq.ParquetFile(out).metadata.num_rows
    counts = np.zeros(width, dtype=np.int64)
    for t in tags:
        for genes, _, _, _ in _read_runs(staging, k, t, columns=("gene",)):
            counts += np.bincount(genes, minlength=width)
    n = int(counts.sum())
    cells_out = np.empty(n, dtype=np.int32)
    values_out = np.empty(n, dtype=np.int32)
    fill = np.cumsum(counts) - counts
    for t in tags:
        for genes, cells, values, block_sizes in _read_runs(staging, k, t):
            m = len(genes)
            if m == 0:
                continue
            block_id = np.repeat(np.arange(len(block_sizes)), block_sizes)
            key = block_id * width + genes
            starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
            lengths = np.diff(np.concatenate([starts, [m]]))
            run_gene = genes[starts].astype(np.int64)
            # A run's place: its gene's next free slot plus the rows of that gene in earlier runs here.
            by_gene = np.argsort(run_gene, kind="stable")
            g_sorted, len_sorted = run_gene[by_gene], lengths[by_gene]
            before = np.cumsum(len_sorted) - len_sorted
            first = np.searchsorted(g_sorted, g_sorted, side="left")
            run_dest = np.empty(len(starts), dtype=np.int64)
            run_dest[by_gene] = fill[g_sorted] + before - before[first]
            dest = np.repeat(run_dest - starts, lengths) + np.arange(m)
            cells_out[dest] = cells
            values_out[dest] = values
            fill += np.bincount(genes, minlength=width)
    if on_sorted is not None:
        on_sorted(g0, counts, cells_out, values_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    write_parquet(tmp, g0, counts, cells_out, values_out)
    os.replace(tmp, out)
    for t in tags:
        for name, _ in STAGED:
            _staged(staging, k, t, name).unlink()
        (staging / f"b{k:04d}.{t}.blocks.npy").unlink()
    return n


def _read_runs(staging: Path, k: int, tag: str, columns=("gene", "cell", "count")):
    """Yield (genes, cells, counts, block sizes) for groups of whole scatter blocks of ~SORT_BLOCK rows."""
    sizes = np.load(staging / f"b{k:04d}.{tag}.blocks.npy")
    handles = {name: open(_staged(staging, k, tag, name), "rb") for name, _ in STAGED if name in columns}
    dtypes = dict(STAGED)
    try:
        i = 0
        while i < len(sizes):
            j = i + 1
            total = int(sizes[i])
            while j < len(sizes) and total + int(sizes[j]) <= SORT_BLOCK:
                total += int(sizes[j])
                j += 1
            arrays = {name: _read_frames(h, dtypes[name], sizes[i:j]) for name, h in handles.items()}
            cells = arrays.get("cell")
            if cells is not None:  # deltas within each block's frame: restart the sum at each block
                cells = _undo_steps(cells, sizes[i:j]).astype(np.int32)
            yield arrays.get("gene"), cells, arrays.get("count"), sizes[i:j]
            i = j
    finally:
        for h in handles.values():
            h.close()


def _run_slices(lengths: np.ndarray, step: int):
    """Rows [lo, hi) of runs laid end to end (run t is lengths[t] rows), `step` rows at a time. Per slice:
    (lo, hi, i, j, ln, skip): runs i..j-1 overlap it, ln of each of their rows fall in it, and the first
    of them starts `skip` rows into its run."""
    ends = np.cumsum(lengths)
    total = int(ends[-1]) if len(ends) else 0
    for lo in range(0, max(1, total), step):
        hi = min(total, lo + step)
        i = int(np.searchsorted(ends, lo, side="right"))  # the run holding row lo
        j = int(np.searchsorted(ends, hi, side="left")) + 1 if hi > lo else i  # one past the last
        ln = np.asarray(lengths[i:j], dtype=np.int64).copy()
        skip = 0
        if len(ln):
            skip = int(lo - (ends[i] - lengths[i]))  # rows of the first run in earlier slices
            ln[0] -= skip
            ln[-1] -= ends[j - 1] - hi  # rows of the last run left for later slices
        yield lo, hi, i, j, ln, skip


def gene_slices(g0: int, counts: np.ndarray, cells: np.ndarray, values: np.ndarray, step: int):
    """A sorted bucket (gene g0 + i repeated counts[i] times, its cells and values) as (genes, cells, values)
    slices of `step` rows: the gene column is made one slice at a time, so it costs no memory per row."""
    for lo, hi, i, j, ln, _ in _run_slices(counts, step):
        yield np.repeat(np.arange(g0 + i, g0 + j, dtype=np.int32), ln), cells[lo:hi], values[lo:hi]


def write_parquet(path: Path, g0: int, counts: np.ndarray, cells: np.ndarray, values: np.ndarray) -> None:
    """Write one bucket: gene_index g0.. repeated counts[i] times, with its cells and values, in row groups.

    The gene column is made one slice of row groups at a time, so a bucket costs 8 bytes per row of
    memory (cells and values), not 12.
    """
    schema = EXPRESSION_FILE
    # zstd + Parquet V2 pages. cell_index: delta encoding (deltas are small within a gene: 30 MB instead of
    # 55 MB per 20M rows in the measurement of docs/architecture.md, decision 2). raw_count: dictionary + RLE
    # (few distinct values).
    # gene_index: PLAIN, because zstd squeezes its long constant runs as well as delta does, 10% faster
    # (measured 29.8 vs 33.1 ns/row, same 0.853 bytes/row). BYTE_STREAM_SPLIT on raw_count was faster
    # still, but DuckDB 1.x (as embedded by BI drivers; 1.5.6 tested) cannot read it on integers.
    with pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        data_page_version="2.0",
        use_dictionary=["raw_count"],
        column_encoding={"gene_index": "PLAIN", "cell_index": "DELTA_BINARY_PACKED"},
        write_statistics=True,
    ) as writer:
        for genes, cells_part, values_part in gene_slices(g0, counts, cells, values, ROW_GROUP * 16):
            writer.write_table(
                pa.table([genes, cells_part, values_part], schema=schema), row_group_size=ROW_GROUP
            )


def sort_cells(k: int, staging: Path, tags: list[str], out: Path, cells: CellPlan) -> int:
    """Pass 2 for cell bucket k: its staged rows ordered by cell_rank (a permutation of whole rows: a
    cell's genes are already sorted), written as `out`."""
    tags = [t for t in tags if _cell_staged(staging, k, t, "cell").exists()]
    if not tags and out.exists():  # killed after publishing the file, before saving the state: done
        return pq.ParquetFile(out).metadata.num_rows
    sizes = {t: np.load(_cell_staged(staging, k, t, "blocks.npy")).reshape(-1, 2) for t in tags}
    n_rows = sum(int(z[:, 0].sum()) for z in sizes.values())
    n = sum(int(z[:, 1].sum()) for z in sizes.values())
    row_cell = np.empty(n_rows, dtype=np.int32)
    row_len = np.empty(n_rows, dtype=np.int64)
    genes = np.empty(n, dtype=np.uint16)
    counts = np.empty(n, dtype=np.int32)
    r = v = 0
    for t in tags:
        handles = [open(_cell_staged(staging, k, t, name), "rb") for name in CELL_STAGED]
        try:
            for m, nz in sizes[t].tolist():
                row_cell[r : r + m] = _read_frame(handles[0], m)
                lengths = _read_frame(handles[1], m).astype(np.int64)
                row_len[r : r + m] = lengths
                genes[v : v + nz] = _undo_steps(_read_frame(handles[2], nz), lengths)
                counts[v : v + nz] = _read_frame(handles[3], nz)
                r, v = r + m, v + nz
        finally:
            for h in handles:
                h.close()
    rank = cells.rank_of[row_cell]
    order = np.argsort(rank, kind="stable")
    row_start = np.cumsum(row_len) - row_len
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".parquet.tmp")
    write_cell_parquet(tmp, rank[order], row_cell[order], row_start[order], row_len[order], genes, counts)
    os.replace(tmp, out)
    for t in tags:
        for name in (*CELL_STAGED, "blocks.npy"):
            _cell_staged(staging, k, t, name).unlink()
    return n


CELL_SCHEMA = EXPRESSION_BY_CELL_FILE


def write_cell_parquet(path: Path, ranks, cells, starts, lengths, genes, counts) -> None:
    """Write the staged non-zeros `genes`/`counts` cell by cell in the given order (each cell's run at
    `starts`, `lengths` long), ~2M rows at a time: the gathered copy costs that much memory whatever the
    bucket's size.

    cell_rank and cell_index: PLAIN (runs of one value; zstd packs them to 0.01 bytes a row, and they
    encode faster than DELTA: 42 against 59 ns a row for the whole file, measured). gene_index: DELTA (the
    steps between a cell's genes; 0.75 bytes). raw_count: dictionary, as in the gene-major files."""
    with pq.ParquetWriter(
        path,
        CELL_SCHEMA,
        compression="zstd",
        data_page_version="2.0",
        use_dictionary=["raw_count"],
        column_encoding={"cell_rank": "PLAIN", "cell_index": "PLAIN", "gene_index": "DELTA_BINARY_PACKED"},
        write_statistics=True,
    ) as writer:
        for lo, hi, i, j, ln, skip in _run_slices(lengths, ROW_GROUP * 16):  # row groups of ROW_GROUP
            first = starts[i:j].copy()
            if len(first):
                first[0] += skip
            src = np.repeat(first - (np.cumsum(ln) - ln), ln) + np.arange(hi - lo)
            writer.write_table(
                pa.table(
                    [
                        np.repeat(ranks[i:j], ln).astype(np.int32),
                        np.repeat(cells[i:j], ln).astype(np.int32),
                        genes[src].astype(np.int32),
                        counts[src],
                    ],
                    schema=CELL_SCHEMA,
                ),
                row_group_size=ROW_GROUP,
            )
