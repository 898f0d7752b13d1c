"""Load a script of the repository (scripts/, benchmarks/) as a module, so a test can call its functions: the
scripts are not part of the edgekd package and cannot be imported by name."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def load_script(relative_path: str) -> ModuleType:
    """The module at REPO/`relative_path` (e.g. "scripts/readme_table.py"), executed afresh."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
