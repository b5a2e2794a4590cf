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


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_plugin_sections_are_kept(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[ray]\naddress = 'auto'\n")
    assert load_config(f, environ={}).section("ray") == {"address": "auto"}
