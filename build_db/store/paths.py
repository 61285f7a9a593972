"""Where things are in a store and in its staging folder (shared by the build's steps and verification)."""

from __future__ import annotations

from pathlib import Path


def bucket_dir(store: Path, species: str, k: int) -> Path:
    return Path(store) / "expression" / f"species={species}" / f"gene_bucket={k:04d}"


def bucket_file(store: Path, species: str, k: int) -> Path:
    return bucket_dir(store, species, k) / "part-0.parquet"


def staging_dir(store: Path) -> Path:
    store = Path(store).absolute()
    return store.parent / f".{store.name}.building"
