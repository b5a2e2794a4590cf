"""The bundled demo workflow (``maze demo``): fan-out, fan-in, a retried failure, a summary.

It analyses a small corpus of texts: one task loads the corpus, one task per document computes
statistics (fan-out), a flaky enrichment step fails on its first attempt and succeeds when retried,
a merge step gathers every analysis (fan-in), and a final task writes the summary.
"""

from __future__ import annotations

import re
from collections import Counter

from maze_core.dag import DAG
from maze_core.registry import task
from maze_core.task_context import current_task

CORPUS = [
    "Maze runs workflows of Python functions as a DAG of tasks.",
    "Every run, task and tool change is recorded as an event in SQLite.",
    "Runs can be audited, replayed and resumed after a crash.",
    "A scheduler places each task on Ray, aware of CPUs, GPUs and GPU memory.",
    "Tools arrive as plugins: pip install a package and its tasks appear.",
    "Agents chain language models, retrieval and code into workflows.",
]

@task(name="demo_load_corpus", description="Load the demo corpus")
def load_corpus(limit: int = 6) -> dict:
    return {"documents": CORPUS[:limit], "count": min(limit, len(CORPUS))}


@task(name="demo_analyze", description="Word statistics of one document")
def analyze(text: str, index: int) -> dict:
    words = re.findall(r"[a-zA-Z]+", text.lower())
    return {"index": index, "words": len(words), "chars": len(text),
            "top": [word for word, _ in Counter(w for w in words if len(w) > 3).most_common(3)]}


@task(name="demo_enrich", description="A flaky enrichment step: fails once, then succeeds",
      retries=2)
def enrich(text: str) -> dict:
    attempt = current_task().attempt     # the engine's count: the same in every worker process
    if attempt == 1:
        raise ConnectionError("enrichment service unavailable (first attempt always fails)")
    return {"keywords": sorted({w for w in re.findall(r"[A-Za-z]+", text) if w[0].isupper()}),
            "attempts": attempt}


@task(name="demo_merge", description="Gather every analysis (fan-in)")
def merge(analyses: list, enrichment: dict) -> dict:
    total = sum(a["words"] for a in analyses)
    longest = max(analyses, key=lambda a: a["words"])
    return {"documents": len(analyses), "total_words": total, "longest_document": longest["index"],
            "keywords": enrichment["keywords"]}


@task(name="demo_summary", description="Write the final summary")
def summarize(stats: dict) -> dict:
    text = (f"{stats['documents']} documents, {stats['total_words']} words; the longest is "
            f"document {stats['longest_document']}; keywords: {', '.join(stats['keywords'])}.")
    return {"summary": text}


def build_demo_dag() -> DAG:
    """The demo DAG."""
    dag = DAG("maze-demo")
    corpus = dag.add_task(load_corpus, inputs={"limit": len(CORPUS)})
    analyses = [dag.add_task(analyze, task_name=f"analyze[{i}]",
                             inputs={"text": corpus.output.documents[i], "index": i})
                for i in range(len(CORPUS))]
    enriched = dag.add_task(enrich, inputs={"text": corpus.output.documents[0]})
    merged = dag.add_task(merge, inputs={"analyses": [a.output for a in analyses],
                                         "enrichment": enriched.output})
    dag.add_task(summarize, inputs={"stats": merged.output})
    return dag
