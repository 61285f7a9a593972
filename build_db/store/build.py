"""`hmba-db build`: release -> store, as a list of named, resumable steps published atomically.

The store is assembled in a hidden staging directory beside it (`.<name>.building/`), with a state file
recording finished work; a killed build run again with the same arguments resumes there, skipping
finished scatter parts and buckets. Only a complete, verified store is renamed into place, so readers
never see a half-written one and a failed build leaves the previous store untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..defaults import JOBS, KEEP_OLD_HOURS
from ..errors import HmbaError, ReleaseError
from ..files import save_json
from ..progress import Reporter, plural, run_pool, worker_pool
from ..release import layout as R
from ..release.check import check_release
from ..release.h5ad import CsrReader
from ..release.manifest import Layout, read_manifest
from ..release.normalise import log2_cpm
from ..version import __version__
from . import schema as S
from .catalog import relocate, write_catalog
from .guard import build_lock, check_disk, check_target
from .metadata import MetadataBuilder, check_metadata
from .paths import (
    BUILD_JSON,
    CATALOG,
    RETIRED,
    SNAPSHOTS,
    TABLES,
    bucket_file,
    cell_bucket_file,
    files_root,
    new_build_id,
    snapshot_dir,
    species_part,
    staging_dir,
)
from .stats import BATCH_ROWS as STATS_BATCH_ROWS
from .stats import STATS_WORK, Groups, bucket_stats, merge_stats, parts_written, plan_groups
from .transpose import (
    BUCKET_TARGET_NNZ,
    MAX_BUCKET_GENES,
    BucketPlan,
    BucketStats,
    CellPlan,
    gene_slices,
    plan_buckets,
    plan_cells,
    row_split,
    scatter,
    sort_bucket,
    sort_cells,
)
from .verify import verify_store

# 2: snapshots (a build id kept across a resume); 3: cell buckets, framed counts; 4: statistics in the sort
STATE_VERSION = 4
KEEP_OLD_SECONDS = KEEP_OLD_HOURS * 3600  # build_db/defaults.py says why
LOG2_SAMPLE_CELLS = 500  # rows compared against the release's log2 file
# log2 values are float32: allow a few float32 ulps between our float64 formula and the release's.
LOG2_RTOL, LOG2_ATOL = 1e-5, 1e-5


@dataclass
class BuildResult:
    store: Path
    species: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False


def build(
    release: Path,
    store: Path,
    *,
    species: tuple[str, ...] | None = None,
    jobs: int = JOBS,
    bucket_nnz: int = BUCKET_TARGET_NNZ,
    bucket_genes: int = MAX_BUCKET_GENES,
    version: str = R.VERSION,
    force: bool = False,
    keep_old: float | None = None,
    quiet: bool = False,
    cell_major: bool = True,
) -> BuildResult:
    """Build (or rebuild) the expression store at `store` from a release directory.

    One build per store at a time (a lock beside it). A rebuild that would drop species the store has, or
    a folder holding files a build did not write, is refused unless `force`. `cell_major=False` leaves
    out the cell-major copy (expression_by_cell): ~45% less store and staging, a fifth less build time;
    to_anndata of a cell selection then reads the gene-major files.

    Example:
        >>> build(Path("data/release"), Path("data/store"))  # doctest: +SKIP
    """
    release, store = Path(release).absolute(), Path(store).absolute()
    for name, value in (("--jobs", jobs), ("--bucket-nnz", bucket_nnz), ("--bucket-genes", bucket_genes)):
        if value < 1:
            raise HmbaError(f"{name} must be at least 1, got {value}")
    rep = Reporter(quiet)
    _, entries = read_manifest(release, version)
    lay = Layout(entries, version)
    listed = [s for s in R.SPECIES if any(e.species == s and e.part == "raw" for e in lay.entries)]
    if species is None:  # what was downloaded: a one-species download builds that species
        species = tuple(s for s in listed if (release / lay.matrix(s, "raw")).exists()) or tuple(listed)
    species = tuple(s for s in R.SPECIES if s in species)
    if not species:
        raise ReleaseError(
            f"{release}: the manifest lists no raw matrix; download one (--what raw)", path=release
        )
    check_target(store, species, force)
    with build_lock(store):
        return _build(
            release,
            store,
            species,
            entries,
            lay,
            jobs,
            bucket_nnz,
            bucket_genes,
            version,
            KEEP_OLD_SECONDS if keep_old is None else keep_old,
            rep,
            cell_major,
        )


def _build(
    release, store, species, entries, lay, jobs, bucket_nnz, bucket_genes, version, keep_old, rep, cell_major
) -> BuildResult:
    has_log2 = {s: (release / lay.matrix(s, "log2")).exists() for s in species}
    parts = ("raw", "metadata", "taxonomy") + (("log2",) if all(has_log2.values()) else ())
    rep.steps = 6 + 2 * len(species)
    rep.step(f"check the release ({', '.join(species)})")
    # Every source file's md5 against the manifest before anything is transposed (a flipped byte in an h5ad
    # built silently before), but for the files download or synth recorded as verified, unchanged since.
    report = check_metadata(
        check_release(
            release, species=species, parts=parts, version=version, keep_cells=True, md5="untrusted"
        ),
        version,
    )
    if not report.ok:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise ReleaseError(f"{first}{more}; run `hmba-db check {release}` for the full list", path=first.path)
    for note in report.notes:
        rep.log(f"  note: {note}")

    staging = staging_dir(store)
    largest = 0
    for s in species:
        with CsrReader(release / lay.matrix(s, "raw")) as m:
            largest = max(largest, m.nnz)
    check_disk(staging, largest, cell_major)
    params = {
        "release": str(release),
        "version": version,
        "species": list(species),
        "bucket_nnz": bucket_nnz,
        "bucket_genes": bucket_genes,
        "cell_major": cell_major,
        "sources": _fingerprints(release, species, entries, lay),
        "state_version": STATE_VERSION,
    }
    state = _load_state(staging, params, rep)
    result = BuildResult(store, resumed=bool(state.get("species")))
    t0 = time.monotonic()

    missing = [s for s in species if cell_major and s not in report.cell_order]
    if missing:
        raise HmbaError(
            f"{release}: the taxonomy order of the {missing[0]} cells is unknown; run hmba-db check"
        )
    with worker_pool(jobs) as (pool, q):
        for s in species:
            result.species[s] = _build_species(
                release,
                staging,
                s,
                lay,
                jobs,
                (bucket_nnz, bucket_genes),
                state,
                pool,
                q,
                rep,
                has_log2[s],
                report.cell_order.get(s) if cell_major else None,
                report.cell_groups.get(s),
            )
        rep.step("metadata tables: cells, genes, taxonomy, donors, libraries")
        metadata_report = MetadataBuilder(release, staging, list(species), version).build()
        for sp, counts in metadata_report["cells"].items():
            rep.log(
                f"  {sp}: {counts['cells']:,} cells, {counts['assigned']:,} with a cluster, "
                f"{counts['unassigned']:,} without (left joins: their taxonomy columns are NULL)"
            )
            if counts["not_in_cell_metadata"] or counts["cell_metadata_rows_without_matrix_cell"]:
                rep.log(
                    f"  {sp}: {counts['not_in_cell_metadata']:,} matrix cells are not in cell_metadata.csv "
                    "(kept, in_cell_metadata = false, NULL metadata, no cluster); "
                    f"{counts['cell_metadata_rows_without_matrix_cell']:,} cell_metadata rows have no "
                    "matrix cell (left out)"
                )
        rep.step("statistics files: per taxonomy term, region x Group and donor x Group, for every gene")
        t_stats = time.monotonic()
        stats_report = merge_stats(staging, result.species, pool, q, rep)
        stats_seconds = time.monotonic() - t_stats

    build_id = state.setdefault("build_id", new_build_id())
    info = {
        "build_id": build_id,
        "tool": "hmba-db",
        "tool_version": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "release": str(release),
        "release_version": version,
        # each source's md5 (the manifest's), and how the build found the file's to be it
        "sources": {
            rel: {**v, "md5_checked": report.md5_checked.get(rel)} for rel, v in params["sources"].items()
        },
        "parameters": {
            "bucket_nnz": bucket_nnz,
            "bucket_genes": bucket_genes,
            "jobs": jobs,
            "cell_major": cell_major,
        },
        "species": result.species,
        **R.terms_of_use(version, lay.taxonomy_dir, lay.taxonomy_version),
    }
    info["metadata"] = metadata_report
    # The sums are taken in the sort workers; this step's time is the merge of their parts into files.
    info["statistics"] = {"merge_seconds": round(stats_seconds, 2), "rows": stats_report}
    save_json(staging / "build.json", info)
    rep.step("catalog.duckdb: tables, views, descriptions")
    keys = ("build_id", "tool_version", "built_at", "release", "release_version", "taxonomy")
    bound = write_catalog(staging, snapshot_dir(store, build_id), {k: str(info[k]) for k in keys})
    # Not overlapped with the two steps above: tried, no faster (both cores are busy verifying) and
    # peak memory rose from 1.45 to 2.15 GiB at --scale 0.1.
    rep.step("verify the store against the source")
    problems = verify_store(staging, jobs=jobs)
    if problems:
        raise HmbaError(
            f"verification failed, store not published (staging kept at {staging}): {problems[0]}"
        )
    rep.step(f"publish {store}")
    # Where the time went, for `make bench-full` and anyone tuning a build (the publish step is not in it).
    info["step_seconds"] = rep.step_seconds()[:-1]
    save_json(staging / "build.json", info)
    _publish(staging, store, build_id, keep_old)
    if not bound:
        relocate(store)
    _republish(store, rep)
    result.seconds = time.monotonic() - t0
    total = sum(v["nnz"] for v in result.species.values())
    rep.log(
        f"built {store}: {total:,} non-zeros in {result.seconds:.1f} s "
        f"({total / max(result.seconds, 1e-9) / 1e6:.1f} M non-zeros/s)"
    )
    return result


def _republish(store: Path, rep) -> None:
    """A store published for a URL (`hmba-db publish`) gets its published catalog rewritten for the new
    build, so it never names a snapshot that a later build retires; the new files still need uploading."""
    from .publish import PUBLISHED_JSON, publish

    record = Path(store) / PUBLISHED_JSON
    if not record.exists():
        return
    try:
        base = json.loads(record.read_text())["base_url"]
    except (OSError, ValueError, KeyError):
        rep.log(f"  note: {record} is unreadable; run hmba-db publish {store} --base-url URL again")
        return
    done = publish(store, base)
    rep.log(
        f"re-published {store} for {base}: upload the {len(done['files']):,} files {record.name} lists "
        "(the new snapshot and published.duckdb)"
    )


def _fingerprints(release: Path, species, entries, lay: Layout) -> dict:
    """Source files the store derives from: manifest md5 and size, plus mtime to notice a replaced file."""
    out = {}
    by_path = {e.relative_path: e for e in entries}
    for s in species:
        for kind in R.MATRIX_KINDS:
            rel = lay.matrix(s, kind)
            path = release / rel
            if path.exists():
                e = by_path.get(rel)
                out[rel] = {
                    "md5": e.file_hash if e else None,
                    "size": path.stat().st_size,
                    "mtime_ns": path.stat().st_mtime_ns,
                }
    return out


def _load_state(staging: Path, params: dict, rep: Reporter) -> dict:
    path = staging / "state.json"
    if path.exists():
        import json

        try:
            state = json.loads(path.read_text())
        except ValueError:
            state = {}
        if state.get("params") == params:
            done = sum(len(v.get("buckets", {})) for v in state.get("species", {}).values())
            rep.log(f"resuming the build in {staging} ({done} bucket(s) already written)")
            return state
        rep.log(f"discarding an unfinished build in {staging} made with other inputs")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    state = {"params": params, "species": {}, "build_id": new_build_id()}  # kept when the build resumes
    save_json(path, state)
    return state


class _Progress:
    """Picklable progress callback: workers put non-zero counts on a managed queue."""

    def __init__(self, q):
        self.q = q

    def __call__(self, n: int) -> None:
        self.q.put(n)


CELL_PLAN = "cell_plan.npz"  # in a species' scatter folder: the cell buckets, for every worker


def _scatter_job(path, plan, r0, r1, staging, tag, q):
    plan_file = Path(staging) / CELL_PLAN
    cells = CellPlan.load(plan_file) if plan_file.exists() else None  # none: no cell-major copy
    return scatter(Path(path), plan, r0, r1, Path(staging), tag, _Progress(q), cells)


class _Statistics:
    """Picklable on_sorted callback of a sort job: the bucket's statistics, one part file per table."""

    def __init__(self, k: int, groups: Groups, work: Path):
        self.k, self.groups, self.work = k, groups, work

    def __call__(self, g0, counts, cells, values) -> None:
        batches = gene_slices(g0, counts, cells, values, STATS_BATCH_ROWS)
        bucket_stats(batches, self.k, g0, len(counts), self.groups, self.work)


