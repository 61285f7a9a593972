"""Writing a small file whole or not at all: the cache records, manifests, build and state JSON,
published.json and the MapMyCells marker file all go through here, so a kill mid-write never leaves half
a file."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` beside `path` as `<name>.partial`, then rename it over `path` (atomic within a file
    system)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data)
    os.replace(tmp, path)


def save_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")
