"""The package version, written once: `pyproject.toml` reads it, `edgekd.__version__` re-exports it, and lower
modules import it from here (not from the package root, which imports them back)."""

__version__ = "0.1.0"
