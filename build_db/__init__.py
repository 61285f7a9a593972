"""hmba-db: a columnar database build of the HMBA basal-ganglia single-nucleus RNA-seq release.

The public names load on first use (PEP 562), so `import build_db` and every command start without
pandas, anndata and the rest: `hmba-db --help` and the sandbox's child processes import only what they use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "BuildResult": ".store.build",
    "CheckReport": ".release.check",
    "HmbaError": ".errors",
    "Problem": ".release.check",
    "ReleaseError": ".errors",
    "StoreError": ".errors",
    "build": ".store.build",
    "check_release": ".release.check",
    "connect": ".access.connect",
    "list_queries": ".access.queries",
    "publish": ".store.publish",
    "relocate": ".store.catalog",
    "run_query": ".access.queries",
    "sql": ".access.router",
    "store_info": ".access.info",
    "synth": ".release.synth",
    "to_anndata": ".access.export",
    "verify_store": ".store.verify",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'build_db' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name], __name__), name)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .access.connect import connect as connect
    from .access.export import to_anndata as to_anndata
    from .access.info import store_info as store_info
    from .access.queries import list_queries as list_queries
    from .access.queries import run_query as run_query
    from .access.router import sql as sql
    from .errors import HmbaError as HmbaError
    from .errors import ReleaseError as ReleaseError
    from .errors import StoreError as StoreError
    from .release.check import CheckReport as CheckReport
    from .release.check import Problem as Problem
    from .release.check import check_release as check_release
    from .release.synth import synth as synth
    from .store.build import BuildResult as BuildResult
    from .store.build import build as build
    from .store.catalog import relocate as relocate
    from .store.publish import publish as publish
    from .store.verify import verify_store as verify_store

__all__ += ["__version__"]
