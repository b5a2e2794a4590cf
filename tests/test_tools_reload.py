"""Tool packages installed, upgraded, broken and removed while a process runs: ``reload_tools`` (what
``maze tools reload`` and ``POST /tools/reload`` do) picks them up without a restart, following
seed 003's fail-safe rules, and records every change as an event.

Packages land in a private site folder put on ``sys.path``: once through a real ``pip install
--target`` of a scaffolded package (built into a wheel here, with zipfile: no build backend, so the
test does not depend on the setuptools or wheel that the venv happens to hold), otherwise as
hand-written ``*.dist-info`` folders (what pip writes), which is quicker and lets a test break a
package on purpose."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from maze_core import plugins
from maze_core.registry import ToolRegistry
from maze_core.scaffold import scaffold_tool_package
from maze_core.tools import TOOLS_RELOADED, TOOLS_STREAM, reload_tools
from tests.conftest import make_config

PROBES = ("probe", "probeup", "probebroken", "probeplain", "probedupa", "probedupb", "probehook",
          "probepth", "reloadprobe", "probecli")


def _forget_probes() -> None:
    """Take every probe package out of the global plugin manager and sys.modules."""
    with plugins._lock:
        for name in PROBES:
            if plugins.pm.get_plugin(name) is not None:
                plugins.pm.unregister(name=name)
            plugins._versions.pop(name, None)
            plugins._failed.pop(name, None)
    for module in [m for m in sys.modules if m.startswith("maze_tool_probe") or m.startswith("maze_tool_reloadprobe")]:
        del sys.modules[module]


@pytest.fixture
def site_dir(tmp_path, monkeypatch):
    """A folder on sys.path where packages get installed during the test (like site-packages)."""
    monkeypatch.delenv("MAZE_LOAD_PLUGINS", raising=False)
    site = tmp_path / "site"
    site.mkdir()
    plugins.load_plugins()
    monkeypatch.syspath_prepend(str(site))
    yield site
    _forget_probes()


@pytest.fixture
def store(tmp_path):
    from maze_core.plugins import pick
    s = pick("store", "sqlite")(make_config(tmp_path))
    yield s
    s.close()


@pytest.fixture
def recorder(tmp_path, store):
    """The door into ``store`` for a reload without a server: an engine that runs nothing and
    follows no registry of its own (what ``maze tools reload`` starts). The log is read from
    ``store`` as before; every event reaches it through ``recorder.record``."""
    from maze_core.engine import Engine
    engine = Engine.from_config(make_config(tmp_path), store=store, registry=ToolRegistry())
    engine.start(resume=False, follow_registry=False)
    yield engine
    engine.stop()


def install(site: Path, short: str, version: str, body: str, extra_files: dict[str, str] | None = None) -> None:
    """Write package ``maze_tool_<short>`` and its dist-info (entry point ``<short>`` in group maze)."""
    module = f"maze_tool_{short}"
    uninstall(site, short)
    (site / module).mkdir()
    (site / module / "__init__.py").write_text(textwrap.dedent(body))
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: maze-tool-{short}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[maze]\n{short} = {module}\n")
    records = [f"{module}/__init__.py,,", f"{info.name}/METADATA,,"]
    for relative, text in (extra_files or {}).items():
        (site / relative).write_text(text)
        records.append(f"{relative},,")
    (info / "RECORD").write_text("\n".join(records) + "\n")


def build_wheel(package: Path, out: Path) -> Path:
    """A pure-Python wheel of ``package`` (a scaffolded source folder), written with zipfile.

    ``pip install --no-build-isolation`` of the source folder would need the venv's own setuptools to
    build it: a fresh ``python3.11 -m venv`` has setuptools 65.5 and no ``wheel`` ("invalid command
    'bdist_wheel'"). A wheel is only a zip of the package's files plus its ``.dist-info`` (METADATA,
    WHEEL, entry_points.txt, RECORD), which pip installs with no backend and no network."""
    pyproject = tomllib.loads((package / "pyproject.toml").read_text())
    project, modules = pyproject["project"], pyproject["tool"]["setuptools"]["packages"]
    dist = project["name"].replace("-", "_")
    info = f"{dist}-{project['version']}.dist-info"
    files: dict[str, bytes] = {}
    for module in modules:
        for path in sorted((package / module).rglob("*.py")):
            files[path.relative_to(package).as_posix()] = path.read_bytes()
    files[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                 f"Version: {project['version']}\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: maze-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entry_points = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
                           for group, points in project.get("entry-points", {}).items())
    files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"{dist}-{project['version']}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return wheel


def uninstall(site: Path, short: str) -> None:
    for path in site.glob(f"maze_tool_{short}*"):
        shutil.rmtree(path)


TOOL_MODULE = """
from maze_core import hookimpl, task

