"""Where things are in a store, in its snapshots and in its staging folder.

A store is a folder of immutable snapshots, one per build, and two links naming the current one:

    STORE/catalog.duckdb -> snapshots/<build id>/catalog.duckdb
    STORE/build.json     -> snapshots/<build id>/build.json
    STORE/snapshots/<build id>/{catalog.duckdb, build.json, expression/, expression_by_cell/, tables/,
                                aggregates/}

A snapshot's catalog names its own files, so a reader keeps one build's view however often the store is
rebuilt, and a new connection sees the newest build.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from pathlib import Path

from ..errors import StoreError

CATALOG = "catalog.duckdb"
BUILD_JSON = "build.json"
SNAPSHOTS = "snapshots"
TABLES = "tables"  # a snapshot's small tables as Parquet; the per-species parts of two of them below it
RETIRED = "RETIRED"  # in a snapshot that is no longer current: when it stopped being current


def is_url(where: object) -> bool:
    """A published store's address (`https://...`, `s3://...`), not a local path."""
    return isinstance(where, str) and re.match(r"^[a-z][a-z0-9+.-]*://", where) is not None


def bucket_dir(store: Path, species: str, k: int) -> Path:
    return Path(store) / "expression" / f"species={species}" / f"gene_bucket={k:04d}"


def bucket_file(store: Path | str, species: str, k: int) -> Path | str:
    """A bucket's file; under a URL (a published store read over the network) its URL."""
    if is_url(store):
        return f"{str(store).rstrip('/')}/expression/species={species}/gene_bucket={k:04d}/part-0.parquet"
    return bucket_dir(Path(store), species, k) / "part-0.parquet"


def cell_bucket_file(store: Path | str, species: str, k: int) -> Path | str:
    """A file of the cell-major projection (expression_by_cell): cell bucket k, a range of cell_rank."""
    rel = f"expression_by_cell/species={species}/cell_bucket={k:04d}/part-0.parquet"
    return f"{str(store).rstrip('/')}/{rel}" if is_url(store) else Path(store) / rel


def table_file(root: Path, name: str) -> Path:
    """A table of the catalog as Parquet (`tables/cells.parquet`): what other engines (Spark) read."""
    return Path(root) / TABLES / f"{name}.parquet"


def species_part(root: Path, name: str, species: str) -> Path:
    """One species' part of a table the transpose writes (`tables/cell_totals/Human.parquet`; schema.py's
    CELL_TOTALS_FILE and GENE_BUCKETS_FILE)."""
    return Path(root) / TABLES / name / f"{species}.parquet"


def staging_dir(store: Path) -> Path:
    store = Path(store).absolute()
    return store.parent / f".{store.name}.building"


def new_build_id() -> str:
    """Sortable by time, unique even for two builds in the same second."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def snapshot_dir(store: Path, build_id: str) -> Path:
    return Path(store).absolute() / SNAPSHOTS / build_id


def files_root(store: Path) -> Path:
    """The folder holding a store's current files: the snapshot its catalog link names (or, in a copy that
    turned the links into files, the snapshot its build.json names); the folder itself for a staging folder
    or a store built before snapshots."""
    store = Path(store).absolute()
    link = store / CATALOG
    if link.is_symlink():
        return (store / os.readlink(link)).parent
    try:
        record = json.loads((store / BUILD_JSON).read_text())
    except (OSError, ValueError):
        record = None
    build_id = record.get("build_id") if isinstance(record, dict) else None
    if isinstance(build_id, str) and build_id and (store / SNAPSHOTS / build_id).is_dir():
        return store / SNAPSHOTS / build_id
    return store


RECORDED = ("nnz", "sum", "cells", "genes", "buckets")  # what every species of a build record holds


def read_build_record(folder: Path) -> dict:
    """A store's (or snapshot's) build.json as a dict; one line naming the file when it is missing, not
    JSON, or not a build record (truncated, a list, `{}`)."""
    path = Path(folder) / BUILD_JSON
    if not path.exists():
        raise StoreError(
            f"{path}: not found; {folder} is not an hmba-db store (run hmba-db build first)", path=path
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) else f"not JSON: {' '.join(str(e).split())}"
        raise StoreError(
            f"{path}: cannot be read ({why}); the store is damaged: rebuild it", path=path
        ) from None
    species = record.get("species") if isinstance(record, dict) else None
    if not isinstance(species, dict) or not species or not all(isinstance(m, dict) for m in species.values()):
        raise StoreError(
            f"{path}: not a build record (no species with their counts); the store is damaged: rebuild it",
            path=path,
        )
    for name, meta in species.items():
        lacking = [k for k in RECORDED if not isinstance(meta.get(k), int)]
        if lacking:
            raise StoreError(
                f"{path}: species {name} has no {lacking[0]}; the store is damaged: rebuild it", path=path
            )
    return record
