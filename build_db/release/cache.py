"""The download cache, shared with the official abc_atlas_access client in both directions.

abc_atlas_access keeps, in its cache directory (docs/release.md, 'The bucket and its manifest'):
- every file at `<cache>/<relative_path>`;
- `_downloaded_data.json`: a JSON **list** of the resolved absolute paths of finished downloads, read with
  `set(json.load(f))` (a file listed there is trusted, never hashed again);
- `releases/<version>/manifest.json` and `_manifest_last_used.txt` (the manifest's name, e.g.
  `releases/20250630/manifest.json`, no newline).

We read and write those exactly so, so either tool can use a cache the other made. What we need beyond
them lives in a sidecar of our own, `_hmba_db_downloads.json` ({absolute path: {md5, size, mtime_ns}}): a
finished file whose size or mtime changed since it was recorded is hashed again (and fetched again when
wrong) instead of being trusted for ever.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..files import write_atomic
from . import layout as R
from .manifest import FileEntry

RECORD = "_downloaded_data.json"
SIDECAR = "_hmba_db_downloads.json"
LAST_USED = "_manifest_last_used.txt"


class DownloadCache:
    """The record of finished downloads under `root`; thread-safe."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.lock = threading.Lock()
        self.notes: list[str] = []
        self.meta: dict[str, dict] = self._read_sidecar()
        self.paths: set[str] = self._read_record()

    def _read_record(self) -> set[str]:
        path = self.root / RECORD
        if not path.exists():
            return set()
        try:
            data = json.loads(path.read_text())
        except (ValueError, OSError) as e:
            self.notes.append(
                f"{path}: unreadable ({e}); every file already here is hashed again and the record rewritten"
            )
            return set()
        if isinstance(data, dict):
            # hmba-db 0.1 wrote {path: md5}; keep what it verified, as a list from now on.
            for p, md5 in data.items():
                if isinstance(md5, str):
                    self.meta.setdefault(p, {"md5": md5})
            return {p for p in data if isinstance(p, str)}
        if isinstance(data, list) and all(isinstance(p, str) for p in data):
            return set(data)
        self.notes.append(
            f"{path}: not a list of paths; every file already here is hashed again and the record rewritten"
        )
        return set()

    def _read_sidecar(self) -> dict[str, dict]:
        path = self.root / SIDECAR
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except (ValueError, OSError):
            data = {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    @staticmethod
    def key(path: Path) -> str:
        return str(Path(path).resolve())

    def unchanged(self, path: Path, entry: FileEntry) -> bool:
        """Whether a file on disk is recorded as finished and can be trusted without hashing it.

        Recorded by us: trusted while its md5 is the manifest's and its size and mtime are what we
        recorded. Recorded only by abc_atlas_access (which checked the md5 when it downloaded): trusted
        while its size is the manifest's; `remember` then notes its size and mtime for next time.
        """
        k = self.key(path)
        if k not in self.paths:
            return False
        st = Path(path).stat()
        m = self.meta.get(k, {})
        if m.get("md5", entry.file_hash) != entry.file_hash or st.st_size != entry.size:
            return False
        if "size" not in m:
            return True
        return m["size"] == st.st_size and m.get("mtime_ns") == st.st_mtime_ns

    def known(self, path: Path) -> bool:
        """Whether our sidecar has the file's size and mtime (else `remember` it once trusted)."""
        return "size" in self.meta.get(self.key(path), {})

    def remember(self, path: Path, entry: FileEntry) -> None:
        """Record a verified file in both records."""
        self.remember_all([(Path(path), entry)])

    def remember_all(self, files: list[tuple[Path, FileEntry]]) -> None:
        """Record verified files in both records, written once."""
        with self.lock:
            for path, entry in files:
                st = Path(path).stat()
                k = self.key(path)
                self.paths.add(k)
                self.meta[k] = {
                    "md5": entry.file_hash,
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "relative_path": entry.relative_path,
                }
            self._write()

    def forget(self, path: Path) -> None:
        """Drop a file that is damaged or about to be replaced, so neither tool trusts it meanwhile."""
        with self.lock:
            k = self.key(path)
            if k in self.paths or k in self.meta:
                self.paths.discard(k)
                self.meta.pop(k, None)
                self._write()

    def _write(self) -> None:
        # abc_atlas_access writes json.dumps(list(paths), indent=2, sort_keys=True); a sorted list is the
        # same document in a stable order.
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / RECORD, json.dumps(sorted(self.paths), indent=2))
        write_atomic(self.root / SIDECAR, json.dumps(self.meta, indent=1, sort_keys=True) + "\n")

    def rewrite_if_needed(self) -> None:
        """Rewrite a record we could not read, or one in hmba-db 0.1's mapping form, as the list."""
        if self.notes or (self.root / RECORD).exists() and not self._is_list():
            with self.lock:
                self._write()

    def _is_list(self) -> bool:
        try:
            return isinstance(json.loads((self.root / RECORD).read_text()), list)
        except (ValueError, OSError):
            return False


CACHE_FILES = (RECORD, SIDECAR, LAST_USED)  # what a cache holds beside the bucket's own files


def mark_manifest_used(root: Path, version: str) -> None:
    """`_manifest_last_used.txt`, as abc_atlas_access writes it: the manifest's name, no newline."""
    write_atomic(Path(root) / LAST_USED, R.manifest_path(version))
