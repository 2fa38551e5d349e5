"""One cell (rule x dtype) of a fuzz campaign, run outside pytest or inside it: examples, verdicts and statistics.

How a cell runs, and why it is reproducible: the rule's Case strategy is driven by Hypothesis' own engine
(`@given`, inside a function), with `@seed(S)`, no example database and the `explain` phase off, so the same seed,
code and Hypothesis version draw the same examples in the same order. Every example is evaluated with
`rules.run`; an example whose exact output is all zeros is rejected (it checks nothing about the scale) and
counted; `target()` steers the search towards the largest share of the allowance used. The first counterexample
(a row failing the criterion with the stated hazards, `Verdict.ok_given_hazards`, or without them in a strict
campaign) ends the generation phase;
Hypothesis then shrinks it, and the last failing example it runs is the shrunk one, which is what the cell reports
(its repr is a pasteable `Case(...)`).

Besides the worst ratio and budget, a cell counts its unchecked rows and the rows that needed a stated hazard, and
keeps the `equivalence.CellStatistics` of all its rows. `CellResult.problems` says what fails the cell: a
counterexample, or an unchecked share above `equivalence.MAX_UNCHECKED` together with a failing statistical check.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, reject, seed, settings, target
from hypothesis.errors import Unsatisfiable

from ..accuracy.equivalence import BIAS_BAND, MAX_UNCHECKED, CellStatistics
from ..precision import DTYPES, Array, accumulation_dtype, dtype_info
from .profiles import active
from .rules import AccLike, Case, Rule, run

__all__ = ["MAX_MEDIAN_RATIO", "CellResult", "check_cell", "run_cell"]

#: The statistical check's limits for a cell with many unchecked rows (`CellResult.problems`):
#: - the median of E_fused / E_ref over the cell's rows. Both orders make the same roundings, of the same sizes
#:   (accuracy/equivalence.py), so a correct fused order's errors are another draw of the same size: its median
#:   ratio is near 1 (measured, 200-500 examples per cell: 0.01-1.44, below 1 where the fused order rounds less).
#:   2 leaves room. A fused block that returns its input has a median ratio of 3 to 1.9e3 in the 16/8-bit cells
#:   measured; the scale bias below catches it anyway.
#: - the median scale bias of the fused order against the reference (`CellStatistics.bias`, in units of u): its
#:   confidence interval (level 1e-4: that is the chance of failing a correct order by bad luck) must reach into
#:   the band [-BIAS_BAND, BIAS_BAND] of `equivalence`, and be no wider than the band, else the cell has too few
#:   examples to say anything and fails.
MAX_MEDIAN_RATIO = 2.0

#: How many more campaigns of the profile's size a statistically checked cell may draw when its examples leave the
#: scale bias unresolved (`check_cell`). Each look is a test at level 1e-4, so three looks stay below 3e-4.
EXTRA_ROUNDS = 2


class _Counterexample(Exception):
    """Raised inside the Hypothesis test to report a failing example (and let Hypothesis shrink it)."""


@dataclass
class CellResult:
    """What one (rule, dtype) campaign found."""

    rule: str
    dtype: str
    rows: str
    acc: str | None
    examples: int = 0  # examples evaluated before the first counterexample (or all of them)
    zero_exact: int = 0  # examples rejected because their exact output is all zeros
    worst_ratio: float = 0.0  # max over examples of E_fused / max(E_ref, one output rounding)
    worst_abs: float = 0.0  # max |fused - exact|
    worst_budget: float = 0.0  # max E_fused / (c E_ref + atol); > 1 is a counterexample unless a hazard explains it
    seconds: float = 0.0
    counterexample: str | None = None  # repr(Case) of the shrunk counterexample
    explanation: str | None = None
    skipped: str | None = None  # why the cell was not run
    stats: CellStatistics = field(default_factory=CellStatistics)

    @property
    def found(self) -> bool:
        return self.counterexample is not None

    @property
    def statistically_checked(self) -> bool:
        """The cell's share of unchecked rows is above MAX_UNCHECKED, so the statistical check must pass."""
        return self.stats.unchecked_share > MAX_UNCHECKED

    def statistical_problems(self) -> list[str]:
        """What the statistical check finds wrong (see BIAS_BAND and MAX_MEDIAN_RATIO); empty if nothing."""
        out = []
        med = self.stats.median_ratio
        if not med <= MAX_MEDIAN_RATIO:
            out.append(f"median E_fused / E_ref = {med:.3g} > {MAX_MEDIAN_RATIO:g}")
        mid, lo, hi = self.stats.bias
        if not self.stats.resolved:
            out.append(f"too few examples to resolve a scale bias of {BIAS_BAND:g} u: interval [{lo:.3g}, {hi:.3g}] u")
        elif lo > BIAS_BAND or hi < -BIAS_BAND:
            out.append(
                f"scale bias of the fused order {mid:+.3g} u (interval [{lo:.3g}, {hi:.3g}], band {BIAS_BAND:g} u)"
            )
        return out

    def problems(self) -> list[str]:
        """Why the cell fails: a counterexample, or (with many unchecked rows) a failing statistical check."""
        out = [f"counterexample: {self.explanation}"] if self.found else []
        if self.statistically_checked:
            out += [
                f"{self.stats.unchecked_share:.0%} of rows unchecked (> {MAX_UNCHECKED:.0%}) and {p}"
                for p in self.statistical_problems()
            ]
        return out

    def as_dict(self) -> dict[str, Any]:
        mid, lo, hi = self.stats.bias
        return {
            "rule": self.rule,
            "dtype": self.dtype,
            "rows": self.rows,
            "acc": self.acc,
            "examples": self.examples,
            "zero_exact": self.zero_exact,
            "rows_evaluated": self.stats.rows,
            "unchecked_rows": self.stats.unchecked,
            "unchecked_share": self.stats.unchecked_share,
            "hazard_rows": self.stats.hazard_rows,
            "median_ratio": self.stats.median_ratio,
            "scale_bias_u": mid,
            "scale_bias_interval_u": [_json_float(lo), _json_float(hi)],
            "worst_ratio": _json_float(self.worst_ratio),
            "worst_abs": _json_float(self.worst_abs),
            "worst_budget": _json_float(self.worst_budget),
            "seconds": self.seconds,
            "counterexample": self.counterexample,
            "explanation": self.explanation,
            "skipped": self.skipped,
            "problems": self.problems(),
        }


