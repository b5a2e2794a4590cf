"""The SDK stays light: importing it, building a DAG and making its payload loads no Ray, FastAPI,
uvicorn or starlette (seed 000: "零 Ray 依赖")."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = """
import sys
import maze_client
from maze_client import MazeClient, task
from maze_client._wire import dag_payload

@task
def f(x: int) -> dict:
    return {{"y": x}}

client = MazeClient("http://127.0.0.1:9")
dag = client.new_dag("light")
t1 = dag.add_task(f, inputs={{"x": 1}})
dag.add_task(f, inputs={{"x": t1.output.y}})
assert dag_payload(dag)["tasks"]["t2"]["dependencies"] == ["t1"]
client.close()
heavy = sorted(m for m in sys.modules if m == {name!r} or m.startswith({name!r} + "."))
assert not heavy, heavy
print("ok")
"""


@pytest.mark.parametrize("name", ["ray", "fastapi", "uvicorn", "starlette"])
def test_sdk_never_imports(name):
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(name=name)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_check_itself_can_fail():
    """The same probe sees a module that *is* imported (so a passing test above means something)."""
    script = SCRIPT.format(name="httpx")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode != 0 and "AssertionError" in proc.stderr
