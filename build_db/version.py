"""The package's version, in a module of its own: build.json records it; importing it loads nothing else."""

__version__ = "0.1.0"
