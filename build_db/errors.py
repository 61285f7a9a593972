"""One root error class for everything a user can get wrong; the CLI prints it as one line, no traceback."""

from __future__ import annotations


class HmbaError(Exception):
    """A problem with the user's input or environment, told in one line: the file, the key, the fix.

    `path` and `key` are kept as structured detail so callers (and tests) need not parse the message.
    """

    def __init__(self, message: str, *, path: object | None = None, key: object | None = None):
        super().__init__(message)
        self.path = path
        self.key = key


class ReleaseError(HmbaError):
    """A release directory (real or synthetic) is missing a file or does not match docs/release.md."""


class StoreError(HmbaError):
    """The store cannot answer: a file it lists is missing, of another size, damaged or unreadable. Never
    the user's question: a server answers it with a 503, and the fix is `hmba-db verify`, then a rebuild."""
