"""The plugin set: entry points, hook specs, MAZE_LOAD_PLUGINS, name clashes, loading and
resetting; one test per hook, and a test that fails when a hook has none; the direction of the
dependencies (the core imports no Ray, no FastAPI, no plugin; tool packages import only the core)."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field

from maze_core import hookimpl, hookspecs, plugins
from maze_core.errors import ConfigError, PluginError

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------- which test covers which hook
HOOK_TESTS: dict[str, list[str]] = {}


def covers(hook: str):
    """Record the decorated test as a test of ``hook``; it then fails unless ``hook`` is called
    through the process's plugin manager while it runs (so a test that stops exercising its hook
    is caught, not only a hook without a test)."""
    def decorate(test):
        HOOK_TESTS.setdefault(hook, []).append(test.__name__)

        @functools.wraps(test)
        def run(*args, **kwargs):
            called: list[str] = []
            undo = plugins.pm.add_hookcall_monitoring(lambda name, impls, kwargs: called.append(name),
                                                      lambda outcome, name, impls, kwargs: None)
            try:
                test(*args, **kwargs)
            finally:
                undo()
            assert hook in called, f"{test.__name__} never called the hook {hook!r} through pluggy"
        return run
    return decorate


def hookspec_names() -> list[str]:
    """Every hookspec of maze_core/hookspecs.py (the functions pluggy marked as specs)."""
    return sorted(name for name, value in vars(hookspecs).items()
                  if callable(value) and hasattr(value, "maze_spec"))


def untested(hooks: list[str]) -> list[str]:
    return [hook for hook in hooks if not HOOK_TESTS.get(hook)]


@pytest.mark.parametrize("hook", hookspec_names())
def test_every_hook_has_a_test(hook):
    """datasette's rule: a hook without a test fails here. Write one decorated ``@covers(hook)``."""
    assert not untested([hook]), f"hook {hook!r} has no test: add one decorated @covers({hook!r}) here"


def test_the_hook_meta_test_can_fail():
    assert untested(["register_no_such_thing"]) == ["register_no_such_thing"]
    assert set(hookspec_names()) == {n for n in dir(plugins.pm.hook) if not n.startswith("_")
                                     and getattr(plugins.pm.hook, n).spec is not None}


def test_every_hookspec_has_a_docstring():
    names = hookspec_names()
    assert set(names) == {"register_stores", "register_executors", "register_schedulers",
                          "register_config_sections", "register_tools", "on_event", "register_routes",
                          "register_commands", "start_cluster_head", "stop_cluster_head"}
    for name in names:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


# ---------------------------------------------------------------------------- the plugin set
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

    with plugins.plugin_set.registered(Clash(), "clash"):
        with pytest.raises(PluginError, match="two plugins register a store named 'sqlite'"):
            plugins.stores()
    assert "clash" not in plugins.plugin_set.names()


def test_allowed_plugins_parses_the_environment(monkeypatch):
    monkeypatch.delenv("MAZE_LOAD_PLUGINS", raising=False)
    assert plugins.allowed_plugins() is None
    monkeypatch.setenv("MAZE_LOAD_PLUGINS", "sqlite, local,")
    assert plugins.allowed_plugins() == {"sqlite", "local"}
    monkeypatch.setenv("MAZE_LOAD_PLUGINS", "")
    assert plugins.allowed_plugins() == set()


def test_a_plugin_set_loads_resets_and_loads_again(monkeypatch):
    """A set of its own (not the process's): load reads the entry points once, reset forgets
    everything, and the next load honours MAZE_LOAD_PLUGINS as it is then."""
    monkeypatch.delenv("MAZE_LOAD_PLUGINS", raising=False)
    own = plugins.PluginSet()
    own.load()
    assert {"sqlite", "local", "daps", "server"} <= set(own.names())
    assert own.versions()["sqlite"] and own.failures() == {}
    monkeypatch.setenv("MAZE_LOAD_PLUGINS", "sqlite")
    assert "local" in own.names(), "loaded once: a later MAZE_LOAD_PLUGINS changes nothing until reset"
    own.reset()
    assert own.pm.get_plugins() == set()
    assert own.names() == ["sqlite"]
    own.forget("sqlite")
    assert own.pm.get_plugins() == set() and own.versions() == {}
    monkeypatch.delenv("MAZE_LOAD_PLUGINS")
    assert plugins.plugin_set.pm is plugins.pm and "local" in plugins.plugin_set.names()


