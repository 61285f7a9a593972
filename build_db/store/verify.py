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

from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute
import pyarrow.parquet as pq

from ..errors import StoreError
from ..progress import worker_pool
from . import integrity
from .catalog import recorded_path, sql_literal, view_sql, views_of
from .paths import BUILD_JSON, CATALOG, files_root, read_build_record, species_part, table_file
from .verify_stats import verify_statistics

BATCH_ROWS = 4_000_000


NEEDED = ("genes_per_bucket", "bucket_stats")  # beyond what read_build_record checks


def _build_info(store: Path) -> dict:
    info = read_build_record(store)
    for sp, meta in info["species"].items():
        lacking = [k for k in NEEDED if k not in meta]
        if lacking:
            raise StoreError(
                f"{Path(store) / BUILD_JSON}: species {sp} has no {lacking[0]}; the store is damaged: "
                "rebuild it",
                path=Path(store) / BUILD_JSON,
            )
    return info


def _catalog_problems(store: Path, root: Path, info: dict, species: list[str] | None = None) -> list[str]:
    """The catalog every reader opens: there, openable, naming this build, its listed files present, and
    each view readable (a missing file named there fails the view)."""
    link = Path(store).absolute() / CATALOG
    if not link.exists():
        dangling = " (a link to a missing file)" if link.is_symlink() else ""
        return [f"{link}: missing{dangling}; no reader can open the store: rebuild it"]
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"attach {sql_literal(link)} as catalog (read_only)")
        con.execute("use catalog")
    except duckdb.Error as e:
        con.close()
        return [f"{link}: cannot be opened ({' '.join(str(e).split())[:300]}); rebuild the store"]
    problems = []
    try:
        built = dict(con.execute("select key, value from store_info").fetchall()).get("build_id")
        if info.get("build_id") and built != info["build_id"]:
            problems.append(
                f"{link}: names build {built}, build.json names {info['build_id']}; rebuild the store"
            )
        rows = integrity.listed(con)
        if rows is not None:
            others = {f"species={s}/" for s in info["species"]} - {f"species={s}/" for s in species or ()}
            mine = [r for r in rows if not species or not any(o in r[0] for o in others)]
            problems += integrity.findings(root, mine)
        moved = recorded_path(con) != str(root)  # read its views where it is now, as connect() does
        names = None if rows is None else [f for f, _, _ in rows]
        for view in views_of(con) if not problems else ():  # a damaged file fails its views: said once
            try:
                if moved:
                    own = view_sql(view, root, names)
                    con.execute(own.replace(f"create or replace view {view}", f"create temp view {view}", 1))
                con.execute(f"select * from {view} limit 0").fetchall()
            except duckdb.Error as e:
                problems.append(f"view {view} cannot be read ({' '.join(str(e).split())[:300]})")
    except duckdb.Error as e:
        problems.append(f"{link}: cannot be read ({' '.join(str(e).split())[:300]}); rebuild the store")
    finally:
        con.close()
    return problems


