"""Connection recipes for BI tools, filled in with a store's absolute catalog path (`hmba-db connect-info`).

Each tool embeds its own DuckDB through a driver (SQLAlchemy, JDBC, ODBC, a plugin). The catalog is written
in a storage version DuckDB 1.1+ opens, its views read the Parquet files by absolute path, and every
recipe opens it read-only, so no init statement is needed and nothing can change the store.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HmbaError
from ..store.catalog import CATALOG


def recipes(store: Path) -> str:
    store = Path(store).absolute()
    catalog = store / CATALOG
    if not catalog.exists():
        raise HmbaError(f"{catalog}: not found; build the store first (hmba-db build RELEASE {store})")
    return f"""Catalog: {catalog}
Open it read-only; no init statement is needed. If you move the store, run: hmba-db relocate NEW_PATH

Superset (SQLAlchemy; pip install "duckdb-engine>=0.17" "sqlalchemy>=2.0,<2.1" in Superset's environment)
  Database > + Database > DuckDB (or Other), SQLAlchemy URI:
    duckdb:///{catalog}?access_mode=read_only

Metabase (DuckDB driver plugin jar in Metabase's plugins/ folder)
  Admin > Databases > Add > DuckDB
    Database file: {catalog}
    Establish a read-only connection: on

Tableau (DuckDB JDBC driver jar in Tableau's Drivers folder)
  Connect > Other Databases (JDBC)
    URL: jdbc:duckdb:{catalog}
    Dialect: SQL92; Properties: duckdb.read_only=true

Power BI (DuckDB ODBC driver; or the MotherDuck Power BI connector)
  Get Data > ODBC, connection string:
    Driver=DuckDB Driver;Database={catalog};access_mode=READ_ONLY

Grafana (DuckDB data source plugin, motherduck-duckdb-datasource)
  Connections > Add new data source > DuckDB
    Path: {catalog}
    The plugin opens the file read-write in some versions: make it read-only for Grafana's user
    (chmod a-w {catalog}) or give Grafana a copy made with cp -r plus hmba-db relocate.

DBeaver (bundled DuckDB JDBC driver)
  Database > New connection > DuckDB
    Path: {catalog}
    Driver properties: duckdb.read_only = true

Shared servers that run other people's SQL: use hmba-db sql --safe, or build_db.access.sandbox.run_safe.
"""
