"""``maze tools new NAME``: the scaffolded package passes its own tests and lint as it is, and bad
names or occupied folders are refused."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from maze_core.scaffold import ScaffoldError, check_name, next_steps, scaffold_tool_package
from tests.conftest import maze_exe
from tests.test_cli import maze
from tests.test_tools_reload import build_wheel


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
    assert " -m pytest " in out.stdout and "maze tools reload" in out.stdout
    bad = maze("tools", "new", "Not Valid", env=cli_env, cwd=tmp_path)
    assert bad.returncode == 2 and "invalid tool package name 'Not Valid'" in bad.stderr
    again = maze("tools", "new", "summarize", "--dir", str(tmp_path / "pkgs"), env=cli_env, cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr


def _hint_lines(stdout: str) -> list[str]:
    """The lines that ``maze tools new`` prints after ``next...:``, as the user would copy them."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("next"))
    return [line.strip() for line in lines[start + 1:] if line.startswith("  ")]


PIP_INSTALL_E = re.compile(r"^(?P<pip>.*?\bpip) install -e (?P<path>\S+)(?P<rest>.*)$")


@pytest.mark.parametrize("venv_on_path", [True, False], ids=["venv-on-PATH", "other-python-on-PATH"])
def test_the_printed_next_steps_work_as_typed_in_order_from_the_same_folder(tmp_path, cli_env, venv_on_path):
    """Typed one after the other in one shell, in the folder where ``maze tools new`` ran, each
    printed line succeeds: with the venv's bin first on PATH, and with it off PATH (the user ran
    ``.venv/bin/maze`` and their ``python`` is another one, without Maze or pytest).

    The one line not run as typed is ``pip install -e PATH``: building the package needs a build
    backend from the package registry (a fresh venv's setuptools 65.5 has no ``bdist_wheel``), and it
    would install into the venv the tests run in. In its place, after checking that PATH names the
    package from the shell's folder, the same ``pip`` installs a wheel of the package into a private
    folder that the next lines get on PYTHONPATH, so ``maze tools reload`` really finds its tools."""
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = Path(sys.executable).parent
    other = tmp_path / "other-bin"  # the user's own `python`: no Maze, no pytest
    other.mkdir()
    (other / "python").write_text(f"#!/bin/sh\nexec {shlex.quote(sys._base_executable)} -S \"$@\"\n")
    (other / "python").chmod(0o755)
    others = f"{other}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env = {k: v for k, v in cli_env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{others}" if venv_on_path else others
    new = "maze tools new hintprobe" if venv_on_path else f"{shlex.quote(maze_exe())} tools new hintprobe"
    out = subprocess.run(["bash", "-c", new], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    package = work / "maze-tool-hintprobe"
    lines = _hint_lines(out.stdout)
    assert lines and "tools reload" in lines[-1], out.stdout

    site = tmp_path / "site"
    wheel = build_wheel(package, tmp_path / "dist")
    script, installs = ["set -ex"], 0
    for line in lines:
        pip = PIP_INSTALL_E.match(line)
        if pip:
            installs += 1
            path = pip["path"]
            line = (f"test -f {path}/pyproject.toml && {pip['pip']} install -q --no-deps --no-index "
                    f"--target {shlex.quote(str(site))} {shlex.quote(str(wheel))} && "
                    f"export PYTHONPATH={shlex.quote(str(site))}{pip['rest']}")
        script.append(line)
    assert installs == 1, lines
    run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"{out.stdout}\n{run.stdout}\n{run.stderr}"
    assert "3 passed" in run.stdout
    assert "registered hintprobe_word_count@0.1.0" in run.stdout, run.stdout


def test_next_steps_ask_for_pytest_first_only_where_it_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = scaffold_tool_package("probe", tmp_path / "pkgs")
    with_pytest = next_steps(target, python="py", maze="mz", has_pytest=True)
    assert [command for command, _ in with_pytest] == [
        "py -m pytest pkgs/maze-tool-probe", "py -m pip install -e pkgs/maze-tool-probe", "mz tools reload"]
    without = next_steps(target, python="py", maze="mz", has_pytest=False)
    assert without[0][0] == "py -m pip install pytest" and without[1:] == with_pytest
    here = next_steps(scaffold_tool_package("other", "."), python="py", maze="mz", has_pytest=True)
    assert here[0][0] == "py -m pytest ./maze-tool-other"  # a bare name would be a project to pip
    elsewhere = tmp_path.parent / "elsewhere"
    assert next_steps(elsewhere / "maze-tool-x", python="py", maze="mz", has_pytest=True)[1][0] == (
        f"py -m pip install -e {elsewhere / 'maze-tool-x'}")
