"""hmba-db: a columnar database build of the HMBA basal-ganglia single-nucleus RNA-seq release."""

__version__ = "0.1.0"  # before the imports: build.py records it in build.json

from .access.connect import connect  # noqa: E402
from .access.export import to_anndata  # noqa: E402
from .access.queries import list_queries, run_query  # noqa: E402
from .errors import HmbaError, ReleaseError  # noqa: E402
from .release.check import CheckReport, Problem, check_release  # noqa: E402
from .release.synth import synth  # noqa: E402
from .store.build import BuildResult, build  # noqa: E402
from .store.catalog import relocate  # noqa: E402
from .store.publish import publish  # noqa: E402
from .store.verify import verify_store  # noqa: E402

__all__ = [
    "BuildResult",
    "CheckReport",
    "HmbaError",
    "Problem",
    "ReleaseError",
    "build",
    "check_release",
    "connect",
    "list_queries",
    "publish",
    "relocate",
    "run_query",
    "synth",
    "to_anndata",
    "verify_store",
]
