"""``maze tools new NAME``: a tool package that installs, registers and passes its own test as it is.

The package is shaped like the ones in ``tools/``: a pyproject with ``dependencies =
["maze-framework"]`` and an entry point in group ``maze``, a module with one ``@task`` and the
``register_tools`` hook, a README and a test (runnable without installing: ``python -m pytest`` in
the new folder).
"""

from __future__ import annotations

import importlib.util
import keyword
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from .errors import MazeError

__all__ = ["ScaffoldError", "check_name", "next_steps", "scaffold_tool_package"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
MAX_NAME = 40
# entry-point names of Maze's own plugins: a tool package of the same name would clash with them
RESERVED = frozenset({"sqlite", "local", "daps", "ray", "server", "core", "api", "client", "framework"})


class ScaffoldError(MazeError):
    """The name or the target folder cannot be used."""


def check_name(name: str) -> str:
    """The package's short name (``text`` for ``text`` or ``maze-tool-text``), or ``ScaffoldError``
    saying what a valid name looks like."""
    short = name.strip()
    for prefix in ("maze-tool-", "maze_tool_"):
        if short.startswith(prefix):
            short = short[len(prefix):]
    hint = ("use lowercase letters and digits, words joined by '-' or '_', starting with a letter "
            "(e.g. 'sentiment', 'pdf-tables')")
    if not short:
        raise ScaffoldError(f"tool package name {name!r} is empty; {hint}")
    if len(short) > MAX_NAME:
        raise ScaffoldError(f"tool package name {name!r} is longer than {MAX_NAME} characters")
    if not _NAME.match(short):
        raise ScaffoldError(f"invalid tool package name {name!r}: {hint}")
    if short.replace("-", "_") in RESERVED or keyword.iskeyword(short):
        raise ScaffoldError(f"tool package name {name!r} is reserved (Maze's own plugins use it)")
    return short


_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "Maze tools: {short}"
readme = "README.md"
requires-python = ">=3.11"
# "maze-framework", not "maze": the PyPI name "maze" is an unrelated maze generator.
dependencies = ["maze-framework"]

# Maze finds the package through this entry point and calls its register_tools hook.
[project.entry-points.maze]
{short} = "{module}"

[tool.setuptools]
packages = ["{module}"]

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.ruff]
line-length = 110

[tool.ruff.lint]
select = ["E", "F", "W", "I", "B", "UP"]
'''

_MODULE = '''\
"""Maze tools: {short}.

Each tool is a ``@task`` function; ``register_tools`` hands them to Maze once the package is
installed (``pip install -e .``, then ``maze tools reload`` or a restart).
"""

from __future__ import annotations

from maze_core import hookimpl, task

__version__ = "0.1.0"


@task(name="{ident}_word_count", version=__version__, description="Count the words of a text",
      output_parameters={{"words": {{"type": "integer"}}}})
def word_count(text: str) -> dict:
    """Replace this with your tool: inputs come from the signature, the result is a JSON dict."""
    return {{"words": len(text.split())}}


TOOLS = (word_count,)


@hookimpl
def register_tools(register):
    """Hand Maze every tool of this package."""
    for tool in TOOLS:
        register(tool)
'''

_TEST = '''\
"""{dist}: the tool works and the package hands it to Maze."""

from __future__ import annotations

import importlib
import sys
import tomllib
from pathlib import Path

import pluggy
from maze_core import hookspecs
from maze_core.registry import ToolRegistry

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the package's source is tested, installed or not
    sys.path.insert(0, str(ROOT))
package = importlib.import_module("{module}")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_tool_counts_words():
    assert package.word_count("one two  three") == {{"words": 3}}
    assert package.word_count("") == {{"words": 0}}


def test_the_package_registers_its_tools_through_the_hook():
    pm = pluggy.PluginManager("maze")
    pm.add_hookspecs(hookspecs)
    pm.register(package, name="{short}")
    registry = ToolRegistry()
    assert registry.load_plugin_tools(pm) == ["{ident}_word_count"]
    entry = registry.get("{ident}_word_count")
    assert entry.source == "package:{short}" and entry.version == package.__version__
    assert entry.meta.description and entry.meta.required_inputs == ("text",)


