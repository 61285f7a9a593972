"""`hmba-db publish STORE --base-url URL`: a catalog for the store served at URL (HTTPS or object storage).

A served store has no directory listing, so the published catalog's views name every file they read,
by its URL; the small tables are copied in whole. It is written beside the local catalog as
`STORE/published.duckdb` (a plain file, in the storage version BI drivers read) with
`STORE/published.json`, which lists the files to upload and the URL they were published for. Readers open
it with `build_db.connect(URL)` or plain DuckDB's `ATTACH 'URL/published.duckdb' (READ_ONLY)`.

DuckDB binds a view to its files when the view is created, and the URLs do not answer yet (the files are
uploaded after publishing). So the views are created in a session where the base URL is mapped onto the
local store by an fsspec file system: every URL is read from the local file it names, and a file missing
locally is an error here, not on a reader's screen later.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from ..errors import HmbaError
from ..files import save_json
from . import integrity
from .catalog import STORAGE_VERSION, sql_literal, view_sql, views_of, write_comments
from .paths import BUILD_JSON, CATALOG, files_root

PUBLISHED = "published.duckdb"
PUBLISHED_JSON = "published.json"
SCHEMES = ("https", "http", "s3", "gs", "r2")


def normalized_base(url: str) -> str:
    """The base URL with one trailing slash; a one-line error for what DuckDB cannot read."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.netloc:
        raise HmbaError(
            f"{url}: not a base URL DuckDB can read a store from; give https://HOST/PATH or "
            f"s3://BUCKET/PATH ({', '.join(SCHEMES)})",
            key="--base-url",
        )
    if parts.query or parts.fragment:
        raise HmbaError(
            f"{url}: a base URL has no ?query or #fragment; give the folder's URL", key="--base-url"
        )
    return url.rstrip("/") + "/"


def publish(store: Path, base_url: str) -> dict:
    """Write STORE/published.duckdb and STORE/published.json for the store served at base_url.

    Returns what published.json holds: the base URL, the build id, the catalog's URL and the files to
    serve (paths relative to the store, with sizes).

    Example:
        >>> publish(Path("data/store"), "https://example.org/hmba/store")  # doctest: +SKIP
        {'base_url': 'https://example.org/hmba/store/', 'catalog_url': '.../published.duckdb', ...}
    """
    store = Path(store).absolute()
    base = normalized_base(base_url)
    if not (store / CATALOG).exists():
        raise HmbaError(
            f"{store / CATALOG}: not found; build the store first (hmba-db build RELEASE {store})"
        )
    root = files_root(store)  # the current snapshot
    build = json.loads((store / BUILD_JSON).read_text()) if (store / BUILD_JSON).exists() else {}
    served: set[Path] = set()

    def url_of(path: Path) -> str:
        return base + path.relative_to(store).as_posix()

    root_url = base.rstrip("/") if root == store else url_of(root).rstrip("/")

    def names(con) -> list[str]:
        """The files the build wrote (store_files; a glob of the folders for a store built before it)."""
        listed = integrity.listed(con, "src")
        files = integrity.list_files(root) if listed is None else [f for f, _, _ in listed]
        missing = [f for f in files if not (root / f).is_file()]
        if missing:
            raise HmbaError(f"{root / missing[0]}: missing; the store is incomplete: rebuild it")
        return files

    tmp = store / f".{PUBLISHED}.tmp"
    tmp.unlink(missing_ok=True)
    con = duckdb.connect()
    try:
        con.register_filesystem(_mapped_filesystem(base, store))
        con.execute(f"attach {sql_literal(root / CATALOG)} as src (read_only)")
        con.execute(f"attach {sql_literal(tmp)} as pub (storage_version '{STORAGE_VERSION}')")
        tables = [
            r[0]
            for r in con.execute(
                "select table_name from duckdb_tables() where database_name = 'src' order by table_name"
            ).fetchall()
        ]
        con.execute("use pub")
        for t in tables:
            con.execute(f"create table {t} as select * from src.main.{t}")
        written = names(con)
        for name in views_of(con, "src"):
            sql = view_sql(name, root_url, written)  # every file by URL: HTTP has no listing
            prefix = root_url + "/"
            served.update(root / url.replace("''", "'").removeprefix(prefix) for url in _urls(sql))
            con.execute(sql)
        published_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        con.execute("update store_info set value = ? where key = 'store_path'", [root_url])
        con.executemany(
            "insert into store_info values (?, ?)", [("base_url", base), ("published_at", published_at)]
        )
        write_comments(con)
        con.execute("use memory")
        con.execute("detach pub")
    except duckdb.Error as e:
        tmp.unlink(missing_ok=True)
        raise HmbaError(f"{store}: cannot publish ({' '.join(str(e).split())})") from e
    finally:
        con.close()
    files = sorted(served)
    record = {
        "base_url": base,
        "catalog_url": base + PUBLISHED,
        "build_id": build.get("build_id"),
        "published_at": published_at,
        "bytes": sum(f.stat().st_size for f in files) + tmp.stat().st_size,
        "files": [PUBLISHED] + [f.relative_to(store).as_posix() for f in files],
    }
    os.replace(tmp, store / PUBLISHED)
    save_json(store / PUBLISHED_JSON, record)
    return record


def _urls(sql: str) -> list[str]:
    """The quoted URLs of a view's SQL (its files)."""
    return re.findall(r"'((?:[a-z][a-z0-9+.-]*)://(?:[^']|'')*)'", sql)


def _mapped_filesystem(base: str, store: Path):
    """An fsspec file system answering for the base URL's scheme from the local store's files."""
    from fsspec.implementations.local import LocalFileSystem

    scheme = urlsplit(base).scheme
    with_scheme, without = base, base.split("://", 1)[1]

    class Mapped(LocalFileSystem):
        protocol = (scheme,)

        @classmethod
        def _strip_protocol(cls, path):
            path = str(path)
            for prefix in (with_scheme, without):
                if path.startswith(prefix):
                    path = str(store / path[len(prefix) :])
                    break
            return super()._strip_protocol(path)

    return Mapped(skip_instance_cache=True)
