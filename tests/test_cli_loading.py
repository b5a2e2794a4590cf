"""The loading rules of ``maze_core.loading``, shared by ``maze run``, the SDK, the server and the
tool registry: what is installed, a folder's own modules, purging them, a tool folder's files."""

from __future__ import annotations

import sys
from pathlib import Path

from maze_core.loading import installed, own_modules, purge_modules_under, task_files


def test_installed_is_site_packages_or_the_python_installation(tmp_path):
    assert installed(tmp_path / ".venv" / "lib" / "python3.12" / "site-packages" / "pkg" / "m.py")
    assert installed(tmp_path / "dist-packages" / "m.py")
    assert installed(Path(sys.prefix) / "lib" / "anything.py")
    assert installed(Path(__import__("json").__file__))
    assert not installed(tmp_path / "mytasks.py")


def test_a_folders_own_modules_are_found_and_purged(tmp_path, monkeypatch):
    (tmp_path / "own_mod_for_loading.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    import own_mod_for_loading  # type: ignore[import-not-found]  # noqa: F401
    new = set(sys.modules) - before
    assert [m.__name__ for m in own_modules(tmp_path, new)] == ["own_mod_for_loading"]
    assert own_modules(tmp_path / "elsewhere", new) == []
    assert purge_modules_under(tmp_path, among=new) == ["own_mod_for_loading"]
    assert "own_mod_for_loading" not in sys.modules


def test_task_files_skip_private_files_private_and_hidden_folders_and_links(tmp_path):
    for rel in ("a.py", "sub/b.py", "_private.py", "__init__.py", "sub/__init__.py",
                ".hidden/c.py", "_helpers/d.py", "__pycache__/e.py", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    (tmp_path / "link.py").symlink_to(tmp_path / "a.py")
    assert [p.relative_to(tmp_path).as_posix() for p in task_files(tmp_path)] == ["a.py", "sub/b.py"]
