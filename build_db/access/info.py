"""`store_info()`: what a store holds and what it was built from, in one dict: for `hmba-db info`, the
server's health answer and anyone's script."""

from __future__ import annotations

from pathlib import Path

import duckdb

from ..release import layout as R
from ..store.paths import BUILD_JSON, files_root, is_url, read_build_record
from .connect import StoreOrConnection, connect, store_of


def store_info(store_or_con: StoreOrConnection, *, sizes: bool = False) -> dict:
    """The store's build (id, time, tool version), its release and licence, and per species the cells (with
    a cluster, outside cell_metadata.csv), genes, non-zeros and buckets. `sizes=True` adds the bytes on disk
    of the whole store and of each snapshot (a walk over every file: seconds on a full-scale store).

    Example:
        >>> store_info("data/demo-store")["species"][0]["cells"]  # doctest: +SKIP
        8416
    """
    con = store_or_con if isinstance(store_or_con, duckdb.DuckDBPyConnection) else connect(store_or_con)
    root = store_of(con)
    info = dict(con.execute("select key, value from store_info").fetchall())
    licence = dict(con.execute("select key, value from licence").fetchall())
    build: dict = {}
    if not is_url(root) and (Path(root) / BUILD_JSON).exists():
        build = read_build_record(Path(root))
    rows = con.execute(
        "select c.species, c.n, c.assigned, g.n from "
        "(select species, count(*) as n, count(cluster_alias) as assigned from cells group by species) c "
        "join (select species, count(*) as n from genes group by species) g using (species)"
    ).fetchall()
    outside = build.get("metadata", {}).get("cells", {})
    species = []
    for name, cells, assigned, genes in sorted(rows, key=lambda r: R.SPECIES.index(r[0])):
        meta = build.get("species", {}).get(name, {})
        species.append(
            {
                "species": name,
                "cells": cells,
                "with_cluster": assigned,
                "not_in_cell_metadata": outside.get(name, {}).get("not_in_cell_metadata", 0),
                "genes": genes,
                "nnz": meta.get("nnz"),
                "gene_buckets": meta.get("buckets"),
                "cell_buckets": meta.get("cell_buckets", 0),
            }
        )
    out = {
        "store": str(root if is_url(root) else Path(root)),
        "build_id": info.get("build_id", ""),
        "built_at": info.get("built_at", ""),
        "tool_version": info.get("tool_version", ""),
        "release": info.get("release", ""),
        "release_version": info.get("release_version", ""),
        "species": species,
        "licence": licence,
        "sources": build.get("sources", {}),
    }
    if sizes and not is_url(root):
        out.update(_sizes(Path(root)))
    return out


def _sizes(root: Path) -> dict:
    """Bytes of the whole store (every snapshot) and the snapshots kept beside the current one."""
    store = root.parent.parent if root.parent.name == "snapshots" else root
    total = sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and not p.is_symlink())
    current = files_root(store)
    older = []
    if current != store:
        older = sorted(p.name for p in current.parent.iterdir() if p.is_dir() and p != current)
    return {"store_dir": str(store), "size_bytes": total, "snapshot": current.name, "older_snapshots": older}
