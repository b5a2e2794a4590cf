"""The RAG example as a workflow file: ``maze run examples/rag/workflow.py``.

The same pipeline as ``maze demo --example rag`` (its code is ``rag_pipeline.py`` next to this
file, its documents ``docs/``), here as a file to copy and change. Environment variables:

- ``RAG_DOCS``: a folder of your own documents (.txt, .md, .pdf, .html) instead of the bundled ones;
- ``RAG_QUESTIONS``: your questions, one per line;
- ``RAG_ON_GPU=1``: keep the model steps' GPU declaration (for the ray executor on a GPU machine);
  by default they run on the CPU.
"""

import os

from rag_pipeline import DOCS, build_rag_dag  # next to this file: `maze run` ships both by value

questions = [q.strip() for q in os.environ.get("RAG_QUESTIONS", "").splitlines() if q.strip()] or None
dag = build_rag_dag(os.environ.get("RAG_DOCS") or DOCS, questions,
                    on_gpu=os.environ.get("RAG_ON_GPU") == "1")
