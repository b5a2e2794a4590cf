"""DAG building, references, validation and the wire format (seeds 000 and 001)."""

from __future__ import annotations

import base64
import importlib.util
import json
import time

import cloudpickle
import pytest

from maze_core.dag import (
    DAG,
    OutputRef,
    ReferenceResolutionError,
    TaskRef,
    find_references,
    parse_reference,
    resolve_inputs,
    resolve_path,
)
from maze_core.errors import DAGValidationError, MazeError, ResourceError, TaskDefinitionError
from maze_core.registry import ToolRegistry, task


@task
def image_caption(image_path: str) -> dict:
    """生成图像描述"""
    return {"caption": f"a cat in {image_path}"}


@task
def summarize(text: str) -> dict:
    """对文本进行摘要"""
    return {"summary": text[:10]}


@task(output_parameters={"sum": {"type": "integer"}})
def add(a: int, b: int = 0) -> dict:
    return {"sum": a + b}


@task
def collect(values: list, label: str | None = None) -> dict:
    return {"values": values}


@task
def anything(**kwargs) -> dict:
    return kwargs


@task(input_parameters={"src": {"type": "filepath"}, "flag": {"type": ["boolean", "null"]},
                        "ratio": {"type": "number"}})
def typed(src: str, flag: bool | None = None, ratio: float = 1.0) -> dict:
    return {}


def quick_start() -> tuple[DAG, TaskRef, TaskRef]:
    dag = DAG(name="image_analysis")
    task1_id = dag.add_task(func=image_caption, inputs={"image_path": "/input/cat.jpg"})
    task2_id = dag.add_task(func=summarize, inputs={"text": f"{task1_id}.output.caption"})
    return dag, task1_id, task2_id


def wire_without_code(payload: dict) -> dict:
    """The wire payload minus the pickled bytes (re-pickling a by-value function may differ)."""
    return {"name": payload["name"],
            "tasks": {tid: {k: v for k, v in spec.items() if k != "serialized_func"}
                      for tid, spec in payload["tasks"].items()}}


def problems_of(dag: DAG, **kwargs) -> list[str]:
    with pytest.raises(DAGValidationError) as info:
        dag.validate(**kwargs)
    return info.value.problems


# ---------------------------------------------------------------------------- building


def test_seed_000_quick_start():
    dag, t1, t2 = quick_start()
    assert (t1, t2) == ("t1", "t2")
    assert dag.tasks["t1"].dependencies == []
    assert dag.tasks["t2"].dependencies == ["t1"]
    assert dag.tasks["t2"].inputs == {"text": "t1.output.caption"}
    assert dag.tasks["t2"].func is summarize and dag.tasks["t2"].func_name == "summarize"
    assert dag.tasks["t1"].resources["type"] == "cpu"
    dag.validate()
    assert dag.topological_order() == ["t1", "t2"]
    assert dag.sinks() == ["t2"]
    assert dag.levels() == [["t1"], ["t2"]]


def test_task_ref_and_output_ref_build_reference_strings():
    dag, t1, _ = quick_start()
    assert isinstance(t1, TaskRef) and isinstance(t1, str) and t1 == "t1"
    assert isinstance(t1.output, OutputRef)
    assert t1.output == "t1.output"
    assert t1.output.caption == "t1.output.caption"
    assert t1.output.items[0] == "t1.output.items.0"
    assert t1.output["count"] == "t1.output.count"
    assert t1.output.meta["x-y"][2].name == "t1.output.meta.x-y.2.name"
    t3 = dag.add_task(summarize, inputs={"text": t1.output.caption})
    assert dag.tasks[t3].dependencies == ["t1"]
    assert type(dag.tasks[t3].inputs["text"]) is str  # stored as plain JSON


def test_nested_references_and_list_indexes():
    dag = DAG("nested")
    a = dag.add_task(add, inputs={"a": 1})
    b = dag.add_task(add, inputs={"a": 2})
    c = dag.add_task(collect, inputs={"values": [a.output.sum, {"deep": [f"{b}.output.items[0].name"]}]})
    assert dag.tasks[c].dependencies == ["t1", "t2"]
    assert list(find_references(dag.tasks[c].inputs, dag.tasks)) == ["t1", "t2"]
    assert parse_reference("t2.output.items[0].name", dag.tasks) == ("t2", ["items", 0, "name"])
    assert parse_reference("t2.output.items.0.name", dag.tasks) == ("t2", ["items", 0, "name"])
    assert parse_reference("t1.output", dag.tasks) == ("t1", [])
    assert parse_reference("t9.output.x", dag.tasks) is None
    assert parse_reference("hello", dag.tasks) is None
    assert parse_reference(42, dag.tasks) is None


