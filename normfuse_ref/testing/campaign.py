"""The engine behind `normfuse fuzz`: run the suite's strategies and criterion outside pytest, one cell per
(rule, dtype), and summarise.

How a cell runs, and why it is reproducible: the rule's Case strategy is driven by Hypothesis' own engine
(`@given`, inside a function), with `@seed(S)`, no example database and the `explain` phase off, so the same seed,
code and Hypothesis version draw the same examples in the same order. Every example is evaluated with
`rules.evaluate`; `target()` steers the search towards the largest share of the allowance used. The first
counterexample ends the generation phase; Hypothesis then shrinks it, and the last failing example it runs is the
shrunk one, which is what the cell reports (its repr is a pasteable `Case(...)`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings, target
from hypothesis.errors import Unsatisfiable

from ..precision import DTYPES
from .rules import Case, Rule, evaluate

__all__ = ["CellResult", "run_cell"]


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
    worst_ratio: float = 0.0  # max over examples of E_fused / max(E_ref, one output rounding)
    worst_abs: float = 0.0  # max |fused - exact|
    worst_budget: float = 0.0  # max E_fused / (c E_ref + atol); > 1 is a counterexample
    vacuous: int = 0  # examples whose allowance was infinite in some row (the bound says nothing there)
    seconds: float = 0.0
    counterexample: str | None = None  # repr(Case) of the shrunk counterexample
    explanation: str | None = None
    skipped: str | None = None  # why the cell was not run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.counterexample is not None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        for k in ("worst_ratio", "worst_abs", "worst_budget"):
            d[k] = _json_float(d[k])
        return d


def _json_float(v: float) -> float | str:
    return v if np.isfinite(v) else ("inf" if v > 0 else "-inf" if v < 0 else "nan")


def run_cell(
    rule: Rule,
    dtype: str,
    *,
    examples: int,
    seed_value: int,
    rows: str | None = None,
    acc: str | None = None,
    on_example: Callable[[], None] | None = None,
) -> CellResult:
    """Run one (rule, dtype) campaign of up to `examples` examples; see the module docstring."""
    kind = rows or rule.row_kinds[0]
    res = CellResult(rule=rule.name, dtype=dtype, rows=kind, acc=acc)
    if kind == "masked" and not np.isinf(np.array(-np.inf).astype(DTYPES[dtype])):
        res.skipped = f"{dtype} cannot store -inf (masked scores)"
        return res
    failing: list[tuple[Case, str]] = []

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        print_blob=False,
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        phases=[Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @seed(seed_value)
    @given(rule.cases(dtype=dtype, acc=acc, rows=kind))
    def campaign(case: Case) -> None:
        v = evaluate(rule, case)
        if not failing:  # statistics cover the generated examples, not the shrinker's replays
            res.examples += 1
            res.worst_ratio = max(res.worst_ratio, v.ratio)
            res.worst_abs = max(res.worst_abs, v.worst_abs)
            res.worst_budget = max(res.worst_budget, v.budget)
            res.vacuous += int(not np.all(np.isfinite(v.atol)))
            if on_example is not None:
                on_example()
        target(min(v.budget, 1e6), label="share of the allowance used")
        if not v.ok:
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
