"""scripts/check_layout.py on fake packages: the real edgekd/ is being split up and does not pass yet."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_scripts import load_script

layout = load_script("scripts/check_layout.py")


def fake_package(root: Path, modules: int, lines: int = 10, subpackages: int = 0) -> Path:
    """A package with `modules` modules of `lines` lines each and `subpackages` one-module sub-packages."""
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A fake package."""\n')
    for n in range(modules):
        (package / f"mod{n}.py").write_text("x = 1\n" * lines)
    for n in range(subpackages):
        sub = package / f"sub{n}"
        sub.mkdir()
        (sub / "__init__.py").write_text("")
        (sub / "inner.py").write_text("y = 2\n")
    return package


def test_a_small_tree_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Exactly at both limits: 14 modules + 2 sub-packages, each module 600 lines. Data folders do not count.
    package = fake_package(tmp_path, modules=14, lines=layout.MAX_MODULE_LINES, subpackages=2)
    (package / "data").mkdir()
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "mod0.cpython-311.py").write_text("z = 3\n" * 1000)
    assert layout.check(package) == []
    assert layout.main([str(package)]) == 0
    assert capsys.readouterr().out == ""


def test_an_over_long_module_at_any_depth_is_named_with_its_length(tmp_path: Path) -> None:
    package = fake_package(tmp_path, modules=2, subpackages=1)
    (package / "mod1.py").write_text("x = 1\n" * 601)
    (package / "sub0" / "inner.py").write_text("y = 2\n" * 900)
    assert layout.long_modules(package) == [
        f"{package / 'mod1.py'}: 601 lines (at most 600)",
        f"{package / 'sub0' / 'inner.py'}: 900 lines (at most 600)",
    ]
    assert layout.crowded_top_level(package) == []


def test_too_many_modules_and_packages_at_the_top_level(tmp_path: Path) -> None:
    package = fake_package(tmp_path, modules=15, subpackages=2)
    assert len(layout.top_level_entries(package)) == 17
    assert "__init__.py" not in layout.top_level_entries(package)
    assert layout.crowded_top_level(package) == [f"{package}: 17 top-level modules and packages (at most 16)"]
    assert layout.long_modules(package) == []


def test_main_prints_one_line_per_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = fake_package(tmp_path, modules=17)
    (package / "mod3.py").write_text("x = 1\n" * 700)
    assert layout.main([str(package)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{package / 'mod3.py'}: 700 lines (at most 600)",
        f"{package}: 17 top-level modules and packages (at most 16)",
    ]


def test_a_missing_folder_is_refused(tmp_path: Path) -> None:
    assert layout.main([str(tmp_path / "nope")]) == 2
