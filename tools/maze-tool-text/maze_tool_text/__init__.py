"""Maze tools for text: chunk with overlap, clean, statistics, templates and keywords.

Every tool is a plain ``@task`` function (call it directly, or put it in a DAG) and returns a JSON
dict. Installing the package (``pip install ./tools/maze-tool-text``) makes Maze find them through
the entry point ``text`` of group ``maze``, which calls :func:`register_tools`.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import Counter
from typing import Any, Literal

from maze_core import hookimpl, task

__version__ = "0.1.0"

__all__ = ["STOPWORDS", "register_tools", "text_chunk", "text_clean", "text_keywords", "text_stats",
           "text_template"]

_STRINGS = {"type": "array", "items": {"type": "string"}}

STOPWORDS = frozenset("""
a about above after again against all almost also although am among an and another any anyone
anything are around as at be became because become been before being below between both but by
can cannot could did do does doing done down during each either else enough even ever every few
for from further get gets got had has have having he her here hers herself him himself his how
however i if in into is it its itself just least less like made make many may me might more most
much must my myself neither no nor not now of off often on once one only onto or other others
our ours ourselves out over own per perhaps quite rather really same shall she should since so
some such than that the their theirs them themselves then there therefore these they this those
though through thus to too toward towards under until up upon us used using very via was we well
were what whatever when where whether which while who whom whose why will with within without
would yet you your yours yourself yourselves
""".split())

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?…。！？][\"')\]»”’]*$")
_SENTENCES = re.compile(r"[^.!?…。！？]+(?:[.!?…。！？]+[\"')\]»”’]*|$)")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_TERM = re.compile(r"[^\W\d_][\w'’-]*")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_SCRIPT = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_BLOCK_TAG = re.compile(r"<\s*(?:br|/p|/div|/li|/h[1-6]|/tr)\b[^>]*>", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*\}\}")


# ---------------------------------------------------------------------------------------- chunk
def _check_window(size: int, overlap: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a whole number >= 1, got {size!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < size:
        raise ValueError(f"overlap must be a whole number with 0 <= overlap < size ({size}), got {overlap!r}")


def _word_windows(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Character spans of windows of ``size`` words overlapping by ``overlap`` words. A window
    ends after a sentence end found in its last third, when there is one."""
    words = [m.span() for m in _WORD.finditer(text)]
    spans: list[tuple[int, int]] = []
    start = 0
    while start < len(words):
        end = min(start + size, len(words))
        if end < len(words):
            floor = start + max(1, (2 * size) // 3)
            for cut in range(end, floor - 1, -1):
                if _SENTENCE_END.search(text[words[cut - 1][0]:words[cut - 1][1]]):
                    end = cut
                    break
        spans.append((words[start][0], words[end - 1][1]))
        if end >= len(words):
            break
        start = max(end - overlap, start + 1)
    return spans


def _char_windows(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """Spans of at most ``size`` characters overlapping by about ``overlap``, cut at whitespace
    where possible (a word longer than the window is cut)."""
    spans: list[tuple[int, int]] = []
    n = len(text)
    start = 0
    while start < n and text[start].isspace():
        start += 1
    while start < n:
        end = min(start + size, n)
        if end < n and not text[end].isspace():
            space = text.rfind(" ", start + size // 2, end)
            space = max(space, text.rfind("\n", start + size // 2, end))
            if space > start:
                end = space
        stop = end
        while stop > start and text[stop - 1].isspace():
            stop -= 1
        spans.append((start, stop))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        if 0 < nxt < end and not text[nxt - 1].isspace():  # do not start inside a word
            boundary = min((i for i in (text.find(" ", nxt, end), text.find("\n", nxt, end)) if i >= 0),
                           default=-1)
            if boundary >= 0:
                nxt = boundary + 1
        while nxt < n and text[nxt].isspace():
            nxt += 1
        start = nxt
    return spans


@task(name="text_chunk", version=__version__,
      description="Split a text into chunks of about `size` words (or characters) overlapping by "
                  "`overlap`, ending at a sentence end where one is near",
      output_parameters={"chunks": _STRINGS, "count": {"type": "integer"},
                         "spans": {"type": "array", "items": {"type": "array"}}})
def text_chunk(text: str, size: int = 200, overlap: int = 40,
               unit: Literal["words", "chars"] = "words") -> dict:
    """Chunks for embedding or for a model's context window; ``spans`` are ``[start, end)`` offsets
    of each chunk in ``text``."""
    _check_window(size, overlap)
    if unit == "words":
        spans = _word_windows(text, size, overlap)
    elif unit == "chars":
        spans = _char_windows(text, size, overlap)
    else:
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
    return {"chunks": [text[a:b] for a, b in spans], "count": len(spans),
            "spans": [[a, b] for a, b in spans]}


# ---------------------------------------------------------------------------------------- clean
@task(name="text_clean", version=__version__,
      description="Clean a text: Unicode NFKC, HTML tags and entities, control characters, URLs "
                  "(optional), runs of whitespace; paragraphs are kept",
      output_parameters={"text": {"type": "string"}, "chars_before": {"type": "integer"},
                         "chars_after": {"type": "integer"}})
def text_clean(text: str, strip_html: bool = True, remove_urls: bool = False, lowercase: bool = False,
               normalize_unicode: bool = True, keep_newlines: bool = True) -> dict:
    before = len(text)
    out = unicodedata.normalize("NFKC", text) if normalize_unicode else text
    out = out.replace("\r\n", "\n").replace("\r", "\n")
    if strip_html:
        out = _SCRIPT.sub(" ", out)
        out = _BLOCK_TAG.sub("\n", out)
        out = html.unescape(_TAG.sub(" ", out))
    if remove_urls:
        out = _URL.sub(" ", out)
    out = _CONTROL.sub("", out).replace("\u00a0", " ")
    if keep_newlines:
        lines = [" ".join(line.split()) for line in out.split("\n")]
        out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    else:
        out = " ".join(out.split())
    if lowercase:
        out = out.lower()
    return {"text": out, "chars_before": before, "chars_after": len(out)}


# ---------------------------------------------------------------------------------------- stats
def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCES.findall(text) if s.strip() and re.search(r"\w", s)]


@task(name="text_stats", version=__version__,
      description="Word and token statistics of a text: characters, words, unique words, sentences, "
                  "lines, paragraphs, averages, tokens and the most frequent words",
      output_parameters={"chars": {"type": "integer"}, "chars_no_spaces": {"type": "integer"},
                         "words": {"type": "integer"},
                         "unique_words": {"type": "integer"}, "sentences": {"type": "integer"},
                         "lines": {"type": "integer"}, "paragraphs": {"type": "integer"},
                         "avg_word_length": {"type": "number"},
                         "avg_sentence_words": {"type": "number"}, "tokens": {"type": "integer"},
                         "tokens_estimate": {"type": "integer"}, "top_words": {"type": "array"}})
def text_stats(text: str, top_n: int = 10) -> dict:
    """``tokens`` counts words and punctuation marks separately (a basic tokenizer);
    ``tokens_estimate`` approximates what a subword (BPE) tokenizer of a language model would count."""
    words = _WORD.findall(text)
    terms = [t.lower() for t in _TERM.findall(text)]
    sentences = _sentences(text)
    chars = len(text)
    letters = sum(len(t) for t in terms)
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    content = Counter(t for t in terms if t not in STOPWORDS and len(t) > 1)
    return {
        "chars": chars,
        "chars_no_spaces": sum(1 for c in text if not c.isspace()),
        "words": len(words),
        "unique_words": len(set(terms)),
        "sentences": len(sentences),
        "lines": len(text.splitlines()) if text else 0,
        "paragraphs": len(paragraphs),
        "avg_word_length": round(letters / len(terms), 2) if terms else 0.0,
        "avg_sentence_words": round(len(words) / len(sentences), 2) if sentences else 0.0,
        "tokens": len(_TOKEN.findall(text)),
        "tokens_estimate": max(round(len(words) * 4 / 3), round(chars / 4)) if text.strip() else 0,
        "top_words": [{"word": w, "count": c} for w, c in content.most_common(max(0, top_n))],
    }


# ---------------------------------------------------------------------------------------- template
def _lookup(values: Any, path: str) -> tuple[bool, Any]:
    current = values
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list | tuple) and part.lstrip("-").isdigit() and \
                -len(current) <= int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple | bool) or value is None:
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@task(name="text_template", version=__version__,
      description="Fill a template's {{ name }} placeholders (dotted paths reach into dicts and "
                  "lists) from `values`; strict mode refuses missing values",
      output_parameters={"text": {"type": "string"}, "placeholders": _STRINGS, "missing": _STRINGS})
def text_template(template: str, values: dict, strict: bool = True) -> dict:
    """A prompt builder: ``{{ question }}``, ``{{ doc.title }}``, ``{{ hits.0.text }}``. Dicts and
    lists are written as JSON. Nothing but lookups is evaluated. With ``strict=False`` a missing
    value leaves its placeholder as it was."""
    if not isinstance(values, dict):
        raise ValueError(f"values must be a dict, got {type(values).__name__}")
    names: list[str] = []
    missing: list[str] = []

    def fill(match: re.Match[str]) -> str:
        path = match.group(1)
        if path not in names:
            names.append(path)
        found, value = _lookup(values, path)
        if not found:
            if path not in missing:
                missing.append(path)
            return match.group(0)
        return _render(value)

    text = _PLACEHOLDER.sub(fill, template)
    if strict and missing:
        given = ", ".join(sorted(values)) or "none"
        raise ValueError(f"template placeholder(s) without a value: {', '.join(missing)} "
                         f"(values given: {given})")
    return {"text": text, "placeholders": names, "missing": missing}


# ---------------------------------------------------------------------------------------- keywords
def _phrases(text: str, stop: frozenset[str], min_length: int, max_words: int = 4) -> list[list[str]]:
    """Candidate phrases (RAKE): runs of content words between stopwords and punctuation."""
    out: list[list[str]] = []
    for fragment in re.split(r"[^\w\s'’-]|\n", text.lower()):
        current: list[str] = []
        for word in fragment.split():
            word = word.strip("'’-")
            if not word or word in stop or not _TERM.fullmatch(word) or len(word) < min_length:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(word)
        if current:
            out.append(current)
    return [p for p in out if len(p) <= max_words]


@task(name="text_keywords", version=__version__,
      description="Extract keywords (frequent content words) and key phrases (RAKE scores) from a text",
      output_parameters={"keywords": {"type": "array"}, "phrases": {"type": "array"}})
def text_keywords(text: str, top_k: int = 10, min_length: int = 3,
                  stopwords: list[str] | None = None) -> dict:
    """``keywords``: ``{"keyword", "count", "score"}`` with score = share of content words;
    ``phrases``: ``{"phrase", "score"}`` ranked by RAKE (sum of degree/frequency of their words).
    ``stopwords`` is added to the built-in English list."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be a whole number >= 0, got {top_k!r}")
    stop = STOPWORDS | {w.lower() for w in stopwords or ()}
    terms = [t.lower().strip("'’-") for t in _TERM.findall(text)]
    content = [t for t in terms if t not in stop and len(t) >= min_length]
    counts = Counter(content)
    total = len(content) or 1
    keywords = [{"keyword": w, "count": c, "score": round(c / total, 4)}
                for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]]
    phrases = _phrases(text, stop, min_length)
    freq: Counter[str] = Counter()
    degree: Counter[str] = Counter()
    for phrase in phrases:
        for word in phrase:
            freq[word] += 1
            degree[word] += len(phrase)
    scored: dict[str, float] = {}
    for phrase in phrases:
        scored[" ".join(phrase)] = sum(degree[w] / freq[w] for w in phrase)
    ranked = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return {"keywords": keywords, "phrases": [{"phrase": p, "score": round(s, 3)} for p, s in ranked]}


TOOLS = (text_chunk, text_clean, text_stats, text_template, text_keywords)


@hookimpl
def register_tools(register):
    """Hand Maze every tool of this package."""
    for tool in TOOLS:
        register(tool)