def _sort_job(plan, k, staging, tags, out, q, statistics=None):
    n = sort_bucket(plan, k, Path(staging), tags, Path(out), statistics)
    q.put(n)
    return n


def _cell_sort_job(k, staging, tags, out, q):
    n = sort_cells(k, Path(staging), tags, Path(out), CellPlan.load(Path(staging) / CELL_PLAN))
    q.put(n)
    return n


def _build_species(
    release, staging, species, lay: Layout, jobs, plan_args, state, pool, q, rep, has_log2, order, cell_groups
) -> dict:
    raw_path = release / lay.matrix(species, "raw")
    with CsrReader(raw_path) as m:
        shape, nnz, indptr = m.shape, m.nnz, m.indptr()
        cell_labels = m.obs_names()
        gene_ids = m.var_names()
        symbols = m.var_column("gene_symbol") if "gene_symbol" in m.var_columns() else np.full(shape[1], "")
    plan = plan_buckets(shape[1], nnz, *plan_args)
    sstate = state["species"].setdefault(species, {"scatter": {}, "buckets": {}, "cell_buckets": {}})
    scatter_dir = staging / "_scatter" / species
    scatter_dir.mkdir(parents=True, exist_ok=True)
    (scatter_dir / CELL_PLAN).unlink(missing_ok=True)
    if order is None:  # cell_major=False: no cell-major copy, no cell buckets
        cells = CellPlan(np.empty(0, np.int32), np.zeros(1, np.int64), np.empty(0, np.int32))
    elif len(order) != shape[0]:
        raise HmbaError(
            f"{raw_path}: the taxonomy order of its cells is unknown; run hmba-db check {release}"
        )
    else:
        cells = plan_cells(order, np.diff(indptr), plan_args[0])
        cells.save(scatter_dir / CELL_PLAN)
    splits = row_split(indptr, max(1, jobs))
    tags = [f"p{i}" for i in range(len(splits))]
    sstate.setdefault("tags", tags)
    if sstate["tags"] != tags:
        raise HmbaError(
            f"{staging}: an unfinished build used another --jobs; delete it or use the same --jobs"
        )

    rep.step(
        f"{species}: scatter {shape[0]:,} cells x {shape[1]:,} genes, {nnz:,} non-zeros "
        f"into {plural(plan.n_buckets, 'gene bucket')} and {plural(cells.n_buckets, 'cell bucket')}"
    )
    todo: dict[int | str, tuple] = {
        t: (_scatter_job, (str(raw_path), plan, r0, r1, str(scatter_dir), t, q))
        for t, (r0, r1) in zip(tags, splits, strict=True)
        if t not in sstate["scatter"]
    }
    for t in todo:  # a part killed mid-way is redone from scratch
        for p in scatter_dir.glob(f"*.{t}.*"):
            p.unlink()
    done_nnz = sum(
        int(indptr[r1] - indptr[r0])
        for t, (r0, r1) in zip(tags, splits, strict=True)
        if t in sstate["scatter"]
    )

    def scattered(tag, res):
        sstate["scatter"][tag] = res
        save_json(staging / "state.json", state)

    with rep.bar(nnz, f"{species} scatter", unit="nz") as bar:
        bar.update(done_nnz)
        run_pool(pool, q, todo, bar, scattered)

    rep.step(
        f"{species}: sort and write {plural(plan.n_buckets, 'gene bucket')} (with their statistics) and "
        f"{plural(cells.n_buckets, 'cell bucket')}"
    )
    totals = np.concatenate([np.load(scatter_dir / f"totals.{t}.npy") for t in tags])
    detected = np.concatenate([np.load(scatter_dir / f"detected.{t}.npy") for t in tags])
    if cell_groups is None or len(cell_groups) != shape[0]:
        raise HmbaError(f"{raw_path}: the taxonomy of its cells is unknown; run hmba-db check {release}")
    work = staging / STATS_WORK
    groups = plan_groups(cell_groups, totals, species, work, str(release / lay.csv(R.CELL_MEMBERSHIP)))
    for k in list(sstate["buckets"]):  # resuming: a bucket whose statistics are not all there is done again
        if not parts_written(work, species, int(k)):
            del sstate["buckets"][k]
    todo = {
        k: (
            _sort_job,
            (
                plan,
                k,
                str(scatter_dir),
                tags,
                str(bucket_file(staging, species, k)),
                q,
                _Statistics(k, groups, work),
            ),
        )
        for k in range(plan.n_buckets)
        if str(k) not in sstate["buckets"]
    }
    done_cells = sstate.setdefault("cell_buckets", {})
    todo.update(
        {
            f"c{k}": (
                _cell_sort_job,
                (k, str(scatter_dir), tags, str(cell_bucket_file(staging, species, k)), q),
            )
            for k in range(cells.n_buckets)
            if str(k) not in done_cells
        }
    )

    log2 = {"checked": False}
    if has_log2:  # one more task beside the buckets: a worker does it while the others sort
        todo["log2"] = (_log2_check, (raw_path, release / lay.matrix(species, "log2"), totals))

    def written(k, n):
        nonlocal log2
        if k == "log2":
            log2 = n
            return
        if isinstance(k, str):  # a cell bucket, "c<K>"
            done_cells[k[1:]] = n
        else:
            sstate["buckets"][str(k)] = n
        save_json(staging / "state.json", state)

    with rep.bar(2 * nnz, f"{species} sort", unit="nz") as bar:
        bar.update(sum(sstate["buckets"].values()) + sum(done_cells.values()))
        run_pool(pool, q, todo, bar, written)

    stats = [BucketStats() for _ in range(plan.n_buckets)]
    cell_stats = [BucketStats() for _ in range(cells.n_buckets)]
    for t in tags:
        for k, s in enumerate(sstate["scatter"][t]["stats"]):
            stats[k].add(BucketStats(**s))
        for k, s in enumerate(sstate["scatter"][t]["cell_stats"]):
            cell_stats[k].add(BucketStats(**s))
    zeros = sum(sstate["scatter"][t].get("explicit_zeros", 0) for t in tags)
    if zeros:
        rep.log(f"  {species}: {zeros:,} explicit zeros stored in the matrix were dropped (not expression)")
    _write_cell_totals(staging, species, cell_labels, totals, detected)
    _write_gene_buckets(staging, species, gene_ids, symbols, plan)
    return {
        "cells": int(shape[0]),
        "genes": int(shape[1]),
        "nnz": int(nnz) - zeros,  # what the store holds
        "explicit_zeros_dropped": zeros,
        "sum": int(totals.sum()),
        "genes_per_bucket": plan.genes_per_bucket,
        "buckets": plan.n_buckets,
        "bucket_stats": [s.__dict__ for s in stats],
        "cell_buckets": cells.n_buckets,
        "cell_bucket_stats": [s.__dict__ for s in cell_stats],
        "log2_check": log2,
    }


