"""docs/hardware.md and the README quote numbers the code prints: they are checked here against the code.

One paper check (the ten rows of `normfuse timeline --paper`) and one validation (the published figures) are run
for the whole module; every quoted number must equal the code's to the digits printed (half a unit of the last
digit: a rounding, never a tolerance on the model)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref.hw.config import PRESETS
from normfuse_ref.hw.mapping import MappingPolicy
from normfuse_ref.hw.study import (
    LAYERNORM_MODELS,
    Comparison,
    Phase,
    Scenario,
    compare,
    paper_check,
    shape_config,
    validate,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "docs" / "hardware.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
CORSAIR = PRESETS["corsair-like"]


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return paper_check(CORSAIR, context=2048, prefill_tokens=2048)


def table_after(text: str, marker: str) -> list[list[str]]:
    """The markdown table following an HTML comment containing `marker`, as rows of cells (header dropped)."""
    start = text.index(marker)
    lines = text[start:].splitlines()[1:]
    body: list[list[str]] = []
    for line in lines:
        if not line.startswith("|"):
            if body:
                break
            continue
        body.append([c.strip() for c in line.strip("|").split("|")])
    return body[2:]  # header and rule


#: docs/hardware.md's prose with every run of whitespace one space (its lines are wrapped anywhere in a sentence)
PROSE = " ".join(DOCS.split())


def sentence(pattern: str) -> tuple[str, ...]:
    """The groups of `pattern` in the prose, which must quote it."""
    m = re.search(pattern, PROSE)
    assert m, pattern
    return m.groups()


def on_path(tl: Any, op: str, step: str) -> int:
    """Cycles of `tl`'s critical path spent in `op`'s `step`."""
    return sum(e.duration for e in (tl.events[i] for i in tl.critical_path()) if (e.op, e.step) == (op, step))


def close(quoted: str, value: float) -> bool:
    """The quoted number is `value` rounded to the digits it shows."""
    q = quoted.rstrip("%")
    digits = len(q.split(".")[1]) if "." in q else 0
    return abs(float(q) - value) <= 0.5 * 10**-digits + 1e-9


def pinned(model: str, phase: Phase, context: int, tp: str, stages: str) -> Comparison:
    """Both orders of a scenario on corsair-like, on `stages` stages of `tp` cards (numbers as the prose quotes them)."""
    policy = MappingPolicy(tp_cards=int(tp), stages=int(stages))
    return compare(Scenario(shape_config(model), phase, context, mapping=policy), CORSAIR)


def two_pass_us(c: Comparison) -> float:
    """The two-pass baseline's latency of a comparison, in µs."""
    return c.baseline.us(c.baseline.makespan)


def test_the_paper_table_in_the_docs_is_what_the_code_prints(rows: list[dict[str, Any]]) -> None:
    quoted = table_after(DOCS, "paper-table:")
    assert [(q[0], q[1]) for q in quoted] == [(r["model"], r["phase"]) for r in rows]
    for q, r in zip(quoted, rows, strict=True):
        _, _, cards, us, roof, share, hidden, saves, vs1 = q
        assert int(cards) == r["cards"], q
        assert close(us, r["baseline_latency"]), q
        assert close(roof, r["baseline_latency"] / r["roofline_latency"]), q
        assert close(share, 100 * r["normalisation_share_baseline"]), q
        assert close(hidden, 100 * r["hidden_fraction"]), q
        assert close(saves, 100 * r["reduction"]), q
        assert close(vs1, 100 * r["reduction_vs_one_pass"]), q


def test_the_published_table_in_the_docs_is_what_the_code_prints() -> None:
    quoted = table_after(DOCS, "published-table:")
    got = validate(CORSAIR)
    assert [q[0] for q in quoted] == [g["name"] for g in got]
    for q, g in zip(quoted, got, strict=True):
        assert close(q[1], g["latency_us"]) and close(q[2], g["baseline_latency"]) and close(q[3], g["fused_latency"])
        assert close(q[4], g["ratio_fused"]) and int(q[5]) == g["cards"]


