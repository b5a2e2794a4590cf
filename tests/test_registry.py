"""The @task decorator, task metadata and the ToolRegistry (seed 003, seed 000)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TypedDict

import pluggy
import pytest
from pydantic import BaseModel

from maze_core import hookimpl, hookspecs
from maze_core.errors import NotFoundError, ResourceError, TaskDefinitionError
from maze_core.registry import (
    TYPE_FILEPATH,
    TYPE_FOLDERPATH,
    TaskMeta,
    ToolEntry,
    ToolRegistry,
    get_meta,
    is_task,
    task,
)

FIXTURES = Path(__file__).parent / "fixtures"
TOOLS_DIR = FIXTURES / "tools_dir"


@task(
    name="image_caption",
    description="为输入图像生成描述性文本",
    input_parameters={"image": {"type": "filepath"}},
    output_parameters={"caption": {"type": "string"}},
    task_type="gpu",
    gpu_mem=4096,
    model_name="llava-v1.6",
)
def image_caption(image: str) -> dict:
    return {"caption": f"a picture at {image}"}


@task
def word_count(text: str) -> dict:
    """Count the words of a text.

    Splits on whitespace."""
    return {"words": len(text.split())}


# ---------------------------------------------------------------------------- @task


def test_seed_003_example_meta_has_exactly_the_seed_shape():
    assert image_caption._task_meta == {
        "name": "image_caption",
        "description": "为输入图像生成描述性文本",
        "input_parameters": {"image": {"type": "filepath"}},
        "output_parameters": {"caption": {"type": "string"}},
        "resources": {"type": "gpu", "cpu_num": 1, "mem": 0, "gpu_mem": 4096,
                      "model_name": "llava-v1.6", "backend": None},
        "version": "0.0.0",
        "retries": None,
        "timeout": None,
    }
    assert image_caption(image="/data/img.jpg") == {"caption": "a picture at /data/img.jpg"}


def test_bare_decorator_returns_the_same_callable_function_with_defaults():
    assert word_count("a b c") == {"words": 3}
    assert word_count.__name__ == "word_count"
    meta = word_count._task_meta
    assert meta["name"] == "word_count"
    assert meta["description"] == "Count the words of a text."
    assert meta["input_parameters"] == {"text": {"type": "string"}}
    assert meta["output_parameters"] == {}
    assert meta["resources"] == {"type": "cpu", "cpu_num": 1, "mem": 0, "gpu_mem": 0,
                                 "model_name": None, "backend": None}
    assert is_task(word_count)


def test_decorator_with_arguments_keeps_the_function_identity():
    def process_image(image_path: str) -> dict:
        return {"path": image_path}

    decorated = task(name="my_image_processor", description="Processes input image",
                     resources={"gpu": 1}, version="1.0", retries=2, timeout=30)(process_image)
    assert decorated is process_image
    meta = process_image._task_meta
    assert meta["name"] == "my_image_processor"
    assert meta["version"] == "1.0"
    assert meta["retries"] == 2
    assert meta["timeout"] == 30
    # a GPU requested seed-000 style makes it a gpu task and the count is kept
    assert meta["resources"]["type"] == "gpu"
    assert meta["resources"]["gpu"] == 1
    assert get_meta(process_image).normalized_resources()["gpu"] == 1.0


class Caption(TypedDict):
    caption: str
    score: float


class Result(BaseModel):
    label: str


def test_schemas_derived_from_hints_and_defaults():
    @task
    def describe(path: str, top_k: int = 3, threshold: float | None = None, raw=None,
                 *args, verbose: bool = False, **kwargs) -> Caption:
        return {"caption": path, "score": 1.0}

    params = describe._task_meta["input_parameters"]
    assert params == {
        "path": {"type": "string"},
        "top_k": {"type": "integer", "default": 3},
        "threshold": {"anyOf": [{"type": "number"}, {"type": "null"}], "default": None},
        "raw": {"default": None},
        "verbose": {"type": "boolean", "default": False},
    }
    assert describe._task_meta["output_parameters"] == {"caption": {"type": "string"},
                                                        "score": {"type": "number"}}
    meta = get_meta(describe)
    assert meta.required_inputs == ("path",)
    assert meta.accepts_kwargs is True
    assert meta.parameters == ("path", "top_k", "threshold", "raw", "verbose")


def test_pydantic_model_return_and_declared_schema_merge():
    @task(input_parameters={"image": {"type": TYPE_FILEPATH}, "out": {"type": TYPE_FOLDERPATH}})
    def classify(image: str, out: str = "/tmp/out", n: int = 1) -> Result:
        return Result(label="cat")

    meta = classify._task_meta
    assert TYPE_FILEPATH == "filepath" and TYPE_FOLDERPATH == "folderpath"
    assert meta["input_parameters"] == {"image": {"type": "filepath"},
                                        "out": {"type": "folderpath", "default": "/tmp/out"},
                                        "n": {"type": "integer", "default": 1}}
    assert set(meta["output_parameters"]) == {"label"}


def test_declared_input_that_is_not_a_parameter_is_rejected():
    with pytest.raises(TaskDefinitionError, match="'imgae'.*not a parameter"):
        @task(input_parameters={"imgae": {"type": "filepath"}})
        def caption(image: str) -> dict:
            return {}


def test_unresolvable_hint_only_loses_its_own_schema():
    class Local(BaseModel):  # under `from __future__ import annotations` this name cannot be resolved
        x: int

    @task
    def uses_local(item: Local, count: int = 1) -> Local:
        return item

    assert uses_local._task_meta["input_parameters"] == {"item": {},
                                                         "count": {"type": "integer", "default": 1}}
    assert uses_local._task_meta["output_parameters"] == {}


def test_unannotated_parameters_and_plain_dict_return():
    @task
    def loose(a, b=5) -> dict:
        return {}

    assert loose._task_meta["input_parameters"] == {"a": {}, "b": {"default": 5}}
    assert loose._task_meta["output_parameters"] == {}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"resources": {"gpu": -1}}, "gpu: must not be negative"),
    ({"mem": "4 bananas"}, "cannot read '4 bananas'"),
    ({"task_type": "tpu"}, "type: must be one of cpu, gpu, io"),
    ({"resources": {"gpus_total": 2}}, "unknown resource 'gpus_total'"),
])
def test_bad_resources_raise_at_decoration_naming_the_function(kwargs, message):
    with pytest.raises(ResourceError, match=message) as info:
        @task(**kwargs)
        def heavy_lifting() -> dict:
            return {}
    assert "heavy_lifting" in str(info.value)


def test_memory_units_are_converted_to_mb():
    @task(mem="4G", gpu_mem="1.5GiB", task_type="gpu", backend="vllm")
    def llm(prompt: str) -> dict:
        return {}

    res = llm._task_meta["resources"]
    assert (res["mem"], res["gpu_mem"], res["backend"]) == (4096, 1536, "vllm")


def test_io_task_asks_for_a_tenth_of_a_core():
    @task(task_type="io")
    def fetch(url: str) -> dict:
        return {}

    assert fetch._task_meta["resources"]["cpu_num"] == 0.1


@pytest.mark.parametrize("kwargs", [{"retries": -1}, {"retries": 1.5}, {"retries": True},
                                    {"timeout": 0}, {"timeout": -3}, {"timeout": "10"}])
def test_bad_retries_or_timeout_raise_task_definition_error(kwargs):
    with pytest.raises(TaskDefinitionError, match="(retries|timeout)"):
        @task(**kwargs)
        def job() -> dict:
            return {}


def test_positional_name_gets_a_helpful_error():
    with pytest.raises(TaskDefinitionError, match="keyword arguments only"):
        task("image_caption")


def test_get_meta_of_undecorated_function_explains():
    def plain(x: int) -> int:
        return x

    assert not is_task(plain)
    with pytest.raises(TaskDefinitionError, match="function '.*plain' is not decorated with @task"):
        get_meta(plain)


def test_task_meta_round_trips_through_its_dict():
    meta = get_meta(image_caption)
    assert isinstance(meta, TaskMeta)
    assert meta.to_dict() == image_caption._task_meta
    assert meta.normalized_resources() == {"type": "gpu", "cpu": 1.0, "mem": 0, "gpu": 1.0,
                                           "gpu_mem": 4096, "model_name": "llava-v1.6",
                                           "backend": None}


# ---------------------------------------------------------------------------- ToolRegistry


def test_register_and_get(caplog):
    registry = ToolRegistry()
    with caplog.at_level(logging.INFO, logger="maze.registry"):
        meta = registry.register_task(image_caption)
    assert meta.name == "image_caption"
    assert "Successfully registered task: image_caption" in caplog.text
    assert "image_caption" in registry and len(registry) == 1
    func = registry.get_task("image_caption")
    assert func(image="/data/img.jpg")["caption"].endswith("img.jpg")
    entry = registry.get("image_caption")
    assert (entry.source, entry.version) == ("manual", "0.0.0")
    assert len(entry.digest) == 64
    assert registry.names() == ["image_caption"]
    listed = registry.list_tasks()
    assert listed == [{
        "name": "image_caption", "version": "0.0.0", "source": "manual",
        "description": "为输入图像生成描述性文本", "type": "gpu",
        "resources": image_caption._task_meta["resources"],
        "input_parameters": {"image": {"type": "filepath"}},
        "output_parameters": {"caption": {"type": "string"}},
    }]


def test_unknown_name_suggests_close_ones():
    registry = ToolRegistry()
    registry.register_task(image_caption)
    with pytest.raises(NotFoundError, match="unknown task 'image_captoin'; did you mean 'image_caption'"):
        registry.get_task("image_captoin")
    with pytest.raises(NotFoundError, match="unknown task 'zzz'"):
        registry.get("zzz")


def test_duplicate_name_overwrites_with_warning(caplog):
    registry = ToolRegistry()
    registry.register_task(word_count)

    @task(name="word_count", version="2.0")
    def word_count_v2(text: str) -> dict:
        return {"words": -1}

    with caplog.at_level(logging.WARNING, logger="maze.registry"):
        registry.register_task(word_count_v2, source="upload")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == ["task 'word_count' re-registered; overwriting"]
    assert registry.get_task("word_count") is word_count_v2
    assert registry.get("word_count").version == "2.0"


def test_version_override_changes_the_digest():
    registry = ToolRegistry()
    registry.register_task(word_count)
    first = registry.get("word_count").digest
    registry.register_task(word_count, source="package:text", version="3.1")
    entry = registry.get("word_count")
    assert entry.version == "3.1" and entry.meta.version == "3.1"
    assert entry.digest != first


def test_undecorated_function_is_refused_with_an_error_log(caplog):
    registry = ToolRegistry()

    def plain(x: int) -> int:
        return x

    with caplog.at_level(logging.ERROR, logger="maze.registry"), \
            pytest.raises(TaskDefinitionError, match="not decorated with @task"):
        registry.register_task(plain)
    assert any(r.levelno == logging.ERROR and "plain" in r.getMessage() for r in caplog.records)
    assert len(registry) == 0


def test_subscribers_see_registrations_and_removals():
    registry = ToolRegistry()
    seen: list[tuple[str, ToolEntry]] = []
    unsubscribe = registry.subscribe(lambda change, entry: seen.append((change, entry)))
    registry.register_task(word_count)
    removed = registry.unregister("word_count", reason="deleted by admin")
    assert [(c, e.name) for c, e in seen] == [("registered", "word_count"), ("removed", "word_count")]
    assert seen[0][1].func is word_count
    assert seen[1][1].reason == "deleted by admin"
    assert removed.name == "word_count" and "word_count" not in registry
    with pytest.raises(NotFoundError):
        registry.unregister("word_count")
    unsubscribe()
    registry.register_task(word_count)
    assert len(seen) == 2


def test_a_failing_subscriber_does_not_undo_the_registration(caplog):
    registry = ToolRegistry()

    def broken(change: str, entry: ToolEntry) -> None:
        raise RuntimeError("listener down")

    registry.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="maze.registry"):
        registry.register_task(word_count)
    assert "word_count" in registry
    assert "listener down" in caplog.text


# ---------------------------------------------------------------------------- discovery


@pytest.fixture
def clean_imports(monkeypatch):
    """Undo what discovery does to sys.path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("tools_dir",) or name.startswith("maze_tasks_"):
            del sys.modules[name]


