"""The SDK's typed results (maze_client.models) and the server's response shapes
(maze_core.api_models) name the same fields: a field added to one and not the other fails here."""

from __future__ import annotations

import dataclasses

import pytest

from maze_client import models
from maze_core import api_models

SHAPED = {models.TaskResult: api_models.TaskResult, models.TaskSummary: api_models.Task,
          models.Run: api_models.Run, models.RunSummary: api_models.RunSummary,
          models.Tool: api_models.Tool, models.Health: api_models.Health}
# Models the server declares no shape for yet; give them one (and move them to SHAPED) when it does.
UNSHAPED = {models.Event, models.GPUInfo, models.NodeInfo, models.ClusterInfo}


def test_every_model_is_listed():
    exported = {getattr(models, name) for name in models.__all__ if isinstance(getattr(models, name), type)}
    assert exported == set(SHAPED) | UNSHAPED
    for cls in UNSHAPED:
        assert cls._shape is None


@pytest.mark.parametrize("cls", list(SHAPED), ids=lambda c: c.__name__)
def test_the_sdk_reads_every_field_of_the_server_shape(cls):
    shape = SHAPED[cls]
    assert cls._shape is shape
    fields = {f.name for f in dataclasses.fields(cls)} - {"raw"}
    # every dataclass field says where it is read from, and nothing else does
    assert set(cls._reads) == fields
    shape_fields = set(shape.model_fields)
    read = {key for keys in cls._reads.values() for key in keys}
    # every field of the shape is read into an attribute or knowingly left in ``raw`` ...
    assert shape_fields == (read & shape_fields) | cls._raw_only, (
        f"{shape.__name__} fields the SDK neither reads nor leaves in raw: "
        f"{sorted(shape_fields - read - cls._raw_only)}; raw-only names not in the shape: "
        f"{sorted(cls._raw_only - shape_fields)}")
    # ... never both
    assert not (read & cls._raw_only)
    # a field that is in the shape is read under the shape's name first
    for name, keys in cls._reads.items():
        if name in shape_fields:
            assert keys[0] == name or keys[0] in shape_fields, (name, keys)


@pytest.mark.parametrize("cls", list(SHAPED), ids=lambda c: c.__name__)
def test_a_valid_server_answer_builds_the_model(cls):
    shape = SHAPED[cls]
    sample = {"run_id": "r1", "task_id": "t1", "status": "succeeded", "task_status": "finished",
              "maze_status": "succeeded", "msg": "", "name": "n", "tasks": [], "version": "1"}
    body = {k: v for k, v in sample.items() if k in shape.model_fields}
    shape.model_validate(body)          # the sample is a valid answer of that shape
    model = cls.from_dict(body)
    assert model.raw == body
    for name, keys in cls._reads.items():
        if keys[0] in body and name not in ("tasks",):
            assert getattr(model, name) == body[keys[0]], name