def test_the_readme_quotes_the_same_numbers(rows: list[dict[str, Any]]) -> None:
    quoted = table_after(README, "readme-table:")
    by_key = {(r["model"], r["phase"]): r for r in rows}
    assert quoted, "the README has no generated table"
    for q in quoted:
        r = by_key[(q[0], q[1])]
        share, hidden, saves = q[2:5]
        assert close(share, 100 * r["normalisation_share_baseline"]), q
        assert close(hidden, 100 * r["hidden_fraction"]), q
        assert close(saves, 100 * r["reduction"]), q


def test_the_decode_ranges_quoted_in_prose_hold(rows: list[dict[str, Any]]) -> None:
    """The prose of "What comes out" quotes ranges over the decode rows; they must bracket the table."""
    decode = [r for r in rows if r["phase"] == "decode"]
    share = [100 * r["normalisation_share_baseline"] for r in decode]
    saves = [100 * r["reduction"] for r in decode]
    m = re.search(r"normalisation costs the two-pass baseline (\d+)-(\d+)% of a decode step", DOCS)
    assert m and int(m.group(1)) <= min(share) + 0.5 and max(share) <= int(m.group(2)) + 0.5  # rounded to %
    m = re.search(r"hides ~(\d+)% of it and saves (\d+)-(\d+)%", DOCS)
    assert m and int(m.group(2)) <= min(saves) + 0.5 and max(saves) <= int(m.group(3)) + 0.5
    hidden = [100 * r["hidden_fraction"] for r in decode]
    assert all(abs(h - int(m.group(1))) <= 2 for h in hidden)
    # and the prefill rows' share and saving: the range's ends are the extremes, to the digit shown
    prefill = [r for r in rows if r["phase"] == "prefill"]
    m = re.search(r"the matmuls grow faster than the statistics:\s+([\d.]+)-([\d.]+)% and ([\d.]+)-([\d.]+)%\.", DOCS)
    assert m, "the prefill ranges"
    for (lo, hi), key in zip(((1, 2), (3, 4)), ("normalisation_share_baseline", "reduction"), strict=True):
        values = [100 * r[key] for r in prefill]
        assert close(m.group(lo), min(values)) and close(m.group(hi), max(values)), (key, values)


# ---------------------------------------------------------------------------------------------------------------
# the LayerNorm models (`normfuse timeline --paper --models layernorm`)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ln_rows() -> list[dict[str, Any]]:
    return paper_check(CORSAIR, context=2048, prefill_tokens=2048, models=LAYERNORM_MODELS, fit_context=True)


def test_the_layernorm_table_in_the_docs_is_what_the_code_prints(ln_rows: list[dict[str, Any]]) -> None:
    quoted = table_after(DOCS, "layernorm-table:")
    assert [(q[0], q[1]) for q in quoted] == [(r["model"], r["phase"]) for r in ln_rows]
    for q, r in zip(quoted, ln_rows, strict=True):
        _, _, tokens, cards, two, one, fused, roof, share, hidden, saves, vs1 = q
        assert int(tokens) == r["context"] and int(cards) == r["cards"], q
        assert close(two, r["baseline_latency"]) and close(one, r["one_pass_baseline_latency"]), q
        assert close(fused, r["fused_latency"]), q
        assert close(roof, r["baseline_latency"] / r["roofline_latency"]), q
        assert close(share, 100 * r["normalisation_share_baseline"]), q
        assert close(hidden, 100 * r["hidden_fraction"]), q
        assert close(saves, 100 * r["reduction"]), q
        assert close(vs1, 100 * r["reduction_vs_one_pass"]), q


