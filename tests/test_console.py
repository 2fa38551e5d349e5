"""The console wrapper: user text is printed as text (never rich markup), tables never cut a cell at 80 columns,
errors are one line, JSON has no non-finite numbers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from normfuse_ref.cli.console import SCHEMA_VERSION, Col, Console, json_record

MARKUP = ["a[/]b", "[red]foo", "out/[x]/t.json", "[bold]x[/bold]", "[link=file:///etc]y[/link]", "\\[z]"]

ROWS = [
    ("llama2-70b (calibrated)", "decode", "12345.6", "1.0", "20.0%"),
    ("llama3-70b", "prefill", "987654.3", "15.25", "0.4%"),
]
COLUMNS = ["model", Col("phase", "left"), "baseline µs", "decode tok/s", "collectives (baseline)"]


def render(capsys: pytest.CaptureFixture[str], width: int, draw: object) -> tuple[str, str]:
    console = Console(width=width, no_color=True)
    draw(console)  # type: ignore[operator]
    return capsys.readouterr()


@pytest.mark.parametrize("text", MARKUP)
def test_user_text_is_printed_as_typed(capsys: pytest.CaptureFixture[str], text: str) -> None:
    def draw(c: Console) -> None:
        c.text(text)
        c.heading(text)
        c.note(text)
        c.success(text)
        c.stream(text + "\n")
        c.fields([("path", text)])
        c.table(text, [text, "b"], [(text, text)], caption=text)
        c.warning(text)
        c.error(text)

    out, err = render(capsys, 100, draw)
    assert out.count(text) == 11, out  # text, heading, note, success, stream, fields, title, header, 2 cells, caption
    assert err.splitlines() == [f"warning: {text}", f"error: {text}"]


@pytest.mark.parametrize("width", [80, 120, 60, 40])
def test_tables_never_cut_a_cell(capsys: pytest.CaptureFixture[str], width: int) -> None:
    out, _ = render(capsys, width, lambda c: c.table("Paper check: a title long enough to wrap at " * 2, COLUMNS, ROWS))
    lines = out.splitlines()
    for row in ROWS:
        for cell in row:  # every cell whole, on one line
            assert any(cell in line for line in lines), (cell, out)
    assert "…" not in out
    table_lines = [ln for ln in lines if ln[:1] in "┏┃┡│└"]
    assert all(len(ln) <= width for ln in table_lines)
    if width >= 80:
        assert table_lines, "at 80 columns and more this table fits side by side"
    if width <= 60:
        assert not table_lines and "  decode tok/s            1.0" in lines, out  # one block per row
    title = [ln for ln in lines if ln.startswith("Paper check") or ln.startswith("to wrap")]
    assert title and all(len(ln.rstrip()) <= width for ln in lines[: len(title) + 1])


def test_headers_wrap_before_cells_do(capsys: pytest.CaptureFixture[str]) -> None:
    """At 76 columns the natural table (91 wide) does not fit, but with its long headers wrapped (71) it does."""
    out, _ = render(capsys, 76, lambda c: c.table(None, COLUMNS, ROWS))
    lines = out.splitlines()
    assert all(len(ln) <= 76 for ln in lines)
    header = [ln for ln in lines if ln.startswith("┃")]
    assert len(header) == 2 and "collectives" in header[0] and "(baseline)" in header[1], out
    assert any("llama2-70b (calibrated)" in ln for ln in lines)


def test_error_is_one_line_whatever_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    long = "x " * 200 + "path/with/[markup]"
    _, err = render(capsys, 40, lambda c: c.error(long + "\nsecond line\r\n  third"))
    assert err.count("\n") == 1 and err.startswith("error: x x") and err.endswith("[markup] second line third\n")


def test_json_is_strict_and_plain(capsys: pytest.CaptureFixture[str]) -> None:
    rec = json_record("demo", {"err": "1"}, err=math.inf, nan=float("nan"), arr=np.arange(3), x=np.float32(0.5))
    out, _ = render(capsys, 80, lambda c: c.json(rec))
    back = json.loads(out)
    assert back == {
        "schema_version": SCHEMA_VERSION, "command": "demo", "err": "inf", "nan": "nan", "arr": [0, 1, 2], "x": 0.5,
        "units": {"err": "1"},
    }  # fmt: skip
    assert list(back)[:2] == ["schema_version", "command"] and list(back)[-1] == "units"


def test_progress_and_status_stay_out_of_pipes(capsys: pytest.CaptureFixture[str]) -> None:
    def draw(c: Console) -> None:
        with c.progress() as bar:
            task = bar.add_task("work", total=3)
            bar.advance(task)
        with c.status("loading") as s:
            assert s is None

    out, err = render(capsys, 80, draw)
    assert out == "" and err == ""
