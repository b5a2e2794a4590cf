"""maze-tool-files: each reader on real files written here (a PDF too), and the hand-over to Maze."""

from __future__ import annotations

import json
import os

import pluggy
import pytest

from maze_core import TYPE_FILEPATH, TYPE_FOLDERPATH, hookspecs
from maze_core.registry import ToolRegistry

try:
    import maze_tool_files as tf
except ImportError:  # not installed: CI installs it (MAZE_REQUIRE_TOOLS=1) and must not skip
    if os.environ.get("MAZE_REQUIRE_TOOLS"):
        raise
    pytest.skip("maze-tool-files is not installed (pip install -e ./tools/maze-tool-files)",
                allow_module_level=True)


def make_pdf(pages: list[list[str]], title: str | None = None, author: str = "Maze tests") -> bytes:
    """A minimal valid PDF: one Helvetica text line per string, one page per list."""

    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    page_ids = [4 + 2 * i for i in range(len(pages))]
    objects = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for pid, lines in zip(page_ids, pages, strict=True):
        content = ("BT /F1 11 Tf 14 TL 72 760 Td " + " ".join(f"({esc(line)}) Tj T*" for line in lines)
                   + " ET").encode("latin-1")
        objects[pid] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font "
                        f"<< /F1 3 0 R >> >> /Contents {pid + 1} 0 R >>").encode()
        objects[pid + 1] = b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream"
    info = None
    if title is not None:
        info = max(objects) + 1
        objects[info] = f"<< /Title ({esc(title)}) /Author ({esc(author)}) >>".encode("latin-1")
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for oid in sorted(objects):
        offsets[oid] = len(out)
        out += b"%d 0 obj\n" % oid + objects[oid] + b"\nendobj\n"
    xref, size = len(out), max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    out += b"".join(b"%010d 00000 n \n" % offsets[i] for i in range(1, size))
    trailer = f"<< /Size {size} /Root 1 0 R{f' /Info {info} 0 R' if info else ''} >>"
    out += b"trailer\n" + trailer.encode() + b"\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def test_read_text_decodes_strips_a_bom_and_truncates(tmp_path):
    f = tmp_path / "note.txt"
    f.write_bytes("\ufeffCafé au lait\nsecond line\n".encode())
    out = tf.file_read_text(str(f))
    assert out["text"] == "Café au lait\nsecond line\n"
    assert out["name"] == "note.txt" and out["path"] == str(f.resolve())
    assert out["bytes"] == len(f.read_bytes()) and not out["truncated"]
    assert tf.file_read_text(str(f), max_chars=4) | {"path": ""} == {
        "text": "Café", "chars": 4, "bytes": out["bytes"], "truncated": True, "path": "", "name": "note.txt"}
    latin = tmp_path / "latin.txt"
    latin.write_bytes("naïve".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid utf-8 at byte 2"):
        tf.file_read_text(str(latin))
    assert tf.file_read_text(str(latin), encoding="latin-1")["text"] == "naïve"
    assert tf.file_read_text(str(latin), errors="replace")["text"] == "na\ufffdve"
    with pytest.raises(FileNotFoundError, match="no such file"):
        tf.file_read_text(str(tmp_path / "missing.txt"))
    with pytest.raises(IsADirectoryError):
        tf.file_read_text(str(tmp_path))


def test_read_csv_sniffs_the_delimiter_and_keys_rows_by_header(tmp_path):
    f = tmp_path / "people.csv"
    f.write_text("name;city;age\nAda;London;36\nLinus;Helsinki\n\nGrace;\"New York; NY\";85;extra\n")
    out = tf.file_read_csv(str(f))
    assert out["delimiter"] == ";" and out["columns"] == ["name", "city", "age"]
    assert out["rows"] == [{"name": "Ada", "city": "London", "age": "36"},
                           {"name": "Linus", "city": "Helsinki", "age": None},
                           {"name": "Grace", "city": "New York; NY", "age": "85", "_extra": ["extra"]}]
    assert out["row_count"] == 3 and not out["truncated"]
    bare = tf.file_read_csv(str(f), header=False, max_rows=2)
    assert bare["columns"] == [] and bare["rows"] == [["name", "city", "age"], ["Ada", "London", "36"]]
    assert bare["truncated"]
    g = tmp_path / "plain.csv"
    g.write_text("a,b\n1,2\n")
    assert tf.file_read_csv(str(g))["rows"] == [{"a": "1", "b": "2"}]


def test_read_json_and_json_lines_with_clear_errors(tmp_path):
    f = tmp_path / "data.json"
    f.write_text(json.dumps({"k": [1, 2, {"x": None}]}))
    assert tf.file_read_json(str(f))["data"] == {"k": [1, 2, {"x": None}]}
    assert tf.file_read_json(str(f))["kind"] == "object"
    jl = tmp_path / "rows.jsonl"
    jl.write_text('{"a": 1}\n\n[2]\n"three"\n')
    out = tf.file_read_json(str(jl), lines=True)
    assert out["data"] == [{"a": 1}, [2], "three"] and out["kind"] == "array"
    jl.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        tf.file_read_json(str(jl), lines=True)
    f.write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match="invalid JSON: .* at line 2 column 7"):
        tf.file_read_json(str(f))


