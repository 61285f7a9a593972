"""A faithful synthetic HMBA-BG release: same tree, files, columns and quirks as the real one."""

from .writer import DEFAULT_SCALE, synth

__all__ = ["DEFAULT_SCALE", "synth"]
