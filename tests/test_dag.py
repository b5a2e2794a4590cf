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
    tools = ToolRegistry()
    tools.register_task(add)
    tools.register_task(typed)
    dag = DAG("many", registry=ToolRegistry())   # tools named here are bound by validate(registry=)
    t1 = dag.add_task("add", inputs={"a": 1})
    dag.add_task("add", inputs={"a": t1.output.total, "c": 3})        # undeclared key, unknown input
    dag.add_task("add", inputs={"b": 2})                              # missing required input
    dag.add_task("typed", inputs={"src": 5, "flag": "yes", "ratio": True})   # three type mismatches
    dag.add_task("add", inputs={"a": True})                           # bool is not an integer
    problems = problems_of(dag, registry=tools)
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
        dag.validate(registry=tools)


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


# ---------------------------------------------------------------------------- every problem at once


def test_add_task_reports_every_problem_at_once():
    dag = DAG()
    t1 = dag.add_task(add, inputs={"a": 1})
    with pytest.raises(DAGValidationError) as info:
        dag.add_task(typed, inputs={"src": 5, "flag": "t7.output.x", "ratio": "t8.output", "c": 1,
                                    "d": t1.output.sum}, retries=-1, resources={"gpu": -1})
    assert info.value.problems == [
        "task t2 (typed): gpu: must not be negative, got -1",
        "input 'flag' of task t2 references unknown task 't7' ('t7.output.x')",
        "input 'ratio' of task t2 references unknown task 't8' ('t8.output')",
        "task t2 (typed) has unknown input 'c'; it takes: flag, ratio, src",
        "task t2 (typed) has unknown input 'd'; it takes: flag, ratio, src",
        "input 'src' of task t2 (typed) must be filepath, got int 5",
        "task t2: retries must be a whole number >= 0, got -1",
    ]
    assert str(info.value).startswith("task t2 is invalid (7 problems): task t2 (typed): gpu")
    assert list(dag.tasks) == ["t1"]


def test_add_task_lists_an_undecorated_function_with_the_other_problems():
    def plain(x: int) -> int:
        return x

    with pytest.raises(DAGValidationError) as info:
        DAG().add_task(plain, inputs={"x": "t3.output"}, timeout=-5)
    assert len(info.value.problems) == 3
    assert "plain' is not decorated with @task" in info.value.problems[0]
    assert "references unknown task 't3'" in info.value.problems[1]
    assert "timeout must be a number of seconds > 0" in info.value.problems[2]


# ---------------------------------------------------------------------------- tools by name


def test_add_task_by_tool_name_binds_the_registered_tool_and_travels_by_name():
    tools = ToolRegistry()
    tools.register_task(add)
    dag = DAG("named", registry=tools)
    t1 = dag.add_task("add", inputs={"a": 1}, resources={"cpu": 2}, retries=3)
    node = dag.tasks[t1]
    assert node.func is add and node.func_name == "add" and node.resources["cpu"] == 2
    assert node.meta.output_parameters == {"sum": {"type": "integer"}}
    dag.add_task(summarize, inputs={"text": "x"})
    with pytest.raises(DAGValidationError, match=r"task t3 \(add\) has unknown input 'zz'"):
        dag.add_task("add", inputs={"a": 1, "zz": 2})   # the bound tool's schema is checked at once
    dag.validate()
    payload = json.loads(json.dumps(dag.to_wire()))
    assert payload["tasks"]["t1"] == {"func_name": "add", "serialized_func": "", "dependencies": [],
                                      "inputs": {"a": 1}, "task_name": None, "resources": {"cpu": 2},
                                      "retries": 3, "timeout": None}
    assert payload["tasks"]["t2"]["serialized_func"]   # a function still travels as code
    again = DAG.from_wire(payload, registry=tools)
    assert again.tasks["t1"].func is add and again.tasks["t1"].retries == 3
    assert again.to_wire()["tasks"]["t1"] == payload["tasks"]["t1"]


def test_a_tool_name_unknown_when_building_is_bound_by_whoever_runs_the_dag():
    @task(name="word_count", resources={"gpu": 1})
    def word_count(text: str) -> dict:
        return {"words": len(text.split())}

    dag = DAG("for-a-server", registry=ToolRegistry())   # a client without the server's tools
    t1 = dag.add_task("word_count", inputs={"text": "a b c"}, resources={"mem": "1G"})
    assert dag.tasks[t1].func is None
    assert dag.to_wire()["tasks"]["t1"]["resources"] == {"mem": "1G"}   # only what was asked
    assert problems_of(dag) == ["task t1 uses unknown tool 'word_count': no tools are registered"]
    server = ToolRegistry()
    server.register_task(word_count)
    dag.validate(registry=server)
    node = dag.tasks[t1]
    assert node.func is word_count and node.meta.required_inputs == ("text",)
    assert (node.resources["gpu"], node.resources["mem"]) == (1, 1024)   # the tool's, then the override
    on_server = DAG.from_wire(json.loads(json.dumps(dag.to_wire())), registry=server)
    assert on_server.tasks["t1"].func is word_count and on_server.tasks["t1"].resources["mem"] == 1024