def test_the_entry_point_and_the_version_match_the_package():
    assert PYPROJECT["project"]["entry-points"]["maze"] == {{"{short}": "{module}"}}
    assert PYPROJECT["project"]["version"] == package.__version__
    assert "maze-framework" in PYPROJECT["project"]["dependencies"]
'''

_README = '''\
# {dist}

Maze tools: {short}.

In this folder, with the `python` that runs Maze (the one of its venv: it has Maze and pytest):

```bash
python -m pytest              # the package's tests (no install needed)
python -m pip install -e .    # install it next to Maze
```

Then `maze tools reload` in your Maze project's folder (a running server: `POST /tools/reload`)
shows its tools in `maze tools`.

Add tools as `@task` functions in `{module}/__init__.py` and list them in `TOOLS`. Give each a
`version` (shown as `name@version`; every run records the version of each tool it used) and a
`description`; declare `task_type`, `mem`, `gpu_mem` and `model_name` where the tool needs them.
'''


def scaffold_tool_package(name: str, parent: str | Path = ".", force: bool = False) -> Path:
    """Write ``maze-tool-<name>/`` under ``parent`` and return its path. An existing non-empty
    folder is refused unless ``force`` (then the scaffold's files are overwritten)."""
    short = check_name(name)
    ident = short.replace("-", "_")
    fields = {"short": short, "ident": ident, "dist": f"maze-tool-{short}", "module": f"maze_tool_{ident}"}
    target = Path(parent).expanduser() / fields["dist"]
    if target.exists() and not target.is_dir():
        raise ScaffoldError(f"{target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ScaffoldError(f"{target} already exists and is not empty (--force overwrites the "
                            f"scaffold's files)")
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{fields['module']}/__init__.py": _MODULE,
        f"tests/test_{fields['module']}.py": _TEST,
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields), encoding="utf-8")
    return target


def _shown(path: str | Path) -> str:
    """``path`` as a shell word that names it from the current folder: relative when it lies below
    the current folder (with ``./`` in front where it has no ``/``, so that the shell and pip read it
    as a path, not a command or a project name), else absolute. Symbolic links are kept: a venv's
    ``bin/python`` is a link to an interpreter that knows nothing of the venv."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path)
    if relative == ".." or relative.startswith(".." + os.sep):
        return shlex.quote(path)
    return shlex.quote(relative if os.sep in relative else f".{os.sep}{relative}")


def _command(program: str, path: str | Path) -> str:
    """``program`` when that name on PATH is ``path`` itself, else ``path`` as :func:`_shown`."""
    found = shutil.which(program)
    if found and os.path.abspath(found) == os.path.abspath(path):
        return program
    return _shown(path)


def next_steps(target: str | Path, python: str | None = None, maze: str | None = None,
               has_pytest: bool | None = None) -> list[tuple[str, str]]:
    """What to type after ``maze tools new``, as ``(command, comment)`` pairs: test the package, install
    it, reload Maze's tools. Each command works as typed, in order, from the folder ``maze tools new``
    ran in: no ``cd`` (``maze tools reload`` reads ``./config.toml``, so it belongs in that folder),
    the package named by its path from there, and Python named as the interpreter that runs Maze
    (a bare ``python`` may be another one, without Maze or pytest), unless ``python`` on PATH is
    that one. ``pip install pytest`` comes first only where that interpreter has no pytest."""
    python = python or (_command("python", sys.executable) if sys.executable else "python3")
    if maze is None:
        script = Path(sys.executable).with_name("maze")
        maze = _command("maze", script) if script.is_file() else f"{python} -m maze_core.cli"
    if has_pytest is None:
        has_pytest = importlib.util.find_spec("pytest") is not None
    package = _shown(target)
    steps = [] if has_pytest else [(f"{python} -m pip install pytest", "pytest, to run the tests")]
    return steps + [
        (f"{python} -m pytest {package}", "its tests pass as they are (no install needed)"),
        (f"{python} -m pip install -e {package}", "install it next to Maze"),
        (f"{maze} tools reload", "its tools appear in `maze tools`"),
    ]
