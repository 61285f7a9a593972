"""`hmba-db synth`: write a complete synthetic release in the bucket's own tree.

Species are generated in parallel processes (one matrix pair each), streaming cells in chunks, so memory
stays flat whatever the scale. Each species writes its share of the cell-level CSVs to part files that
are concatenated at the end; the release appears under OUT only when complete (staged, then renamed).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import HmbaError
from ...progress import Reporter, run_pool, worker_pool
from .. import layout as R
from ..cache import CACHE_FILES, DownloadCache, mark_manifest_used
from ..h5ad import INT32_LIMIT, CsrWriter
from ..manifest import entry_for, read_manifest, write_manifest
from . import metadata as M
from .bucket import write_bucket_neighbours
from .model import gene_table, log2_cpm, sample_counts, species_model
from .taxonomy import ABBREVIATIONS, LEVEL_DESCRIPTIONS, Taxonomy, build_taxonomy

# 1,000 cells of ~6,400 bursts each keep a worker's scratch near 200 MB.
CELLS_PER_CHUNK = 1000
DEFAULT_SCALE = 0.001


@dataclass
class SpeciesResult:
    species: str
    cells: int
    nnz: int
    cluster_counts: np.ndarray
    seconds: float


def n_cells_for(species: str, scale: float) -> int:
    return max(1, round(R.REAL_CELLS[species] * scale))


def n_genes_for(species: str, genes: int | None) -> int:
    return R.REAL_GENES[species] if genes is None else min(genes, R.REAL_GENES[species])


def synth(
    out: Path,
    *,
    scale: float = DEFAULT_SCALE,
    genes: int | None = None,
    seed: int = 0,
    species: tuple[str, ...] = R.SPECIES,
    jobs: int = 2,
    raw_dtype: str = "float32",
    index_dtype: str = "auto",
    force: bool = False,
    bucket_shape: bool = True,
    quiet: bool = False,
) -> Path:
    """Write a synthetic HMBA-BG release under `out` and return its path.

    With `bucket_shape` (the default) the tree has the real bucket's shape (docs/release.md, 'The release's
    files, for reference'): the manifest also lists other datasets with the same file stems, other versions
    and nested paths, and the MapMyCells pair, all written too; and ~0.5% of each matrix's cells are absent
    from cell_metadata.csv. Without it, only the two HMBA-BG directories, every cell listed.

    Example:
        >>> synth(Path("data/release"), scale=0.001, genes=2000)  # doctest: +SKIP
    """
    out = Path(out)
    if not 0 < scale <= 1:  # nan fails this too
        raise HmbaError(f"--scale must be in (0, 1], got {scale}")
    unknown = [s for s in species if s not in R.SPECIES]
    if unknown:
        raise HmbaError(f"unknown species {', '.join(unknown)}; choose from {', '.join(R.SPECIES)}")
    if raw_dtype not in R.RAW_DTYPES:
        raise HmbaError(f"--raw-dtype must be one of {', '.join(R.RAW_DTYPES)}")
    _check_out(out, force)
    species = tuple(s for s in R.SPECIES if s in species)  # release order
    staging = out.with_name(out.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    rep = Reporter(quiet, steps=4)
    try:
        _write(staging, scale, genes, seed, species, jobs, raw_dtype, index_dtype, bucket_shape, rep)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    _record_cache(out)
    rep.log(f"release written to {out} in {rep.elapsed():.1f} s")
    return out


def _record_cache(out: Path) -> None:
    """Record every file as `download` does, after the rename (the record holds resolved absolute paths):
    the release is then a valid cache for abc_atlas_access too, which otherwise warns that the folder
    "appears to contain data files, but it has no record of what those files are", and for `download`,
    which trusts the files instead of hashing them again."""
    _, entries = read_manifest(out)
    DownloadCache(out).remember_all([(out / e.relative_path, e) for e in entries])
    mark_manifest_used(out, R.VERSION)


def _check_out(out: Path, force: bool) -> None:
    """OUT must be new, empty, or (with force) a release: --force replaces a release, never other files."""
    if out.exists() and not out.is_dir():
        raise HmbaError(f"{out}: a file is there, not a folder; choose a folder path for the release")
    if not out.exists() or not any(out.iterdir()):
        return
    if not force:
        raise HmbaError(f"{out} already exists and is not empty; choose a new directory or pass --force")
    listed = set()
    for manifest in out.glob("releases/*/manifest.json"):
        try:
            listed |= {e.relative_path for e in read_manifest(out, manifest.parent.name)[1]}
        except HmbaError:
            pass
        listed.add(str(manifest.relative_to(out)))
    listed |= set(CACHE_FILES)  # the cache's records, written beside the release
    foreign = sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and str(p.relative_to(out)) not in listed
    )
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        raise HmbaError(
            f"{out}: --force replaces a release, but {', '.join(foreign[:5])}{more} is not part of one; move "
            "those files out or choose another directory"
        )


def _write(
    root: Path,
    scale: float,
    genes: int | None,
    seed: int,
    species: tuple[str, ...],
    jobs: int,
    raw_dtype: str,
    index_dtype: str,
    bucket_shape: bool,
    rep: Reporter,
) -> None:
    tax = build_taxonomy(seed)
    donor_table = M.donors(seed)
    library_table = M.libraries(seed, donor_table)
    keep = donor_table.species_genus.isin(species)
    donor_table = donor_table[keep].reset_index(drop=True)
    library_table = library_table[library_table.donor_label.isin(donor_table.donor_label)].reset_index(
        drop=True
    )
    parts = root / ".parts"
    parts.mkdir()
    for d in (R.matrix_path("Human", "raw"), R.metadata_path("x"), R.taxonomy_path("x")):
        (root / d).parent.mkdir(parents=True, exist_ok=True)

    total_cells = sum(n_cells_for(s, scale) for s in species)
    rep.step(f"expression matrices: {total_cells:,} cells x {', '.join(species)} ({jobs} processes)")
    results: dict[str, SpeciesResult] = {}
    args = [
        (
            s,
            n_cells_for(s, scale),
            n_genes_for(s, genes),
            seed,
            str(root),
            raw_dtype,
            index_dtype,
            library_table,
            donor_table,
            M.OUTSIDE_METADATA_SHARE if bucket_shape else 0.0,
        )
        for s in species
    ]
    with worker_pool(jobs) as (pool, q):
        tasks = {a[0]: (_species_worker, (*a, q)) for a in args}

        def done(species: str, r: SpeciesResult) -> None:
            results[species] = r
            rep.log(f"  {r.species}: {r.cells:,} cells, {r.nnz:,} non-zeros in {r.seconds:.1f} s")

        with rep.bar(total_cells, "cells", unit="cell") as bar:
            run_pool(pool, q, tasks, bar, done)

    rep.step("cell metadata, cluster membership and embedding")
    for spec in (R.CELL_METADATA, R.CELL_MEMBERSHIP, R.EMBEDDING):
        with open(root / spec.relative_path(), "w", newline="") as dst:
            dst.write(",".join(spec.columns) + "\n")
            for s in species:
                part = parts / f"{spec.name}.{s}.csv"
                with open(part) as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
    shutil.rmtree(parts)

    rep.step("donors, libraries, value sets, genes and taxonomy")
    _csv(root, R.DONOR, donor_table)
    _csv(root, R.LIBRARY, library_table)
    _csv(root, R.VALUE_SETS, M.value_sets(seed))
    for s in species:
        _csv(root, R.GENE_TABLES[s], gene_table(s, n_genes_for(s, genes), seed))
    counts = sum((r.cluster_counts for r in results.values()), np.zeros(len(tax.clusters), dtype=np.int64))
    _taxonomy_csvs(root, tax, counts, seed)
    if bucket_shape:
        write_bucket_neighbours(root, tax, counts, seed)

    rep.step("manifest with sizes and md5 digests")
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    write_manifest(root, [entry_for(root, f) for f in files])


def _csv(root: Path, spec: R.CsvSpec, df: pd.DataFrame) -> None:
    df[list(spec.columns)].to_csv(root / spec.relative_path(), index=False)


def _species_worker(
    species: str,
    n_cells: int,
    n_genes: int,
    seed: int,
    root: str,
    raw_dtype: str,
    index_dtype: str,
    library_table: pd.DataFrame,
    donor_table: pd.DataFrame,
    outside_share: float,
    progress,
) -> SpeciesResult:
    t0 = time.monotonic()
    root_path = Path(root)
    tax = build_taxonomy(seed)
    model = species_model(species, n_genes, tax, seed)
    lay = M.layout(species, n_cells, tax, library_table, donor_table, seed)
    rng = np.random.default_rng([seed, 9, R.SPECIES.index(species)])
    var = model.genes.set_index("gene_identifier")[["gene_symbol"]]
    lib_of_cell_end = np.cumsum(lay.cells_per_library)
    cluster_counts = np.zeros(len(tax.clusters), dtype=np.int64)
    donor_of_lib = lay.libraries.donor_label.to_numpy()
    sample_of_lib = lay.libraries.barcoded_cell_sample_label.to_numpy()
    label_of_lib = lay.libraries.library_label.to_numpy()
    first_in_lib = np.concatenate([[0], lib_of_cell_end[:-1]])
    writers: dict[str, CsrWriter] = {}
    files = {
        spec.name: open(root_path / ".parts" / f"{spec.name}.{species}.csv", "w", newline="")
        for spec in (R.CELL_METADATA, R.CELL_MEMBERSHIP, R.EMBEDDING)
    }
    nnz = 0
    try:
        for start in range(0, n_cells, CELLS_PER_CHUNK):
            stop = min(n_cells, start + CELLS_PER_CHUNK)
            idx = np.arange(start, stop)
            lib = np.searchsorted(lib_of_cell_end, idx, side="right")
            group = _pick(lay.group_cdf[lib], rng.random(len(idx)))
            cluster = np.empty(len(idx), dtype=np.int64)
            for g in np.unique(group):
                sel = group == g
                cluster[sel] = lay.cluster_ids[g][_pick1(lay.cluster_cdf[g], rng.random(int(sel.sum())))]
            assigned = rng.random(len(idx)) < M.ASSIGNED_SHARE
            # Cells left out of cell_metadata.csv (and so of the taxonomy): in the matrix only.
            listed = rng.random(len(idx)) >= outside_share
            assigned &= listed
            raw = sample_counts(model, cluster, tax.cluster_group, np.where(assigned, 1.0, 0.6), rng)
            if not writers:
                itype = _index_dtype(index_dtype, raw.nnz / len(idx) * n_cells)
                for kind, dtype in (("raw", raw_dtype), ("log2", "float32")):
                    writers[kind] = CsrWriter(root_path / R.matrix_path(species, kind), var, dtype, itype)
            barcode = np.empty(len(idx), dtype=object)
            for li in np.unique(lib):
                sel = lib == li
                barcode[sel] = M.barcodes(int(li), idx[sel] - first_in_lib[li])
            cell_label = barcode + "-" + sample_of_lib[lib]
            writers["raw"].append(raw, cell_label)
            writers["log2"].append(log2_cpm(raw), cell_label)
            nnz += raw.nnz
            _cell_rows(
                files,
                species,
                lay,
                rng,
                lib,
                cluster,
                assigned,
                listed,
                raw,
                barcode,
                cell_label,
                donor_of_lib,
                sample_of_lib,
                label_of_lib,
                tax,
            )
            np.add.at(cluster_counts, cluster[assigned], 1)
            progress.put(len(idx))
    finally:
        for f in files.values():
            f.close()
        for w in writers.values():
            w.close()
    return SpeciesResult(species, n_cells, nnz, cluster_counts, time.monotonic() - t0)


def _index_dtype(choice: str, expected_nnz: float):
    if choice == "auto":
        # The ABC writer switches to int64 at 2^31-1 non-zeros; decide from the first chunk's density with
        # headroom, since the dtype is fixed when the datasets are created.
        return np.int64 if expected_nnz * 1.25 >= INT32_LIMIT else np.int32
    return np.dtype(choice).type


def _pick(cdf_rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum((cdf_rows < u[:, None]).sum(axis=1), cdf_rows.shape[1] - 1)


def _pick1(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


def _cell_rows(
    files,
    species,
    lay,
    rng,
    lib,
    cluster,
    assigned,
    listed,
    raw,
    barcode,
    cell_label,
    donor_of_lib,
    sample_of_lib,
    label_of_lib,
    tax,
) -> None:
    n = len(cell_label)
    totals = np.asarray(raw.sum(axis=1)).ravel()
    marmoset = species == "Marmoset"
    doublet = np.where(assigned, rng.beta(1.0, 12.0, n), rng.beta(2.0, 5.0, n))
    meta = pd.DataFrame(
        {
            "cell_label": cell_label,
            "cell_barcode": barcode,
            "donor_label": donor_of_lib[lib],
            "barcoded_cell_sample_label": sample_of_lib[lib],
            "library_label": label_of_lib[lib],
            "alignment_job_id": np.asarray(lay.job_ids, dtype=object)[lib],
            "doublet_score": np.nan if marmoset else np.round(doublet, 6),
            "umi_count": np.nan if marmoset else totals,
            "feature_matrix_label": R.matrix_stem(species),
            "dataset_label": R.DATASET_LABEL,
            "abc_sample_id": M.uuids(rng, n),
        }
    )
    # Rows are shuffled within each chunk: a loader must join on cell_label, never on position.
    meta = meta.iloc[rng.permutation(n)]
    meta[listed[meta.index]].to_csv(files["cell_metadata"], header=False, index=False)
    a = np.flatnonzero(assigned)
    a = a[rng.permutation(len(a))]
    clusters = [tax.clusters[c] for c in cluster[a]]
    pd.DataFrame(
        {
            "cell_label": cell_label[a],
            "cluster_alias": [c.name for c in clusters],
            "cluster_label": [c.label for c in clusters],
        }
    ).to_csv(files["cell_to_cluster_membership"], header=False, index=False)
    xy = lay.umap_centers[cluster[a]] + rng.normal(0.0, 0.12, size=(len(a), 2))
    pd.DataFrame(
        {"cell_label": cell_label[a], "x": np.round(xy[:, 0], 5), "y": np.round(xy[:, 1], 5)}
    ).to_csv(files["cell_2d_embedding_coordinates"], header=False, index=False)


def _taxonomy_csvs(root: Path, tax: Taxonomy, cluster_counts: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng([seed, 10])
    _csv(
        root,
        R.TERM_SET,
        pd.DataFrame(
            [(R.LEVEL_LABELS[lv], lv, LEVEL_DESCRIPTIONS[lv], i) for i, lv in enumerate(R.LEVELS)],
            columns=list(R.TERM_SET.columns),
        ),
    )
    rows = []
    for t in tax.terms:
        p = t.parent
        rows.append(
            (
                t.label,
                t.name,
                R.LEVEL_LABELS[t.level],
                t.level,
                t.color,
                t.order,
                R.LEVELS.index(t.level),
                p.label if p else "",
                p.name if p else "",
                R.LEVEL_LABELS[p.level] if p else "",
            )
        )
    _csv(root, R.TERM, pd.DataFrame(rows, columns=list(R.TERM.columns)))
    # number_of_cells is empty for some clusters in the real file: keep ~5% empty.
    counts = pd.array(cluster_counts, dtype="Int64")
    counts[rng.random(len(counts)) < 0.05] = pd.NA
    _csv(
        root,
        R.CLUSTER,
        pd.DataFrame(
            {
                "label": [c.label for c in tax.clusters],
                "cluster_alias": [c.name for c in tax.clusters],
                "number_of_cells": counts,
            }
        ),
    )
    membership = []
    for c in tax.clusters:
        for level, t in sorted(tax.ancestors(c).items(), key=lambda kv: R.LEVELS.index(kv[0])):
            membership.append((t.label, R.LEVEL_LABELS[level], c.name, level, t.name))
    _csv(root, R.CLUSTER_MEMBERSHIP, pd.DataFrame(membership, columns=list(R.CLUSTER_MEMBERSHIP.columns)))
    _csv(
        root,
        R.ABBREVIATION,
        pd.DataFrame(
            [(a, m, k, i, "") for a, m, k, i in ABBREVIATIONS], columns=list(R.ABBREVIATION.columns)
        ),
    )
    mapped: list[tuple[str, str]] = []
    for t in tax.terms:
        words = set(t.name.replace("-", " ").split())
        mapped.extend((t.label, a) for a, *_ in ABBREVIATIONS if a in words)
    _csv(root, R.ABBREVIATION_MAP, pd.DataFrame(mapped, columns=list(R.ABBREVIATION_MAP.columns)))