def test_resolve_inputs_replaces_references_recursively():
    ids = {"t1", "t2"}
    outputs = {"t1": {"sum": 3, "items": [{"name": "x"}, {"name": "y"}]}, "t2": {"0": "zero"}}
    inputs = {"values": ["t1.output.sum", {"n": "t1.output.items[1].name"}, "t1.output"],
              "label": "plain text", "k": "t2.output.0", "n": 7}
    assert resolve_inputs(inputs, ids, outputs) == {
        "values": [3, {"n": "y"}, outputs["t1"]], "label": "plain text", "k": "zero", "n": 7}


def test_missing_key_error_names_the_key_and_the_available_ones():
    with pytest.raises(ReferenceResolutionError) as info:
        resolve_inputs({"x": "t1.output.summary"}, {"t1"}, {"t1": {"caption": "c", "score": 1}})
    message = str(info.value)
    assert "'summary' not found" in message and "available keys: caption, score" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, MazeError)
    with pytest.raises(ReferenceResolutionError, match="index 5 is out of range.*3 items"):
        resolve_path({"items": [1, 2, 3]}, ["items", 5], ref="t1.output.items[5]")
    with pytest.raises(ReferenceResolutionError, match="is a list of 1 items; use an index"):
        resolve_path([1], ["name"], ref="t1.output.name")
    with pytest.raises(ReferenceResolutionError, match="which is a int"):
        resolve_path({"n": 1}, ["n", "deeper"], ref="t1.output.n.deeper")
    with pytest.raises(ReferenceResolutionError, match="has no result yet"):
        resolve_inputs({"x": "t1.output"}, {"t1"}, {})


def test_add_task_rejects_undecorated_functions_with_a_hint():
    def plain(x: int) -> int:
        return x

    with pytest.raises(TaskDefinitionError, match="'.*plain' is not decorated with @task; add @task"):
        DAG().add_task(plain, inputs={"x": 1})


def test_add_task_checks_resources_eagerly():
    dag = DAG()
    with pytest.raises(ResourceError, match="gpu: must not be negative"):
        dag.add_task(add, inputs={"a": 1}, resources={"gpu": -1})
    assert len(dag) == 0
    t1 = dag.add_task(add, inputs={"a": 1}, resources={"mem": "2G", "gpu": 1})
    assert dag.tasks[t1].resources["mem"] == 2048
    assert dag.tasks[t1].resources["type"] == "gpu"  # a GPU asked for at use time makes it a gpu task


def test_add_task_rejects_references_to_tasks_not_in_the_dag():
    dag = DAG()
    dag.add_task(add, inputs={"a": 1})
    with pytest.raises(DAGValidationError, match="input 'text' of task t2 references unknown task 't9'"):
        dag.add_task(summarize, inputs={"text": "t9.output.caption"})
    with pytest.raises(DAGValidationError, match="malformed reference"):
        dag.add_task(summarize, inputs={"text": "t1.output[x]"})
    assert list(dag.tasks) == ["t1"]
    assert dag.add_task(summarize, inputs={"text": "a sentence. output here"}) == "t2"


def test_add_task_rejects_bad_limits():
    with pytest.raises(DAGValidationError, match="retries must be a whole number"):
        DAG().add_task(add, inputs={"a": 1}, retries=-1)
    with pytest.raises(DAGValidationError, match="timeout must be a number of seconds > 0"):
        DAG().add_task(add, inputs={"a": 1}, timeout=0)


# ---------------------------------------------------------------------------- validation


def test_cycle_from_the_wire_is_named():
    payload = DAG("loop").to_wire()
    for tid, other in (("t1", "t2"), ("t2", "t1")):
        payload["tasks"][tid] = {"func_name": "summarize", "serialized_func": _b64(summarize),
                                 "dependencies": [], "inputs": {"text": f"{other}.output.summary"}}
    dag = DAG.from_wire(payload)
    problems = problems_of(dag)
    assert any("dependency cycle: t1 -> t2 -> t1" in p for p in problems)
    with pytest.raises(DAGValidationError, match="cycle"):
        dag.topological_order()
    assert "not a DAG" in dag.show_structure()


def test_self_dependency_is_a_cycle():
    payload = {"tasks": {"a": {"func_name": "add", "serialized_func": _b64(add),
                               "dependencies": ["a"], "inputs": {"a": 1}}}}
    assert problems_of(DAG.from_wire(payload)) == ["dependency cycle: a -> a (each task waits for the next)"]


