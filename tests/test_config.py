"""Configuration: the documented file, environment overrides, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from maze_core.config import MazeConfig, load_config
from maze_core.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_documented_config_file_equals_the_defaults():
    cfg = load_config(REPO / "config.toml", environ={})
    defaults = MazeConfig()
    for section in ("server", "paths", "engine", "local", "sqlite", "tools", "logging"):
        assert getattr(cfg, section) == getattr(defaults, section), section


def test_every_key_in_config_toml_is_commented():
    lines = (REPO / "config.toml").read_text().splitlines()
    keys = 0
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "[")):
            keys += 1
            assert lines[i - 1].strip().startswith("#"), f"key without a comment above it: {stripped}"
    data = tomllib.loads("\n".join(lines))
    assert keys == sum(len(section) for section in data.values())   # every key was looked at


def test_environment_overrides_win(tmp_path):
    cfg = load_config(REPO / "config.toml", environ={
        "MAZE_SERVER_PORT": "9001", "MAZE_ENGINE_EXECUTOR": "ray", "MAZE_PATHS_DATA_DIR": str(tmp_path),
        "MAZE_TOOLS_PATHS": "a:b", "MAZE_LOCAL_CPUS": "3.5"})
    assert cfg.server.port == 9001
    assert cfg.engine.executor == "ray"
    assert cfg.data_dir == tmp_path
    assert cfg.tools.paths == ["a", "b"]
    assert cfg.local.cpus == 3.5


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "proj").mkdir()
    f = tmp_path / "proj" / "maze.toml"
    f.write_text('[paths]\ndata_dir = "state"\nmodel_folder = "models"\n')
    cfg = load_config(f, environ={})
    assert cfg.data_dir == (tmp_path / "proj" / "state").resolve()
    assert cfg.resolve(cfg.paths.model_folder) == (tmp_path / "proj" / "models").resolve()


@pytest.mark.parametrize("text, culprit", [
    ("[server]\nport = 70000\n", "[server] port"),
    ("[server]\nhost = 5\n", "[server] host"),
    ("[engine]\nretries = -1\n", "[engine] retries"),
    ("[engine]\nretriez = 1\n", "[engine] retriez"),
    ("[local]\ncpus = -1\n", "[local] cpus"),
    ("[local]\ncpu = 2\n", "[local] cpu"),
    ("[sqlite]\nsynchronous = 'SOMETIMES'\n", "[sqlite] synchronous"),
    ("sqlite = 3\n", "[sqlite] must be a table"),
    ("server = 3\n", "[server] must be a table"),
    ("[paths\n", "not valid TOML"),
])
def test_bad_config_gives_one_clear_error_naming_the_key(tmp_path, text, culprit):
    f = tmp_path / "config.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(f, environ={})
    assert culprit in str(info.value)
    assert str(f) in str(info.value)


def test_bad_environment_override_names_the_variable():
    with pytest.raises(ConfigError, match="MAZE_SERVER_PORT"):
        load_config(None, environ={"MAZE_SERVER_PORT": "http"})
    with pytest.raises(ConfigError, match="MAZE_ENGINE_NOPE"):
        load_config(None, environ={"MAZE_ENGINE_NOPE": "1"})
    with pytest.raises(ConfigError, match=r"environment variable MAZE_LOCAL_CPUS: \[local\] cpus"):
        load_config(None, environ={"MAZE_LOCAL_CPUS": "many"})
    with pytest.raises(ConfigError, match=r"environment variable MAZE_SQLITE_NOPE: \[sqlite\] nope"):
        load_config(None, environ={"MAZE_SQLITE_NOPE": "1"})


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_plugin_sections_are_kept(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[ray]\naddress = 'auto'\n")
    assert load_config(f, environ={}).section("ray") == {"address": "auto"}


def test_local_and_sqlite_are_the_plugins_sections():
    """[local] and [sqlite] are modelled by maze_local and maze_sqlite (register_config_sections),
    not by maze_core.config; ``config.local`` is the plugin's model, one object per config, so a
    change made to it is what the executor reads."""
    from maze_core.plugins import config_sections
    from maze_local import LocalConfig
    from maze_sqlite import SqliteConfig

    assert "local" not in MazeConfig.model_fields and "sqlite" not in MazeConfig.model_fields
    assert config_sections()["local"] is LocalConfig and config_sections()["sqlite"] is SqliteConfig
    cfg = load_config(None, environ={"MAZE_SQLITE_FILENAME": "x.db", "MAZE_LOCAL_PREFETCH": "2"})
    assert isinstance(cfg.sqlite, SqliteConfig) and cfg.sqlite.filename == "x.db"
    assert cfg.local is LocalConfig.from_config(cfg) and cfg.local.prefetch == 2.0
    cfg.local.cpus = 3
    assert cfg.section("local")["cpus"] == 3.0 and cfg.local.cpus == 3.0
    with pytest.raises(ValueError):
        cfg.local.cpus = -1   # the plugin's model checks assignments too


def test_a_bad_plugin_section_is_one_error_at_load(tmp_path):
    """Every section a loaded plugin models is checked when the configuration is read ([ray] and
    [daps] too), naming the key and the file."""
    f = tmp_path / "config.toml"
    f.write_text("[ray]\nprefetch = 'lots'\n")
    with pytest.raises(ConfigError, match=rf"{f}: \[ray\] prefetch"):
        load_config(f, environ={})
    f.write_text("[daps]\nageing = 1\n")
    with pytest.raises(ConfigError, match=r"\[daps\] ageing: Extra inputs are not permitted"):
        load_config(f, environ={})
