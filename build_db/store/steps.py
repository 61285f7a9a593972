"""The build's steps, named, over one build context: what `hmba-db build` runs, in order.

`plan(species)` is the list: check the release, then per species scatter and sort, then the metadata
tables, the statistics files, the catalog, verify and publish. Each step says what it reads and writes;
the runner (store/build.py) numbers the progress lines from the list, records each finished step in the
state file so that a resumed build skips it (the scatter and the sort also resume part by part inside), and
writes each step's seconds into build.json under its name (in the manner of cellxgene-census's builder).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import HmbaError, ReleaseError
from ..files import save_json
from ..progress import Reporter, plural, run_pool, worker_pool
from ..release import layout as R
from ..release.check import CheckReport, check_release
from ..release.h5ad import CsrReader
from ..release.manifest import Layout
from ..release.normalise import log2_cpm
from ..version import __version__
from . import integrity
from . import schema as S
from .catalog import relocate, sql_literal, write_catalog
from .guard import check_disk
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

# 2: snapshots (a build id kept across a resume); 3: cell buckets, framed counts; 4: statistics in the sort;
# 5: steps recorded by name
STATE_VERSION = 5
LOG2_SAMPLE_CELLS = 500  # rows compared against the release's log2 file
# log2 values are float32: allow a few float32 ulps between our float64 formula and the release's.
LOG2_RTOL, LOG2_ATOL = 1e-5, 1e-5


@dataclass
class BuildResult:
    store: Path
    species: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False


@dataclass
class SpeciesWork:
    """What one species' scatter and sort share: the matrix's shape and row pointers, the bucket plans,
    the row splits of the workers, the staging folder and its part of the state."""

    raw_path: Path
    shape: tuple[int, int]
    nnz: int
    indptr: np.ndarray
    plan: BucketPlan
    cells: CellPlan
    splits: list[tuple[int, int]]
    tags: list[str]
    scatter_dir: Path
    sstate: dict


@dataclass
class BuildContext:
    """One build: its inputs and options, the staging folder and its state, and what the steps hand on."""

    release: Path
    store: Path
    species: tuple[str, ...]
    entries: list
    lay: Layout
    version: str
    jobs: int
    bucket_nnz: int
    bucket_genes: int
    keep_old: float
    cell_major: bool
    rep: Reporter
    staging: Path = field(init=False)
    report: CheckReport | None = None
    params: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    result: BuildResult = field(init=False)
    info: dict = field(default_factory=dict)
    work: dict[str, SpeciesWork] = field(default_factory=dict)
    _pool: Any = None
    _exit: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        self.staging = staging_dir(self.store)
        self.result = BuildResult(self.store)

    @property
    def has_log2(self) -> dict[str, bool]:
        return {s: (self.release / self.lay.matrix(s, "log2")).exists() for s in self.species}

    def pool(self):
        """The worker pool and its progress queue, started when a step first needs them."""
        if self._pool is None:
            self._pool = self._exit.enter_context(worker_pool(self.jobs))
        return self._pool

    def close(self) -> None:
        self._exit.close()
        self._pool = None

    def save_state(self) -> None:
        save_json(self.staging / "state.json", self.state)

    def species_work(self, species: str) -> SpeciesWork:
        """The species' matrix shape and plans (opened once per build run, for its scatter and its sort)."""
        if species not in self.work:
            assert self.report is not None  # the check step ran
            raw_path = self.release / self.lay.matrix(species, "raw")
            with CsrReader(raw_path) as m:
                shape, nnz, indptr = m.shape, m.nnz, m.indptr()
            plan = plan_buckets(shape[1], nnz, self.bucket_nnz, self.bucket_genes)
            sstate = self.state["species"].setdefault(
                species, {"scatter": {}, "buckets": {}, "cell_buckets": {}}
            )
            scatter_dir = self.staging / "_scatter" / species
            scatter_dir.mkdir(parents=True, exist_ok=True)
            (scatter_dir / CELL_PLAN).unlink(missing_ok=True)
            order = self.report.cell_order.get(species) if self.cell_major else None
            if order is None:  # cell_major=False: no cell-major copy, no cell buckets
                cells = CellPlan(np.empty(0, np.int32), np.zeros(1, np.int64), np.empty(0, np.int32))
            elif len(order) != shape[0]:
                raise HmbaError(
                    f"{raw_path}: the taxonomy order of its cells is unknown; run hmba-db check "
                    f"{self.release}"
                )
            else:
                cells = plan_cells(order, np.diff(indptr), self.bucket_nnz)
                cells.save(scatter_dir / CELL_PLAN)
            splits = row_split(indptr, max(1, self.jobs))
            tags = [f"p{i}" for i in range(len(splits))]
            sstate.setdefault("tags", tags)
            if sstate["tags"] != tags:
                raise HmbaError(
                    f"{self.staging}: an unfinished build used another --jobs; delete it or use the same "
                    "--jobs"
                )
            self.work[species] = SpeciesWork(
                raw_path, shape, nnz, indptr, plan, cells, splits, tags, scatter_dir, sstate
            )
        return self.work[species]


