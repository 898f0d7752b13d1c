"""Fail when the package outgrows the sizes a reader can hold in their head (a pre-commit hook).

python scripts/check_layout.py            # checks edgekd/
python scripts/check_layout.py some/pkg   # checks another package folder

Exit 1 with one line per problem when a module is over MAX_MODULE_LINES lines, or when the package's top level
holds more than MAX_TOP_LEVEL modules and sub-packages (`__init__.py` does not count). `make lint` and the
pre-commit hook run it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 600
MAX_TOP_LEVEL = 16


def long_modules(package: Path, max_lines: int = MAX_MODULE_LINES) -> list[str]:
    """One problem per module, at any depth under `package`, longer than `max_lines` lines."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        with path.open(encoding="utf-8", errors="replace") as f:
            lines = sum(1 for _ in f)
        if lines > max_lines:
            problems.append(f"{path}: {lines} lines (at most {max_lines})")
    return problems


def top_level_entries(package: Path) -> list[str]:
    """Names of the modules (other than `__init__.py`) and sub-packages directly under `package`."""
    modules = [p.name for p in package.glob("*.py") if p.name != "__init__.py"]
    # A folder without __init__.py (data, __pycache__) is not something a reader has to learn as an import.
    packages = [p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    return sorted(modules + packages)


def crowded_top_level(package: Path, max_entries: int = MAX_TOP_LEVEL) -> list[str]:
    """One problem when `package`'s top level holds more than `max_entries` modules and sub-packages."""
    entries = top_level_entries(package)
    if len(entries) <= max_entries:
        return []
    return [f"{package}: {len(entries)} top-level modules and packages (at most {max_entries})"]


def check(package: Path) -> list[str]:
    """Every layout problem in `package`, one line each; an empty list means it passes."""
    return long_modules(package) + crowded_top_level(package)


def main(argv: list[str]) -> int:
    # Relative to where it runs, so the problem lines read as paths the committer knows.
    package = Path(argv[0]) if argv else Path(os.path.relpath(REPO / "edgekd"))
    if not package.is_dir():
        print(f"{package}: not a folder", file=sys.stderr)
        return 2
    problems = check(package)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
