"""The plugin manager: entry points, hook specs, MAZE_LOAD_PLUGINS, name clashes."""

from __future__ import annotations

import pytest

from maze_core import hookimpl, hookspecs, plugins
from maze_core.errors import PluginError


def test_every_hookspec_has_a_docstring():
    names = [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]
    assert set(names) == {"register_stores", "register_executors", "register_schedulers",
                          "register_config_sections", "register_tools", "on_event", "register_routes", "register_commands"}
    for name in names:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


def test_default_plugins_arrive_through_entry_points():
    assert "sqlite" in plugins.stores()
    assert "local" in plugins.executors()
    assert "fifo" in plugins.schedulers()
    listed = {p["name"]: p for p in plugins.get_plugins()}
    assert listed["sqlite"]["package"] == "maze-framework" and listed["sqlite"]["version"]


def test_unknown_name_lists_what_exists():
    with pytest.raises(PluginError, match="available: .*local"):
        plugins.pick("executor", "quantum")


def test_two_plugins_may_not_claim_one_name():
    class Clash:
        @hookimpl
        def register_stores(self, register):
            register("sqlite", lambda config: None)

    pm = plugins.load_plugins()
    pm.register(Clash(), name="clash")
    try:
        with pytest.raises(PluginError, match="two plugins register a store named 'sqlite'"):
            plugins.stores()
    finally:
        pm.unregister(name="clash")


def test_allowed_plugins_parses_the_environment(monkeypatch):
    monkeypatch.delenv("MAZE_LOAD_PLUGINS", raising=False)
    assert plugins.allowed_plugins() is None
    monkeypatch.setenv("MAZE_LOAD_PLUGINS", "sqlite, local,")
    assert plugins.allowed_plugins() == {"sqlite", "local"}
    monkeypatch.setenv("MAZE_LOAD_PLUGINS", "")
    assert plugins.allowed_plugins() == set()


def test_the_core_imports_no_ray_and_no_fastapi():
    import subprocess
    import sys
    code = ("import sys, pkgutil, importlib, maze_core\n"
            "for m in pkgutil.walk_packages(maze_core.__path__, 'maze_core.'):\n"
            "    importlib.import_module(m.name)\n"
            "import maze_core.engine, maze_core.cli\n"
            "from maze_core.plugins import load_plugins; load_plugins()\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'fastapi', 'uvicorn', 'starlette'))\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
