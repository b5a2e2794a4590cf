"""``maze tools new NAME``: the scaffolded package passes its own tests and lint as it is, and bad
names or occupied folders are refused."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from maze_core.scaffold import ScaffoldError, check_name, scaffold_tool_package
from tests.test_cli import maze


def test_the_scaffold_passes_its_own_tests_and_lint_without_being_installed(tmp_path):
    package = scaffold_tool_package("pdf-tables", tmp_path)
    assert package == tmp_path / "maze-tool-pdf-tables"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "README.md", "maze_tool_pdf_tables/__init__.py", "pyproject.toml",
        "tests/test_maze_tool_pdf_tables.py"]
    pyproject = tomllib.loads((package / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "maze-tool-pdf-tables"
    assert pyproject["project"]["dependencies"] == ["maze-framework"]
    assert pyproject["project"]["entry-points"]["maze"] == {"pdf-tables": "maze_tool_pdf_tables"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout
    ruff = Path(sys.executable).with_name("ruff")
    if ruff.exists():
        lint = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=package, capture_output=True,
                              text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout


def test_a_broken_scaffold_fails_its_own_test(tmp_path):
    """The scaffold's test is real: break the tool and it fails."""
    package = scaffold_tool_package("probe", tmp_path)
    module = package / "maze_tool_probe" / "__init__.py"
    module.write_text(module.read_text().replace('len(text.split())', 'len(text)'))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=package,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "1 failed" in run.stdout


@pytest.mark.parametrize("name, short", [("sentiment", "sentiment"), ("maze-tool-ocr", "ocr"),
                                         ("maze_tool_web_search", "web_search"), ("pdf-tables2", "pdf-tables2")])
def test_valid_names(name, short):
    assert check_name(name) == short


@pytest.mark.parametrize("name, message", [
    ("", "is empty"), ("maze-tool-", "is empty"), ("Sentiment", "invalid"), ("bad name", "invalid"),
    ("2fast", "invalid"), ("double--dash", "invalid"), ("trailing-", "invalid"), ("dots.no", "invalid"),
    ("x" * 41, "longer than 40"), ("sqlite", "reserved"), ("ray", "reserved"), ("../escape", "invalid"),
])
def test_invalid_names_are_refused_with_the_reason(name, message):
    with pytest.raises(ScaffoldError, match=message):
        check_name(name)


def test_an_existing_folder_is_kept_unless_forced(tmp_path):
    scaffold_tool_package("probe", tmp_path)
    readme = tmp_path / "maze-tool-probe" / "README.md"
    readme.write_text("mine")
    with pytest.raises(ScaffoldError, match="already exists and is not empty"):
        scaffold_tool_package("probe", tmp_path)
    assert readme.read_text() == "mine"
    scaffold_tool_package("probe", tmp_path, force=True)
    assert readme.read_text().startswith("# maze-tool-probe")


def test_maze_tools_new_on_the_command_line(tmp_path, cli_env):
    out = maze("tools", "new", "summarize", "--dir", str(tmp_path / "pkgs"), env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "pkgs" / "maze-tool-summarize" / "maze_tool_summarize" / "__init__.py").is_file()
    assert "python -m pytest" in out.stdout and "maze tools reload" in out.stdout
    bad = maze("tools", "new", "Not Valid", env=cli_env, cwd=tmp_path)
    assert bad.returncode == 2 and "invalid tool package name 'Not Valid'" in bad.stderr
    again = maze("tools", "new", "summarize", "--dir", str(tmp_path / "pkgs"), env=cli_env, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
