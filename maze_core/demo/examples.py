"""The examples of ``examples/`` for ``maze demo --example NAME``, found by their path.

An example depends on Maze and on tool packages, never the other way round: ``maze_core`` imports
none of them by name. This module finds an example's file and loads it as a module whose functions
travel by value (cloudpickle), as ``maze run FILE.py`` does, so that a resumed run or a Ray worker
can load them without the file.

Where an example is looked for, in order: the repository this ``maze_core`` comes from (a checkout,
or an editable install: ``pip install -e .``), then the data files of the installed distribution
(``<prefix>/share/maze-framework/examples/``, from ``[tool.setuptools.data-files]``).
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from types import ModuleType

DISTRIBUTION = "maze-framework"
DATA_DIR = Path("share") / DISTRIBUTION / "examples"   # under the installation prefix

EXAMPLES = {"rag": Path("rag") / "rag_pipeline.py"}    # example name -> its module, in examples/


class ExampleNotFound(LookupError):
    """The example's files are not on this machine (a wheel built without its data files)."""


def example_dirs() -> list[Path]:
    """The folders where examples are looked for, in order (those that exist)."""
    candidates = [Path(__file__).resolve().parents[2] / "examples"]   # maze_core/demo/ -> the repository
    candidates += _installed_dirs()
    out: list[Path] = []
    for folder in candidates:
        if folder.is_dir() and folder not in out:
            out.append(folder)
    return out


def _installed_dirs() -> list[Path]:
    """``share/maze-framework/examples`` where the installed distribution put it: found through its
    list of files (any install scheme), else under this environment's data prefix."""
    found = []
    try:
        import importlib_metadata
        dist = importlib_metadata.distribution(DISTRIBUTION)
        marker = DATA_DIR.as_posix() + "/"
        for file in dist.files or []:
            text = Path(str(file)).as_posix()
            if marker in text:
                located = Path(dist.locate_file(file)).resolve()
                depth = len(Path(text.split(marker, 1)[1]).parts)   # below examples/
                found.append(located.parents[depth - 1])
                break
    except Exception:  # no such distribution, or metadata without a file list
        pass
    found.append(Path(sysconfig.get_path("data")) / DATA_DIR)
    return found


def find_example(name: str) -> Path:
    """The file of the example ``name``; ``KeyError`` for a name that is no example,
    :class:`ExampleNotFound` when its files are not installed here."""
    relative = EXAMPLES[name]
    folders = example_dirs()
    for folder in folders:
        path = folder / relative
        if path.is_file():
            return path
    looked = ", ".join(str(f) for f in folders) or "no examples folder exists"
    raise ExampleNotFound(f"the {name} example ({relative}) is not installed here (looked in: {looked}); "
                          f"run it from a clone of the repository: maze run examples/{relative.parent}/workflow.py")


def load_example(name: str) -> ModuleType:
    """The example ``name`` as a module (loaded once per process), its functions pickled by value."""
    import cloudpickle

    from ..registry import import_file

    path = find_example(name)
    module_name = f"maze_example_{name}"
    module = sys.modules.get(module_name)
    if module is not None and Path(getattr(module, "__file__", "")) == path:
        return module
    module = import_file(path, name=module_name)
    cloudpickle.register_pickle_by_value(module)
    return module
