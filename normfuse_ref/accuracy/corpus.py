"""The text corpus of the accuracy study: standard-library docstrings, read at run time, never copied into the repo.

Every Python install carries the documentation of its standard library as docstrings in the modules' source files.
The corpus is the docstrings of a fixed list of pure-Python modules (`CORPUS_MODULES`), in a fixed order, cleaned
the same way every time:

1. per module: its source file is parsed (`ast`; nothing is imported or executed), and the module's docstring is
   taken, then the docstring of every public top-level function and class (names not starting with "_"), in
   sorted name order (a name defined twice, e.g. per platform, counts once: its first definition);
2. each docstring through `inspect.cleandoc` (the indentation Python's own `help` removes), Unicode NFC, tabs
   expanded, trailing spaces removed, runs of blank lines collapsed to one; empty docstrings dropped;
3. documents joined by one blank line.

Reading the source rather than the live objects makes the text independent of the process: importing torch, for
one, replaces `inspect.getfile` with its own function, and `python -OO` strips docstrings from loaded modules;
neither changes a source file.

Nobody here wrote this text, and the model was not tuned on it in any way normfuse controls. It changes between
Python versions (docstrings are edited), so a study prints the corpus size and the SHA-256 of its UTF-8 bytes next
to the Python version: two runs with the same hash read the same text. A module list without any documentation
gives an empty corpus, which `load_corpus` refuses (`EmptyCorpus`); a Python without its standard library's
sources (some embedded or stripped builds ship only bytecode) is refused with a message that says so.

SmolLM2 reads the corpus as one token stream (`Corpus.text`); MiniLM embeds sentences taken from it
(`Corpus.sentences`: the first sentence of each docstring's summary paragraph).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import sys
import sysconfig
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

__all__ = ["CORPUS_MODULES", "Corpus", "Document", "EmptyCorpus", "clean", "load_corpus"]

#: The modules read, in this order. Pure-Python modules of CPython's standard library, present in every install
#: (no optional C extension, no GUI), importing without side effects, and documented in prose at length.
CORPUS_MODULES: tuple[str, ...] = (
    "argparse",
    "textwrap",
    "difflib",
    "json",
    "json.decoder",
    "json.encoder",
    "string",
    "shlex",
    "fractions",
    "statistics",
    "random",
    "calendar",
    "collections",
    "functools",
    "heapq",
    "bisect",
    "dataclasses",
    "enum",
    "contextlib",
    "fnmatch",
    "glob",
    "shutil",
    "tempfile",
    "pathlib",
    "configparser",
    "csv",
    "logging",
    "inspect",
    "ast",
    "tokenize",
    "zipfile",
    "tarfile",
    "urllib.parse",
    "email.message",
    "unittest.case",
    "doctest",
    "pprint",
    "copy",
    "operator",
    "numbers",
    "abc",
    "base64",
    "ipaddress",
    "uuid",
    "gettext",
    "locale",
    "codecs",
    "threading",
    "queue",
    "sched",
    "subprocess",
    "traceback",
    "warnings",
    "weakref",
    "timeit",
    "cmd",
    "code",
    "trace",
    "pstats",
    "pydoc",
)


class EmptyCorpus(ValueError):
    """The corpus holds no text (docstrings stripped by `python -OO`, or modules without documentation)."""


@dataclass(frozen=True)
class Document:
    """One cleaned docstring and where it came from ("module" or "module.name")."""

    source: str
    text: str


def clean(doc: str) -> str:
    """A docstring as the corpus holds it (see the module docstring, step 2); "" when nothing is left."""
    text = unicodedata.normalize("NFC", inspect.cleandoc(doc)).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.expandtabs(4).rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _source(module_name: str) -> str:
    """The source text of a standard-library module, from the standard library's directory (`sysconfig`), without
    importing it (some, such as abc and codecs, are frozen into the interpreter: their source is still there)."""
    root = Path(sysconfig.get_paths()["stdlib"]).joinpath(*module_name.split("."))
    for path in (root.with_suffix(".py"), root / "__init__.py"):
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise EmptyCorpus(f"the corpus needs the source of the standard-library module {module_name}; this Python has none")


def _documents(module_name: str) -> list[Document]:
    """The module's docstring, then its public top-level functions' and classes' docstrings in sorted name order."""
    tree = ast.parse(_source(module_name))
    docs = [Document(module_name, clean(ast.get_docstring(tree, clean=False) or ""))]
    defs: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            defs.setdefault(node.name, node)
    for name in sorted(defs):
        doc = ast.get_docstring(defs[name], clean=False)  # type: ignore[arg-type]
        docs.append(Document(f"{module_name}.{name}", clean(doc or "")))
    return [d for d in docs if d.text]


#: A summary sentence worth embedding: between these many words (shorter ones are labels, longer ones lists).
SENTENCE_WORDS = (5, 40)
_SIGNATURE = re.compile(r"^[\w.]+\(")  # "name(arg, ...)" lines that some docstrings open with


@dataclass(frozen=True)
class Corpus:
    """The cleaned documents; `text` joins them with a blank line, `sha256` identifies that text."""

    documents: tuple[Document, ...]
    modules: tuple[str, ...]

    @cached_property
    def text(self) -> str:
        return "\n\n".join(d.text for d in self.documents)

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the UTF-8 bytes of `text`, in hex."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def chars(self) -> int:
        return len(self.text)

    @property
    def python(self) -> str:
        """The Python version whose standard library was read (the text changes between versions)."""
        return ".".join(str(v) for v in sys.version_info[:3])

    def sentences(self, limit: int | None = None) -> list[str]:
        """The first sentence of each document's summary paragraph, in corpus order, without repeats: only those
        of SENTENCE_WORDS words that are prose (not a call signature, not a doctest). At most `limit`."""
        out: list[str] = []
        seen: set[str] = set()
        lo, hi = SENTENCE_WORDS
        for d in self.documents:
            para = " ".join(d.text.split("\n\n", 1)[0].split())  # the summary paragraph on one line
            first = re.split(r"(?<=[.!?])\s", para, maxsplit=1)[0]
            words = first.split()
            if not lo <= len(words) <= hi or _SIGNATURE.match(first) or ">>>" in first or first in seen:
                continue
            seen.add(first)
            out.append(first)
            if limit is not None and len(out) >= limit:
                break
        return out


def load_corpus(modules: Sequence[str] = CORPUS_MODULES) -> Corpus:
    """Read and clean the docstrings of `modules` (default CORPUS_MODULES); EmptyCorpus if there is no text."""
    docs = tuple(d for name in modules for d in _documents(name))
    if not docs:
        raise EmptyCorpus(f"the corpus is empty: no docstrings in {', '.join(modules) or 'no modules'}")
    return Corpus(documents=docs, modules=tuple(modules))