def test_without_takes_plugins_out_and_puts_them_back():
    version = plugins.plugin_set.versions()["local"]
    with plugins.plugin_set.without("local", "not-a-plugin"):
        assert "local" not in plugins.executors()
    assert "local" in plugins.executors() and plugins.plugin_set.versions()["local"] == version


def test_a_plugin_that_fails_to_load_is_reported_and_the_others_load(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    (site / "maze_probe_broken").mkdir(parents=True)
    (site / "maze_probe_broken" / "__init__.py").write_text("raise RuntimeError('broken on purpose')\n")
    dist = site / "maze_probe_broken-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: maze-probe-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[maze]\nprobebroken = maze_probe_broken\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("MAZE_LOAD_PLUGINS", "probebroken,sqlite")
    own = plugins.PluginSet()
    own.load()
    assert "broken on purpose" in capsys.readouterr().err
    assert own.names() == ["sqlite"]
    assert "RuntimeError: broken on purpose" in own.failures()["probebroken"]
    listed = {p["name"]: p for p in own.describe()}
    assert listed["probebroken"]["error"] and listed["sqlite"]["hooks"] == ["register_config_sections",
                                                                           "register_stores"]
    sys.modules.pop("maze_probe_broken", None)


def test_every_new_registry_gets_the_plugins_tools(tmp_path):
    """``load_tools`` fills a registry once; a new registry at the address of one gone (CPython
    reuses it at once) is a new registry, not one already loaded."""
    from maze_core.registry import ToolRegistry, task
    from maze_core.tools import load_tools
    from tests.conftest import make_config

    @task(name="probe_tool")
    def probe_tool() -> dict:
        return {}

    class Tools:
        @hookimpl
        def register_tools(self, register):
            register(probe_tool)

    config = make_config(tmp_path)
    addresses = set()
    with plugins.plugin_set.registered(Tools(), "probe-tools"):
        for _ in range(5):
            registry = ToolRegistry()
            addresses.add(id(registry))
            load_tools(config, registry)
            assert "probe_tool" in registry
            assert load_tools(config, registry) == [] and len(registry) > 0   # once per registry
            del registry


# ---------------------------------------------------------------------------- one test per hook
class _Factory:
    def __init__(self, config):
        self.config = config


@covers("register_stores")
def test_hook_register_stores():
    class Stores:
        @hookimpl
        def register_stores(self, register):
            register("probe-store", _Factory)

    with plugins.plugin_set.registered(Stores(), "probe-stores"):
        assert plugins.pick("store", "probe-store") is _Factory
        assert "sqlite" in plugins.stores()
    assert "probe-store" not in plugins.stores()


@covers("register_executors")
def test_hook_register_executors():
    class Executors:
        @hookimpl
        def register_executors(self, register):
            register("probe-executor", _Factory)

    with plugins.plugin_set.registered(Executors(), "probe-executors"):
        assert plugins.pick("executor", "probe-executor") is _Factory
    with pytest.raises(PluginError, match="no executor named 'probe-executor'"):
        plugins.pick("executor", "probe-executor")


@covers("register_schedulers")
def test_hook_register_schedulers():
    class Schedulers:
        @hookimpl
        def register_schedulers(self, register):
            register("probe-policy", _Factory)
            register("", _Factory)

    with plugins.plugin_set.registered(Schedulers(), "probe-schedulers"):
        with pytest.raises(PluginError, match="scheduler names must be non-empty strings"):
            plugins.schedulers()


class ProbeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: int = Field(1, ge=0)
    name: str = "probe"


@covers("register_config_sections")
def test_hook_register_config_sections(tmp_path):
    """A plugin's section: its model checks the file and MAZE_<SECTION>_<KEY> at load (the error
    names the key and where it came from), ``config.<section>`` is that model, ``maze config``
    shows it with its defaults. The default plugins own [local], [sqlite], [ray] and [daps]."""
    from maze_core.config import MazeConfig, load_config

    class Sections:
        @hookimpl
        def register_config_sections(self, register):
            register("probesec", ProbeSection)
            register("probedict", {"colour": "blue"})

    sections = plugins.config_sections()
    assert {"local", "sqlite", "ray", "daps"} <= set(sections)
    assert sections["local"].__module__ == "maze_local" and sections["sqlite"].__module__ == "maze_sqlite"
    with plugins.plugin_set.registered(Sections(), "probe-sections"):
        cfg = load_config(None, environ={"MAZE_PROBESEC_LEVEL": "3"})
        assert cfg.probesec.level == 3 and cfg.probesec is cfg.plugin_section("probesec", ProbeSection)
        with pytest.raises(ConfigError, match=r"environment variable MAZE_PROBESEC_LEVEL: \[probesec\] level"):
            load_config(None, environ={"MAZE_PROBESEC_LEVEL": "-1"})
        f = tmp_path / "c.toml"
        f.write_text("[probesec]\nlevl = 2\n")
        with pytest.raises(ConfigError, match=rf"{f}: \[probesec\] levl: Extra inputs are not permitted"):
            load_config(f, environ={})
        shown = MazeConfig().effective(plugins.config_sections())
        assert shown["probesec"] == {"level": 1, "name": "probe"} and shown["probedict"] == {"colour": "blue"}
    assert "probesec" not in plugins.config_sections()


@covers("register_tools")
def test_hook_register_tools(caplog):
    """Through pluggy, one plugin at a time: each tool is attributed to its plugin, a plugin that
    raises costs only its own tools, and a wrapper of the hook sees every plugin's call."""
    import logging

    from maze_core.registry import ToolRegistry, task

    @task(name="probe_shout")
    def shout(text: str) -> dict:
        return {"text": text.upper()}

    @task(name="probe_whisper", version="2.0.0")
    def whisper(text: str) -> dict:
        return {"text": text.lower()}

    class Loud:
        @hookimpl
        def register_tools(self, register):
            register(shout)

    class Quiet:
        @hookimpl
        def register_tools(self, register):
            register(whisper)

    class Broken:
        @hookimpl
        def register_tools(self, register):
            raise RuntimeError("this plugin exploded")

    wrapped: list[str] = []

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_tools(self, register):
            wrapped.append("call")
            return (yield)

    set_ = plugins.plugin_set
    with set_.registered(Loud(), "probe-loud"), set_.registered(Broken(), "probe-broken"), \
            set_.registered(Quiet(), "probe-quiet"), set_.registered(Wrapper(), "probe-wrapper"):
        registry = ToolRegistry()
        with caplog.at_level(logging.ERROR, logger="maze.registry"):
            names = registry.load_plugin_tools(plugins.pm, versions={"probe-loud": "1.5.0"})
    assert {"probe_shout", "probe_whisper"} <= set(names)
    assert (registry.get("probe_shout").source, registry.get("probe_shout").version) == ("package:probe-loud", "1.5.0")
    assert (registry.get("probe_whisper").source, registry.get("probe_whisper").version) == ("package:probe-quiet", "2.0.0")
    assert "probe-broken" in caplog.text and "this plugin exploded" in caplog.text
    assert len(wrapped) == len(plugins.pm.hook.register_tools.get_hookimpls()) + 3   # one per tool plugin


@covers("on_event")
def test_hook_on_event(config):
    from maze_core.dag import DAG
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry, task

    @task(name="probe_one")
    def one() -> dict:
        return {"n": 1}

    seen: list[str] = []
    ended = threading.Event()

    class Observer:
        @hookimpl
        def on_event(self, event):
            seen.append(event.type)
            if event.type == "RunSucceeded":
                ended.set()

    with plugins.plugin_set.registered(Observer(), "probe-observer"):
        eng = Engine.from_config(config, registry=ToolRegistry())
        try:
            eng.start()
            dag = DAG("observed")
            dag.add_task(one)
            eng.wait(eng.submit(dag), timeout=20)
            assert ended.wait(5)
        finally:
            eng.stop()
    assert seen[0] == "RunSubmitted" and seen[-1] == "RunSucceeded"


@covers("register_routes")
def test_hook_register_routes(tmp_path):
    from maze_api import create_app
    from tests.conftest import make_config

    class Routes:
        @hookimpl
        def register_routes(self, app):
            @app.get("/probe-plugin")
            def probe() -> dict:
                return {"ok": True}

    with plugins.plugin_set.registered(Routes(), "probe-routes"):
        app = create_app(make_config(tmp_path))
    assert "/probe-plugin" in {getattr(route, "path", None) for route in app.routes}


@covers("register_commands")
def test_hook_register_commands(capsys):
    from maze_core import cli as cli_module

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("probe-hello")
            def hello() -> None:
                click.echo("hello from a plugin")

    try:
        with plugins.plugin_set.registered(Commands(), "probe-commands"):
            with pytest.raises(SystemExit) as done:
                cli_module.main(["probe-hello"])
        assert done.value.code == 0
        assert "hello from a plugin" in capsys.readouterr().out
    finally:
        cli_module.cli.commands.pop("probe-hello", None)


@pytest.fixture
def _logging_as_found():
    from maze_api.testing import logging_restored
    with logging_restored():   # `maze start` sets the server's logging up
        yield


def _server_cli(tmp_path: Path) -> click.Group:
    import maze_server
    from maze_core.cli import _Ctx
    config = tmp_path / "maze.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "data"}"\n[engine]\nexecutor = "local"\n'
                      '[logging]\nlevel = "WARNING"\n')

    @click.group()
    @click.pass_context
    def root(ctx: click.Context) -> None:
        ctx.obj = _Ctx(str(config))

    maze_server.register_commands(cli=root)
    return root