def _write_cell_totals(staging: Path, species: str, labels, totals, detected) -> None:
    path = species_part(staging, "cell_totals", species)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(labels)
    columns = [
        pa.array([species] * n).dictionary_encode(),
        pa.array(np.arange(n, dtype=np.int32)),
        pa.array(labels.astype(str)),
        pa.array(totals.astype(np.int64)),
        pa.array(detected.astype(np.int32)),
    ]
    pq.write_table(pa.Table.from_arrays(columns, schema=S.CELL_TOTALS_FILE), path, compression="zstd")


def _write_gene_buckets(staging: Path, species: str, gene_ids, symbols, plan: BucketPlan) -> None:
    path = species_part(staging, "gene_buckets", species)
    path.parent.mkdir(parents=True, exist_ok=True)
    idx = np.arange(len(gene_ids), dtype=np.int32)
    columns = [
        pa.array([species] * len(gene_ids)).dictionary_encode(),
        pa.array(idx),
        pa.array(gene_ids.astype(str)),
        pa.array([s if s else None for s in symbols], type=pa.string()),
        pa.array(plan.bucket_of(idx).astype(np.int32)),
    ]
    pq.write_table(pa.Table.from_arrays(columns, schema=S.GENE_BUCKETS_FILE), path, compression="zstd")