def test_discover_tasks_over_the_fixture_directory(caplog, clean_imports):
    registry = ToolRegistry()
    with caplog.at_level(logging.INFO, logger="maze.registry"):
        names = registry.discover_tasks(TOOLS_DIR, FIXTURES)
    assert sorted(names) == ["add_numbers", "add_twice", "deep_task", "shout_text", "still_fine"]
    assert registry.names() == sorted(names)
    # the re-exported add_numbers was registered once, from its own module
    assert names.count("add_numbers") == 1
    assert registry.get_task("add_numbers").__module__ == "tools_dir.good_tasks"
    # __init__.py, _private_helpers.py, undecorated functions and the nameless task are not there
    assert not {"init_task", "private_task", "helper", "nameless"} & set(registry.names())
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("broken_import.py" in m and "boom: this fixture module fails on import" in m
               for m in errors)
    assert any("nameless" in m and "without a 'name'" in m for m in errors)
    for name in names:
        assert f"Successfully registered task: {name}" in caplog.text
    assert registry.get("deep_task").source == f"dir:{TOOLS_DIR.resolve()}"
    assert registry.get("deep_task").meta.resources["mem"] == 512
    assert registry.get_task("add_twice")(1) == {"sum": 4}


def test_discover_without_package_root_uses_unique_module_names(tmp_path, clean_imports):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "tasks.py").write_text(
            "from maze_core.registry import task\n\n"
            f"@task(name='job_{sub}')\n"
            f"def job() -> dict:\n    return {{'from': '{sub}'}}\n")
    registry = ToolRegistry()
    assert sorted(registry.discover_tasks(tmp_path)) == ["job_a", "job_b"]
    assert registry.get_task("job_a")() == {"from": "a"}
    assert registry.get_task("job_b")() == {"from": "b"}
    assert registry.get_task("job_a").__module__ != registry.get_task("job_b").__module__