def test_validate_collects_every_problem():
    dag = DAG("many")
    t1 = dag.add_task(add, inputs={"a": 1})
    dag.add_task(add, inputs={"a": t1.output.total, "c": 3})          # undeclared key, unknown input
    dag.add_task(add, inputs={"b": 2})                                # missing required input
    dag.add_task(typed, inputs={"src": 5, "flag": "yes", "ratio": True})   # three type mismatches
    dag.add_task(add, inputs={"a": True})                             # bool is not an integer
    problems = problems_of(dag)
    assert problems == [
        "input 'a' of task t2 references key 'total' ('t1.output.total') that task t1 (add) does not "
        "declare; declared: sum",
        "task t2 (add) has unknown input 'c'; it takes: a, b",
        "task t3 (add) is missing required input 'a'",
        "input 'src' of task t4 (typed) must be filepath, got int 5",
        "input 'flag' of task t4 (typed) must be boolean or null, got str 'yes'",
        "input 'ratio' of task t4 (typed) must be number, got bool True",
        "input 'a' of task t5 (add) must be integer, got bool True",
    ]
    with pytest.raises(DAGValidationError, match=r"DAG 'many' is invalid \(7 problems\)"):
        dag.validate()


def test_schema_types_that_do_match_pass():
    dag = DAG()
    t1 = dag.add_task(add, inputs={"a": 1, "b": 2})
    dag.add_task(typed, inputs={"src": "/data/in.csv", "flag": None, "ratio": 2})
    dag.add_task(collect, inputs={"values": [t1.output.sum, 3], "label": None})
    dag.add_task(anything, inputs={"whatever": {"x": [1]}, "more": t1.output})
    dag.validate()


def test_injected_inputs_are_not_missing():
    dag = DAG()
    dag.add_task(summarize)
    assert problems_of(dag) == ["task t1 (summarize) is missing required input 'text'"]
    dag.validate(injected_inputs={"text"})


def test_empty_dag_and_unknown_tools():
    assert problems_of(DAG("empty")) == ["DAG 'empty' has no tasks"]
    dag, _, _ = quick_start()
    assert problems_of(dag, known_tools={"image_caption"}) == [
        "task t2 (summarize) uses unknown tool 'summarize'"]


def test_capacity_check_problems():
    dag = DAG()
    dag.add_task(add, inputs={"a": 1})
    dag.add_task(add, inputs={"a": 2}, resources={"gpu": 2})
    seen = []

    def capacity(task_id: str, resources: dict) -> str | None:
        seen.append((task_id, resources["gpu"]))
        return "needs 2 GPUs, the cluster has 0" if resources["gpu"] else None

    assert problems_of(dag, capacity_check=capacity) == ["task t2 (add): needs 2 GPUs, the cluster has 0"]
    assert seen == [("t1", 0.0), ("t2", 2.0)]


def test_limits_changed_after_building_are_revalidated():
    dag = DAG()
    t1 = dag.add_task(add, inputs={"a": 1})
    dag.tasks[t1].retries = -2
    dag.tasks[t1].inputs["b"] = object()
    problems = problems_of(dag)
    assert "task t1: retries must be a whole number >= 0, got -2" in problems
    assert "input 'b' of task t1 (add) is not JSON (object)" in problems


# ---------------------------------------------------------------------------- wire format


def _b64(func) -> str:
    return base64.b64encode(cloudpickle.dumps(func)).decode()


def make_closure_task(factor: int):
    @task(name="scale")
    def scale(x: int) -> dict:
        return {"value": x * factor}

    return scale


def test_wire_round_trip_with_a_closure():
    scale = make_closure_task(7)
    dag, t1, t2 = quick_start()
    t3 = dag.add_task(scale, task_name="times seven", inputs={"x": 6}, retries=2, timeout=5,
                      resources={"cpu": 2})
    dag.add_task(collect, inputs={"values": [t2.output.summary, t3.output.value]})
    payload = dag.to_wire()
    assert set(payload["tasks"]["t3"]) == {"func_name", "serialized_func", "dependencies", "inputs",
                                           "task_name", "resources", "retries", "timeout"}
    assert payload["tasks"]["t4"]["dependencies"] == ["t2", "t3"]
    payload = json.loads(json.dumps(payload))  # what really travels
    again = DAG.from_wire(payload)
    assert wire_without_code(again.to_wire()) == wire_without_code(payload)
    assert again.name == "image_analysis"
    assert again.tasks["t1"].func is image_caption  # module-level functions travel by reference
    rebuilt = again.tasks["t3"].func
    assert rebuilt is not scale and rebuilt(x=6) == {"value": 42}
    assert (again.tasks["t3"].retries, again.tasks["t3"].timeout) == (2, 5.0)
    assert again.tasks["t3"].task_name == "times seven"
    again.validate()
    assert again.add_task(add, inputs={"a": 1}) == "t5"  # ids continue after the rebuilt ones