def _log2_check(raw_path: Path, log2_path: Path, totals: np.ndarray) -> dict:
    """Derived log2(CPM+1) must equal the release's log2 file on a sample of cells, or the build fails."""
    rng = np.random.default_rng(0)
    n = len(totals)
    rows = np.unique(rng.choice(n, size=min(n, LOG2_SAMPLE_CELLS), replace=False)) if n else np.array([], int)
    compared = 0
    with CsrReader(raw_path) as raw, CsrReader(log2_path) as log2:
        if raw.shape != log2.shape:
            raise ReleaseError(
                f"{log2_path}: shape {log2.shape} differs from the raw matrix's {raw.shape}", path=log2_path
            )
        for r in rows:
            a, b = raw.rows(int(r), int(r) + 1), log2.rows(int(r), int(r) + 1)
            a.eliminate_zeros()  # explicit zeros are not expression in either file
            b.eliminate_zeros()
            if a.nnz == 0 and b.nnz == 0:
                continue
            expected = log2_cpm(a.data, totals[r])
            same_cols = a.nnz == b.nnz and np.array_equal(a.indices, b.indices)
            if not same_cols or not np.allclose(b.data, expected, rtol=LOG2_RTOL, atol=LOG2_ATOL):
                where = (
                    "its non-zero genes differ"
                    if not same_cols
                    else f"max difference {np.abs(b.data - expected).max():.3g}"
                )
                raise ReleaseError(
                    f"{log2_path}: row {r}: log2 values are not log2(raw / rowsum * 1e6 + 1) of the raw "
                    f"matrix ({where}); the raw and log2 files disagree: re-download both",
                    path=log2_path,
                    key=int(r),
                )
            compared += 1
    return {"checked": True, "cells": compared, "rtol": LOG2_RTOL}


