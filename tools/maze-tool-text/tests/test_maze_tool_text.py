"""maze-tool-text: each tool on real text, and the package's hand-over to Maze."""

from __future__ import annotations

import os
import re

import pluggy
import pytest

from maze_core import hookspecs
from maze_core.registry import ToolRegistry

try:
    import maze_tool_text as tt
except ImportError:  # not installed: CI installs it (MAZE_REQUIRE_TOOLS=1) and must not skip
    if os.environ.get("MAZE_REQUIRE_TOOLS"):
        raise
    pytest.skip("maze-tool-text is not installed (pip install -e ./tools/maze-tool-text)",
                allow_module_level=True)

PLAIN = " ".join(f"w{i}" for i in range(1, 101))  # 100 words, no sentence ends


def test_word_chunks_cover_the_text_and_overlap_exactly():
    out = tt.text_chunk(PLAIN, size=30, overlap=5)
    chunks = [c.split() for c in out["chunks"]]
    assert out["count"] == len(chunks) == 4
    assert [len(c) for c in chunks] == [30, 30, 30, 25]
    for previous, current in zip(chunks, chunks[1:], strict=False):
        assert previous[-5:] == current[:5]
    seen = {w for c in chunks for w in c}
    assert seen == set(PLAIN.split())
    for (start, end), chunk in zip(out["spans"], out["chunks"], strict=True):
        assert PLAIN[start:end] == chunk


def test_word_chunks_end_at_a_sentence_end_when_one_is_near():
    text = ("Alpha beta gamma delta epsilon zeta eta theta. Iota kappa lambda mu nu xi omicron pi rho "
            "sigma tau. Upsilon phi chi psi omega.")
    out = tt.text_chunk(text, size=12, overlap=2)
    assert out["chunks"][0] == "Alpha beta gamma delta epsilon zeta eta theta."
    assert out["chunks"][1].startswith("eta theta. Iota")
    assert len(out["chunks"][1].split()) == 12  # no sentence end in its last third: a full window
    assert out["chunks"][-1].endswith("omega.")


def test_char_chunks_respect_the_size_and_never_start_inside_a_word():
    text = "The quick brown fox jumps over the lazy dog. " * 20
    out = tt.text_chunk(text, size=60, overlap=15, unit="chars")
    assert out["count"] > 10
    words = set(text.split())
    for (start, end), chunk in zip(out["spans"], out["chunks"], strict=True):
        assert len(chunk) <= 60 and chunk == text[start:end]
        assert chunk.split()[0] in words and chunk.split()[-1] in words
        assert start == 0 or text[start - 1] == " "
    assert out["spans"][-1][1] == len(text.rstrip())
    for (_, end), (start, _) in zip(out["spans"], out["spans"][1:], strict=False):
        assert start < end  # consecutive chunks overlap


def test_chunk_refuses_a_window_that_cannot_advance():
    with pytest.raises(ValueError, match="overlap must be"):
        tt.text_chunk("a b c", size=5, overlap=5)
    with pytest.raises(ValueError, match="size must be"):
        tt.text_chunk("a b c", size=0, overlap=0)
    with pytest.raises(ValueError, match="unit must be"):
        tt.text_chunk("a b c", size=2, overlap=0, unit="lines")
    assert tt.text_chunk("", size=5, overlap=1) == {"chunks": [], "count": 0, "spans": []}


def test_clean_strips_markup_and_keeps_paragraphs():
    raw = ("<html><style>p {color: red}</style><p>Caf\u00e9&nbsp;&amp; bar</p>\r\n\r\n\r\n"
           "<div>Second\tparagraph   here\x07</div> see https://example.org/x</html>")
    out = tt.text_clean(raw, remove_urls=True)
    assert out["text"] == "Café & bar\n\nSecond paragraph here\nsee"  # </div> ends a line
    assert out["chars_before"] == len(raw) and out["chars_after"] == len(out["text"])
    flat = tt.text_clean("A  B\n\nC", keep_newlines=False, lowercase=True)
    assert flat["text"] == "a b c"
    assert tt.text_clean("ﬁve <b>x</b>", strip_html=False)["text"] == "five <b>x</b>"  # NFKC ligature


def test_stats_count_words_sentences_and_tokens():
    text = "Maze runs tasks. Maze records events!\n\nDoes it resume? Yes, it does."
    out = tt.text_stats(text, top_n=2)
    assert out["words"] == 12 and out["sentences"] == 4 and out["paragraphs"] == 2
    assert out["lines"] == 3 and out["chars"] == len(text)
    assert out["tokens"] == 12 + 5  # words plus five punctuation marks
    assert out["top_words"][0] == {"word": "maze", "count": 2}
    assert len(out["top_words"]) == 2
    assert out["tokens_estimate"] >= out["words"]
    assert tt.text_stats("")["words"] == 0 and tt.text_stats("")["tokens_estimate"] == 0


def test_template_fills_paths_and_is_strict_about_missing_values():
    values = {"question": "Why?", "doc": {"title": "Bees", "tags": ["a", "b"]}, "n": 3}
    out = tt.text_template("Q: {{question}} T: {{ doc.title }} first: {{doc.tags.0}} all: {{doc.tags}} "
                           "n={{ n }} again {{question}}", values)
    assert out["text"] == 'Q: Why? T: Bees first: a all: ["a", "b"] n=3 again Why?'
    assert out["placeholders"] == ["question", "doc.title", "doc.tags.0", "doc.tags", "n"]
    with pytest.raises(ValueError, match=r"without a value: answer, doc\.author"):
        tt.text_template("{{answer}} by {{ doc.author }}", values)
    loose = tt.text_template("{{answer}} / {{question}} / {not a placeholder}", values, strict=False)
    assert loose["text"] == "{{answer}} / Why? / {not a placeholder}"
    assert loose["missing"] == ["answer"]
    # nothing is evaluated: attribute syntax is only a key lookup
    with pytest.raises(ValueError):
        tt.text_template("{{ question.__class__ }}", values)


def test_keywords_rank_content_words_and_phrases():
    text = ("Honey bees perform a waggle dance. The waggle dance tells other honey bees where the "
            "flowers are. Bees visit flowers for nectar.")
    out = tt.text_keywords(text, top_k=3)
    assert [k["keyword"] for k in out["keywords"]] == ["bees", "dance", "flowers"]
    assert out["keywords"][0]["count"] == 3
    phrases = [p["phrase"] for p in out["phrases"]]
    assert any("waggle dance" in p for p in phrases)
    assert all(not re.search(r"\bthe\b", p) for p in phrases)
    custom = tt.text_keywords(text, top_k=1, stopwords=["bees"])
    assert custom["keywords"][0]["keyword"] != "bees"


def test_every_tool_is_versioned_described_and_registered_through_the_hook():
    pm = pluggy.PluginManager("maze")
    pm.add_hookspecs(hookspecs)
    pm.register(tt, name="text")
    registry = ToolRegistry()
    names = registry.load_plugin_tools(pm)
    assert sorted(names) == ["text_chunk", "text_clean", "text_keywords", "text_stats", "text_template"]
    for name in names:
        entry = registry.get(name)
        assert entry.source == "package:text"
        assert entry.version == tt.__version__
        assert entry.meta.description
        assert entry.meta.input_parameters and entry.meta.output_parameters
    assert registry.get("text_chunk").meta.required_inputs == ("text",)
