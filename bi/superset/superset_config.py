"""Superset's configuration for the HMBA-BG store (`make bi-superset`; SUPERSET_CONFIG_PATH names this file).

Everything Superset keeps (its metadata database, the secret key signing its sessions) lives in one folder,
HMBA_SUPERSET_HOME (data/superset by default), never in the repository. A lab sharing a server changes only
what the comments below name."""

import os
import secrets
from pathlib import Path

HOME = Path(os.environ.get("HMBA_SUPERSET_HOME", "data/superset")).absolute()
HOME.mkdir(parents=True, exist_ok=True)

_key = HOME / "secret_key"
if not _key.exists():  # made once; a shared server keeps it (sessions and saved passwords depend on it)
    _key.write_text(secrets.token_urlsafe(48))
    _key.chmod(0o600)
SECRET_KEY = _key.read_text().strip()

# Superset's own metadata (users, charts, dashboards); a shared server may point this at PostgreSQL.
SQLALCHEMY_DATABASE_URI = f"sqlite:///{HOME / 'superset.db'}"

# The store is read-only: no uploads, no DML, no file access from SQL Lab beyond the catalog's own views.
CSV_EXTENSIONS: set[str] = set()
EXCEL_EXTENSIONS: set[str] = set()
COLUMNAR_EXTENSIONS: set[str] = set()

# Chart results are cached in Superset's metadata database for ten minutes; after a rebuild of the store,
# a dashboard's "Force refresh" asks again at once.
DATA_CACHE_CONFIG = {
    "CACHE_TYPE": "SupersetMetastoreCache",
    "CACHE_KEY_PREFIX": "hmba_results",
    "CACHE_DEFAULT_TIMEOUT": 600,
}

# No telemetry, no calls out (our machines and many lab networks cannot reach them).
SCARF_ANALYTICS = False
ENABLE_PROXY_FIX = False
