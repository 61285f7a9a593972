"""The release manifest (`releases/<version>/manifest.json`), in the format abc_atlas_access reads.

docs/release.md, 'The bucket and its manifest'. A manifest lists every file with its relative path, size and
md5; we write one for synthetic releases and read one to check, download and build.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReleaseError
from . import layout as R

MD5_CHUNK = 1_000_000  # the official client reads in 1,000,000-byte chunks; same here


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(MD5_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class FileEntry:
    directory: str  # a dataset of the bucket: ours are HMBA-10xMultiome-BG and HMBA-BG-taxonomy-CCN20250428
    kind: str  # expression_matrices, metadata or mapmycells
    key: str  # file name without extension (h5ad: without -raw/-log2)
    variant: str | None  # raw / log2 for h5ad files, else None
    ext: str
    relative_path: str
    size: int
    file_hash: str
    version: str
    url: str

    @property
    def ours(self) -> bool:
        """Whether the file is of the HMBA-BG release (the manifest lists every dataset of the bucket)."""
        return self.directory in R.DIRECTORIES

    @property
    def part(self) -> str | None:
        """Which `--what` part the file belongs to (raw, log2, metadata, taxonomy, mapmycells); None for
        files of other datasets."""
        if not self.ours:
            return None
        if self.kind == R.MAPMYCELLS_KIND:
            return "mapmycells"
        if self.variant is not None:
            return self.variant
        return "taxonomy" if self.directory in R.TAXONOMY_DIRS else "metadata"

    @property
    def name(self) -> str:
        return self.relative_path.rsplit("/", 1)[-1]

    @property
    def species(self) -> str | None:
        """The species a file of ours is specific to (matrices and gene tables), or None when shared."""
        if not self.ours:
            return None
        for sp in R.SPECIES:
            if self.variant is not None and self.key == R.matrix_stem(sp):
                return sp
            if self.variant is None and self.key == R.gene_table(sp):
                return sp
        return None

    def to_json(self) -> dict:
        return {
            "version": self.version,
            "relative_path": self.relative_path,
            "url": self.url,
            "size": self.size,
            "file_hash": self.file_hash,
        }


def entry_for(root: Path, relative_path: str, version: str = R.VERSION) -> FileEntry:
    """Describe a file of a release tree on disk (size and md5 measured now). `version` is the manifest's;
    each file keeps the version of its own folder (`<kind>/<directory>/<version>/...`)."""
    kind, directory, file_version, rest = relative_path.split("/", 3)
    name = rest.rsplit("/", 1)[-1]
    path = Path(root) / relative_path
    ext = name.rsplit(".", 1)[1]
    variant = None
    key = name.rsplit(".", 1)[0]
    if ext == "h5ad":
        key, variant = key.rsplit("-", 1)
    return FileEntry(
        directory,
        kind,
        key,
        variant,
        ext,
        relative_path,
        path.stat().st_size,
        md5_file(path),
        file_version,
        R.BUCKET_URL + relative_path,
    )


def write_manifest(root: Path, entries: list[FileEntry], version: str = R.VERSION) -> Path:
    """Write `releases/<version>/manifest.json` listing `entries` (of any datasets), as the bucket does."""
    listing: dict = {}
    dirs: dict = {}
    for e in entries:
        slot = listing.setdefault(e.directory, {}).setdefault(e.kind, {})
        if e.variant is None:
            slot[e.key] = {"files": {e.ext: e.to_json()}}
        else:
            slot.setdefault(e.key, {})[e.variant] = {"files": {e.ext: e.to_json()}}
        d = dirs.setdefault(e.directory, {}).setdefault(
            e.kind,
            {
                "version": e.version,
                "relative_path": f"{e.kind}/{e.directory}/{e.version}",
                "url": f"{R.BUCKET_URL}{e.kind}/{e.directory}/{e.version}/",
                "view_link": f"https://{R.BUCKET}.s3.us-west-2.amazonaws.com/index.html#"
                f"{e.kind}/{e.directory}/{e.version}/",
                "total_size": 0,
            },
        )
        d["total_size"] += e.size
    manifest = {
        "version": version,
        "resource_uri": R.RESOURCE_URI,
        "directory_listing": {k: {"directories": v} for k, v in dirs.items()},
        "file_listing": listing,
    }
    path = Path(root) / R.manifest_path(version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def parse_manifest(data: dict, source: str = "manifest.json") -> list[FileEntry]:
    """Every file a manifest lists. Raises ReleaseError naming the manifest and the bad key."""

    def bad(what: str, key: str) -> ReleaseError:
        return ReleaseError(
            f"{source}: {what} at {key}; fetch the manifest again (hmba-db download --dry-run)",
            path=source,
            key=key,
        )

    for k in ("version", "file_listing", "directory_listing"):
        if k not in data:
            raise bad(f"missing key {k!r}", "/")
    out = []
    for directory, kinds in data["file_listing"].items():
        for kind, files in kinds.items():
            for key, entry in files.items():
                where = f"file_listing/{directory}/{kind}/{key}"
                if not isinstance(entry, dict):
                    raise bad("expected an object", where)
                variants = [(None, entry)] if "files" in entry else list(entry.items())
                for variant, sub in variants:
                    files_obj = sub.get("files") if isinstance(sub, dict) else None
                    if not isinstance(files_obj, dict) or len(files_obj) != 1:
                        raise bad("expected {'files': {EXT: FILE}}", f"{where}/{variant or ''}".rstrip("/"))
                    ((ext, f),) = files_obj.items()
                    for field in ("relative_path", "size", "file_hash", "version", "url"):
                        if field not in f:
                            raise bad(f"file entry lacks {field!r}", f"{where}/{variant or ext}")
                    out.append(
                        FileEntry(
                            directory,
                            kind,
                            key,
                            variant,
                            ext,
                            f["relative_path"],
                            int(f["size"]),
                            f["file_hash"],
                            f["version"],
                            f["url"],
                        )
                    )
    return out


def read_manifest(root: Path, version: str = R.VERSION) -> tuple[dict, list[FileEntry]]:
    path = Path(root) / R.manifest_path(version)
    if not path.exists():
        found = sorted(p.parent.name for p in (Path(root) / "releases").glob("*/manifest.json"))
        hint = (
            f" (found versions: {', '.join(found)}; pass --release)"
            if found
            else "; download the release into this directory or generate one (hmba-db synth)"
        )
        raise ReleaseError(f"{path}: manifest not found{hint}", path=path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReleaseError(f"{path}: not valid JSON ({e}); fetch the manifest again", path=path) from e
    return data, parse_manifest(data, str(path))


def ours(entries: list[FileEntry]) -> list[FileEntry]:
    """The entries of the HMBA-BG release's two directories (the manifest lists the whole bucket)."""
    return [e for e in entries if e.ours]


