"""Maze tools that read files: text, CSV, JSON (and JSON Lines), PDF, any of them as text, and
folder listings.

Path inputs are declared with the task registry's ``TYPE_FILEPATH`` / ``TYPE_FOLDERPATH`` so that Maze can
recognise them (I/O placement, sandbox checks). A relative path resolves against the task's working
directory. Every tool returns a JSON dict; errors (missing file, bad JSON, wrong PDF password) are
raised with the path in the message.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from maze_core import TYPE_FILEPATH, TYPE_FOLDERPATH, hookimpl, task

__version__ = "0.1.0"

__all__ = ["TEXT_SUFFIXES", "file_list", "file_read_csv", "file_read_document", "file_read_json",
           "file_read_pdf", "file_read_text", "register_tools"]

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".log", ".text", ".html", ".htm",
                           ".xml", ".yaml", ".yml", ".toml", ".ini", ".py"})
_FILE = {"type": TYPE_FILEPATH, "description": "path of the file to read"}
_FOLDER = {"type": TYPE_FOLDERPATH, "description": "folder to list"}
_COMMON_OUT = {"path": {"type": "string"}, "name": {"type": "string"}}


def _file(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not p.is_file():
        raise IsADirectoryError(f"not a file: {path}")
    return p.resolve()


def _where(p: Path) -> dict[str, str]:
    return {"path": str(p), "name": p.name}


# ---------------------------------------------------------------------------------------- text
@task(name="file_read_text", version=__version__, task_type="io",
      description="Read a text file (encoding and error policy chosen by the caller)",
      input_parameters={"path": _FILE},
      output_parameters={"text": {"type": "string"}, "chars": {"type": "integer"},
                         "bytes": {"type": "integer"}, "truncated": {"type": "boolean"}, **_COMMON_OUT})
def file_read_text(path: str, encoding: str = "utf-8", errors: str = "strict",
                   max_chars: int | None = None) -> dict:
    """``errors``: ``strict`` (fail on undecodable bytes), ``replace`` or ``ignore``.
    ``max_chars`` cuts the text (``truncated`` says so)."""
    p = _file(path)
    raw = p.read_bytes()
    try:
        text = raw.decode(encoding, errors=errors)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid {encoding} at byte {exc.start}; pass encoding=... or "
                         f"errors='replace'") from None
    text = text.removeprefix("\ufeff")
    truncated = max_chars is not None and len(text) > max_chars
    if truncated:
        text = text[:max_chars]
    return {"text": text, "chars": len(text), "bytes": len(raw), "truncated": truncated, **_where(p)}


# ---------------------------------------------------------------------------------------- csv
@task(name="file_read_csv", version=__version__, task_type="io",
      description="Read a CSV file into rows (dicts keyed by the header, or lists); the delimiter "
                  "is detected unless given",
      input_parameters={"path": _FILE},
      output_parameters={"columns": {"type": "array"}, "rows": {"type": "array"},
                         "row_count": {"type": "integer"}, "delimiter": {"type": "string"},
                         "truncated": {"type": "boolean"}, **_COMMON_OUT})
def file_read_csv(path: str, delimiter: str | None = None, header: bool = True,
                  max_rows: int | None = None, encoding: str = "utf-8-sig") -> dict:
    """Values stay strings (CSV has no types). With ``header=False`` rows are lists and
    ``columns`` is empty. Rows shorter than the header get ``None`` for the missing cells."""
    p = _file(path)
    text = p.read_text(encoding=encoding)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns: list[str] = []
    if header:
        columns = next(reader, [])
    rows: list[Any] = []
    truncated = False
    for record in reader:
        if not record:
            continue
        if max_rows is not None and len(rows) >= max_rows:
            truncated = True
            break
        if header:
            row = {col: (record[i] if i < len(record) else None) for i, col in enumerate(columns)}
            if len(record) > len(columns):
                row["_extra"] = record[len(columns):]
            rows.append(row)
        else:
            rows.append(record)
    return {"columns": columns, "rows": rows, "row_count": len(rows), "delimiter": delimiter,
            "truncated": truncated, **_where(p)}


# ---------------------------------------------------------------------------------------- json
@task(name="file_read_json", version=__version__, task_type="io",
      description="Read a JSON file, or a JSON Lines file with lines=True (one value per line)",
      input_parameters={"path": _FILE},
      output_parameters={"data": {}, "kind": {"type": "string"}, **_COMMON_OUT})
def file_read_json(path: str, lines: bool = False, encoding: str = "utf-8") -> dict:
    """``kind`` names the top-level type (``object``, ``array``, ...). Invalid JSON fails with the
    line and column."""
    p = _file(path)
    text = p.read_text(encoding=encoding).removeprefix("\ufeff")
    try:
        if lines:
            data: Any = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        data.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}: line {number}: invalid JSON: {exc.msg} "
                                         f"(column {exc.colno})") from None
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    kind = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(data), "number")
    return {"data": data, "kind": kind, **_where(p)}


# ---------------------------------------------------------------------------------------- pdf
@task(name="file_read_pdf", version=__version__, task_type="io",
      description="Extract the text of a PDF file, page by page, with its metadata (pypdf)",
      input_parameters={"path": _FILE},
      output_parameters={"text": {"type": "string"}, "pages": {"type": "array"},
                         "page_count": {"type": "integer"}, "metadata": {"type": "object"}, **_COMMON_OUT})
def file_read_pdf(path: str, pages: list[int] | None = None, password: str | None = None) -> dict:
    """``pages``: 1-based page numbers to read (default: all). ``text`` joins the pages with a blank
    line. Scanned PDFs (images only) have no text to extract."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    p = _file(path)
    try:
        reader = PdfReader(p)
        if reader.is_encrypted:
            if password is None:
                raise ValueError(f"{path}: the PDF is encrypted; pass password=...")
            if not reader.decrypt(password):
                raise ValueError(f"{path}: wrong password for the encrypted PDF")
        count = len(reader.pages)
        wanted = list(range(1, count + 1)) if pages is None else list(pages)
        for number in wanted:
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= count:
                raise ValueError(f"{path}: page {number!r} does not exist (pages 1 to {count})")
        texts = [{"page": n, "text": (reader.pages[n - 1].extract_text() or "").strip()} for n in wanted]
        info = reader.metadata or {}
    except PdfReadError as exc:
        raise ValueError(f"{path}: not a readable PDF: {exc}") from None
    metadata = {key: str(info.get(f"/{key.title()}")) for key in ("title", "author", "subject",
                                                                     "creator", "producer")
                if info.get(f"/{key.title()}") is not None}
    return {"text": "\n\n".join(t["text"] for t in texts if t["text"]), "pages": texts,
            "page_count": count, "metadata": metadata, **_where(p)}