class ProbeHead:
    """A cluster of its own: starts a head at a made-up address and points [probe] at it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    @hookimpl
    def start_cluster_head(self, config, port, host, server_host):
        self.calls.append(("start", port, host, server_host))
        config.engine.executor = "probe"
        return f"{host or 'probe-host'}:{port}"

    @hookimpl
    def stop_cluster_head(self, config, address):
        self.calls.append(("stop", address))
        return True


class Declines:
    @hookimpl
    def start_cluster_head(self, config, port, host, server_host):
        return None   # not mine: the next plugin's turn (firstresult)


@covers("start_cluster_head")
def test_hook_start_cluster_head(tmp_path, monkeypatch, _logging_as_found):
    """``maze start --head`` asks the plugins; the first address wins, and what the plugin changed
    in the configuration is what the server runs with."""
    import maze_server
    served = []
    monkeypatch.setattr(maze_server, "_serve", lambda config, host, port, ray_head=None:
                        served.append((ray_head, config.engine.executor)))
    head = ProbeHead()
    with plugins.plugin_set.without("ray"), plugins.plugin_set.registered(head, "probe-head"), \
            plugins.plugin_set.registered(Declines(), "probe-declines"):
        result = CliRunner().invoke(_server_cli(tmp_path), ["start", "--head", "--ray-port", "7001",
                                                            "--port", "9123"])
    assert result.exit_code == 0, result.output
    assert head.calls == [("start", 7001, None, "127.0.0.1")]
    assert served == [("probe-host:7001", "probe")]
    assert "workers join with `maze worker --address probe-host:7001`" in result.output


@covers("stop_cluster_head")
def test_hook_stop_cluster_head(tmp_path, _logging_as_found):
    data = tmp_path / "data"
    data.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / "server.json").write_text(json.dumps({"pid": dead.pid, "ray_head": "probe-host:7001"}))
    head = ProbeHead()
    with plugins.plugin_set.without("ray"), plugins.plugin_set.registered(head, "probe-head"):
        result = CliRunner().invoke(_server_cli(tmp_path), ["stop"])
    assert result.exit_code == 0, result.output
    assert head.calls == [("stop", "probe-host:7001")]
    assert "stopped the Ray head (probe-host:7001)" in result.output


# ---------------------------------------------------------------------------- dependencies run one way
FORBIDDEN = ("ray", "fastapi", "uvicorn", "starlette")
PLUGIN_PACKAGES = ("maze_sqlite", "maze_local", "maze_ray", "maze_daps", "maze_server")


def test_the_core_imports_no_ray_and_no_fastapi():
    code = ("import sys, pkgutil, importlib, maze_core\n"
            "for m in pkgutil.walk_packages(maze_core.__path__, 'maze_core.'):\n"
            "    importlib.import_module(m.name)\n"
            "import maze_core.engine, maze_core.cli\n"
            "from maze_core.plugins import load_plugins; load_plugins()\n"
            f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r})\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def _imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_no_plugin_no_server_no_tool_package_and_no_example():
    """Anywhere in maze_core, at the top of a module or inside a function."""
    outside = (*PLUGIN_PACKAGES, "maze_api", "maze_client", "examples")
    for path in sorted((REPO / "maze_core").rglob("*.py")):
        bad = sorted(name for name in _imports_of(path)
                     if name.split(".")[0] in outside or name.startswith("maze_tool_"))
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_examples_use_only_the_public_core():
    """An example is a user of Maze: it imports no demo module of the core and reads no private
    attribute of a tool (``_task_meta``)."""
    for path in sorted((REPO / "examples").rglob("*.py")):
        text = path.read_text()
        assert not any(name.startswith("maze_core.demo") for name in _imports_of(path)), path
        assert "_task_meta" not in text, path


TOOL_PROBE = """
import importlib, pkgutil, sys
from pathlib import Path
forbidden = {forbidden!r}
skipped, bad = [], {{}}
for folder in sorted(Path({tools!r}).iterdir()):
    if not (folder / "pyproject.toml").is_file():
        continue
    sys.path.append(str(folder))
    for package in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file() and p.name != "tests"):
        names = [package.name] + [m.name for m in pkgutil.walk_packages([str(package)], package.name + ".")]
        for name in names:
            before = set(sys.modules)
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:   # a third-party dependency not installed here
                if (exc.name or "").split(".")[0].startswith("maze"):
                    raise
                skipped.append(name)
                continue
            heavy = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in forbidden)
            if heavy:
                bad[name] = heavy
print("skipped:", skipped)
assert not bad, bad
print("ok")
"""


def _probe_tools(forbidden: tuple[str, ...]) -> subprocess.CompletedProcess:
    script = TOOL_PROBE.format(forbidden=forbidden, tools=str(REPO / "tools"))
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_tool_packages_import_only_the_light_core():
    """Every module of every package under tools/: no Ray, no FastAPI, no plugin, no server, no SDK
    client (a tool package depends on ``maze_core``'s ``task`` and ``hookimpl`` only)."""
    out = _probe_tools((*FORBIDDEN, *PLUGIN_PACKAGES, "maze_api", "maze_client"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("ok")


def test_the_tool_probe_itself_can_fail():
    out = _probe_tools(("maze_core",))   # every tool package does import maze_core
    assert out.returncode != 0 and "AssertionError" in out.stderr