def unit(case: Case) -> float:
    """The coarser unit roundoff of a case's storage and accumulation dtypes: the unit of its scale bias."""
    storage = DTYPES[case.dtype]
    return max(dtype_info(storage).unit_roundoff, dtype_info(accumulation_dtype(storage, case.acc)).unit_roundoff)


def _json_float(v: float) -> float | str:
    return v if np.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def run_cell(
    rule: Rule,
    dtype: str,
    *,
    examples: int,
    seed_value: int,
    rows: str | None = None,
    acc: AccLike = None,
    fused: Callable[..., Array] | None = None,
    strict: bool = False,
    shrink: bool = True,
    on_example: Callable[[], None] | None = None,
) -> CellResult:
    """Run one (rule, dtype) campaign of up to `examples` examples; see the module docstring. `fused` replaces the
    rule's fused order (a test's wrong rewrite); `strict` judges by `Verdict.ok` (a stated hazard is a
    counterexample too: how to find the hazards); `shrink=False` reports the first counterexample as drawn."""
    kind = rows or rule.row_kinds[0]
    res = CellResult(rule=rule.name, dtype=dtype, rows=kind, acc=acc if isinstance(acc, str) else None)
    if kind == "masked" and not np.isinf(np.array(-np.inf).astype(DTYPES[dtype])):
        res.skipped = f"{dtype} cannot store -inf (masked scores)"
        return res
    failing: list[tuple[Case, str]] = []
    phases = [Phase.generate, Phase.target, Phase.shrink] if shrink else [Phase.generate, Phase.target]

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        print_blob=False,
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        phases=phases,
        suppress_health_check=list(HealthCheck),
    )
    @seed(seed_value)
    @given(rule.cases(dtype=dtype, acc=acc, rows=kind))
    def campaign(case: Case) -> None:
        out = run(rule, case, fused=fused)
        v = out.verdict
        if v.exact_is_zero:
            if not failing:
                res.zero_exact += 1
            reject()
        if not failing:  # statistics cover the generated examples, not the shrinker's replays
            res.examples += 1
            res.worst_ratio = max(res.worst_ratio, v.ratio)
            res.worst_abs = max(res.worst_abs, v.worst_abs)
            res.worst_budget = max(res.worst_budget, v.budget)
            through = case.arrays[rule.passthrough] if rule.passthrough else 0.0
            res.stats.add(out.fused, out.reference, out.exact, v, unit=unit(case), passthrough=through)
            if on_example is not None:
                on_example()
        target(min(v.budget, 1e6), label="share of the allowance used")
        if not (v.ok if strict else v.ok_given_hazards):
            failing.append((case, v.explain()))
            raise _Counterexample(v.explain())

    t0 = time.perf_counter()
    try:
        campaign()
    except _Counterexample:
        case, why = failing[-1]
        res.counterexample, res.explanation = repr(case), why
    except Unsatisfiable:
        res.skipped = "no valid example could be drawn"
    res.seconds = time.perf_counter() - t0
    return res


def check_cell(
    rule: Rule,
    dtype: str,
    *,
    acc: AccLike = None,
    rows: str | None = None,
    fused: Callable[..., Array] | None = None,
) -> CellResult:
    """The test body of a cell: run it with the active profile's examples (seed 0 in a derandomised profile, a
    fresh seed otherwise) and raise AssertionError naming every problem (`CellResult.problems`) and how to rerun."""
    profile = active()
    seed_value = 0 if profile.derandomize else random.randrange(2**32)
    res = run_cell(rule, dtype, examples=profile.cell_examples, seed_value=seed_value, rows=rows, acc=acc, fused=fused)
    # A statistically checked cell whose rows left too few slopes to resolve the scale bias (rows in a hazard's
    # regime give none) draws more examples, with the next seeds, up to EXTRA_ROUNDS times; the evidence is pooled.
    for k in range(1, EXTRA_ROUNDS + 1):
        if res.skipped or res.found or not res.statistically_checked or res.stats.resolved:
            break
        more = run_cell(
            rule, dtype, examples=profile.cell_examples, seed_value=seed_value + k, rows=rows, acc=acc, fused=fused
        )
        res.stats.pool(more.stats)
        res.examples += more.examples
        res.zero_exact += more.zero_exact
        res.worst_ratio = max(res.worst_ratio, more.worst_ratio)
        res.worst_abs = max(res.worst_abs, more.worst_abs)
        res.worst_budget = max(res.worst_budget, more.worst_budget)
        res.seconds += more.seconds
        res.counterexample, res.explanation = more.counterexample, more.explanation
    if res.skipped:
        raise AssertionError(f"{rule.name} in {dtype}: skipped ({res.skipped})")
    problems = res.problems()
    if problems:
        raise AssertionError(
            f"{rule.name} in {dtype} ({res.examples} examples, seed {seed_value}, profile {profile.name}): "
            + "; ".join(problems)
            + (f"\ncase = {res.counterexample}" if res.counterexample else "")
        )
    return res
