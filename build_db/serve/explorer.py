"""The explorer page at `/` (issue 22 builds it): mounted when its files are here."""

from __future__ import annotations


def mount_explorer(app) -> bool:
    return False