# ---------------------------------------------------------------------------------------- any
def _csv_as_text(out: dict) -> str:
    if out["columns"]:
        return "\n".join("; ".join(f"{k}: {v}" for k, v in row.items() if v not in (None, ""))
                         for row in out["rows"])
    return "\n".join(", ".join(row) for row in out["rows"])


@task(name="file_read_document", version=__version__, task_type="io",
      description="Read any supported document as plain text: text and markup files, PDF, CSV, JSON",
      input_parameters={"path": _FILE},
      output_parameters={"text": {"type": "string"}, "format": {"type": "string"},
                         "chars": {"type": "integer"}, **_COMMON_OUT})
def file_read_document(path: str, encoding: str = "utf-8") -> dict:
    """The format comes from the suffix (``.pdf``, ``.csv``, ``.json``/``.jsonl``, text suffixes
    such as ``.txt`` and ``.md``); other files are read as UTF-8 text when they decode."""
    p = _file(path)
    suffix = p.suffix.lower()
    if suffix == ".pdf":
        fmt, text = "pdf", file_read_pdf(str(p))["text"]
    elif suffix in (".csv", ".tsv"):
        fmt, text = "csv", _csv_as_text(file_read_csv(str(p), delimiter="\t" if suffix == ".tsv" else None))
    elif suffix in (".json", ".jsonl", ".ndjson"):
        data = file_read_json(str(p), lines=suffix != ".json", encoding=encoding)["data"]
        fmt, text = "json", json.dumps(data, ensure_ascii=False, indent=2)
    else:
        fmt, text = "text", file_read_text(str(p), encoding=encoding)["text"]
    return {"text": text, "format": fmt, "chars": len(text), **_where(p)}


# ---------------------------------------------------------------------------------------- folders
@task(name="file_list", version=__version__, task_type="io",
      description="List the files of a folder matching a glob pattern, sorted (optionally recursive)",
      input_parameters={"folder": _FOLDER},
      output_parameters={"files": {"type": "array", "items": {"type": "string"}},
                         "count": {"type": "integer"}, "folder": {"type": "string"}})
def file_list(folder: str, pattern: str = "*", recursive: bool = False,
              include_hidden: bool = False) -> dict:
    """Absolute paths of the files (not folders) under ``folder`` matching ``pattern``; hidden
    files and folders (``.name``) are left out unless ``include_hidden``."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise NotADirectoryError(f"no such folder: {folder}")
    root = root.resolve()
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    files = sorted(str(f) for f in found if f.is_file() and (
        include_hidden or not any(part.startswith(".") for part in f.relative_to(root).parts)))
    return {"files": files, "count": len(files), "folder": str(root)}


TOOLS = (file_read_text, file_read_csv, file_read_json, file_read_pdf, file_read_document, file_list)


@hookimpl
def register_tools(register):
    """Hand Maze every tool of this package."""
    for tool in TOOLS:
        register(tool)