@dataclass(frozen=True)
class Step:
    """A named step: its progress line (from the context, once the earlier steps ran), what it reads and
    writes, its work (returning what a resumed build needs of it, JSON), and how a resumed build that
    finds it done takes that back (None: never skipped)."""

    name: str
    title: Callable[[BuildContext], str]
    reads: str
    writes: str
    run: Callable[[BuildContext], Any]
    restore: Callable[[BuildContext, Any], None] | None = None


def plan(species: tuple[str, ...]) -> list[Step]:
    """The build's steps in order, for these species."""
    steps = [
        Step(
            "check",
            lambda ctx: f"check the release ({', '.join(ctx.species)})",
            "the release: manifest, CSVs, h5ad structure, md5s of the files not vouched for",
            "the staging folder and its state (a resumed build's are kept when the inputs are the same)",
            check,
        )
    ]
    for s in species:
        steps += [
            Step(
                f"scatter:{s}",
                partial(_scatter_title, species=s),
                f"the {s} raw matrix, in row blocks (both cores, two row ranges)",
                f"_scatter/{s}/: runs per gene bucket and cell bucket, per-cell totals",
                partial(scatter_species, species=s),
                _nothing,
            ),
            Step(
                f"sort:{s}",
                partial(_sort_title, species=s),
                f"_scatter/{s}/, the cells' taxonomy groups",
                f"expression/ and expression_by_cell/ for {s}, _stats/ parts, tables/cell_totals and "
                "tables/gene_buckets parts",
                partial(sort_species, species=s),
                partial(_restore_sort, species=s),
            ),
        ]
    steps += [
        Step(
            "metadata",
            lambda ctx: "metadata tables: cells, genes, taxonomy, donors, libraries",
            "the release's CSVs, tables/cell_totals and tables/gene_buckets parts",
            "tables/*.parquet",
            metadata,
            lambda ctx, out: ctx.info.__setitem__("metadata", out),
        ),
        Step(
            "statistics",
            lambda ctx: (
                "statistics files: per taxonomy term, region x Group and donor x Group, for every gene"
            ),
            "_stats/ parts",
            "aggregates/",
            statistics,
            lambda ctx, out: ctx.info.__setitem__("statistics", out),
        ),
        Step(
            "catalog",
            lambda ctx: "catalog.duckdb: tables, views, descriptions",
            "tables/, expression/, aggregates/",
            "build.json, catalog.duckdb",
            catalog,
            _restore_catalog,
        ),
        Step(
            "verify",
            lambda ctx: "verify the store against the source",
            "every file the build wrote, build.json",
            "nothing",
            verify,
            _nothing,
        ),
        Step(
            "publish",
            lambda ctx: f"publish {ctx.store}",
            "the staging folder",
            "snapshots/<build id>/, catalog.duckdb and build.json links",
            publish,
        ),
    ]
    return steps


