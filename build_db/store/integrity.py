"""The files a build wrote, each with its size and CRC-32 (the catalog's `store_files`), and the check a
reader makes against that list before it answers: a file missing, of another size or with other bytes is an
error naming it (`StoreError`), never a smaller or a different answer.

Why a check of our own. The catalog's views name their files one by one (not a glob), so DuckDB itself
refuses a missing file, in any client. But DuckDB's Parquet reader verifies no page checksum: on a 2 M-row
expression-shaped file, 191 of 200 single-bit flips changed a sum without a word (9 raised), with or without
page CRCs written; pyarrow with page-checksum verification raised on all 200, but no reader of ours reads
through pyarrow. So every reader we own (`connect()`: the CLI, the Python API, the server) stats each listed
file at connect (~1 ms for a few hundred), and checks a file's CRC-32 whenever the file is not the one this
user last found intact (same size, mtime, ctime and inode: a rewrite, even of one byte in place, changes the
ctime). What was found intact is remembered per user in `~/.cache/hmba-db/verified/` (or
`$HMBA_DB_CACHE/verified/`), and the build records its own files there, so the CRC pass (zlib's CRC-32 at
~1.9 GB/s a core) is paid once per user and snapshot. A flip that leaves size and times alone (the disk's
own rot) is `hmba-db verify`'s to find.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import StoreError

FOLDERS = ("expression", "expression_by_cell", "aggregates", "tables")
TABLE = "store_files"
CHUNK = 8 << 20  # zlib releases the GIL for each chunk: two threads CRC two files at once
JOBS = 2
FIX = "run hmba-db verify on the store, then rebuild it"


def list_files(root: Path) -> list[str]:
    """The build's data files under a snapshot (or staging) folder, as sorted relative POSIX paths."""
    root = Path(root)
    return sorted(
        p.relative_to(root).as_posix()
        for folder in FOLDERS
        if (root / folder).is_dir()
        for p in (root / folder).rglob("*.parquet")
        if p.is_file()
    )


def crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _crc_or_none(path: Path) -> int | None:
    try:
        return crc32_of(path)
    except OSError:
        return None


def describe(root: Path, files: Iterable[str] | None = None, jobs: int = JOBS) -> list[tuple[str, int, int]]:
    """(relative path, bytes, CRC-32) of each file: what `store_files` records."""
    root = Path(root)
    names = list_files(root) if files is None else list(files)
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        crcs = list(pool.map(lambda rel: crc32_of(root / rel), names))
    return [(rel, (root / rel).stat().st_size, crc) for rel, crc in zip(names, crcs, strict=True)]


def write_table(con, rows: list[tuple[str, int, int]]) -> None:
    """`store_files` in the catalog being written (its current database)."""
    con.execute(f"create table {TABLE} (path varchar, bytes bigint, crc32 bigint)")
    if rows:
        con.executemany(f"insert into {TABLE} values (?, ?, ?)", rows)


def listed(con, database: str | None = None) -> list[tuple[str, int, int]] | None:
    """The catalog's `store_files`, or None for a store built before it was recorded."""
    where = f"{database}.main." if database else ""
    have = con.execute(
        "select count(*) from duckdb_tables() where table_name = ? and not temporary"
        + (" and database_name = ?" if database else ""),
        [TABLE, database] if database else [TABLE],
    ).fetchall()[0][0]
    if not have:
        return None
    rows = con.execute(f"select path, bytes, crc32 from {where}{TABLE} order by path").fetchall()
    return [(str(p), int(b), int(c)) for p, b, c in rows]


# --- what a reader checks ---------------------------------------------------------------------------------

_SEEN: dict[str, dict[str, list[int]]] = {}  # per snapshot root, this process's own memory of the cache
_LOCK = threading.Lock()


def cache_dir() -> Path:
    base = os.environ.get("HMBA_DB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hmba-db"
    )
    return Path(base) / "verified"


def _cache_file(root: Path) -> Path:
    return cache_dir() / (hashlib.sha1(str(root).encode()).hexdigest()[:20] + ".json")