def test_the_layernorm_figures_quoted_in_prose_hold(ln_rows: list[dict[str, Any]]) -> None:
    """The prose under the LayerNorm table quotes its decode rows and its encoders' (rounded to what it shows), and
    the mappings it compares them with."""

    def quoted(pattern: str) -> float:
        m = re.search(pattern, PROSE)
        assert m, pattern
        return float(m.group(1))

    # the decoders' decode rows, each quoted on its own (whole percents), and the mapping each is on
    by = {(r["model"], r["phase"]): r for r in ln_rows}
    gpt2, opt = by["gpt2-xl", "decode"], by["opt-66b", "decode"]
    layers, cards, share, hidden, saves = sentence(
        r"gpt2-xl \(its (\d+) layers on (\d+) cards\) spends (\d+)% of its two-pass latency on normalisation - .* "
        r"the fused order hides only (\d+)% of it and saves (\d+)%"
    )
    assert (int(layers), int(cards)) == (shape_config("gpt2-xl").n_layers, gpt2["cards"])
    for quoted_pct, value in ((share, gpt2["normalisation_share_baseline"]), (hidden, gpt2["hidden_fraction"]),
                              (saves, gpt2["reduction"])):  # fmt: skip
        assert close(quoted_pct, 100 * value)
    stages, share, hidden, saves = sentence(
        r"opt-66b is mapped one layer to a card \((\d+) stages of one card, the head on the last\): .* so "
        r"normalisation is (\d+)% of its latency, (\d+)% of it hidden, and the fused order saves (\d+)%"
    )
    assert int(stages) == opt["cards"] == shape_config("opt-66b").n_layers and opt["tp_cards"] == 1
    for quoted_pct, value in ((share, opt["normalisation_share_baseline"]), (hidden, opt["hidden_fraction"]),
                              (saves, opt["reduction"])):  # fmt: skip
        assert close(quoted_pct, 100 * value)
    stages, tp, took, now, share, hid = sentence(
        r"On (\d+) stages of (\d+) cards \(what the search picked before it tried every stage count: (\d+) µs, "
        r"against (\d+)\) .* normalisation was (\d+)% of the latency, and the fused order hid (\d+)% of it"
    )
    old = pinned("opt-66b", "decode", opt["context"], tp, stages)
    assert close(took, two_pass_us(old)) and close(now, opt["baseline_latency"])
    assert close(share, 100 * old.normalisation_share) and close(hid, 100 * old.hidden_fraction)
    # the encoders' prefill, each quoted on its own (whole percents and microseconds)
    mini, bert = ({r["model"]: r for r in ln_rows}[k] for k in ("all-minilm-l6-v2", "bert-large"))
    assert round(mini["baseline_latency"]) == quoted(r"all-MiniLM's prefill takes (\d+) µs")
    assert round(mini["baseline_latency"] / mini["roofline_latency"], 1) == quoted(
        r"takes \d+ µs, ([\d.]+)x its roofline"
    )
    assert round(100 * mini["normalisation_share_baseline"]) == quoted(r"normalisation is (\d+)% of all-MiniLM's")
    assert abs(100 * mini["hidden_fraction"] - 100 / 3) <= 2  # "hides a third of it"
    assert round(100 * mini["reduction"]) == quoted(r"hides a third of it and saves (\d+)%")
    cards, stages, tp, took = sentence(r"bert-large's on (\d+) cards \((\d+) stages of (\d+)\): (\d+) µs")
    assert (int(cards), int(stages) * int(tp)) == (bert["cards"], bert["cards"])
    assert close(took, bert["baseline_latency"])
    took, tp, copies = sentence(r"against (\d+) µs on one stage of (\d+) cards with (\d+) copies")
    wide = pinned("bert-large", "prefill", 512, tp, "1")
    assert close(took, two_pass_us(wide)) and int(copies) == wide.mapping.copies
    assert round(100 * bert["normalisation_share_baseline"]) == quoted(r"keep its share at (\d+)%")
    assert round(100 * bert["hidden_fraction"]) == quoted(r"share at \d+%, (\d+)% of it hidden")
    readme = re.search(r"normalisation is\s+again ~(\d+)% of the latency, a third of it hidden", README)  # its summary
    assert readme and round(100 * mini["normalisation_share_baseline"]) == int(readme.group(1))