def _nothing(ctx: BuildContext, out: Any) -> None:
    pass


def _restore_sort(ctx: BuildContext, out: dict, species: str) -> None:
    ctx.result.species[species] = out


# --- check -----------------------------------------------------------------------------------------------


def check(ctx: BuildContext) -> None:
    release, species = ctx.release, ctx.species
    has_log2 = ctx.has_log2
    parts = ("raw", "metadata", "taxonomy") + (("log2",) if all(has_log2.values()) else ())
    # Every source file's md5 against the manifest before anything is transposed (a flipped byte in an h5ad
    # built silently before), but for the files download or synth recorded as verified, unchanged since.
    checked = check_release(
        release, species=species, parts=parts, version=ctx.version, keep_cells=True, md5="untrusted"
    )
    report = ctx.report = check_metadata(checked, ctx.version)
    if not report.ok:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
        raise ReleaseError(f"{first}{more}; run `hmba-db check {release}` for the full list", path=first.path)
    for note in report.notes:
        ctx.rep.log(f"  note: {note}")
    largest = 0
    for s in species:
        with CsrReader(release / ctx.lay.matrix(s, "raw")) as m:
            largest = max(largest, m.nnz)
    check_disk(ctx.staging, largest, ctx.cell_major)
    ctx.params = {
        "release": str(release),
        "version": ctx.version,
        "species": list(species),
        "bucket_nnz": ctx.bucket_nnz,
        "bucket_genes": ctx.bucket_genes,
        "cell_major": ctx.cell_major,
        "sources": _fingerprints(release, species, ctx.entries, ctx.lay),
        "state_version": STATE_VERSION,
    }
    ctx.state = _load_state(ctx.staging, ctx.params, ctx.rep)
    ctx.result.resumed = bool(ctx.state.get("steps"))
    missing = [s for s in species if ctx.cell_major and s not in report.cell_order]
    if missing:
        raise HmbaError(
            f"{release}: the taxonomy order of the {missing[0]} cells is unknown; run hmba-db check"
        )


# --- per species: scatter, then sort ------------------------------------------------------------------


def _scatter_title(ctx: BuildContext, species: str) -> str:
    w = ctx.species_work(species)
    return (
        f"{species}: scatter {w.shape[0]:,} cells x {w.shape[1]:,} genes, {w.nnz:,} non-zeros "
        f"into {plural(w.plan.n_buckets, 'gene bucket')} and {plural(w.cells.n_buckets, 'cell bucket')}"
    )


def _sort_title(ctx: BuildContext, species: str) -> str:
    w = ctx.species_work(species)
    return (
        f"{species}: sort and write {plural(w.plan.n_buckets, 'gene bucket')} (with their statistics) and "
        f"{plural(w.cells.n_buckets, 'cell bucket')}"
    )


def scatter_species(ctx: BuildContext, species: str) -> None:
    w = ctx.species_work(species)
    pool, q = ctx.pool()
    todo: dict[int | str, tuple] = {
        t: (_scatter_job, (str(w.raw_path), w.plan, r0, r1, str(w.scatter_dir), t, q))
        for t, (r0, r1) in zip(w.tags, w.splits, strict=True)
        if t not in w.sstate["scatter"]
    }
    for t in todo:  # a part killed mid-way is redone from scratch
        for p in w.scatter_dir.glob(f"*.{t}.*"):
            p.unlink()
    done_nnz = sum(
        int(w.indptr[r1] - w.indptr[r0])
        for t, (r0, r1) in zip(w.tags, w.splits, strict=True)
        if t in w.sstate["scatter"]
    )

    def scattered(tag, res):
        w.sstate["scatter"][tag] = res
        ctx.save_state()

    with ctx.rep.bar(w.nnz, f"{species} scatter", unit="nz") as bar:
        bar.update(done_nnz)
        run_pool(pool, q, todo, bar, scattered)