def _publish(staging: Path, store: Path, build_id: str, keep_old: float) -> None:
    """Move the verified staging folder in as a new snapshot, then point the store's links at it.

    Each link is swapped by a rename, so a reader opening `catalog.duckdb` gets the old build or the new
    one, whole; a reader already open keeps the old snapshot, whose files stay until `keep_old` seconds
    after it stopped being current."""
    store.mkdir(parents=True, exist_ok=True)
    final = snapshot_dir(store, build_id)
    final.parent.mkdir(exist_ok=True)
    if not os.access(final.parent, os.W_OK | os.X_OK):  # before the resumable work is cleared away
        raise HmbaError(
            f"{final.parent}: not writable, so the verified build cannot be published; make it writable "
            "and run the same build again (it resumes, staging kept)"
        )
    previous = files_root(store)
    # The resumable work goes only now: until here, a killed or failed build resumes from it.
    for work in ("_scatter", STATS_WORK):
        shutil.rmtree(staging / work, ignore_errors=True)
    (staging / "state.json").unlink(missing_ok=True)
    os.replace(staging, final)
    for name in (CATALOG, BUILD_JSON):
        tmp = store / f".{name}.{build_id}"
        os.symlink(f"{SNAPSHOTS}/{build_id}/{name}", tmp)
        os.replace(tmp, store / name)
    if previous != store and previous != final and previous.is_dir():
        (previous / RETIRED).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    for name in ("expression", TABLES, "aggregates"):  # a store built before snapshots: now unused
        shutil.rmtree(store / name, ignore_errors=True)
    collect_snapshots(store, keep_old)


def collect_snapshots(store: Path, keep_old: float) -> list[str]:
    """Delete the snapshots that stopped being current more than `keep_old` seconds ago; return their ids.

    The grace period is how long a reader that opened an older build can go on querying it: one that
    outlives it gets DuckDB's "No files found" naming the snapshot, never another build's files."""
    current = files_root(store)
    removed = []
    for snap in sorted((Path(store) / SNAPSHOTS).glob("*")):
        if snap == current or not snap.is_dir():
            continue
        retired = snap / RETIRED
        if not retired.exists():  # left by an interrupted publish: retire it from now
            retired.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
        if time.time() - retired.stat().st_mtime >= keep_old:
            shutil.rmtree(snap)
            removed.append(snap.name)
    return removed
