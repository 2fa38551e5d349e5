"""The corpus: standard-library docstrings read at run time, the same text (and hash) every time, never empty."""

from __future__ import annotations

import subprocess
import sys

import pytest

from normfuse_ref.accuracy.corpus import CORPUS_MODULES, EmptyCorpus, clean, load_corpus

HASH = "from normfuse_ref.accuracy.corpus import load_corpus; c = load_corpus(); print(c.sha256, c.chars)"


def test_the_same_text_every_time() -> None:
    a, b = load_corpus(), load_corpus()
    assert a.sha256 == b.sha256 and a.text == b.text
    fresh = subprocess.run([sys.executable, "-c", HASH], capture_output=True, text=True, check=True, timeout=120)
    assert fresh.stdout.split() == [a.sha256, str(a.chars)]  # another process, another import order: same text


def test_the_corpus_is_large_and_from_the_listed_modules() -> None:
    c = load_corpus()
    assert c.chars > 100_000  # SmolLM2 needs >= 4,000 tokens (~4 characters each); the test with it checks tokens
    assert {d.source.split(".")[0] for d in c.documents} <= {m.split(".")[0] for m in CORPUS_MODULES}
    assert c.documents[0].source == CORPUS_MODULES[0]  # module order, module docstring first
    assert all(d.text and d.text == d.text.strip() for d in c.documents)


def test_an_empty_corpus_is_refused() -> None:
    with pytest.raises(EmptyCorpus, match="the corpus is empty: no docstrings in this"):
        load_corpus(["this"])  # the Zen of Python's module: no docstring, no functions
    with pytest.raises(EmptyCorpus, match="no modules"):
        load_corpus([])
    with pytest.raises(EmptyCorpus, match="source of the standard-library module no_such_module; this Python has none"):
        load_corpus(["no_such_module"])


@pytest.mark.parametrize("before", ["-OO", "import torch"])
def test_the_process_does_not_change_the_text(before: str) -> None:
    """The corpus is read from source files: -OO (which strips loaded docstrings) and a library that replaces a
    standard-library function (torch replaces inspect.getfile) leave it as it is."""
    flags, code = (["-OO"], HASH) if before == "-OO" else ([], f"{before}; {HASH}")
    if before == "import torch":
        pytest.importorskip("torch")
    r = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    c = load_corpus()
    assert r.stdout.split() == [c.sha256, str(c.chars)]


def test_cleaning() -> None:
    doc = "Summary line.  \n\n\n\n    Indented\tbody   \n      more\n    "
    assert clean(doc) == "Summary line.\n\nIndented    body\n  more"
    assert clean("   \n  ") == ""


def test_sentences() -> None:
    c = load_corpus()
    s = c.sentences(50)
    assert len(s) == 50 and len(set(s)) == 50
    assert all(5 <= len(x.split()) <= 40 and ">>>" not in x and "\n" not in x for x in s)
    assert c.sentences(10) == s[:10]