def sort_species(ctx: BuildContext, species: str) -> dict:
    """The species' buckets sorted and written, with their statistics; its summary for build.json."""
    assert ctx.report is not None  # the check step ran
    w = ctx.species_work(species)
    release, staging, sstate = ctx.release, ctx.staging, w.sstate
    pool, q = ctx.pool()
    totals = np.concatenate([np.load(w.scatter_dir / f"totals.{t}.npy") for t in w.tags])
    detected = np.concatenate([np.load(w.scatter_dir / f"detected.{t}.npy") for t in w.tags])
    cell_groups = ctx.report.cell_groups.get(species)
    if cell_groups is None or len(cell_groups) != w.shape[0]:
        raise HmbaError(f"{w.raw_path}: the taxonomy of its cells is unknown; run hmba-db check {release}")
    work = staging / STATS_WORK
    groups = plan_groups(cell_groups, totals, species, work, str(release / ctx.lay.csv(R.CELL_MEMBERSHIP)))
    for k in list(sstate["buckets"]):  # resuming: a bucket whose statistics are not all there is done again
        if not parts_written(work, species, int(k)):
            del sstate["buckets"][k]
    todo: dict[int | str, tuple] = {
        k: (
            _sort_job,
            (
                w.plan,
                k,
                str(w.scatter_dir),
                w.tags,
                str(bucket_file(staging, species, k)),
                q,
                _Statistics(k, groups, work),
            ),
        )
        for k in range(w.plan.n_buckets)
        if str(k) not in sstate["buckets"]
    }
    done_cells = sstate.setdefault("cell_buckets", {})
    todo.update(
        {
            f"c{k}": (
                _cell_sort_job,
                (k, str(w.scatter_dir), w.tags, str(cell_bucket_file(staging, species, k)), q),
            )
            for k in range(w.cells.n_buckets)
            if str(k) not in done_cells
        }
    )
    log2: dict = {"checked": False}
    if ctx.has_log2[species]:  # one more task beside the buckets: a worker does it while the others sort
        todo["log2"] = (_log2_check, (w.raw_path, release / ctx.lay.matrix(species, "log2"), totals))

    def written(k, n):
        nonlocal log2
        if k == "log2":
            log2 = n
            return
        if isinstance(k, str):  # a cell bucket, "c<K>"
            done_cells[k[1:]] = n
        else:
            sstate["buckets"][str(k)] = n
        ctx.save_state()

    with ctx.rep.bar(2 * w.nnz, f"{species} sort", unit="nz") as bar:
        bar.update(sum(sstate["buckets"].values()) + sum(done_cells.values()))
        run_pool(pool, q, todo, bar, written)

    stats = [BucketStats() for _ in range(w.plan.n_buckets)]
    cell_stats = [BucketStats() for _ in range(w.cells.n_buckets)]
    for t in w.tags:
        for k, s in enumerate(sstate["scatter"][t]["stats"]):
            stats[k].add(BucketStats(**s))
        for k, s in enumerate(sstate["scatter"][t]["cell_stats"]):
            cell_stats[k].add(BucketStats(**s))
    zeros = sum(sstate["scatter"][t].get("explicit_zeros", 0) for t in w.tags)
    if zeros:
        ctx.rep.log(
            f"  {species}: {zeros:,} explicit zeros stored in the matrix were dropped (not expression)"
        )
    with CsrReader(w.raw_path) as m:
        cell_labels, gene_ids = m.obs_names(), m.var_names()
        symbols = m.var_column("gene_symbol") if "gene_symbol" in m.var_columns() else np.full(w.shape[1], "")
    _write_cell_totals(staging, species, cell_labels, totals, detected)
    _write_gene_buckets(staging, species, gene_ids, symbols, w.plan)
    summary = {
        "cells": int(w.shape[0]),
        "genes": int(w.shape[1]),
        "nnz": int(w.nnz) - zeros,  # what the store holds
        "explicit_zeros_dropped": zeros,
        "sum": int(totals.sum()),
        "genes_per_bucket": w.plan.genes_per_bucket,
        "buckets": w.plan.n_buckets,
        "bucket_stats": [s.__dict__ for s in stats],
        "cell_buckets": w.cells.n_buckets,
        "cell_bucket_stats": [s.__dict__ for s in cell_stats],
        "log2_check": log2,
    }
    ctx.result.species[species] = summary
    return summary


