"""The tool packages of tools/, installed into this environment (``.ci/run`` pip-installs them):
they arrive through the entry-point group ``maze`` and the ``register_tools`` hook, ``maze tools``
lists them as name@version, and each run records the version of every tool it used."""

from __future__ import annotations

import importlib
import json
import os

import pytest

from maze_core import plugins
from maze_core.registry import ToolRegistry, task
from tests.test_cli import maze

PACKAGES = {"text": ("maze-tool-text", "maze_tool_text"), "files": ("maze-tool-files", "maze_tool_files"),
            "embed": ("maze-tool-embed", "maze_tool_embed")}


def need(module: str):
    """The module, or a skip when it is not installed (an error under MAZE_REQUIRE_TOOLS, as in CI)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("MAZE_REQUIRE_TOOLS"):
            raise
        pytest.skip(f"{module} is not installed (pip install -e ./tools/{module.replace('_', '-')})")


@pytest.fixture(autouse=True)
def _all_plugins(monkeypatch):
    monkeypatch.delenv("MAZE_LOAD_PLUGINS", raising=False)
    for _, module in PACKAGES.values():
        need(module)


def test_installed_packages_arrive_through_the_entry_points_and_the_hook():
    listed = {p["name"]: p for p in plugins.get_plugins()}
    for entry_point, (distribution, module) in PACKAGES.items():
        assert listed[entry_point]["package"] == distribution
        assert listed[entry_point]["version"] == importlib.import_module(module).__version__
        assert listed[entry_point]["hooks"] == ["register_tools"]
        assert not listed[entry_point].get("error")
    registry = ToolRegistry()
    names = registry.load_plugin_tools(plugins.load_plugins())
    expected = {"text_chunk": "text", "text_clean": "text", "text_stats": "text", "text_template": "text",
                "text_keywords": "text", "file_read_text": "files", "file_read_csv": "files",
                "file_read_json": "files", "file_read_pdf": "files", "file_read_document": "files",
                "file_list": "files", "embed_texts": "embed", "embed_index": "embed", "embed_search": "embed",
                "embed_similarity": "embed"}
    assert expected.keys() <= set(names)
    for name, package in expected.items():
        entry = registry.get(name)
        assert entry.source == f"package:{package}" and entry.version == "0.1.0"


def test_maze_tools_lists_them_and_reload_records_them_as_events(tmp_path, cli_env):
    out = maze("tools", "--json", env=cli_env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    tools = {t["name"]: t for t in json.loads(out.stdout)}
    assert tools["text_chunk"]["source"] == "package:text" and tools["text_chunk"]["version"] == "0.1.0"
    assert tools["file_read_pdf"]["input_parameters"]["path"]["type"] == "filepath"
    assert tools["embed_texts"]["resources"]["gpu_mem"] == 1024
    assert tools["embed_texts"]["resources"]["model_name"] == "all-MiniLM-L6-v2"
    human = maze("tools", env=cli_env, cwd=tmp_path)
    assert "text_chunk@0.1.0" in human.stdout and "embed_texts@0.1.0" in human.stdout
    from maze_sqlite.store import SqliteStore
    # a listing only reads (not even the log is opened); recording is `maze tools reload`'s job
    assert not (tmp_path / "data" / "maze.db").exists()
    reloaded = maze("tools", "reload", env=cli_env, cwd=tmp_path)
    assert reloaded.returncode == 0, reloaded.stderr
    store = SqliteStore(tmp_path / "data" / "maze.db")
    try:
        [event] = store.read_stream("tool:text_chunk")
        assert event.type == "ToolRegistered" and event.data["version"] == "0.1.0"
        assert event.data["source"] == "package:text"
    finally:
        store.close()
    shown = maze("tools", "show", "text_chunk@0.1.0", env=cli_env, cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["ref"] == "text_chunk@0.1.0"
    wrong = maze("tools", "show", "text_chunk@9.9", env=cli_env, cwd=tmp_path)
    assert wrong.returncode == 1 and "is version 0.1.0 here, not 9.9" in wrong.stderr


def test_a_run_records_the_version_of_every_tool_it_used(tmp_path):
    from maze_core.dag import DAG
    from maze_core.engine import Engine
    from tests.conftest import make_config
    text = need("maze_tool_text")
    files = need("maze_tool_files")

    @task(name="shout")
    def shout(text: str) -> dict:  # not a registered tool: shipped by value, no version
        return {"text": text.upper()}

    doc = tmp_path / "doc.txt"
    doc.write_text("Maze records events.  Tools   carry versions.")
    registry = ToolRegistry()
    registry.load_plugin_tools(plugins.load_plugins())
    engine = Engine.from_config(make_config(tmp_path), registry=registry)
    with engine:
        dag = DAG("versions")
        read = dag.add_task(files.file_read_text, inputs={"path": str(doc)})
        clean = dag.add_task(text.text_clean, inputs={"text": read.output.text})
        stats = dag.add_task(text.text_stats, inputs={"text": clean.output.text})
        loud = dag.add_task(shout, inputs={"text": clean.output.text})
        run_id = engine.submit(dag)
        assert engine.wait(run_id, timeout=60)["status"] == "succeeded"
        assert engine.result(run_id, stats)["words"] == 6
        assert engine.result(run_id, loud) == {"text": "MAZE RECORDS EVENTS. TOOLS CARRY VERSIONS."}
        submitted = engine.store.read_stream(f"run:{run_id}")[0]
    engine.store.close()
    assert submitted.type == "RunSubmitted"
    specs = submitted.data["tasks"]
    assert {tid: specs[tid]["tool_version"] for tid in (read, clean, stats)} == {
        read: "0.1.0", clean: "0.1.0", stats: "0.1.0"}
    assert all(specs[tid]["func_ref"] is None for tid in (read, clean, stats))  # by name@version
    assert specs[loud]["tool_version"] is None and specs[loud]["func_ref"]  # pickled, not a tool
    assert {specs[tid]["func_name"] for tid in (read, clean, stats)} == {"file_read_text", "text_clean",
                                                                        "text_stats"}
