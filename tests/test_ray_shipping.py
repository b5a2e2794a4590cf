"""User code reaching Ray workers: modules that exist only in the driver (a workflow file that
``maze run`` loaded, its sibling modules) are shipped by value, and code that cannot be loaded
on a worker fails its task with the real exception and what to try, not Ray's wrapper."""

from __future__ import annotations

import json
import sys
import textwrap

import cloudpickle
import pytest

from maze_core import DAG
from maze_core.registry import import_file

from .test_ray_executor import _events, ray_engine  # noqa: F401 - the fixture

pytestmark = pytest.mark.usefixtures("ray_cluster")

HELPER = """
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def norm1(p):
    return abs(p.x) + abs(p.y)
"""

WORKFLOW = """
import helper_{tag}
from maze_core import task, current_task

@task
def make_point(x: int, y: int):
    return helper_{tag}.Point(x, y)     # not JSON: pickled into a blob, by value

@task(retries=1)
def measure(p) -> dict:
    if current_task().attempt == 1:      # the retry gets the point from the log, via the driver
        raise ConnectionError("first attempt fails")
    return {{"norm": helper_{tag}.norm1(p), "kind": type(p).__name__}}
"""


def _load_like_maze_run(folder, name: str):
    """Import a workflow file as ``maze run`` does: its folder importable, and the file and the
    modules it imported from its folder registered to be pickled by value."""
    sys.path.insert(0, str(folder))
    before = set(sys.modules)
    try:
        module = import_file(folder / name)
    finally:
        sys.path.remove(str(folder))
    added = [sys.modules[m] for m in set(sys.modules) - before
             if str(getattr(sys.modules[m], "__file__", "")).startswith(str(folder))]
    for mod in added:
        cloudpickle.register_pickle_by_value(mod)
    return module, added


def test_a_workflow_file_and_its_sibling_module_run_on_ray(ray_engine, tmp_path):  # noqa: F811
    tag = tmp_path.name.replace("-", "_")
    (tmp_path / f"helper_{tag}.py").write_text(HELPER)
    (tmp_path / "wf.py").write_text(WORKFLOW.format(tag=tag))
    module, added = _load_like_maze_run(tmp_path, "wf.py")
    try:
        dag = DAG("shipped")
        t1 = dag.add_task(module.make_point, inputs={"x": 3, "y": -4})
        t2 = dag.add_task(module.measure, inputs={"p": t1.output})
        run_id = ray_engine.submit(dag)
        run = ray_engine.wait(run_id, timeout=60)
        failed = [e.data for e in _events(ray_engine, run_id, "TaskFailed")]
        assert run["status"] == "succeeded", failed
        assert ray_engine.result(run_id, t2) == {"norm": 7, "kind": "Point"}
        assert [e.data["attempt"] for e in _events(ray_engine, run_id, "TaskRetrying")] == [1]
    finally:
        for mod in added:
            cloudpickle.unregister_pickle_by_value(mod)
            sys.modules.pop(mod.__name__, None)


def test_code_a_worker_cannot_import_fails_with_the_real_error_and_a_hint(ray_engine, tmp_path):  # noqa: F811
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tag = tmp_path.name.replace("-", "_")
    (elsewhere / f"onlyhere_{tag}.py").write_text("def shout(s):\n    return s.upper()\n")
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "wf.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(elsewhere)!r})    # importable here, not on the workers
        import onlyhere_{tag}
        from maze_core import task

        @task(retries=3)
        def loud(s: str) -> dict:
            return {{"s": onlyhere_{tag}.shout(s)}}
    """))
    module, added = _load_like_maze_run(wf, "wf.py")
    try:
        dag = DAG("missing-module")
        t1 = dag.add_task(module.loud, inputs={"s": "hi"})
        run_id = ray_engine.submit(dag)
        run = ray_engine.wait(run_id, timeout=60)
        assert run["status"] == "failed"
        failed = [e.data for e in _events(ray_engine, run_id, "TaskFailed")]
        assert len(failed) == 1 and failed[0]["task_id"] == t1
        error = failed[0]["error"]
        assert error.startswith(f"ModuleNotFoundError: No module named 'onlyhere_{tag}'"), error
        assert "install it" in error and "RayTaskError" not in error and "\x1b[" not in error
        assert f"onlyhere_{tag}" in failed[0]["traceback"]
        assert not _events(ray_engine, run_id, "TaskRetrying"), "code that cannot load is not retried"
    finally:
        sys.path.remove(str(elsewhere))
        for mod in added:
            cloudpickle.unregister_pickle_by_value(mod)
            sys.modules.pop(mod.__name__, None)
        sys.modules.pop(f"onlyhere_{tag}", None)


TOOL = '''
from maze_core import task
from wordhelp import words      # a helper module of the tool's own folder

@task(name="ray_upload_count", description="Count words")
def count(text: str) -> dict:
    return {"words": len(words(text))}
'''


def test_an_uploaded_tool_runs_on_ray_workers(tmp_path, ray_cluster):
    """An uploaded tool's modules exist only in the server process (its folder is importable while
    it loads): Ray workers get them by value."""
    import httpx

    from maze_api import create_app
    from maze_api.testing import logging_restored, serve
    from maze_core.engine import Engine
    from maze_core.registry import ToolRegistry

    from .conftest import make_config
    from .test_api_server import upload_tool
    from .test_ray_executor import _executor

    cfg = make_config(tmp_path)
    cfg.logging.level = "WARNING"
    engine = Engine.from_config(cfg, executor=_executor(address=ray_cluster.address), registry=ToolRegistry())
    engine.start()
    try:
        with logging_restored(), serve(create_app(cfg, engine)) as url, \
                httpx.Client(base_url=url, timeout=30) as client:
            response = upload_tool(client, "rayup", {"tool.py": TOOL,
                                                     "wordhelp.py": "def words(t):\n    return t.split()\n"})
            assert response.status_code == 201, response.text
            dag = DAG("uploaded", registry=ToolRegistry())        # this client does not have the tool
            t1 = dag.add_task("ray_upload_count", inputs={"text": "one two three"})
            response = client.post("/submit_workflow/", files={
                "workflow_payload": ("w.json", json.dumps(dag.to_wire()), "application/json")})
            assert response.status_code == 200, response.text
            run_id = response.json()["run_id"]
            run = engine.wait(run_id, timeout=60)
            failed = [e.data for e in _events(engine, run_id, "TaskFailed")]
            assert run["status"] == "succeeded", failed
            assert engine.result(run_id, t1) == {"words": 3}
            assert _events(engine, run_id, "TaskStarted")[0].data["worker"]["executor"] == "ray"
    finally:
        engine.stop(wait=False)
        engine.store.close()