def test_an_unknown_tool_name_lists_close_matches():
    tools = ToolRegistry()
    for name in ("word_count", "word_counter", "text_chunk"):
        tools.register_task(task(name=name)(lambda text: {}))
    dag = DAG(registry=tools)
    dag.add_task("Word_Cuont", inputs={"text": "x"})
    dag.add_task("summarise_pdf")
    assert problems_of(dag) == [
        "task t1 uses unknown tool 'Word_Cuont': did you mean 'word_count' or 'word_counter'?",
        "task t2 uses unknown tool 'summarise_pdf': the registered tools are text_chunk, word_count, "
        "word_counter"]
    payload = {"tasks": {"t1": {"func_name": "text_chunks", "serialized_func": ""}}}
    with pytest.raises(DAGValidationError, match="unknown tool 'text_chunks': did you mean 'text_chunk'"):
        DAG.from_wire(payload, registry=tools)
    with pytest.raises(TaskDefinitionError, match="the tool name is empty"):
        dag.add_task("  ")


def test_add_task_by_name_runs_on_the_engine_of_maze_run(config):
    """``maze run`` imports the workflow file before its engine loads the installed tools into
    the global registry: the name is bound when the engine validates the DAG."""
    from maze_core import events as ev
    from maze_core.engine import Engine
    from maze_core.registry import task_registry

    @task(name="test_dag_shout", version="1.2.0")
    def shout(text: str) -> dict:
        return {"loud": text.upper()}

    dag = DAG("by-name")
    t1 = dag.add_task("test_dag_shout", inputs={"text": "hi"})
    dag.add_task(summarize, inputs={"text": t1.output.loud})
    assert dag.tasks[t1].func is None
    task_registry.register_task(shout, source="package:test")
    try:
        with Engine.from_config(config, registry=task_registry) as engine:
            run_id = engine.submit(dag)
            assert engine.wait(run_id, timeout=30)["status"] == "succeeded"
            assert engine.result(run_id, "t2") == {"summary": "HI"}
            spec = engine.store.read_stream(ev.run_stream(run_id))[0].data["tasks"]["t1"]
            assert (spec["func_ref"], spec["tool_version"]) == (None, "1.2.0")   # recorded by name
    finally:
        task_registry.unregister("test_dag_shout")


def test_non_callables_are_named_plainly():
    with pytest.raises(TaskDefinitionError) as info:
        DAG().add_task(42, inputs={"x": 1})
    assert str(info.value) == "task t1: add_task takes a @task function or the name of a tool, got int 42"
    with pytest.raises(TaskDefinitionError) as info:
        ToolRegistry().register_task("word_count")
    assert str(info.value) == "'word_count' is a str, not a function decorated with @task"


# ---------------------------------------------------------------------------- plain functions on the wire


def foreign(source: str, name: str):
    """A function defined as a raw API client's script would: in a module this process cannot
    import, so that cloudpickle ships it by value and it arrives without any @task."""
    namespace: dict = {"__name__": "raw_client_script"}
    exec(source, namespace)
    return namespace[name]


def test_from_wire_gives_a_plain_function_the_metadata_of_a_bare_task():
    double = foreign("def double(x: int, scale: int = 2) -> dict:\n"
                     "    'Double x.'\n    return {'y': x * scale}\n", "double")
    payload = {"tasks": {"t1": {"func_name": "doubler", "serialized_func": _b64(double),
                                "dependencies": [], "inputs": {"x": 4}, "resources": {"mem": "1G"}},
                         "t2": {"serialized_func": _b64(double), "inputs": {"x": "t1.output.y"}}}}
    dag = DAG.from_wire(json.loads(json.dumps(payload)), registry=ToolRegistry())
    t1, t2 = dag.tasks["t1"], dag.tasks["t2"]
    assert (t1.func_name, t2.func_name) == ("doubler", "double")   # func_name, else its own name
    assert t1.meta.description == "Double x."
    assert t1.meta.input_parameters == {"x": {"type": "integer"}, "scale": {"type": "integer", "default": 2}}
    assert t1.meta.required_inputs == ("x",) and t1.resources["mem"] == 1024
    assert not hasattr(t1.func, "_task_meta") and t1.func(x=4) == {"y": 8}
    assert t2.dependencies == ["t1"]
    dag.validate()
    payload["tasks"]["t1"]["inputs"] = {"x": "four", "z": 1}
    with pytest.raises(DAGValidationError) as info:
        DAG.from_wire(payload, registry=ToolRegistry())
    assert info.value.problems == ["task t1 (doubler) has unknown input 'z'; it takes: scale, x",
                                   "input 'x' of task t1 (doubler) must be integer, got str 'four'"]