def test_discover_missing_directory_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        ToolRegistry().discover_tasks(tmp_path / "nope")


# ---------------------------------------------------------------------------- plugins


@task(name="plugin_upper")
def plugin_upper(text: str) -> dict:
    return {"text": text.upper()}


class GoodToolPlugin:
    @hookimpl
    def register_tools(self, register):
        register(plugin_upper)
        register(lambda: None)  # undecorated: logged and skipped, the plugin goes on
        register(word_count)


class BrokenToolPlugin:
    @hookimpl
    def register_tools(self, register):
        raise RuntimeError("plugin exploded")


def test_load_plugin_tools_records_each_plugin_as_source(caplog):
    pm = pluggy.PluginManager("maze")
    pm.add_hookspecs(hookspecs)
    pm.register(GoodToolPlugin(), name="good-tools")
    pm.register(BrokenToolPlugin(), name="broken-tools")
    registry = ToolRegistry()
    with caplog.at_level(logging.ERROR, logger="maze.registry"):
        names = registry.load_plugin_tools(pm)
    assert sorted(names) == ["plugin_upper", "word_count"]
    assert registry.get("plugin_upper").source == "package:good-tools"
    assert registry.get("word_count").source == "package:good-tools"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("broken-tools" in m for m in messages)
    assert any("not decorated" in m for m in messages)
    assert "plugin exploded" in caplog.text


def test_maze_core_lazy_exports_resolve():
    import maze_core
    from maze_core import registry

    for name in ("task", "TaskMeta", "ToolRegistry", "task_registry", "register_task", "get_task",
                 "discover_tasks", "TYPE_FILEPATH", "TYPE_FOLDERPATH"):
        assert getattr(maze_core, name) is getattr(registry, name)
    assert registry.register_task.__self__ is registry.task_registry
