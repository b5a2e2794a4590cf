"""``maze demo --example rag``: the real pipeline on the CPU (the embedding model is the same
process-wide instance the embedding tests load), its shape, and its failure without the tools. The
example lives in ``examples/rag/`` and the CLI loads it by its path (``maze_core.demo.examples``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from maze_api.testing import logging_restored
from maze_core.demo.examples import load_example

try:
    rag = load_example("rag")
    rag.require_tools()
except RuntimeError as exc:  # CI installs everything (MAZE_REQUIRE_TOOLS=1): no skip there
    if os.environ.get("MAZE_REQUIRE_TOOLS"):
        raise
    pytest.skip(str(exc), allow_module_level=True)

EXPECTED = [  # question -> the document and words its answer must come from
    ("honey_bees.md", "dance"),
    ("apollo_11.txt", "Neil Armstrong"),
    ("sourdough.md", "wild yeasts"),
    ("event_sourcing.md", "replaying its events"),
    ("photosynthesis.pdf", "comes from the water"),
    ("bicycle_history.txt", "John Kemp Starley"),
]


def test_the_rag_example_answers_from_the_right_documents(tmp_path, monkeypatch):
    from maze_core.cli import cli
    from maze_sqlite.store import SqliteStore
    monkeypatch.delenv("MAZE_LOAD_PLUGINS", raising=False)
    env = {"MAZE_PATHS_DATA_DIR": str(tmp_path / "data"), "MAZE_LOGGING_LEVEL": "WARNING",
           "MAZE_CONFIG": ""}
    monkeypatch.chdir(tmp_path)  # no config.toml here: built-in defaults
    started = time.perf_counter()
    with logging_restored():
        result = CliRunner().invoke(cli, ["demo", "--example", "rag", "--executor", "local",
                                          "--no-progress", "--json"], env=env, catch_exceptions=False)
    took = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert took < 60, f"the rag example took {took:.1f} s"
    store = SqliteStore(tmp_path / "data" / "maze.db")
    try:
        [run] = store.list_runs()
        assert run["status"] == "succeeded" and run["name"] == "maze-demo-rag"
        events = store.read_stream(f"run:{run['run_id']}")
        specs = events[0].data["tasks"]
        by_name = {spec["task_name"]: (tid, spec) for tid, spec in specs.items()}
        report = next(e.data["result"] for e in events
                      if e.type == "TaskSucceeded" and e.data["task_id"] == by_name["report"][0])
    finally:
        store.close()
    # one branch per document: read -> clean -> chunk -> embed, independent of the other documents
    documents = sorted(p.name for p in rag.DOCS.iterdir())
    assert report["documents"] == documents and report["chunks"] >= 30
    for doc in documents:
        tid, embed = by_name[f"embed {doc}"]
        chunk_id = by_name[f"chunk {doc}"][0]
        assert embed["dependencies"] == [chunk_id]
        assert embed["tool_version"] == "0.1.0" and embed["func_ref"] is None
        assert embed["resources"]["gpu"] == 0 and embed["resources"]["model_name"] == "all-MiniLM-L6-v2"
    index_id, index = by_name["index"]
    assert sorted(index["dependencies"]) == sorted(by_name[f"embed {d}"][0] for d in documents)
    assert by_name["answer q1"][1]["tool_version"] is None  # the example's own step, shipped by value
    answers = report["answers"]
    assert [a["question"] for a in answers] == rag.QUESTIONS
    for answer, (source, words) in zip(answers, EXPECTED, strict=True):
        assert answer["answered_from"]["source"] == source, answer
        assert words in answer["answer"], answer
        assert answer["sources"][0]["source"] == source and answer["confidence"] > 0.5


def test_the_human_report_and_custom_questions(tmp_path, monkeypatch):
    from maze_core.cli import cli
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("Green tea is made from leaves that are steamed or pan-fired soon after "
                                 "picking, which stops oxidation. Black tea leaves are rolled and fully "
                                 "oxidised before drying, which darkens them.\n")
    (docs / "ignored.bin").write_bytes(b"\x00\x01")
    monkeypatch.chdir(tmp_path)
    env = {"MAZE_PATHS_DATA_DIR": str(tmp_path / "data"), "MAZE_CONFIG": "", "MAZE_LOGGING_LEVEL": "WARNING"}
    with logging_restored():
        result = CliRunner().invoke(cli, ["demo", "--example", "rag", "--executor", "local",
                                          "--no-progress", "--docs", str(docs), "-q", "How is black tea made?"],
                                    env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Q: How is black tea made?" in result.output
    assert "A: Black tea leaves are rolled and fully oxidised" in result.output
    assert "sources: tea.md #0" in result.output
    assert "1 questions answered from 1 documents (1 chunks) in " in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    with logging_restored():
        none = CliRunner().invoke(cli, ["demo", "--example", "rag", "--executor", "local", "--docs",
                                        str(empty)], env=env)
    assert none.exit_code == 2 and "holds no documents" in none.output


def test_gpu_declarations_are_kept_when_the_executor_can_grant_a_gpu():
    from maze_local.executor import LocalExecutor
    assert not rag.gpu_available(LocalExecutor(cpus=2, gpus=0))
    assert rag.gpu_available(LocalExecutor(cpus=2, gpus=1))
    on_gpu = rag.build_rag_dag(on_gpu=True)
    on_cpu = rag.build_rag_dag(on_gpu=False)
    embed_gpu = next(n for n in on_gpu.tasks.values() if n.func_name == "embed_texts")
    embed_cpu = next(n for n in on_cpu.tasks.values() if n.func_name == "embed_texts")
    assert (embed_gpu.resources["type"], embed_gpu.resources["gpu"], embed_gpu.resources["gpu_mem"]) == (
        "gpu", 1.0, 1024)
    assert (embed_cpu.resources["type"], embed_cpu.resources["gpu"], embed_cpu.resources["gpu_mem"]) == (
        "cpu", 0.0, 0)
    assert embed_gpu.resources["model_name"] == embed_cpu.resources["model_name"] == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("hidden, expected", [
    ("maze_tool_embed", "needs the tool packages maze-tool-embed"),
    ("torch", "torch: pip install torch==2.13.0"),
])
def test_the_example_says_what_is_missing_and_how_to_install_it(tmp_path, hidden, expected):
    code = (f"import sys; sys.modules[{hidden!r}] = None\n"
            "from maze_core.cli import main\nmain(['demo', '--example', 'rag'])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAZE_")}
    env["MAZE_PATHS_DATA_DIR"] = str(tmp_path / "data")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr and "pip install" in out.stderr
    assert not (tmp_path / "data" / "maze.db").exists()  # refused before anything was recorded


def test_the_example_lives_in_examples_and_ships_by_value():
    """Not a module of maze_core: loaded from examples/rag/ by its path; its own steps travel by
    value (a resumed run or a Ray worker loads them without the file)."""
    import importlib.util

    import cloudpickle

    from tests.conftest import REPO
    assert importlib.util.find_spec("maze_core.demo.rag") is None
    assert rag.__file__ == str(REPO / "examples" / "rag" / "rag_pipeline.py")
    assert rag.DOCS == REPO / "examples" / "rag" / "docs"
    assert load_example("rag") is rag   # once per process
    shipped = cloudpickle.dumps(rag.rag_answer)
    assert b"_sentences" in shipped   # the code itself (and what it uses), not a reference to a module
    assert cloudpickle.loads(shipped).__name__ == "rag_answer"


def test_the_workflow_file_runs_the_same_pipeline(tmp_path, monkeypatch):
    """``maze run examples/rag/workflow.py`` imports the pipeline from its own folder."""
    from maze_core.cli import _load_workflow_file
    from tests.conftest import REPO
    monkeypatch.setenv("RAG_QUESTIONS", "Who invented the safety bicycle?")
    monkeypatch.setattr(sys, "path", list(sys.path))   # the loader puts the file's folder first
    try:
        dag = _load_workflow_file(REPO / "examples" / "rag" / "workflow.py", None)
    finally:
        sys.modules.pop("rag_pipeline", None)
    names = [node.func_name for node in dag.tasks.values()]
    assert names.count("embed_texts") == len(list(rag.DOCS.iterdir())) and names.count("rag_answer") == 1