def test_read_pdf_extracts_each_page_and_the_metadata(tmp_path):
    f = tmp_path / "report.pdf"
    f.write_bytes(make_pdf([["Quarterly report", "Revenue grew (a lot) this quarter."],
                            ["Second page", "Costs fell by ten percent."]], title="Q3 report"))
    out = tf.file_read_pdf(str(f))
    assert out["page_count"] == 2
    assert [p["page"] for p in out["pages"]] == [1, 2]
    assert "Revenue grew (a lot) this quarter." in out["pages"][0]["text"]
    assert "Costs fell by ten percent." in out["pages"][1]["text"]
    assert "Quarterly report" in out["text"] and "Second page" in out["text"]
    assert out["metadata"] == {"title": "Q3 report", "author": "Maze tests"}
    second = tf.file_read_pdf(str(f), pages=[2])
    assert [p["page"] for p in second["pages"]] == [2] and "Quarterly" not in second["text"]
    with pytest.raises(ValueError, match="page 3 does not exist"):
        tf.file_read_pdf(str(f), pages=[3])
    bad = tmp_path / "fake.pdf"
    bad.write_text("this is not a PDF")
    with pytest.raises(ValueError, match="not a readable PDF"):
        tf.file_read_pdf(str(bad))


def test_read_document_dispatches_on_the_suffix(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nSome *markdown*.")
    (tmp_path / "b.pdf").write_bytes(make_pdf([["PDF body text"]]))
    (tmp_path / "c.csv").write_text("name,role\nAda,engineer\n")
    (tmp_path / "d.json").write_text('{"answer": 42}')
    got = {name: tf.file_read_document(str(tmp_path / name)) for name in ("a.md", "b.pdf", "c.csv", "d.json")}
    assert got["a.md"]["format"] == "text" and got["a.md"]["text"].startswith("# Title")
    assert got["b.pdf"]["format"] == "pdf" and got["b.pdf"]["text"] == "PDF body text"
    assert got["c.csv"]["text"] == "name: Ada; role: engineer"
    assert json.loads(got["d.json"]["text"]) == {"answer": 42}
    assert all(g["chars"] == len(g["text"]) for g in got.values())


def test_list_matches_a_pattern_skips_hidden_and_can_recurse(tmp_path):
    for rel in ("a.txt", "b.md", "sub/c.txt", ".hidden.txt", ".git/d.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    names = lambda out: [os.path.relpath(f, tmp_path) for f in out["files"]]  # noqa: E731
    assert names(tf.file_list(str(tmp_path))) == ["a.txt", "b.md"]
    assert names(tf.file_list(str(tmp_path), pattern="*.txt", recursive=True)) == ["a.txt", "sub/c.txt"]
    everything = tf.file_list(str(tmp_path), recursive=True, include_hidden=True)
    assert everything["count"] == 5
    with pytest.raises(NotADirectoryError, match="no such folder"):
        tf.file_list(str(tmp_path / "nope"))


def test_path_inputs_use_the_seed_003_types_and_tools_register_through_the_hook():
    pm = pluggy.PluginManager("maze")
    pm.add_hookspecs(hookspecs)
    pm.register(tf, name="files")
    registry = ToolRegistry()
    names = registry.load_plugin_tools(pm)
    assert sorted(names) == ["file_list", "file_read_csv", "file_read_document", "file_read_json",
                             "file_read_pdf", "file_read_text"]
    for name in names:
        entry = registry.get(name)
        assert entry.source == "package:files" and entry.version == tf.__version__
        assert entry.meta.resources["type"] == "io" and entry.meta.description
        key = "folder" if name == "file_list" else "path"
        assert entry.meta.input_parameters[key]["type"] == (TYPE_FOLDERPATH if name == "file_list"
                                                            else TYPE_FILEPATH)
