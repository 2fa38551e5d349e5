"""The README stays true: its worked example runs, and .ci/run runs the README's test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_python_examples_run() -> None:
    blocks = fenced("python")
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # the examples assert their own claims


def test_ci_runs_the_readme_test_command() -> None:
    commands = [b.strip() for b in fenced("bash")]
    test_cmd = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_cmd in ci.splitlines(), f"README test command not in .ci/run:\n{test_cmd}"
    assert any("normfuse timeline" in c for c in commands), "README lacks the main-job command"


def test_the_cli_reference_names_every_flag_of_every_command() -> None:
    """Each `normfuse COMMAND` row of the README's CLI reference names every flag that command's parser has (a flag
    added to a command and not to its row is a flag the reader never hears of)."""
    import argparse

    from normfuse_ref.cli.main import SUBCOMMANDS, build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `normfuse (\w+)[^\n]*", README, flags=re.M)}
    missing = []
    for name in SUBCOMMANDS:
        assert name in rows, f"no CLI reference row for normfuse {name}"
        usage = rows[name].split("` |")[0]  # the row's first cell: the command line
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings if s.startswith("--")}
        missing += [f"{name} {f}" for f in sorted(flags - {"--help"}) if not re.search(rf"{f}(?![\w-])", usage)]
    assert not missing, f"flags not in the README's CLI reference: {', '.join(missing)}"
