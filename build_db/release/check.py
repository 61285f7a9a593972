"""`hmba-db check`: validate a release directory against docs/release.md before any long work.

Cheap checks only (manifest, sizes, headers, h5ad structure, shapes against metadata row counts), so a
50 GB release is judged in seconds; `--md5` adds a full read of every file. Every problem is one line that
names the file and what to do.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ReleaseError
from . import layout as R
from .cache import DownloadCache
from .h5ad import CsrReader
from .manifest import FileEntry, Layout, md5_file, read_manifest

REDOWNLOAD = "download it again from the release bucket"


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class CheckReport:
    release: Path
    species: tuple[str, ...]
    parts: tuple[str, ...]
    files: int
    problems: list[Problem]
    shapes: dict[str, tuple[int, int]]
    notes: list[str] = field(default_factory=list)  # what is fine but worth knowing (ignored, optional)
    # With md5: how each file's md5 was found the manifest's ("hashed", or "trusted" from download's record)
    md5_checked: dict[str, str] = field(default_factory=dict)
    # Per species: matrix cells that cell_metadata.csv leaves out, and its rows with no matrix cell.
    cells_outside_metadata: dict[str, int] = field(default_factory=dict)
    metadata_rows_without_cell: dict[str, int] = field(default_factory=dict)
    # With keep_cells: each raw matrix's cell labels in row order, for the metadata's own checks.
    cell_labels: dict[str, list[str]] = field(default_factory=dict, repr=False)
    # After check_metadata: per species, the cell indexes in taxonomy order (cells.cell_rank's order).
    cell_order: dict = field(default_factory=dict, repr=False)
    # After check_metadata: per species, each cell's region, donor and taxonomy (statistics' groups).
    cell_groups: dict = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_release(
    release: Path,
    *,
    species: tuple[str, ...] | None = None,
    parts: tuple[str, ...] = R.PARTS,
    md5: bool | str = False,
    version: str = R.VERSION,
    keep_cells: bool = False,
) -> CheckReport:
    """Validate a release tree; returns every problem found (an empty list means ready to build).

    `md5=True` hashes every file against the manifest; `md5="untrusted"` (what a build does) all but those
    that `download` or `synth` verified and recorded with a size and modification time still theirs.

    Example:
        >>> report = check_release(Path("data/release"))  # doctest: +SKIP
        >>> report.ok
        True
    """
    release = Path(release)
    problems: list[Problem] = []
    try:
        data, entries = read_manifest(release, version)
    except ReleaseError as e:
        return CheckReport(
            release, tuple(species or ()), parts, 0, [Problem(str(e.path), str(e).split(": ", 1)[1])], {}
        )
    mpath = R.manifest_path(version)
    lay = Layout(entries, version)
    notes = []
    if lay.ignored:
        notes.append(
            f"{mpath}: {sum(lay.ignored.values()):,} files of {len(lay.ignored)} other datasets of the "
            f"bucket ignored (only {R.EXPRESSION_DIR} and {lay.taxonomy_dir} are read)"
        )
    notes.append(
        f"taxonomy: {lay.taxonomy_dir}, version {lay.taxonomy_version} (the directory this release's "
        "manifest names)"
    )
    if data.get("version") != version:
        problems.append(
            Problem(
                mpath,
                f"says version {data.get('version')!r}, expected {version!r}; "
                "pass --release with the version you downloaded",
            )
        )
    listed_species = tuple(s for s in R.SPECIES if any(e.species == s for e in lay.entries))
    if species is None:
        species = listed_species
    wanted = _expected(species, parts, lay, notes)
    by_path = {e.relative_path: e for e in lay.entries}
    for listed_entry in lay.entries:
        problems += _entry_consistency(listed_entry, mpath)
    unlisted = [
        s for s in species if not any(e.species == s and e.part in R.MATRIX_KINDS for e in lay.entries)
    ]
    skipped = {lay.matrix(s, kind) for s in unlisted for kind in R.MATRIX_KINDS}  # said once, per species
    for s in unlisted:
        others = ", ".join(x for x in listed_species if x not in unlisted) or "none"
        problems.append(
            Problem(
                mpath,
                f"lists no {s} matrix (it has {others}); leave {s} out of --species, or download it",
            )
        )
    wanted = [rel for rel in wanted if rel not in skipped]
    for rel in wanted:
        if rel not in by_path:
            problems.append(
                Problem(
                    rel,
                    f"not listed in {mpath}; this manifest is not the HMBA-BG release "
                    f"{version} (or the species/part was not published)",
                )
            )
    present: list[str] = []
    cache = DownloadCache(release) if md5 == "untrusted" else None
    hashed, trusted, hash_bytes, hash_seconds = 0, 0, 0, 0.0
    checked: dict[str, str] = {}
    for rel in wanted:
        entry = by_path.get(rel)
        path = release / rel
        if not path.exists():
            problems.append(Problem(rel, f"missing; {REDOWNLOAD} or leave it out with --species/--what"))
            continue
        if entry is not None and path.stat().st_size != entry.size:
            problems.append(
                Problem(
                    rel,
                    f"size {path.stat().st_size:,} bytes, manifest says {entry.size:,}; "
                    f"the file is truncated or replaced: {REDOWNLOAD}",
                )
            )
            continue
        if md5 and entry is not None:
            if cache is not None and cache.known(path) and cache.unchanged(path, entry):
                trusted += 1
                checked[rel] = "trusted"
            else:
                t0 = time.monotonic()
                digest = md5_file(path)
                hashed, hash_bytes = hashed + 1, hash_bytes + entry.size
                hash_seconds += time.monotonic() - t0
                if digest != entry.file_hash:
                    problems.append(
                        Problem(
                            rel,
                            f"md5 {digest} differs from the manifest's {entry.file_hash}; the file is "
                            f"corrupt: {REDOWNLOAD}",
                        )
                    )
                    continue
                checked[rel] = "hashed"
        present.append(rel)
    if md5:
        notes.append(
            f"md5: {hashed} file(s) hashed against the manifest ({hash_bytes / 1e9:,.2f} GB in "
            f"{hash_seconds:.1f} s)"
            + (
                f", {trusted} trusted as download or synth recorded them (size and time unchanged)"
                if cache
                else ""
            )
        )

    csv_ok = {}
    for spec in R.csvs_for(species, parts):
        rel = lay.csv(spec)
        if rel in present:
            header_problem = _check_header(release / rel, rel, spec, notes)
            csv_ok[spec.name] = header_problem is None
            if header_problem:
                problems.append(header_problem)
    report = CheckReport(release, tuple(species), tuple(parts), len(present), problems, {}, notes, checked)
    problems += _check_matrices(release, species, parts, present, csv_ok, lay, report, keep_cells)
    return report


def _expected(species, parts, lay: Layout, notes: list[str]) -> list[str]:
    rels = []
    for spec in R.csvs_for(species, parts):
        if spec.optional_file and not lay.listed(spec):
            notes.append(
                f"{spec.relative_path(lay.version)}: not in the manifest; optional, the store will have no "
                "rows from it"
            )
            continue
        if lay.csv(spec) not in rels:  # one gene.csv may serve every species
            rels.append(lay.csv(spec))
    for s in species:
        for kind in R.MATRIX_KINDS:
            if kind in parts:
                rels.append(lay.matrix(s, kind))
    if "mapmycells" in parts:
        rels += [e.relative_path for e in lay.mapmycells()]
    return rels


def _entry_consistency(e: FileEntry, mpath: str) -> list[Problem]:
    out = []
    prefix = f"{e.kind}/{e.directory}/{e.version}/"
    stem = e.key if e.variant is None else f"{e.key}-{e.variant}"
    expected = f"{prefix}[...]{stem}.{e.ext}"
    where = f"{mpath} entry {e.directory}/{e.kind}/{e.key}" + (f"/{e.variant}" if e.variant else "")
    # A file may sit a folder deeper than its kind/directory/version (the bucket has `.../views/...`).
    if not e.relative_path.startswith(prefix) or e.name != f"{stem}.{e.ext}":
        out.append(
            Problem(
                where,
                f"relative_path {e.relative_path!r} does not match its place ({expected!r}); "
                "the manifest is damaged: fetch it again",
            )
        )
    if e.url and not e.url.endswith(e.relative_path):
        out.append(
            Problem(where, f"url {e.url!r} does not end with the relative path; fetch the manifest again")
        )
    if len(e.file_hash) != 32 or any(c not in "0123456789abcdef" for c in e.file_hash.lower()):
        out.append(
            Problem(where, f"file_hash {e.file_hash!r} is not an md5 hex digest; fetch the manifest again")
        )
    return out


def _check_header(path: Path, rel: str, spec: R.CsvSpec, notes: list[str]) -> Problem | None:
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        return Problem(rel, f"empty file, expected a header with {', '.join(spec.needed)}; {REDOWNLOAD}")
    if header[0].startswith("\ufeff"):
        return Problem(
            rel,
            "the header starts with a byte-order mark (U+FEFF: the file was saved as 'UTF-8 with BOM', e.g. "
            f"by Excel), so its first column reads {header[0]!r}; save it as plain UTF-8, or {REDOWNLOAD}",
        )
    absent = [c for c in spec.optional if c not in header]
    if absent:
        notes.append(f"{rel}: no column {', '.join(absent)}; the store will have NULL there")
    missing = [c for c in spec.needed if c not in header]
    if missing:
        return Problem(
            rel,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(header has {', '.join(header)}); this is not the release's {spec.name}.csv: "
            f"{REDOWNLOAD}",
        )
    return None


def _check_matrices(
    release, species, parts, present, csv_ok, lay: Layout, report: CheckReport, keep_cells: bool
) -> list[Problem]:
    problems: list[Problem] = []
    meta_cells = None  # cell_label -> feature_matrix_label
    if "metadata" in parts and csv_ok.get(R.CELL_METADATA.name):
        meta_cells = pd.read_csv(
            release / lay.csv(R.CELL_METADATA),
            usecols=["cell_label", "feature_matrix_label"],
            dtype=str,
            keep_default_na=False,
        )
    for s in species:
        gene_ids = None
        gspec = R.GENE_TABLES[s]
        if "metadata" in parts and csv_ok.get(gspec.name):
            gene_ids = pd.read_csv(
                release / lay.csv(gspec), usecols=["gene_identifier"], dtype=str, keep_default_na=False
            )["gene_identifier"].to_numpy()
        seen = {}
        for kind in R.MATRIX_KINDS:
            rel = lay.matrix(s, kind)
            if kind not in parts or rel not in present:
                continue
            try:
                with CsrReader(release / rel) as m:
                    seen[kind] = (m.shape, m.nnz)
                    problems += _check_one_matrix(m, rel, kind, s, gene_ids, lay)
                    if kind == "raw" and meta_cells is not None:
                        problems += _check_cells(m, rel, s, meta_cells, lay, report, keep_cells)
                    report.shapes[f"{s}/{kind}"] = m.shape
            except ReleaseError as err:
                problems.append(Problem(rel, str(err).split(": ", 1)[1] if ": " in str(err) else str(err)))
            except OSError as e:  # h5py on a damaged chunk read directly here
                problems.append(Problem(rel, f"cannot be read ({' '.join(str(e).split())}); {REDOWNLOAD}"))
        if len(seen) == 2 and seen["raw"] != seen["log2"]:
            problems.append(
                Problem(
                    lay.matrix(s, "log2"),
                    f"shape/non-zeros {seen['log2']} differ from the raw matrix's {seen['raw']}; "
                    f"one of the two files is from another release: {REDOWNLOAD}",
                )
            )
    return problems


def _check_cells(
    m: CsrReader, rel, species, meta_cells: pd.DataFrame, lay: Layout, report, keep_cells: bool
) -> list[Problem]:
    """Matrix cells against cell_metadata.csv. ABC matrices may hold cells that cell_metadata leaves out
    (cells that failed QC, docs/release.md, 'Metadata'): counted, never a problem, unless no cell at all is
    shared, which means the two files are from different releases."""
    labels = pd.Index(m.obs_names())
    if keep_cells:
        report.cell_labels[species] = list(labels)
    stem = R.matrix_stem(species)
    listed = meta_cells.cell_label[meta_cells.feature_matrix_label == stem]
    outside = int((~labels.isin(meta_cells.cell_label)).sum())
    without = int((~listed.isin(labels)).sum())
    report.cells_outside_metadata[species] = outside
    report.metadata_rows_without_cell[species] = without
    if len(labels) and outside == len(labels):
        return [
            Problem(
                rel,
                f"none of its {len(labels):,} cells is in {lay.csv(R.CELL_METADATA)} (which lists "
                f"{len(listed):,} cells for {stem}); matrix and metadata are from different releases: "
                f"{REDOWNLOAD}",
            )
        ]
    if outside:
        report.notes.append(
            f"{rel}: {outside:,} of {len(labels):,} cells are not in cell_metadata.csv (cells that failed "
            "QC, by the ABC's account); the store keeps them with NULL metadata and no cluster"
        )
    if without:
        report.notes.append(
            f"{lay.csv(R.CELL_METADATA)}: {without:,} rows for {stem} have no cell in the matrix; the store "
            "leaves them out (there is no expression to keep)"
        )
    return []


def _check_one_matrix(m: CsrReader, rel, kind, species, gene_ids, lay: Layout) -> list[Problem]:
    out = []
    allowed = R.RAW_DTYPES if kind == "raw" else ("float32", "float64")
    if str(m.dtype) not in allowed:
        out.append(Problem(rel, f"X/data has dtype {m.dtype}, expected one of {', '.join(allowed)}"))
    for name, ds in (("indices", m.indices), ("indptr", m.indptr_ds)):
        if str(ds.dtype) not in ("int32", "int64"):
            out.append(Problem(rel, f"X/{name} has dtype {ds.dtype}, expected int32 or int64"))
    if m.obs_index_name != "cell_label":
        out.append(Problem(rel, f"obs index is {m.obs_index_name!r}, expected 'cell_label'"))
    if "gene_symbol" not in m.var_columns():
        out.append(Problem(rel, "var has no 'gene_symbol' column"))
    n_obs, n_var = m.shape
    if n_obs == 0 or n_var == 0 or m.nnz == 0:
        out.append(
            Problem(
                rel,
                f"holds {n_obs:,} cells x {n_var:,} genes and {m.nnz:,} non-zeros: nothing to build; "
                f"{REDOWNLOAD}, or leave {species} out with --species",
            )
        )
    for axis, what, names in (("obs", "cell label", m.obs_names), ("var", "gene identifier", m.var_names)):
        index = pd.Index(names())
        if index.has_duplicates:
            twice = index.duplicated()
            out.append(
                Problem(
                    rel,
                    f"{axis} holds the {what} {index[twice][0]!r} more than once ({int(twice.sum()):,} "
                    f"repeated {what}s); each must name one row, so the file is damaged or not the "
                    f"release's: {REDOWNLOAD}",
                )
            )
    if len(m.f["obs"][m.obs_index_name]) != n_obs:
        out.append(
            Problem(
                rel,
                f"obs has {len(m.f['obs'][m.obs_index_name]):,} labels for {n_obs:,} rows; "
                f"the file is damaged: {REDOWNLOAD}",
            )
        )
    last = int(m.indptr_ds[-1])
    if last != m.nnz:
        out.append(
            Problem(
                rel,
                f"X/indptr ends at {last:,} but X/data holds {m.nnz:,} values; the file is "
                f"truncated: {REDOWNLOAD}",
            )
        )
    if gene_ids is not None:
        gtable = lay.csv(R.GENE_TABLES[species])
        if not lay.shared_gene_table and len(gene_ids) != n_var:
            out.append(
                Problem(
                    rel,
                    f"{n_var:,} genes but {gtable} has {len(gene_ids):,} rows; matrix and gene "
                    f"table are from different releases: {REDOWNLOAD}",
                )
            )
        else:
            # Same order is expected, but the loader joins on gene_identifier, so only the set must match
            # (a shared gene.csv lists every species' genes: each matrix's must all be there).
            var_ids = m.var_names()
            unknown = np.flatnonzero(~pd.Index(var_ids).isin(gene_ids))  # hashed; np.isin on str is O(n*m)
            if len(unknown):
                i = int(unknown[0])
                out.append(
                    Problem(
                        rel,
                        f"var gene {var_ids[i]!r} (column {i}) is not in {gtable} "
                        f"({len(unknown):,} such genes); re-download whichever file is stale",
                    )
                )
    return out
