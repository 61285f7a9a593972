"""Before a build touches anything: one build per store at a time, nothing deleted without asking, a
writable place with room for the staging files."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from ..errors import HmbaError

# What a build writes at a store's top level; anything else there is the user's and is never deleted
# without --force.
STORE_ENTRIES = frozenset(
    {"catalog.duckdb", "catalog.duckdb.wal", "build.json", "snapshots", "expression", "tables", "aggregates"}
    | {"published.duckdb", "published.json"}  # hmba-db publish
)
# Measured: 2.6 bytes per non-zero of LZ4-framed scatter runs at full-scale Macaque (10 before the frames);
# the cell-major projection's runs add about as much again.
STAGING_BYTES_PER_NZ = 6
STAGING_BYTES_PER_NZ_GENE_MAJOR = 4  # built without the cell-major copy
DISK_MARGIN = 1 << 30  # keep 1 GiB free beyond the estimate


def lock_path(store: Path) -> Path:
    """Beside the store's real path: two builds reaching one store through a symlink and its target (or
    `a/../store`) take the same lock."""
    store = Path(store).resolve()
    return store.parent / f".{store.name}.lock"


@contextlib.contextmanager
def build_lock(store: Path):
    """Hold the store's build lock (it covers its staging folder too) for the duration of the block.

    An advisory `flock` on a file beside the store: the kernel releases it when the holder exits, however it
    exits (`kill -9` included), so a lock never outlives its build. A second build gets a one-line error
    saying who holds it.
    """
    path = lock_path(store)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)  # the build makes the store's parent anyway
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise HmbaError(
            f"{path}: cannot create the build lock ({e.strerror}); build in a writable place"
        ) from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HmbaError(
                f"{store}: {_holder(fd)}; wait for it to finish or stop it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            ).encode(),
        )
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (
            f"another build holds its lock (pid {info['pid']} on {info['host']}, started {info['started']})"
        )
    except (ValueError, KeyError, OSError):
        return "another build holds its lock"


def check_target(store: Path, species: tuple[str, ...], force: bool) -> None:
    """Refuse a build that would delete something it did not write, unless forced; say what would go."""
    store = Path(store).absolute()
    if store.exists() and not store.is_dir():
        raise HmbaError(f"{store}: a file is there, not a folder; choose a folder path for the store")
    parent = store.parent
    probe = parent if parent.exists() else next((p for p in parent.parents if p.exists()), parent)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise HmbaError(f"{probe}: not writable; build the store in a folder you can write to")
    for folder in (store, store / "snapshots"):  # the build publishes into them: say so now, not at the end
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise HmbaError(
                f"{folder}: not writable, so a build cannot publish into it; make it writable "
                f"(chmod u+w {folder}) or build the store elsewhere"
            )
    if not store.exists() or force:
        return
    entries = sorted(p.name for p in store.iterdir())
    if not entries:
        return
    if "build.json" not in entries and not ("snapshots" in entries and _ours(entries)):
        raise HmbaError(
            f"{store}: holds {_listing(entries)} and is not an hmba-db store (no build.json); choose another "
            "path, or pass --force to replace the folder and all of it"
        )
    foreign = [e for e in entries if not _ours([e])]
    if foreign:
        raise HmbaError(
            f"{store}: holds {_listing(foreign)}, which a build did not write; move them out, or pass "
            "--force to replace the store and them"
        )
    try:
        built = set(json.loads((store / "build.json").read_text()).get("species", {}))
    except (ValueError, OSError):
        built = set()
    dropped = sorted(built - set(species))
    if dropped:
        them = "it" if len(dropped) == 1 else "them"
        raise HmbaError(
            f"{store}: has {', '.join(dropped)}, which this build (--species {','.join(species)}) would "
            f"drop; add {them} to --species, or pass --force to drop {them}"
        )


def _ours(entries: list[str]) -> bool:
    """Names a build writes in a store: its entries and the links it swaps in (`.catalog.duckdb.<id>`)."""
    return all(e in STORE_ENTRIES or e.startswith((".catalog.duckdb.", ".build.json.")) for e in entries)


def _listing(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_disk(staging: Path, largest_nnz: int, cell_major: bool = True) -> None:
    """Staging holds ~10 bytes per non-zero of the largest species at its peak: check the room first."""
    per_nz = STAGING_BYTES_PER_NZ if cell_major else STAGING_BYTES_PER_NZ_GENE_MAJOR
    need = per_nz * largest_nnz
    if staging.exists():  # a resumed build has part of it already
        need = max(0, need - sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()))
    where = staging if staging.exists() else staging.parent
    free = shutil.disk_usage(where).free
    if need + DISK_MARGIN > free:
        raise HmbaError(
            f"{where}: the build needs ~{_gb(need)} of staging space ({per_nz} bytes per non-zero of the "
            f"largest species' {largest_nnz:,}) plus a {_gb(DISK_MARGIN)} margin, but {_gb(free)} is free; "
            "free space or build the store elsewhere"
        )


def _gb(n: int) -> str:
    """Sizes as people read them: 0.004 GB is 4 MB, not 0.0 GB."""
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.0f} MB"