def test_from_wire_json_text_and_registry_lookup():
    registry = ToolRegistry()
    registry.register_task(image_caption)
    registry.register_task(summarize)
    text = json.dumps({"tasks": {
        "t1": {"func_name": "image_caption", "serialized_func": "", "dependencies": [],
               "inputs": {"image_path": "/input/cat.jpg"}},
        "t2": {"func_name": "summarize", "serialized_func": None, "dependencies": ["t1"],
               "inputs": {"text": "t1.output.caption"}},
        "t3": {"func_name": "summarize", "dependencies": ["t1"], "inputs": {"text": "fixed"}},
    }})
    dag = DAG.from_wire(text, registry=registry)
    assert dag.tasks["t2"].func is summarize
    assert dag.tasks["t3"].dependencies == ["t1"]  # explicit dependencies are kept
    dag.validate(known_tools=set(registry.names()))


@pytest.mark.parametrize(("payload", "message"), [
    ("{not json", "not JSON"),
    ([], "must be a JSON object"),
    ({"name": "x"}, 'needs a "tasks" object'),
    ({"tasks": {"t1": "nope"}}, "task t1 must be an object"),
    ({"tasks": {"1x": {}}}, "task id '1x' is invalid"),
    ({"tasks": {"t1": {"func_name": "f", "serialized_func": "%%%"}}}, "not valid base64"),
    ({"tasks": {"t1": {"func_name": "f", "serialized_func": base64.b64encode(b"garbage").decode()}}},
     "could not be unpickled"),
    ({"tasks": {"t1": {"func_name": "f", "serialized_func": _b64(len)}}}, "not decorated with @task"),
    ({"tasks": {"t1": {"func_name": "f", "serialized_func": base64.b64encode(
        cloudpickle.dumps(42)).decode()}}}, "not a function"),
    ({"tasks": {"t1": {"func_name": "add", "serialized_func": _b64(add), "dependencies": ["t7"]}}},
     "depends on unknown task"),
    ({"tasks": {"t1": {"func_name": "no_such_tool", "serialized_func": ""}}}, "unknown tool"),
    ({"tasks": {"t1": {"func_name": "add", "serialized_func": _b64(add), "inputs": ["a"]}}},
     "inputs must be a dict"),
    ({"tasks": {"t1": {"func_name": "add", "serialized_func": _b64(add), "inputs": {"a": "t3.output"}}}},
     "references unknown task 't3'"),
    ({"tasks": {"t1": {"func_name": "add", "serialized_func": _b64(add), "resources": {"gpu": "many"}}}},
     "gpu: expected a number"),
])
def test_from_wire_rejects_bad_payloads(payload, message):
    with pytest.raises((DAGValidationError, TaskDefinitionError), match=message):
        DAG.from_wire(payload, registry=ToolRegistry())


def test_from_wire_reports_every_bad_task():
    with pytest.raises(DAGValidationError) as info:
        DAG.from_wire({"tasks": {"a": 1, "b": {"func_name": "x"}}}, registry=ToolRegistry())
    assert len(info.value.problems) == 2


def test_to_wire_pickles_each_function_once_and_is_fast():
    start = time.perf_counter()
    dag = DAG("big")
    prev = dag.add_task(add, inputs={"a": 0})
    for i in range(999):
        prev = dag.add_task(add, inputs={"a": prev.output.sum, "b": i})
    payload = dag.to_wire()
    elapsed = time.perf_counter() - start
    assert len(payload["tasks"]) == 1000
    assert len({spec["serialized_func"] for spec in payload["tasks"].values()}) == 1
    assert elapsed < 1.0, f"building and serialising 1,000 tasks took {elapsed:.2f}s"
    assert dag.topological_order()[:3] == ["t1", "t2", "t3"]
    assert len(dag.levels()) == 1000


# ---------------------------------------------------------------------------- display


def test_show_structure_lists_levels_ids_and_inputs(capsys):
    dag, _, _ = quick_start()
    text = dag.show_structure()
    assert capsys.readouterr().out.strip() == text
    assert text.splitlines() == [
        "DAG 'image_analysis': 2 tasks",
        "level 0:",
        "  t1: image_caption",
        '      image_path = "/input/cat.jpg"',
        "level 1:",
        "  t2: summarize <- t1",
        '      text = "t1.output.caption"',
    ]


def test_visualize(tmp_path):
    dag, _, _ = quick_start()
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(ImportError, match=r"DAG.visualize\(\) needs matplotlib: "
                                              r"pip install 'maze-framework\[viz\]'"):
            dag.visualize()
    else:
        target = tmp_path / "dag.png"
        dag.visualize(str(target))
        assert target.stat().st_size > 0
