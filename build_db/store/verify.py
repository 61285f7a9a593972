"""`hmba-db verify`: reconcile the store with the numbers taken from the source during the build.

Every Parquet file is read back in full, in parallel processes, and checked against the build record:
per species and bucket, the non-zero count, the sum of counts, the sum of cell indexes and the sum of
gene_index x count (two position-sensitive checksums: a value moved to another cell or gene changes
them); per cell, total counts and genes detected against the source rows' sums; and the layout: rows
strictly increasing in (gene_index, cell_index), so sorted and free of duplicates, inside the bucket's
gene range. The cell-major projection (expression_by_cell) the same way, per cell bucket, with rows
strictly increasing in (cell_rank, gene_index) and each row's cell_rank the cells table's. Then the
statistics (`verify_stats.py`): additive, with their groups' cell counts, and equal to sums taken again
from the expression files for a sample of genes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from ..errors import HmbaError
from ..progress import worker_pool
from .paths import files_root, species_part, table_file
from .verify_stats import verify_statistics

BATCH_ROWS = 4_000_000


def _build_info(store: Path) -> dict:
    path = Path(store) / "build.json"
    if not path.exists():
        raise HmbaError(
            f"{path}: not found; {store} is not an hmba-db store (run hmba-db build first)", path=path
        )
    return json.loads(path.read_text())


def _scan(files: list[str], n_cells: int, genes: tuple[int, int] | None, rank_of=None) -> tuple:
    """Worker: read whole files; return per-bucket stats, per-cell sums and counts, layout problems.

    Gene-major files (`genes` = (genes per bucket, genes)): rows strictly increasing in (gene, cell),
    inside the bucket's gene range. Cell-major files (`rank_of`, each cell's rank): rows strictly
    increasing in (cell_rank, gene), and each row's cell_rank its cell's."""
    cell_sum = np.zeros(n_cells, dtype=np.float64)  # exact: per-cell totals are < 2^31, far below 2^53
    cell_n = np.zeros(n_cells, dtype=np.int64)
    stats, problems = {}, []
    what = "bucket" if rank_of is None else "cell bucket"
    for f in files:
        k = int(Path(f).parent.name.split("=")[1])
        lo, hi = (k * genes[0], min(genes[1], (k + 1) * genes[0]) - 1) if genes else (0, 2**16 - 1)
        total = [0, 0, 0, 0]
        last_key, row = -1, 0
        try:
            # Batches bound a worker's memory (~40 bytes per row of a batch) whatever the bucket's size.
            for batch in pq.ParquetFile(f).iter_batches(batch_size=BATCH_ROWS):
                g = batch.column("gene_index").to_numpy().astype(np.int64)
                c = batch.column("cell_index").to_numpy().astype(np.int64)
                v = batch.column("raw_count").to_numpy().astype(np.int64)
                if len(v) == 0:
                    continue
                total[0] += len(v)
                total[1] += int(v.sum())
                total[2] += int(c.sum())
                total[3] += int((g * v).sum())
                if g.min() < lo or g.max() > hi or c.min() < 0 or c.max() >= n_cells:
                    problems.append(
                        f"{what} {k}: genes {g.min()}..{g.max()} or cells {c.min()}..{c.max()} outside "
                        f"the bucket's genes {lo}..{hi} and cells 0..{n_cells - 1}"
                    )
                    break
                if rank_of is None:
                    key = g * n_cells + c
                else:
                    r = batch.column("cell_rank").to_numpy().astype(np.int64)
                    wrong = np.flatnonzero(rank_of[c] != r)
                    if len(wrong):
                        i = int(wrong[0])
                        problems.append(
                            f"{what} {k}: row {row + i} has cell_rank {r[i]} for cell {c[i]}, whose rank is "
                            f"{rank_of[c[i]]}"
                        )
                        break
                    key = r * 2**16 + g
                steps = np.diff(np.concatenate([[last_key], key]))
                bad = np.flatnonzero(steps <= 0)
                if len(bad):
                    i = int(bad[0])
                    kind = "duplicate" if steps[i] == 0 else "out of order"
                    problems.append(f"{what} {k}: row {row + i} (gene {g[i]}, cell {c[i]}) is {kind}")
                    break
                last_key = int(key[-1])
                row += len(v)
                cell_sum += np.bincount(c, weights=v, minlength=n_cells)
                cell_n += np.bincount(c, minlength=n_cells)
        except (OSError, pa.ArrowException) as e:  # a truncated or damaged file: a finding, not a crash
            problems.append(f"{what} {k}: {f} cannot be read ({' '.join(str(e).split())}); rebuild the store")
        stats[k] = total
    return stats, cell_sum, cell_n, problems


def verify_store(store: Path, species: list[str] | None = None, jobs: int = 2) -> list[str]:
    """Every disagreement between the store and its build record, one line each ([] means verified).

    Example:
        >>> verify_store(Path("data/store"))  # doctest: +SKIP
        []
    """
    store = files_root(Path(store))
    info = _build_info(store)
    problems: list[str] = []
    with worker_pool(jobs) as (pool, _):
        for sp, meta in info["species"].items():
            if species and sp not in species:
                continue
            problems += [f"{sp}: {p}" for p in _verify_species(pool, store, sp, meta, jobs)]
            problems += [f"{sp}: {p}" for p in verify_statistics(store, sp, meta)]
    return problems


def _verify_species(pool, store: Path, sp: str, meta: dict, jobs: int) -> list[str]:
    files = sorted((store / "expression" / f"species={sp}").glob("gene_bucket=*/*.parquet"))
    on_disk = {int(f.parent.name.split("=")[1]) for f in files}
    if on_disk != set(range(meta["buckets"])):
        missing = sorted(set(range(meta["buckets"])) - on_disk)
        extra = sorted(on_disk - set(range(meta["buckets"])))
        return [
            f"bucket files missing for buckets {missing[:5]} or unexpected for {extra[:5]}; rebuild the store"
        ]
    totals_path = species_part(store, "cell_totals", sp)
    src = pq.read_table(totals_path, columns=["total_counts", "genes_detected"])
    want_sum = src.column("total_counts").to_numpy()
    want_n = src.column("genes_detected").to_numpy()
    n_cells = len(want_sum)
    cell_files = sorted((store / "expression_by_cell" / f"species={sp}").glob("cell_bucket=*/*.parquet"))
    n_cell_buckets = meta.get("cell_buckets", 0)
    on_disk = {int(f.parent.name.split("=")[1]) for f in cell_files}
    if on_disk != set(range(n_cell_buckets)):
        return [
            f"expression_by_cell: {len(on_disk)} cell bucket files, build.json has {n_cell_buckets}; rebuild"
        ]
    ranks = pq.read_table(table_file(store, "cells"), columns=["species", "cell_index", "cell_rank"])
    ranks = ranks.filter(pa.compute.equal(ranks.column("species"), sp))
    rank_of = np.full(n_cells, -1, dtype=np.int64)
    rank_of[ranks.column("cell_index").to_numpy()] = ranks.column("cell_rank").to_numpy()
    # Largest files first, dealt round-robin, so the workers finish together.
    futures = []
    for kind, these in (("gene", files), ("cell", cell_files)):
        these = sorted(these, key=lambda f: -f.stat().st_size)
        for i in range(max(1, jobs)):
            share = [str(f) for f in these[i :: max(1, jobs)]]
            by = (meta["genes_per_bucket"], meta["genes"]) if kind == "gene" else None
            futures.append((kind, pool.submit(_scan, share, n_cells, by, None if by else rank_of)))
    stats: dict[int, list[int]] = {}
    cell_stats: dict[int, list[int]] = {}
    have = {
        kind: (np.zeros(n_cells, dtype=np.float64), np.zeros(n_cells, dtype=np.int64))
        for kind in ("gene", "cell")
    }
    problems: list[str] = []
    for kind, fut in futures:
        s, cs, cn, pr = fut.result()
        (stats if kind == "gene" else cell_stats).update(s)
        have[kind][0][:] += cs
        have[kind][1][:] += cn
        problems += pr
    names = ("non-zeros", "sum of counts", "cell checksum", "gene checksum")
    for what, got, wanted in (
        ("bucket", stats, meta["bucket_stats"]),
        ("cell bucket", cell_stats, meta.get("cell_bucket_stats", [])),
    ):
        for k, want in enumerate(wanted):
            expect = [want["nnz"], want["sum"], want["cell_sum"], want["gene_weighted"]]
            for name, h, e in zip(names, got.get(k, [0, 0, 0, 0]), expect, strict=True):
                if h != e:
                    problems.append(f"{what} {k}: {name} {h:,} in the store, {e:,} in the source")
    for kind, (have_sum, have_n) in have.items():
        if kind == "cell" and not n_cell_buckets:  # built without the cell-major copy
            continue
        where = "" if kind == "gene" else " (expression_by_cell)"
        summed = have_sum.astype(np.int64)
        for name, seen, want in (("total counts", summed, want_sum), ("genes detected", have_n, want_n)):
            bad = np.flatnonzero(seen != want)
            if len(bad):
                c = int(bad[0])
                problems.append(
                    f"{len(bad):,} cells' {name}{where} differ from the source, first cell_index {c}: "
                    f"{seen[c]:,} in the store, {want[c]:,} in the source"
                )
    if int(want_sum.sum()) != meta["sum"] or int(want_n.sum()) != meta["nnz"]:
        problems.append(
            f"{totals_path.name}: totals {int(want_sum.sum()):,} / {int(want_n.sum()):,} disagree with "
            f"build.json's {meta['sum']:,} / {meta['nnz']:,}"
        )
    return problems