def others(entries: list[FileEntry]) -> dict[str, int]:
    """How many entries each other dataset of the bucket has: what a loader ignores."""
    out: dict[str, int] = {}
    for e in entries:
        if not e.ours:
            out[e.directory] = out.get(e.directory, 0) + 1
    return dict(sorted(out.items()))


class Layout:
    """Where each file of the release is, as its manifest says (falling back to docs/release.md's layout).

    Only our two directories are looked at: the bucket's manifest lists ~36 datasets and the same stems
    (`cell_metadata`, `gene`, `donor`) recur in many of them. Relative paths come from the manifest rather
    than being built from the release version, because each directory and kind may carry its own version
    (the taxonomy is documented under both 20250630 and 20250531) and a file may sit a folder deeper.
    """

    def __init__(self, entries: list[FileEntry], version: str = R.VERSION):
        self.version = version
        self.taxonomy_dir, self.taxonomy_version = _taxonomy(entries, version)
        # The taxonomy directory this release does not use (a bucket-wide manifest may list both names) is
        # another dataset of the bucket: ignored.
        unused = [e for e in entries if e.directory in R.TAXONOMY_DIRS and e.directory != self.taxonomy_dir]
        self.entries = [e for e in ours(entries) if e not in unused]
        self.ignored = others(entries)
        for e in unused:
            self.ignored[e.directory] = self.ignored.get(e.directory, 0) + 1
        self.by_key = {
            (e.directory, e.kind, e.key if e.variant is None else f"{e.key}/{e.variant}"): e.relative_path
            for e in self.entries
        }

    def _dir(self, spec: R.CsvSpec) -> str:
        return self.taxonomy_dir if spec.directory in R.TAXONOMY_DIRS else spec.directory

    def _listed(self, spec: R.CsvSpec, name: str) -> str | None:
        return self.by_key.get((self._dir(spec), "metadata", name))

    @property
    def shared_gene_table(self) -> bool:
        """True when our metadata directory lists one `gene.csv` for all species and no per-species table."""
        spec = R.GENE_TABLES[R.SPECIES[0]]
        return self._listed(spec, R.SHARED_GENE_TABLE) is not None and not any(
            self._listed(g, g.name) for g in R.GENE_TABLES.values()
        )

    def listed(self, spec: R.CsvSpec) -> bool:
        """Whether the manifest lists this CSV (for a gene table: its own file or the shared one)."""
        if self._listed(spec, spec.name):
            return True
        return spec.species is not None and self.shared_gene_table

    def csv(self, spec: R.CsvSpec) -> str:
        rel = self._listed(spec, spec.name)
        if rel is None and spec.species is not None and self.shared_gene_table:
            rel = self._listed(spec, R.SHARED_GENE_TABLE)
        if rel is None and spec.directory in R.TAXONOMY_DIRS:
            rel = f"metadata/{self.taxonomy_dir}/{self.taxonomy_version}/{spec.name}.csv"
        return rel or spec.relative_path(self.version)

    def matrix(self, species: str, kind: str) -> str:
        return self.by_key.get(
            (R.EXPRESSION_DIR, "expression_matrices", f"{R.matrix_stem(species)}/{kind}")
        ) or R.matrix_path(species, kind, self.version)

    def mapmycells(self) -> list[FileEntry]:
        """The taxonomy's MapMyCells files (precomputed stats and query markers), as listed."""
        return [e for e in self.entries if e.part == "mapmycells"]


def _taxonomy(entries: list[FileEntry], version: str) -> tuple[str, str]:
    """The taxonomy directory and version a release's manifest names: the one listing metadata files; of
    two (a manifest naming both the suffixed and the plain name), the one at the release's own version,
    else the newest. 20250630's directory when the manifest lists none."""
    listed: dict[str, set[str]] = {}
    for e in entries:
        if e.directory in R.TAXONOMY_DIRS and e.kind == "metadata":
            listed.setdefault(e.directory, set()).add(e.version)
    if not listed:
        return R.TAXONOMY_DIR, version
    best = max(listed, key=lambda d: (version in listed[d], max(listed[d]), R.TAXONOMY_DIRS.index(d)))
    versions = listed[best]
    return best, version if version in versions else max(versions)


def layout(release: Path, version: str = R.VERSION) -> Layout:
    """The release's Layout; docs/release.md's paths when there is no readable manifest."""
    try:
        return Layout(read_manifest(release, version)[1], version)
    except ReleaseError:
        return Layout([], version)
