"""The named analyses as Python functions: `build_db.analyses` is public API and stays where it is; the
code lives in `access/analyses.py`."""

from .access.analyses import *  # noqa: F403
from .access.analyses import __all__  # noqa: F401
