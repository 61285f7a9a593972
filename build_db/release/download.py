"""`hmba-db download`: fetch a release from the public bucket over plain HTTPS, resumably and verified.

Files land at `DEST/<relative_path>`, the layout of the official abc_atlas_access cache, and finished
files are recorded as that client records them (`cache.py`), so a cache made by either tool serves the
other. Only the HMBA-BG release's two directories are fetched: the bucket's manifest lists every dataset.
A file is written as `<name>.partial`, resumed with an HTTP Range request after an interruption, and
renamed into place only once its md5 matches the manifest.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HmbaError, ReleaseError
from ..files import write_atomic
from ..progress import Reporter
from . import layout as R
from .cache import DownloadCache, mark_manifest_used
from .manifest import FileEntry, Layout, md5_file, parse_manifest

CHUNK = 1 << 20  # bytes per read from the socket
RETRIES = 6
BACKOFF = 1.0  # seconds before the first retry; doubles each time, capped at 30 s
TIMEOUT = 60.0  # seconds without a byte before a request is abandoned and retried
DISK_MARGIN = 1 << 30  # keep 1 GiB free beyond what the files need


class DownloadError(HmbaError):
    """A file could not be fetched after the retries, or the server refused it."""


@dataclass
class Plan:
    """What a download would do: the files selected, which are already here, and the bytes to fetch."""

    entries: list[FileEntry]
    present: set[str] = field(default_factory=set)  # relative paths already downloaded and verified
    partial_bytes: int = 0
    ignored: dict[str, int] = field(default_factory=dict)  # other datasets of the manifest: entries each

    @property
    def todo(self) -> list[FileEntry]:
        return [e for e in self.entries if e.relative_path not in self.present]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def bytes_to_fetch(self) -> int:
        return sum(e.size for e in self.todo) - self.partial_bytes


def _check_base_url(base_url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(base_url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise DownloadError(
            f"--base-url {base_url!r} is not an http(s) address of a bucket; e.g. {R.BUCKET_URL}"
        )


def _url(base: str, relative_path: str) -> str:
    return base.rstrip("/") + "/" + relative_path


def _get(url: str, timeout: float, start: int = 0):
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    return urllib.request.urlopen(request, timeout=timeout)


def fetch_manifest(
    base_url: str,
    version: str,
    dest: Path,
    timeout: float = TIMEOUT,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
) -> list[FileEntry]:
    url = _url(base_url, R.manifest_path(version))
    data = _with_retries(lambda: _read_all(url, timeout), url, retries, backoff)
    try:
        parsed = json.loads(data)
    except json.JSONDecodeError as e:
        raise DownloadError(f"{url}: not a JSON manifest ({e}); check --base-url and --release") from e
    entries = parse_manifest(parsed, url)
    path = Path(dest) / R.manifest_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
    return entries


def list_releases(
    base_url: str = R.BUCKET_URL, timeout: float = TIMEOUT, retries: int = RETRIES, backoff: float = BACKOFF
) -> list[dict]:
    """The release versions the bucket's `releases/` holds (an S3 listing of that prefix, anonymous), each
    with the HMBA directories its manifest names, their kinds and versions, and the taxonomy directory
    `download --release VERSION` would read.

    Example:
        >>> [r["version"] for r in list_releases()]  # doctest: +SKIP
    """
    import xml.etree.ElementTree as ET

    _check_base_url(base_url)
    versions: list[str] = []
    token = None
    while True:  # S3 answers 1,000 keys a page
        query = "?list-type=2&prefix=releases/&delimiter=/" + (
            f"&continuation-token={urllib.parse.quote(token)}" if token else ""
        )
        url = _url(base_url, "") + query
        data = _with_retries(lambda url=url: _read_all(url, timeout), url, retries, backoff)
        try:
            root = ET.fromstring(data)
        except ET.ParseError as e:
            raise DownloadError(f"{url}: not an S3 listing ({e}); check --base-url") from e
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        for p in root.iter(f"{ns}CommonPrefixes"):
            prefix = p.findtext(f"{ns}Prefix") or ""
            version = prefix.removeprefix("releases/").strip("/")
            if version:
                versions.append(version)
        token = root.findtext(f"{ns}NextContinuationToken")
        if root.findtext(f"{ns}IsTruncated") != "true" or not token:
            break
    out: list[dict[str, Any]] = []
    for version in sorted(set(versions)):
        url = _url(base_url, R.manifest_path(version))
        try:
            data = json.loads(_with_retries(lambda url=url: _read_all(url, timeout), url, retries, backoff))
            entries = parse_manifest(data, url)
        except (DownloadError, ReleaseError, json.JSONDecodeError) as e:
            out.append({"version": version, "error": " ".join(str(e).split())[:200]})
            continue
        listed = {
            d: {k: v.get("version", "") for k, v in kinds.get("directories", {}).items()}
            for d, kinds in data.get("directory_listing", {}).items()
            if d.startswith("HMBA")
        }
        lay = Layout(entries, version)
        out.append({"version": version, "directories": listed, "taxonomy": lay.taxonomy_dir})
    return out


def _read_all(url: str, timeout: float) -> bytes:
    with _get(url, timeout) as r:
        return r.read()


def _with_retries(fn, url: str, retries: int = RETRIES, backoff: float = BACKOFF, on_retry=None):
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return fn()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise DownloadError(
                    f"{url}: 404 not found; check --release and --base-url (the bucket layout is "
                    "<kind>/<directory>/<version>/<file>)"
                ) from e
            if e.code < 500 or attempt == retries:
                raise DownloadError(
                    f"{url}: HTTP {e.code} {e.reason} after {attempt + 1} attempt(s); try again later"
                ) from e
            reason = f"HTTP {e.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            if isinstance(e, DownloadError):
                raise
            if attempt == retries:
                raise DownloadError(
                    f"{url}: {getattr(e, 'reason', e)} after {attempt + 1} attempts; check your "
                    "network and run the same command again (finished files are kept, partial "
                    "ones resume)"
                ) from e
            reason = str(getattr(e, "reason", e)) or type(e).__name__
        if on_retry:
            on_retry(reason, delay)
        time.sleep(delay)
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")


def select(
    entries: list[FileEntry], species: tuple[str, ...], what: tuple[str, ...], version: str = R.VERSION
) -> list[FileEntry]:
    """The files of these species and parts, from our two directories only (the taxonomy's under the name
    and version the release names): matrices and gene tables per species, shared CSVs once, the MapMyCells
    pair with `mapmycells`."""
    per_species_genes = any(e.ours and e.key in {g.name for g in R.GENE_TABLES.values()} for e in entries)
    out = []
    for e in Layout(entries, version).entries:
        if e.part not in what:
            continue
        if e.species is not None and e.species not in species:
            continue
        if e.part in ("metadata", "taxonomy"):
            if e.ext != "csv" or e.key not in R.CSV_NAMES:
                continue  # files of our directories that the loader does not use
            if e.key == R.SHARED_GENE_TABLE and per_species_genes:
                continue  # the per-species tables are what the layout reads
        elif e.part in R.MATRIX_KINDS and (e.ext != "h5ad" or e.species is None):
            continue
        out.append(e)
    return sorted(out, key=lambda e: -e.size)  # large files first: they set the total time


def plan(dest: Path, entries: list[FileEntry], cache: DownloadCache, rep: Reporter | None = None) -> Plan:
    """Which selected files are already here and verified.

    A file recorded as finished is trusted while it looks unchanged (`DownloadCache.unchanged`); one
    present but unrecorded (a cache made by hand, a run killed before recording) or changed since it was
    recorded is hashed; a wrong one is dropped from the record and fetched again.
    """
    p = Plan(entries)
    for e in entries:
        path = Path(dest) / e.relative_path
        partial = path.with_name(path.name + ".partial")
        if path.is_dir():
            raise DownloadError(
                f"{path}: a folder where the release has the file {e.relative_path}; move it away and run "
                "the download again"
            )
        if path.exists() and path.stat().st_size == e.size:
            if cache.unchanged(path, e):
                if not cache.known(path):
                    cache.remember(path, e)
                p.present.add(e.relative_path)
                continue
            if md5_file(path) == e.file_hash:
                cache.remember(path, e)
                p.present.add(e.relative_path)
                continue
            if rep:
                rep.log(f"{e.relative_path}: md5 differs from the manifest (damaged); fetching it again")
            cache.forget(path)
        elif path.exists():
            if rep:
                rep.log(
                    f"{e.relative_path}: {path.stat().st_size:,} bytes, manifest says {e.size:,}; "
                    "fetching it again"
                )
            cache.forget(path)
        if partial.exists() and partial.stat().st_size <= e.size:
            p.partial_bytes += partial.stat().st_size
    return p


def _fetch(
    entry: FileEntry,
    dest: Path,
    base_url: str,
    timeout: float,
    cache: DownloadCache,
    overall,
    rep: Reporter,
    retries: int,
    backoff: float,
    slots,
) -> None:
    slot = slots.get()  # a line of the terminal for this file's own bar, under the overall one
    name = entry.relative_path.rsplit("/", 1)[-1]
    with rep.bar(entry.size, name[:40], unit="B", position=slot) as own:
        try:

            def progress(n: int) -> None:
                own.update(n)
                overall(n)

            own.update(_partial_size(dest, entry))
            _fetch_file(entry, dest, base_url, timeout, cache, progress, rep, retries, backoff)
        finally:
            slots.put(slot)


def _partial_size(dest: Path, entry: FileEntry) -> int:
    partial = Path(dest) / (entry.relative_path + ".partial")
    return partial.stat().st_size if partial.exists() and partial.stat().st_size <= entry.size else 0


def _fetch_file(
    entry: FileEntry,
    dest: Path,
    base_url: str,
    timeout: float,
    cache: DownloadCache,
    progress,
    rep: Reporter,
    retries: int,
    backoff: float,
) -> None:
    path = Path(dest) / entry.relative_path
    partial = path.with_name(path.name + ".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    url = _url(base_url, entry.relative_path)

    def attempt() -> None:
        have = partial.stat().st_size if partial.exists() else 0
        if have > entry.size:
            partial.unlink()
            have = 0
        if have < entry.size:
            with _get(url, timeout, have) as r:
                status = getattr(r, "status", 200)
                if have and status != 206:  # the server ignored Range: start over
                    progress(-have)
                    have = 0
                mode = "ab" if have else "wb"
                with open(partial, mode) as f:
                    while chunk := r.read(CHUNK):
                        f.write(chunk)
                        progress(len(chunk))
            have = partial.stat().st_size
            if have < entry.size:
                raise ConnectionError(f"connection closed at byte {have:,} of {entry.size:,}")
        digest = md5_file(partial)
        if digest != entry.file_hash:
            progress(-partial.stat().st_size)
            partial.unlink()
            raise ConnectionError(
                f"md5 {digest} differs from the manifest's {entry.file_hash} (corrupted in "
                "transit); fetching it again"
            )
        os.replace(partial, path)
        cache.remember(path, entry)

    def on_retry(reason: str, delay: float) -> None:
        rep.log(f"{entry.relative_path}: {reason}; retrying in {delay:.0f} s")

    _with_retries(attempt, url, retries, backoff, on_retry)


def download(
    dest: Path,
    *,
    species: tuple[str, ...] = R.SPECIES,
    what: tuple[str, ...] = R.PARTS,
    version: str = R.VERSION,
    base_url: str = R.BUCKET_URL,
    dry_run: bool = False,
    jobs: int = 4,
    timeout: float = TIMEOUT,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
    quiet: bool = False,
) -> Plan:
    """Download the selected part of a release into `dest` (resuming, verifying) and return the plan.

    Example:
        >>> download(Path("data/real-release"), species=("Marmoset",))  # doctest: +SKIP
    """
    dest = Path(dest)
    _check_base_url(base_url)
    rep = Reporter(quiet)
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest}: a file is there, not a folder; choose a folder for the download")
    dest.mkdir(parents=True, exist_ok=True)
    listed = fetch_manifest(base_url, version, dest, timeout, retries, backoff)
    mark_manifest_used(dest, version)
    entries = select(listed, species, what, version)
    lay = Layout(listed, version)
    if not entries:
        raise DownloadError(
            f"the manifest of release {version} lists no files of {R.EXPRESSION_DIR} or {lay.taxonomy_dir} "
            f"for species {', '.join(species)} and parts {', '.join(what)}; check --release"
        )
    rep.log(
        f"taxonomy: {lay.taxonomy_dir}, version {lay.taxonomy_version} (the directory this release names)"
    )
    cache = DownloadCache(dest)
    for note in cache.notes:
        rep.log(note)
    cache.rewrite_if_needed()
    p = plan(dest, entries, cache, rep)
    p.ignored = lay.ignored
    if p.ignored:
        rep.log(
            f"the manifest lists {sum(p.ignored.values()):,} files of {len(p.ignored)} other datasets of "
            f"the bucket; ignored (only {R.EXPRESSION_DIR} and {lay.taxonomy_dir} are read)"
        )
    if dry_run:
        return p
    need = p.bytes_to_fetch
    free = shutil.disk_usage(dest).free
    if need + DISK_MARGIN > free:
        raise DownloadError(
            f"{dest}: {need / 1e9:,.1f} GB to download but {free / 1e9:,.1f} GB free (keeping "
            f"{DISK_MARGIN / 2**30:.0f} GiB spare); free space or choose another DEST"
        )
    todo = p.todo
    rep.log(
        f"{len(todo)} of {len(entries)} files to fetch, {need / 1e9:,.2f} GB "
        f"({len(p.present)} already here and verified)"
    )
    if not todo:
        return p
    lock = threading.Lock()
    with rep.bar(sum(e.size for e in todo), "download", unit="B") as bar:
        bar.update(p.partial_bytes)

        def progress(n: int) -> None:
            with lock:
                bar.update(n)

        slots: queue.Queue[int] = queue.Queue()
        for i in range(max(1, jobs)):
            slots.put(i + 1)
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [
                pool.submit(_fetch, e, dest, base_url, timeout, cache, progress, rep, retries, backoff, slots)
                for e in todo
            ]
            errors = []
            for f in futures:
                try:
                    f.result()
                except DownloadError as err:
                    errors.append(err)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DownloadError(f"{errors[0]}{more}")
    for e in todo:
        p.present.add(e.relative_path)
    rep.log(f"downloaded {len(todo)} files into {dest}")
    return p
