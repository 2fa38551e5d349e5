"""The corpus: standard-library docstrings read at run time, the same text (and hash) every time, never empty."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from normfuse_ref.accuracy.corpus import CORPUS_MODULES, EmptyCorpus, clean, load_corpus

HASH = "import sys; from normfuse_ref.accuracy.corpus import load_corpus; c = load_corpus(); print(c.sha256, c.chars)"


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


def test_an_empty_corpus_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "undocumented.py").write_text("def f():\n    return 1\n\nclass C:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EmptyCorpus, match="the corpus is empty: no docstrings in undocumented"):
        load_corpus(["undocumented"])
    with pytest.raises(EmptyCorpus, match="no modules"):
        load_corpus([])


def test_python_minus_OO_is_refused() -> None:
    """-OO strips docstrings: what is left (C functions' docs) is another text, so the corpus refuses to run."""
    r = subprocess.run(
        [sys.executable, "-OO", "-c", "from normfuse_ref.accuracy.corpus import load_corpus; load_corpus()"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0 and "EmptyCorpus" in r.stderr and "-OO" in r.stderr


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