def _load(root: Path) -> dict[str, list[int]]:
    with _LOCK:
        if str(root) in _SEEN:
            return _SEEN[str(root)]
    try:
        data = json.loads(_cache_file(root).read_text())
        known = data["files"] if data.get("root") == str(root) else {}
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    with _LOCK:
        _SEEN[str(root)] = known
    return known


def _save(root: Path, known: dict[str, list[int]]) -> None:
    """Remember what was found intact; a cache that cannot be written only costs the next CRC pass."""
    with _LOCK:
        _SEEN[str(root)] = known
    path = _cache_file(root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        tmp.write_text(json.dumps({"root": str(root), "files": known}))
        os.replace(tmp, path)
    except OSError:
        pass


def _identity(st: os.stat_result, crc: int) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, crc]


def remember(root: Path, rows: list[tuple[str, int, int]]) -> None:
    """Record a build's own files as found intact (the build's verify step read every one of them)."""
    root = Path(root).absolute()
    known = dict(_load(root))
    for rel, _, crc in rows:
        try:
            known[rel] = _identity((root / rel).stat(), crc)
        except OSError:
            pass
    _save(root, known)


def check(root: Path, rows: list[tuple[str, int, int]], *, content: bool = True) -> None:
    """Raise StoreError for the first listed file that is missing, of another size, or (with `content`)
    whose bytes are not the build's: the CRC-32 is computed for each file not already known intact."""
    root = Path(root).absolute()
    stats: dict[str, os.stat_result] = {}
    for rel, size, _ in rows:
        path = root / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            raise StoreError(f"{path}: missing (the catalog lists it); {FIX}", path=path) from None
        except OSError as e:
            raise StoreError(f"{path}: cannot be read ({e.strerror}); {FIX}", path=path) from None
        if st.st_size != size:
            raise StoreError(
                f"{path}: {st.st_size:,} bytes, the build wrote {size:,}; {FIX}", path=path
            ) from None
        stats[rel] = st
    if not content:
        return
    known = _load(root)
    todo = [(rel, crc) for rel, _, crc in rows if known.get(rel) != _identity(stats[rel], crc)]
    if not todo:
        return

    with ThreadPoolExecutor(JOBS) as pool:
        got = list(pool.map(_crc_or_none, [root / rel for rel, _ in todo]))
    fresh = dict(known)
    bad = None
    for (rel, want), have in zip(todo, got, strict=True):
        if have == want:
            fresh[rel] = _identity(stats[rel], want)
        elif bad is None:
            bad = (rel, want, have)
    _save(root, fresh)
    if bad is not None:
        rel, want, have = bad
        path = root / rel
        found = "cannot be read" if have is None else f"its bytes are not the build's (CRC-32 {have:08x}, "
        found += "" if have is None else f"the build wrote {want:08x})"
        raise StoreError(f"{path}: {found}; {FIX}", path=path)


def findings(root: Path, rows: list[tuple[str, int, int]]) -> list[str]:
    """`hmba-db verify`'s pass over the list: every listed file missing, resized or with other bytes, one
    line each (the CRC-32 of every file, whatever was known intact before)."""
    root = Path(root).absolute()
    out: list[str] = []
    present = []
    for rel, size, crc in rows:
        path = root / rel
        try:
            st = path.stat()
        except OSError as e:
            out.append(f"{path}: {'missing' if isinstance(e, FileNotFoundError) else e.strerror}")
            continue
        if st.st_size != size:
            out.append(f"{path}: {st.st_size:,} bytes, the build wrote {size:,}")
        else:
            present.append((rel, crc, st))

    with ThreadPoolExecutor(JOBS) as pool:
        got = list(pool.map(_crc_or_none, [root / rel for rel, _, _ in present]))
    known = dict(_load(root))
    for (rel, want, st), have in zip(present, got, strict=True):
        if have == want:
            known[rel] = _identity(st, want)
        else:
            known.pop(rel, None)
            out.append(
                f"{root / rel}: "
                + ("cannot be read" if have is None else f"CRC-32 {have:08x}, the build wrote {want:08x}")
            )
    _save(root, known)
    return out