def test_what_minilm_prefill_saves_beyond_hidden_normalisation_is_quoted_from_its_critical_paths() -> None:
    """The prose says why all-MiniLM's prefill saves more than the normalisation it hides: the latencies with every
    statistic free, and what the critical paths of softmax -> V (and the centring before QKV) hold in each order."""
    c = compare(Scenario(shape_config("all-minilm-l6-v2"), "prefill", 512), CORSAIR)
    b, f, bf, ff = c.baseline, c.fused, c.baseline_free, c.fused_free

    def quoted(pattern: str) -> str:
        return sentence(pattern)[0]

    assert close(quoted(r"all-MiniLM's prefill takes (\d+) µs"), b.us(b.makespan))  # the table's scenario
    hidden_share = 100 * c.normalisation_share * c.hidden_fraction  # of the latency: a third of 27%
    assert close(quoted(r"more than the (\d+)% of the latency that hiding"), hidden_share)
    assert 100 * c.reduction > hidden_share + 5  # what the paragraph explains
    assert close(quoted(r"the fused order still takes ([\d.]+) µs against"), f.us(ff.makespan))
    assert close(quoted(r"against the baseline's ([\d.]+)\. The difference"), b.us(bf.makespan))
    for pattern, tl, op, step in [
        (r"partial sums of P V across the key slices \(([\d.]+) µs\)", bf, "attn_pv", "psum"),
        (r"new rows to those slices \(([\d.]+) µs, exposed", bf, "attn_pv", "deliver"),
        (r"the division of p \(([\d.]+) µs\)", bf, "softmax.div", "vector"),
        (r"\(m, l, o\) states \(([\d.]+) µs\)", ff, "softmax.merge", "merge psum"),
        (r"the scale of its output \(([\d.]+) µs\)", ff, "softmax.scale", "vector"),
        (r"in front of the QKV product off the path \(([\d.]+) µs\)", bf, "attn_qkv.centre", "vector"),
    ]:
        assert close(quoted(pattern), tl.us(on_path(tl, op, step))), pattern
    # and the fused order's free pass has none of the baseline's three on its path, nor the centring
    assert on_path(ff, "attn_pv", "deliver") == on_path(ff, "attn_qkv.centre", "vector") == 0


def test_the_corsair_fitted_figures_quoted_are_what_it_gives_now() -> None:
    """corsair-fitted keeps normfuse 0.1's fitted step; the share and saving it gives today are quoted."""
    sc = Scenario(shape_config("llama2-7b"), "decode", 2048, mapping=MappingPolicy(kind="dense"))
    c = compare(sc, PRESETS["corsair-fitted"])
    share, saves = sentence(r"now spends ([\d.]+)% of its two-pass latency on normalisation there, and the fused "
                            r"order saves ([\d.]+)%")  # fmt: skip
    assert close(share, 100 * c.normalisation_share) and close(saves, 100 * c.reduction)


def test_the_batch_64_case_quoted_among_the_pinned_cases_holds() -> None:
    """At corsair-like's own hops, llama2-7b decode at batch 64 spends more on normalisation fused than two-pass: the
    quoted latencies, copies, the normalisation cost, and the scale's delivery on the fused critical path."""
    c = compare(Scenario(shape_config("llama2-7b"), "decode", 2048, 64), CORSAIR)
    cards, copies, two, fused, faster, one, more = sentence(
        r"batch 64 \((\d+) cards, (\d+) copies\) takes ([\d.]+) µs two-pass, ([\d.]+) µs fused \(([\d.]+)% faster\) "
        r"and ([\d.]+) µs one-pass \(`normfuse timeline --batch 64`\), yet the fused order's normalisation costs (\d+)% "
        r"more than the baseline's"
    )
    assert int(cards) == c.mapping.cards and int(copies) == c.mapping.copies
    b, f, o = (tl.us(tl.makespan) for tl in (c.baseline, c.fused, c.one_pass))
    assert close(two, b) and close(fused, f) and close(one, o) and close(faster, 100 * (b - f) / b)
    assert close(more, -100 * c.hidden_fraction) and c.hidden_fraction < 0
    (deliver,) = sentence(r"delivering s to the gate/up product's outputs takes ([\d.]+) µs")
    assert close(deliver, c.fused.us(on_path(c.fused, "ffn_gate_up.scale", "deliver")))