# --- the shared steps ------------------------------------------------------------------------------------


def metadata(ctx: BuildContext) -> dict:
    report = MetadataBuilder(ctx.release, ctx.staging, list(ctx.species), ctx.version).build()
    for sp, counts in report["cells"].items():
        ctx.rep.log(
            f"  {sp}: {counts['cells']:,} cells, {counts['assigned']:,} with a cluster, "
            f"{counts['unassigned']:,} without (left joins: their taxonomy columns are NULL)"
        )
        if counts["not_in_cell_metadata"] or counts["cell_metadata_rows_without_matrix_cell"]:
            ctx.rep.log(
                f"  {sp}: {counts['not_in_cell_metadata']:,} matrix cells are not in cell_metadata.csv "
                "(kept, in_cell_metadata = false, NULL metadata, no cluster); "
                f"{counts['cell_metadata_rows_without_matrix_cell']:,} cell_metadata rows have no "
                "matrix cell (left out)"
            )
    ctx.info["metadata"] = report
    return report


def statistics(ctx: BuildContext) -> dict:
    t0 = time.monotonic()
    pool, q = ctx.pool()
    rows = merge_stats(ctx.staging, ctx.result.species, pool, q, ctx.rep)
    ctx.close()  # the last step with workers: their memory goes back before the catalog and verify
    # The sums are taken in the sort workers; this step's time is the merge of their parts into files.
    out = {"merge_seconds": round(time.monotonic() - t0, 2), "rows": rows}
    ctx.info["statistics"] = out
    return out


CATALOG_KEYS = ("build_id", "tool_version", "built_at", "release", "release_version", "taxonomy")


def catalog(ctx: BuildContext) -> dict:
    assert ctx.report is not None  # the check step ran
    build_id = ctx.state.setdefault("build_id", new_build_id())
    info = {
        "build_id": build_id,
        "tool": "hmba-db",
        "tool_version": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "release": str(ctx.release),
        "release_version": ctx.version,
        # each source's md5 (the manifest's), and how the build found the file's to be it
        "sources": {
            rel: {**v, "md5_checked": ctx.report.md5_checked.get(rel)}
            for rel, v in ctx.params["sources"].items()
        },
        "parameters": {
            "bucket_nnz": ctx.bucket_nnz,
            "bucket_genes": ctx.bucket_genes,
            "jobs": ctx.jobs,
            "cell_major": ctx.cell_major,
        },
        "species": ctx.result.species,
        **R.terms_of_use(ctx.version, ctx.lay.taxonomy_dir, ctx.lay.taxonomy_version),
        "metadata": ctx.info.get("metadata"),
        "statistics": ctx.info.get("statistics"),
    }
    ctx.info = info
    save_json(ctx.staging / "build.json", info)
    target = snapshot_dir(ctx.store, build_id)
    bound = write_catalog(ctx.staging, target, {k: str(info[k]) for k in CATALOG_KEYS})
    return {"bound": bound}


def _restore_catalog(ctx: BuildContext, out: dict) -> None:
    ctx.info = json.loads((ctx.staging / "build.json").read_text())