@task(name="{name}", version="{version}", description="probe tool")
def probe(text: str) -> dict:
    return {{"version": "{version}", "echo": text}}

@hookimpl
def register_tools(register):
    register(probe)
"""


def tool_module(name: str, version: str) -> str:
    return TOOL_MODULE.format(name=name, version=version)


def types(store, name: str) -> list[str]:
    return [e.type for e in store.read_stream(f"tool:{name}")]


# ---------------------------------------------------------------------------------------- install


def test_pip_install_after_start_is_picked_up_by_reload_and_uninstall_removes_it(tmp_path, site_dir, store, recorder):
    config = make_config(tmp_path)
    registry = ToolRegistry()
    reload_tools(config, registry, recorder, actor="test")
    assert "reloadprobe_word_count" not in registry
    package = scaffold_tool_package("reloadprobe", tmp_path / "src")
    wheel = build_wheel(package, tmp_path / "dist")
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                          "--disable-pip-version-check", "--target", str(site_dir), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    assert list(site_dir.glob("maze_tool_reloadprobe-0.1.0.dist-info"))

    report = reload_tools(config, registry, recorder, actor="test")
    assert report.packages.installed == ["reloadprobe"]
    assert report.registered == ["reloadprobe_word_count"] and report.removed == []
    entry = registry.get("reloadprobe_word_count")
    assert (entry.source, entry.version) == ("package:reloadprobe", "0.1.0")
    assert entry.func(text="pip installed me") == {"words": 3}
    [registered] = store.read_stream("tool:reloadprobe_word_count")
    assert registered.type == "ToolRegistered" and registered.data["version"] == "0.1.0"
    assert registered.actor == "test"
    assert {p["name"]: p["package"] for p in plugins.get_plugins()}["reloadprobe"] == "maze-tool-reloadprobe"

    again = reload_tools(config, registry, recorder, actor="test")  # nothing new: no tool event
    assert again.registered == again.updated == again.removed == []
    assert "reloadprobe_word_count" in again.unchanged
    assert types(store, "reloadprobe_word_count") == ["ToolRegistered"]

    uninstall(site_dir, "reloadprobe")  # what `pip uninstall` does: the files go
    gone = reload_tools(config, registry, recorder, actor="test")
    assert gone.packages.uninstalled == ["reloadprobe"] and gone.removed == ["reloadprobe_word_count"]
    assert "reloadprobe_word_count" not in registry
    assert types(store, "reloadprobe_word_count") == ["ToolRegistered", "ToolRemoved"]
    assert store.read_stream("tool:reloadprobe_word_count")[-1].data["reason"] == "package reloadprobe uninstalled"
    reloads = [e for e in store.read_stream(TOOLS_STREAM) if e.type == TOOLS_RELOADED]
    assert len(reloads) == 4
    assert reloads[1].data["registered"] == ["reloadprobe_word_count"]
    assert reloads[1].data["packages"]["installed"] == ["reloadprobe"]
    assert reloads[3].data["packages"]["uninstalled"] == ["reloadprobe"]
    assert {row["name"]: row["status"] for row in store.list_tools(include_removed=True)}[
        "reloadprobe_word_count"] == "removed"


def test_an_upgrade_reimports_the_package_and_records_the_new_version(tmp_path, site_dir, store, recorder):
    config = make_config(tmp_path)
    registry = ToolRegistry()
    install(site_dir, "probeup", "0.1.0", tool_module("probe_upgrade", "0.1.0"))
    first = reload_tools(config, registry, recorder)
    assert "probe_upgrade" in first.registered and registry.get("probe_upgrade").version == "0.1.0"
    install(site_dir, "probeup", "0.2.0", tool_module("probe_upgrade", "0.2.0"))
    second = reload_tools(config, registry, recorder)
    assert second.packages.upgraded == ["probeup"] and second.packages.installed == []
    assert second.updated == ["probe_upgrade"]
    assert registry.get("probe_upgrade").version == "0.2.0"
    assert registry.get_task("probe_upgrade")(text="x") == {"version": "0.2.0", "echo": "x"}  # new code
    versions = [e.data["version"] for e in store.read_stream("tool:probe_upgrade")]
    assert versions == ["0.1.0", "0.2.0"]


def test_a_tool_without_a_version_takes_its_package_version(tmp_path, site_dir):
    install(site_dir, "probeplain", "3.2.1", """
        from maze_core import hookimpl, task

        @task(name="probe_plain")
        def probe_plain() -> dict:
            return {}

        @hookimpl
        def register_tools(register):
            register(probe_plain)
    """)
    registry = ToolRegistry()
    reload_tools(make_config(tmp_path), registry)
    assert registry.get("probe_plain").version == "3.2.1"


def test_an_editable_install_made_after_start_is_activated_through_its_pth_file(tmp_path, site_dir):
    """``pip install -e`` puts the import hook in a .pth file, which Python reads only at start."""
    src = tmp_path / "checkout"
    (src / "maze_tool_probepth").mkdir(parents=True)
    (src / "maze_tool_probepth" / "__init__.py").write_text(tool_module("probe_pth", "1.0"))
    info = site_dir / "maze_tool_probepth-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: maze-tool-probepth\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[maze]\nprobepth = maze_tool_probepth\n")
    (site_dir / "__editable__.maze_tool_probepth-1.0.pth").write_text(f"{src}\n")
    (info / "RECORD").write_text("__editable__.maze_tool_probepth-1.0.pth,,\n")
    registry = ToolRegistry()
    try:
        report = reload_tools(make_config(tmp_path), registry)
        assert report.packages.installed == ["probepth"] and "probe_pth" in registry
        assert registry.get_task("probe_pth")(text="e") == {"version": "1.0", "echo": "e"}
    finally:
        if str(src) in sys.path:
            sys.path.remove(str(src))


# ---------------------------------------------------------------------------------------- fail-safe


def test_broken_packages_follow_the_seed_003_fail_safe_rules(tmp_path, site_dir, store, recorder, caplog):
    install(site_dir, "probe", "1.0", tool_module("probe_good", "1.0"))
    install(site_dir, "probebroken", "1.0", """
        from maze_core import hookimpl, task
        import a_module_that_does_not_exist  # noqa

        @hookimpl
        def register_tools(register):
            pass
    """)
    install(site_dir, "probeplain", "1.0", """
        from maze_core import hookimpl, task

        def undecorated(text: str) -> dict:
            return {}

        @task(name="probe_decorated")
        def decorated(text: str) -> dict:
            return {}

        @hookimpl
        def register_tools(register):
            register(undecorated)
            register(decorated)
    """)
    for short, answer in (("probedupa", "a"), ("probedupb", "b")):
        install(site_dir, short, "1.0", f"""
            from maze_core import hookimpl, task

            @task(name="probe_duplicate")
            def dup() -> dict:
                return {{"from": "{answer}"}}

            @hookimpl
            def register_tools(register):
                register(dup)
        """)
    install(site_dir, "probehook", "1.0", """
        from maze_core import hookimpl

        @hookimpl
        def register_tools(register):
            raise RuntimeError("this hook explodes")
    """)
    registry = ToolRegistry()
    with caplog.at_level(logging.INFO):
        report = reload_tools(make_config(tmp_path), registry, recorder)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # import error: the package is skipped and reported; the others load
    assert list(report.packages.failed) == ["probebroken"]
    assert "a_module_that_does_not_exist" in report.packages.failed["probebroken"]
    assert any("probebroken" in m and "failed to load" in m for m in errors)
    assert {p["name"]: p.get("error") for p in plugins.get_plugins()}["probebroken"]
    assert registry.get_task("probe_good")(text="ok") == {"version": "1.0", "echo": "ok"}
    # an undecorated function is skipped with an ERROR; its neighbour registers
    assert "probe_decorated" in registry and "undecorated" not in registry
    assert any("not decorated with @task" in m for m in errors)
    # the same name twice: the later registration overwrites with a WARNING
    assert "task 'probe_duplicate' re-registered; overwriting" in warnings
    assert registry.get_task("probe_duplicate")()["from"] in ("a", "b")
    # a hook that raises is logged; nothing else is lost
    assert any("probehook" in m for m in errors) and "this hook explodes" in caplog.text
    assert {"probe_good", "probe_decorated", "probe_duplicate"} <= set(report.registered)
    [summary] = [e for e in store.read_stream(TOOLS_STREAM) if e.type == TOOLS_RELOADED]
    assert list(summary.data["packages"]["failed"]) == ["probebroken"]

    # fixed and reinstalled: the next reload loads it
    install(site_dir, "probebroken", "1.1", tool_module("probe_fixed", "1.1"))
    fixed = reload_tools(make_config(tmp_path), registry, recorder)
    assert fixed.packages.failed == {} and "probebroken" in fixed.packages.installed
    assert fixed.registered == ["probe_fixed"]
    assert "probebroken" not in {p["name"]: p for p in plugins.get_plugins() if p.get("error")}


def test_reload_leaves_uploaded_and_code_registered_tools_alone(tmp_path, site_dir):
    from maze_core.registry import task

    @task(name="probe_clash")
    def uploaded() -> dict:
        return {"from": "upload"}

    registry = ToolRegistry()
    registry.register_task(uploaded, source="upload:clash")
    install(site_dir, "probe", "1.0", tool_module("probe_clash", "1.0"))
    report = reload_tools(make_config(tmp_path), registry)
    assert registry.get("probe_clash").source == "upload:clash"
    assert "probe_clash" not in report.registered + report.updated + report.removed


# ---------------------------------------------------------------------------------------- folders


def test_reload_rescans_tool_folders(tmp_path, store, recorder, caplog):
    folder = tmp_path / "mytools"
    folder.mkdir()
    (folder / "greet.py").write_text(
        "from maze_core import task\n\n@task(name='probe_greet')\ndef greet(who: str) -> dict:\n"
        "    return {'text': 'hello ' + who}\n")
    config = make_config(tmp_path)
    config.tools.paths = [str(folder), "missing-folder"]
    registry = ToolRegistry()
    with caplog.at_level(logging.ERROR, logger="maze.tools"):
        first = reload_tools(config, registry, recorder)
    assert "probe_greet" in first.registered
    assert first.problems == [f"[tools] paths: folder {tmp_path / 'missing-folder'} does not exist"]
    assert "missing-folder" in caplog.text
    kept = registry.get_task("probe_greet")
    unchanged = reload_tools(config, registry, recorder)  # same code: the function is kept, no event
    assert "probe_greet" in unchanged.unchanged and types(store, "probe_greet") == ["ToolRegistered"]
    assert registry.get_task("probe_greet") is kept
    assert "probe_greet" in reload_tools(config, registry).unchanged  # compared with the registry
    (folder / "greet.py").write_text(
        "from maze_core import task\n\n@task(name='probe_greet')\ndef greet(who: str) -> dict:\n"
        "    return {'text': 'hi ' + who}\n")
    (folder / "more.py").write_text(
        "from maze_core import task\n\n@task(name='probe_more', version='2.0')\ndef more() -> dict:\n"
        "    return {}\n")
    changed = reload_tools(config, registry, recorder)
    assert changed.registered == ["probe_more"]
    assert registry.get_task("probe_greet")(who="you") == {"text": "hi you"}  # the new code runs
    (folder / "more.py").unlink()
    removed = reload_tools(config, registry, recorder)
    assert removed.removed == ["probe_more"] and "probe_more" not in registry
    assert types(store, "probe_more") == ["ToolRegistered", "ToolRemoved"]


def test_package_root_imports_tool_files_as_packages_that_can_import_each_other(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    tools = tmp_path / "src" / "probetools"
    tools.mkdir(parents=True)
    (tools / "__init__.py").write_text("")
    (tools / "_helpers.py").write_text("def shout(text):\n    return text.upper()\n")
    (tools / "loud.py").write_text(
        "from maze_core import task\nfrom probetools._helpers import shout\n\n"
        "@task(name='probe_loud')\ndef loud(text: str) -> dict:\n    return {'text': shout(text)}\n")
    config = make_config(tmp_path)
    config.tools.paths = ["src/probetools"]
    config.tools.package_root = "src"
    registry = ToolRegistry()
    try:
        reload_tools(config, registry)
        func = registry.get_task("probe_loud")
        assert func.__module__ == "probetools.loud" and func(text="hey") == {"text": "HEY"}
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "probetools"]:
            del sys.modules[name]


# ---------------------------------------------------------------------------------------- engine


def test_with_a_running_engine_each_change_is_recorded_once(tmp_path, site_dir):
    from maze_core.engine import Engine
    config = make_config(tmp_path)
    engine = Engine.from_config(config, registry=ToolRegistry())
    engine.start()
    try:
        install(site_dir, "probe", "1.0", tool_module("probe_engine", "1.0"))
        report = reload_tools(config, engine.registry, engine, actor="admin")
        assert "probe_engine" in report.registered
        assert types(engine.store, "probe_engine") == ["ToolRegistered"]
        uninstall(site_dir, "probe")
        report = reload_tools(config, engine.registry, engine, actor="admin")
        assert report.removed == ["probe_engine"]
        assert types(engine.store, "probe_engine") == ["ToolRegistered", "ToolRemoved"]
    finally:
        engine.stop()
        engine.store.close()


# ---------------------------------------------------------------------------------------- CLI


def test_maze_tools_reload_in_a_fresh_process_reports_against_the_log(tmp_path, cli_env):
    from tests.test_cli import maze
    site = tmp_path / "site"
    site.mkdir()
    install(site, "probecli", "0.3.0", tool_module("probe_cli", "0.3.0"))
    with_site = {**cli_env, "PYTHONPATH": str(site)}
    out = maze("tools", "reload", "--json", env=with_site, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert "probe_cli" in report["registered"] and report["packages"]["failed"] == {}
    again = maze("tools", "reload", env=with_site, cwd=tmp_path)
    assert again.returncode == 0 and "0 changed" in again.stdout
    listed = maze("tools", "list", env=with_site, cwd=tmp_path)
    assert "probe_cli@0.3.0" in listed.stdout
    gone = maze("tools", "reload", env=cli_env, cwd=tmp_path)  # the package is not on the path now
    assert gone.returncode == 0 and "removed    probe_cli" in gone.stdout
    from maze_sqlite.store import SqliteStore
    log = SqliteStore(tmp_path / "data" / "maze.db")
    try:
        assert types(log, "probe_cli") == ["ToolRegistered", "ToolRemoved"]
        assert [e.type for e in log.read_stream(TOOLS_STREAM)] == [TOOLS_RELOADED] * 3
    finally:
        log.close()
    broken = tmp_path / "broken"
    broken.mkdir()
    install(broken, "probebroken", "0.1", "raise ImportError('broken on purpose')\n")
    failed = maze("tools", "reload", env={**cli_env, "PYTHONPATH": str(broken)}, cwd=tmp_path)
    assert failed.returncode == 1 and "package probebroken failed to load" in failed.stderr

