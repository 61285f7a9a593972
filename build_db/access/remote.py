"""Opening a store served over HTTP(S) or object storage, as `hmba-db publish` wrote it for that URL.

DuckDB reads the published catalog and each Parquet file with HTTP Range requests (its httpfs
extension): a one-gene question reads the catalog's few blocks, that bucket's footer and the gene's row
groups, not the store.
"""

from __future__ import annotations

import duckdb

from ..errors import HmbaError
from ..store.catalog import sql_literal
from ..store.publish import PUBLISHED, normalized_base


def load_httpfs(con: duckdb.DuckDBPyConnection) -> None:
    """Load DuckDB's httpfs extension: installed already, from the PyPI packages (duckdb-extension-httpfs
    with duckdb-extensions, built for some DuckDB versions), or installed from DuckDB's repository."""
    errors = []
    try:
        con.execute("load httpfs")
        return
    except duckdb.Error as e:
        errors.append(" ".join(str(e).split())[:200])
    try:
        import duckdb_extensions

        duckdb_extensions.import_extension("httpfs", con=con)
        return
    except ImportError:
        pass
    except Exception as e:  # noqa: BLE001 - any failure here falls through to INSTALL
        errors.append(" ".join(str(e).split())[:200])
    try:
        con.execute("install httpfs")
        con.execute("load httpfs")
    except duckdb.Error as e:
        detail = " ".join(str(e).split())[:200]
        raise HmbaError(
            f"DuckDB {duckdb.__version__} cannot load its httpfs extension ({detail}); "
            "run `INSTALL httpfs` once with network access, or `pip install duckdb-extension-httpfs "
            "duckdb-extensions` where PyPI has builds for your DuckDB"
        ) from e


def catalog_url(url: str) -> tuple[str, str]:
    """(the store's base URL, its published catalog's URL) from either of them."""
    if url.rstrip("/").endswith(".duckdb"):
        cat = url.rstrip("/")
        return normalized_base(cat.rsplit("/", 1)[0]), cat
    base = normalized_base(url)
    return base, base + PUBLISHED


def connect_url(
    url: str, *, threads: int | None = None, setup: tuple[str, ...] = ()
) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the store published at `url` (its base URL or its published.duckdb).

    `setup`: statements run before attaching, e.g. a `CREATE SECRET` for a private bucket.
    """
    base, cat = catalog_url(url)
    con = duckdb.connect(":memory:", config={"threads": threads} if threads else {})
    load_httpfs(con)
    for statement in setup:
        con.execute(statement)
    try:
        con.execute(f"attach {sql_literal(cat)} as catalog (read_only)")
    except duckdb.Error as e:
        con.close()
        detail = " ".join(str(e).split())
        raise HmbaError(
            f"{cat}: cannot open the published catalog ({detail[:300]}); check the URL, that the server "
            "answers, and that `hmba-db publish STORE --base-url ...` was run and published.duckdb uploaded",
            path=cat,
        ) from e
    con.execute("use catalog")
    info = dict(con.execute("select key, value from store_info").fetchall())
    published_for = info.get("base_url")
    if published_for is None:
        con.close()
        raise HmbaError(
            f"{cat}: a local catalog, not a published one (no base_url); run hmba-db publish STORE "
            f"--base-url {base} and serve published.duckdb",
            path=cat,
        )
    if published_for != base:
        con.close()
        raise HmbaError(
            f"{cat}: published for {published_for}, opened at {base}; its views would read the files at "
            f"the other URL. Run hmba-db publish STORE --base-url {base} and upload published.duckdb again",
            path=cat,
        )
    con.execute("set variable hmba_store = ?", [info["store_path"]])
    con.execute("set parquet_metadata_cache = true")  # each file's footer fetched once per session
    return con