def verify(ctx: BuildContext) -> None:
    # Not overlapped with the steps before: tried, no faster (both cores are busy verifying) and peak memory
    # rose from 1.45 to 2.15 GiB at --scale 0.1.
    problems = verify_store(ctx.staging, jobs=ctx.jobs, catalog=False)  # its views name the final place
    if problems:
        raise HmbaError(
            f"verification failed, store not published (staging kept at {ctx.staging}): {problems[0]}"
        )


def publish(ctx: BuildContext) -> None:
    """build.json gets the steps' seconds (the publish step's own is not in it), then the snapshot goes
    in place and the store's links point at it."""
    info = ctx.info
    bound = ctx.state["steps"]["catalog"]["out"]["bound"]
    info["step_seconds"] = {name: s["seconds"] for name, s in ctx.state["steps"].items()}
    save_json(ctx.staging / "build.json", info)
    _publish(ctx.staging, ctx.store, info["build_id"], ctx.keep_old)
    if not bound:
        relocate(ctx.store)
    _remember_files(snapshot_dir(ctx.store, info["build_id"]))
    _republish(ctx.store, ctx.rep)


def _remember_files(root: Path) -> None:
    """The files the verify step read back, recorded as intact for this user: a reader's first connect
    then checks sizes only, not a CRC pass over the whole store (store/integrity.py)."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"attach {sql_literal(root / CATALOG)} as built (read_only)")
        rows = integrity.listed(con, "built")
    finally:
        con.close()
    if rows:
        integrity.remember(root, rows)


# --- the steps' helpers and the worker jobs ------------------------------------------------------------


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
    # The resumable work goes only now: until here, a killed or failed build resumes from it. The state
    # file moves in with the snapshot and goes once the links name it: a build killed in between finds it
    # there and resumes the publish (recover_publish).
    _clear_work(staging, keep_state=True)
    os.replace(staging, final)
    for name in (CATALOG, BUILD_JSON):
        _point(store, name, build_id)
    if previous != store and previous != final and previous.is_dir():
        (previous / RETIRED).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    (final / "state.json").unlink()
    for name in ("expression", TABLES, "aggregates"):  # a store built before snapshots: now unused
        shutil.rmtree(store / name, ignore_errors=True)
    collect_snapshots(store, keep_old)


def _point(store: Path, name: str, build_id: str) -> None:
    """Swap the store's link `name` (catalog.duckdb, build.json) to that snapshot's file in one step: a new
    link under a temporary name, renamed over the old one (a reader sees the old build or the new)."""
    tmp = store / f".{name}.{build_id}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"{SNAPSHOTS}/{build_id}/{name}", tmp)
    os.replace(tmp, store / name)


def _clear_work(folder: Path, keep_state: bool = False) -> None:
    """A build's resumable work, and its state file unless `keep_state`."""
    for work in ("_scatter", STATS_WORK):
        shutil.rmtree(folder / work, ignore_errors=True)
    if not keep_state:
        (folder / "state.json").unlink(missing_ok=True)


def recover_publish(store: Path, rep: Reporter) -> None:
    """Finish what a build killed while publishing left: a snapshot moved in that the links do not name
    yet goes back to staging, so the build resumes with its steps kept; one they already name was
    published and loses only its state file. Called under the build lock."""
    store = Path(store).absolute()
    for tmp in [*store.glob(f".{CATALOG}.*"), *store.glob(f".{BUILD_JSON}.*")]:
        if tmp.is_symlink():
            tmp.unlink()
    snaps = store / SNAPSHOTS
    if not snaps.is_dir():
        return
    current, staging = files_root(store), staging_dir(store)
    for snap in sorted(p for p in snaps.iterdir() if (p / "state.json").exists()):
        if snap != current and not staging.exists():
            os.replace(snap, staging)
            rep.log(f"a build was stopped while publishing {snap.name} into {store}: resuming it")
            continue
        if snap == current:  # stopped between the two links: build.json names the snapshot too
            _point(store, BUILD_JSON, snap.name)
        _clear_work(snap)


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