def _scan(files: list[str], n_cells: int, genes: tuple[int, int] | None, rank_of=None) -> tuple:
    """Worker: read whole files; return per-bucket stats, per-cell sums and counts, layout problems.

    Gene-major files (`genes` = (genes per bucket, genes)): rows strictly increasing in (gene, cell),
    inside the bucket's gene range. Cell-major files (`rank_of`, each cell's rank): rows strictly
    increasing in (cell_rank, gene), and each row's cell_rank its cell's."""
    cell_sum = np.zeros(n_cells, dtype=np.float64)  # exact: per-cell totals are < 2^31, far below 2^53
    cell_n = np.zeros(n_cells, dtype=np.int64)
    stats, problems = {}, []
    what = "bucket" if rank_of is None else "cell bucket"
    columns = "gene_index, cell_index, raw_count" + ("" if rank_of is None else ", cell_rank")
    # DuckDB decodes these files ~3x faster than pyarrow's reader (its DELTA_BINARY_PACKED cell indexes
    # above all: 80.8M rows in 1.7 s against 4.9 s, one thread each); one thread, so rows come in file order.
    con = duckdb.connect(config={"threads": 1})
    con.execute("set enable_progress_bar = false")
    for f in files:
        k = int(Path(f).parent.name.split("=")[1])
        lo, hi = (k * genes[0], min(genes[1], (k + 1) * genes[0]) - 1) if genes else (0, 2**16 - 1)
        total = [0, 0, 0, 0]
        last_key, row = -1, 0
        try:
            # Batches bound a worker's memory (~40 bytes per row of a batch) whatever the bucket's size.
            rows = con.sql(f"select {columns} from read_parquet({sql_literal(f)})")
            for batch in rows.to_arrow_reader(BATCH_ROWS):
                g = batch.column("gene_index").to_numpy()  # int32, no copies but the one 64-bit key
                c = batch.column("cell_index").to_numpy()
                v = batch.column("raw_count").to_numpy()
                n = len(v)
                if n == 0:
                    continue
                key = g.astype(np.int64)
                total[0] += n
                total[1] += int(v.sum(dtype=np.int64))
                total[2] += int(c.sum(dtype=np.int64))
                total[3] += int((key * v).sum())
                if g.min() < lo or g.max() > hi or c.min() < 0 or c.max() >= n_cells:
                    problems.append(
                        f"{what} {k}: genes {g.min()}..{g.max()} or cells {c.min()}..{c.max()} outside "
                        f"the bucket's genes {lo}..{hi} and cells 0..{n_cells - 1}"
                    )
                    break
                if rank_of is None:
                    key *= n_cells
                    key += c
                else:  # a cell's rows are one run (checked below): its cell and rank checked once per run
                    r = batch.column("cell_rank").to_numpy()
                    new_rank = np.diff(r) != 0
                    starts = np.concatenate([[0], np.flatnonzero(new_rank) + 1])
                    cells = c[starts]
                    wrong = np.flatnonzero(rank_of[cells] != r[starts])
                    if len(wrong):
                        i = int(starts[wrong[0]])
                        problems.append(
                            f"{what} {k}: row {row + i} has cell_rank {r[i]} for cell {c[i]}, whose rank is "
                            f"{rank_of[c[i]]}"
                        )
                        break
                    moved = np.flatnonzero((np.diff(c) != 0) & ~new_rank)
                    if len(moved):
                        i = int(moved[0]) + 1
                        problems.append(
                            f"{what} {k}: row {row + i} has cell {c[i]} inside cell_rank {r[i]}'s rows"
                        )
                        break
                    key += r.astype(np.int64) << 16
                if key[0] <= last_key or np.less_equal(key[1:], key[:-1]).any():
                    steps = np.diff(np.concatenate([[last_key], key]))
                    i = int(np.flatnonzero(steps <= 0)[0])
                    kind = "duplicate" if steps[i] == 0 else "out of order"
                    problems.append(f"{what} {k}: row {row + i} (gene {g[i]}, cell {c[i]}) is {kind}")
                    break
                if rank_of is None:  # cells scattered: count them one by one
                    cell_sum += np.bincount(c, weights=v, minlength=n_cells)
                    cell_n += np.bincount(c, minlength=n_cells)
                else:
                    cell_sum[cells] += np.add.reduceat(v, starts, dtype=np.int64)
                    cell_n[cells] += np.diff(np.append(starts, n))
                last_key = int(key[-1])
                row += n
        except (OSError, pa.ArrowException, duckdb.Error) as e:  # a damaged file: a finding, not a crash
            problems.append(f"{what} {k}: {f} cannot be read ({' '.join(str(e).split())}); rebuild the store")
        stats[k] = total
    con.close()
    return stats, cell_sum, cell_n, problems


def verify_store(
    store: Path, species: list[str] | None = None, jobs: int = 2, *, catalog: bool = True
) -> list[str]:
    """Every disagreement between the store and its build record, one line each ([] means verified).

    First the catalog (there, openable, naming this build, each listed file present with the size and
    CRC-32 the build wrote, each view readable); then every file read back and reconciled. `catalog=False`
    skips the first part (the build's own verify step, before its catalog is linked).

    Example:
        >>> verify_store(Path("data/store"))  # doctest: +SKIP
        []
    """
    given = Path(store)
    store = files_root(given)
    info = _build_info(store)
    problems: list[str] = _catalog_problems(given, store, info, species) if catalog else []
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