def test_the_gpt2_xl_prefill_sentences_hold(ln_rows: list[dict[str, Any]]) -> None:
    """gpt2-xl's prefill: what the prose says of it against the LayerNorm table's row, and of the mapping the search
    picked before (pinned) against its full pass and its fused critical path."""
    row = {(r["model"], r["phase"]): r for r in ln_rows}[("gpt2-xl", "prefill")]
    chunks, stages, tp, share, hidden, saves = sentence(
        r"gpt2-xl's prefill \((\w+) chunks of 256 tokens through (\d+) stages of (\d+) cards\) spends ([\d.]+)% of its "
        r"latency on normalisation, hides (\d+)% of it and saves ([\d.]+)%"
    )
    c = compare(Scenario(shape_config("gpt2-xl"), "prefill", row["context"]), CORSAIR)
    assert chunks == {4: "four"}[len(c.scenario.chunks)] and row["cards"] == c.mapping.cards
    assert (int(stages), int(tp)) == (len(c.mapping.stages), c.mapping.tp_cards)
    assert close(share, 100 * row["normalisation_share_baseline"]) and close(hidden, 100 * row["hidden_fraction"])
    assert close(saves, 100 * row["reduction"])
    stages, tp, copies, took, more = sentence(
        r"on (\d+) stages of (\d+) cards with (\d+) copies of each weight \(what the search picked before it tried more "
        r"stages than chunks\) the same prompt takes (\d+) µs, and the fused order hides nothing \(its normalisation "
        r"costs (\d+)% more than the baseline's\)"
    )
    old = pinned("gpt2-xl", "prefill", row["context"], tp, stages)
    assert int(copies) == old.mapping.copies and close(took, two_pass_us(old))
    assert close(more, -100 * old.hidden_fraction) and old.hidden_fraction < 0
    fl = old.fused
    sites = {fl.events[i].op for i in fl.critical_path() if fl.events[i].op.endswith(".scale_shift")}
    (per_site,) = sentence(r"critical path \(~([\d.]+) µs a LayerNorm site over the four chunks")
    assert close(per_site, fl.us(max(on_path(fl, op, "deliver") for op in sites)))  # each site over all chunks


def test_the_search_bullets_figures_hold() -> None:
    """ "The search": each prompt's latency on the mapping the mapper picks, and on the one it stopped at before."""
    quoted = re.findall(
        r"([\w.-]+)'s (\d+)(?:-token prompt| tokens) in (\d+) chunks takes? (\d+) µs on (\d+) stages of (\d+) cards, "
        r"against (\d+) µs on the (\d+) stages of (\d+) cards",
        PROSE,
    )
    assert [q[0] for q in quoted] == ["llama2-7b", "gpt2-xl"]
    for model, prompt, chunks, us, stages, tp, us_old, stages_old, tp_old in quoted:
        picked = compare(Scenario(shape_config(model), "prefill", int(prompt)), CORSAIR)
        assert len(picked.scenario.chunks) == int(chunks)
        assert (len(picked.mapping.stages), picked.mapping.tp_cards) == (int(stages), int(tp))
        assert close(us, two_pass_us(picked))
        assert close(us_old, two_pass_us(pinned(model, "prefill", int(prompt), tp_old, stages_old)))
    us, stages, us_old, stages_old, tp_old = sentence(
        r"opt-66b's decode step takes (\d+) µs on (\d+) stages of one card, against (\d+) µs on the (\d+) stages of "
        r"(\d+) cards it stopped at three counts past the fewest"
    )
    picked = compare(Scenario(shape_config("opt-66b"), "decode", 2047), CORSAIR)
    assert (len(picked.mapping.stages), picked.mapping.tp_cards) == (int(stages), 1)
    assert close(us, two_pass_us(picked))
    assert close(us_old, two_pass_us(pinned("opt-66b", "decode", 2047, tp_old, stages_old)))


def test_why_the_layernorm_decoders_hide_what_they_hide() -> None:
    """The prose's reason, per decoder: gpt2-xl's one-row QKV matmul is shorter than the LayerNorm's two all-reduces
    in series beside it (so the fused order cannot hide them), opt-66b's outlasts them (so it hides them)."""
    (others,) = sentence(r"matmul of a 1600-wide layer sharing a card with some (\d+) others is shorter than both")
    gpt2 = compare(Scenario(shape_config("gpt2-xl"), "decode", 1023), CORSAIR).mapping
    assert gpt2.tp_cards == 1 and int(others) == max(b - a for a, b in (s.layers for s in gpt2.stages)) - 1
    assert sentence(
        r"opt-66b is mapped one layer to a card .* its one-row matmuls span a card's slices and (outlast) the"
    )
    for model, context, longer in (("gpt2-xl", 1023, False), ("opt-66b", 2047, True)):
        tl = compare(Scenario(shape_config(model), "decode", context), CORSAIR).baseline
        took = {(e.op, e.step): e.duration for e in tl.events if e.layer == 1}
        stats = took["blk.1.attn_qkv.mean", "all-reduce"] + took["blk.1.attn_qkv.rms", "all-reduce"]
        assert (took["blk.1.attn_qkv", "tiles"] > stats) == longer, (model, took["blk.1.attn_qkv", "tiles"], stats)
