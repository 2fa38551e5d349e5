"""The LayerNorm centring hazard (docs/hazards.md, hazard 1) on a real model's activations: measured, predicted, fixed.

The fused LayerNorm -> linear rule computes s (x W) + b with W = F' + Delta the stored, rounded fold. Its error is
s (x - mu) Delta + mu s r, r_j = Sum_i W_ij the stored fold's column sums (proofs/layer_norm_fold_error.py): the
second term grows with |mu|/sigma. BERT's residual stream is known for a few outlier channels; do they make
|mu|/sigma large at its LayerNorms? This module

1. records the real LayerNorm inputs z of every site (the rows of real tokens, padding excluded) in the float64 run
   of the model on the corpus sentences, and their |mu|/sigma;
2. **predicts** per site and storage dtype where the fold should break: the hazard term alone is about
   (|mu|/sigma) max_j |r_j| (s sigma ~ 1), against the reference order's own error E_ref on the same rows, so the
   fold breaks from |mu|/sigma ~ `threshold` = median(E_ref) / max_j |r_j|, and `predicted_share` is the share of
   real rows whose |mu| s max|r| exceeds their E_ref;
3. **measures** the site on those rows, stored in the dtype: both orders against the reference order computed in
   float64 on the same stored inputs; the share of rows that fail the equivalence criterion
   (`equivalence.compare`, strict: the hazard term counts against the fused order), and the median E_fused / E_ref;
   the same for each mitigation of the rule (`fusion.layer_norm_linear`'s `fold_dtype=float32`,
   `centring="compensate"`, `centring="subtract"`);
4. checks the prediction where it says the fold breaks: the same rows shifted by a constant per row (sigma
   unchanged) to |mu|/sigma = `SWEEP` x threshold, measured the same way.

Sites are subsampled to at most `MAX_ROWS` rows, evenly (the criterion's bounds are computed per output).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import fusion
from ..models.bert.model import BertModel
from ..models.bert.weights import ln_feeding
from ..ops import NumpyExecutor, ReduceKind
from ..parallel import fork_map
from ..precision import resolve_dtype
from . import equivalence as eq
from .study import ORACLE

__all__ = [
    "MAX_ROWS",
    "SWEEP",
    "HazardReport",
    "Recorder",
    "SiteDtypeHazard",
    "SiteHazard",
    "hazard_markdown",
    "measure_hazard",
]

Array = NDArray[Any]

#: Rows per site at most (evenly subsampled): the criterion's bounds cost ~1 s per 512 rows, site and dtype.
MAX_ROWS = 256
#: |mu|/sigma targets of the check of the prediction, in units of each site's predicted threshold.
SWEEP = (0.25, 1.0, 4.0)
#: The mitigations measured, by the study's name, as options of `fusion.layer_norm_linear`.
MITIGATION_OPTIONS: dict[str, dict[str, Any]] = {
    "wide-fold": {"fold_dtype": np.float32},
    "compensate": {"centring": "compensate"},
    "subtract": {"centring": "subtract"},
}


@dataclass(frozen=True)
class SiteHazard:
    """The real LayerNorm inputs of one site: how far from centred they are."""

    site: str  # "layer.i attn_qkv" or "layer.i ffn_up"
    rows: int  # real-token rows recorded
    ratio_median: float  # |mu|/sigma
    ratio_p99: float
    ratio_max: float
    abs_max: float  # max |z|: the outlier channels


@dataclass(frozen=True)
class Measured:
    """One order on one site's rows: median E / E_ref and the share of rows failing the criterion (strict)."""

    ratio: float
    failing: float


@dataclass(frozen=True)
class SiteDtypeHazard:
    site: str
    dtype: str
    r_max: float  # max_j |r_j|, r = column sums of the stored fold (the exact fold's are 0)
    ref_error: float  # median over rows of E_ref = max_j |reference - exact|
    threshold: float  # predicted |mu|/sigma from which the fold breaks: ref_error / r_max
    predicted_share: float  # real rows whose |mu| s max|r| exceeds their E_ref
    fused: Measured  # the paper's rule on the real rows
    mitigations: Mapping[str, Measured]
    sweep: tuple[tuple[float, Measured], ...]  # (|mu|/sigma, the rule on the shifted rows)


@dataclass(frozen=True)
class HazardReport:
    sites: tuple[SiteHazard, ...]
    cells: tuple[SiteDtypeHazard, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HazardReport:
        def measured(m: Mapping[str, Any]) -> Measured:
            return Measured(float(m["ratio"]), float(m["failing"]))

        cells = tuple(
            SiteDtypeHazard(
                c["site"],
                c["dtype"],
                c["r_max"],
                c["ref_error"],
                c["threshold"],
                c["predicted_share"],
                measured(c["fused"]),
                {k: measured(v) for k, v in c["mitigations"].items()},
                tuple((float(t), measured(m)) for t, m in c["sweep"]),
            )
            for c in d["cells"]
        )
        return cls(tuple(SiteHazard(**s) for s in d["sites"]), cells)

    @property
    def max_ratio(self) -> float:
        return max(s.ratio_max for s in self.sites)

    def markdown(self) -> str:
        return hazard_markdown(self)


# ---------------------------------------------------------------------------------------------------------------
# 1. The real LayerNorm inputs
# ---------------------------------------------------------------------------------------------------------------


class Recorder(NumpyExecutor):
    """A float64 NumpyExecutor that keeps the input of every LayerNorm's mean, by (layer, site)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layer: int | None = None
        self.inputs: dict[tuple[int | None, str], list[Array]] = {}

    def scope(self, *, layer: int | None) -> contextlib.AbstractContextManager[None]:
        @contextlib.contextmanager
        def labelled() -> Iterator[None]:
            outer, self.layer = self.layer, layer
            try:
                yield
            finally:
                self.layer = outer

        return labelled()

    def reduce(self, x: Array, kind: ReduceKind, *, op: str, eps: float = 0.0) -> Array:
        if kind == "mean" and op.endswith(".mean"):
            self.inputs.setdefault((self.layer, op.removesuffix(".mean")), []).append(np.asarray(x))
        return super().reduce(x, kind, op=op, eps=eps)


def _ratios(z: Array) -> Array:
    mu = np.mean(z, axis=-1)  # (rows,)
    sigma = np.std(z, axis=-1)  # (rows,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(mu) / sigma  # (rows,)


def _subsample(z: Array, k: int) -> Array:
    return z if z.shape[0] <= k else z[np.linspace(0, z.shape[0] - 1, k).round().astype(int)]


# ---------------------------------------------------------------------------------------------------------------
# 2-4. Prediction and measurement per site and dtype
# ---------------------------------------------------------------------------------------------------------------


def _measure(fused: Array, ref: Array, exact: Array, bounds: eq.RuleBounds, err_ref: Array) -> Measured:
    v = eq.compare(fused, ref, exact, bounds)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = v.err_fused / np.maximum(err_ref, v.floor)  # (rows,)
    return Measured(float(np.median(ratio)), float(np.mean(v.failing)))


def _site_dtype(site: str, z64: Array, gamma: Array, beta: Array, F: Array, eps: float, dtype: str) -> SiteDtypeHazard:
    dt = resolve_dtype(dtype)
    g, be, Fd = gamma.astype(dt), beta.astype(dt), F.astype(dt)  # the site's weights, stored

    def run(rows64: Array) -> tuple[Array, Array, Array, eq.RuleBounds, Array]:
        x = rows64.astype(dt)  # (rows, n)   stored inputs
        x64, g64, b64, F64 = (a.astype(np.float64) for a in (x, g, be, Fd))
        exact = fusion.layer_norm_linear_reference(x64, g64, b64, F64, eps)  # (rows, m)   float64 on the same inputs
        ref = fusion.layer_norm_linear_reference(x, g, be, Fd, eps)  # (rows, m)
        bounds = eq.layer_norm_linear_bounds(x, g, be, Fd, eps)
        return x, exact, ref, bounds, eq.row_errors(ref, exact)

    x, exact, ref, bounds, err_ref = run(z64)
    W, _ = fusion.fold_layer_norm(g, be, Fd)  # (n, m)   the stored fold
    r = fusion.fold_column_sums(W)  # (m,)
    r_max = float(np.max(np.abs(r)))
    x64 = x.astype(np.float64)
    mu = np.mean(x64, axis=-1)  # (rows,)
    s = 1 / np.sqrt(np.var(x64, axis=-1) + eps)  # (rows,)
    term = np.abs(mu) * s * r_max  # (rows,)   the hazard term, its largest column
    ref_error = float(np.median(err_ref))
    fused = _measure(fusion.layer_norm_linear(x, g, be, Fd, eps), ref, exact, bounds, err_ref)
    mitigations = {
        name: _measure(fusion.layer_norm_linear(x, g, be, Fd, eps, **opts), ref, exact, bounds, err_ref)
        for name, opts in MITIGATION_OPTIONS.items()
    }
    threshold = ref_error / r_max if r_max > 0 else float("inf")
    sweep = []
    for k in SWEEP if np.isfinite(threshold) else ():
        target = k * threshold
        sigma = np.std(z64, axis=-1, keepdims=True)  # (rows, 1)
        mu64 = np.mean(z64, axis=-1, keepdims=True)  # (rows, 1)
        shifted = z64 + (target * sigma - mu64)  # (rows, n)   mean target * sigma, the same sigma
        xs, ex_s, ref_s, b_s, e_s = run(shifted)
        sweep.append((float(target), _measure(fusion.layer_norm_linear(xs, g, be, Fd, eps), ref_s, ex_s, b_s, e_s)))
    return SiteDtypeHazard(
        site=site,
        dtype=dtype,
        r_max=r_max,
        ref_error=ref_error,
        threshold=float(threshold),
        predicted_share=float(np.mean(term > err_ref)),
        fused=fused,
        mitigations=mitigations,
        sweep=tuple(sweep),
    )


def measure_hazard(
    model: BertModel,
    runs: Any,
    groups: Sequence[tuple[NDArray[np.int64], Array, Array]],
    dtypes: Sequence[str],
    recorded: Recorder | None = None,
    workers: int = 1,
) -> HazardReport:
    """The report of the module docstring for `model` on the sentence `groups` (`minilm.sentence_groups`), for the
    16- and 8-bit storage dtypes among `dtypes` (float32's fold rounds at the level of its own mean: no hazard).
    `recorded`: the recorder the study's float64 run of the same groups ran on (`minilm.embed`); without it, that
    run's forward passes are made here. The (site, dtype) cells are independent: `workers` processes compute them
    (`parallel.fork_map`), with the same result."""
    from ..models.bert.forward import forward, real_rows

    cfg = model.cfg
    w = runs.weights(ORACLE)  # float64, baseline: gamma, beta, F as the file has them
    rec = recorded
    if rec is None:
        rec = Recorder(storage=np.float64)
        for _, ids, mask in groups:
            forward(w, cfg, ids, mask, mode="baseline", ex=rec)
    if any(len(xs) != len(groups) for xs in rec.inputs.values()):
        raise ValueError("the recorder did not run the float64 forward of exactly these sentence groups")
    masks = [mask.astype(bool) for _, _, mask in groups]
    sites, cells = [], []  # cells: the arguments of each (site, dtype) cell, computed below
    for (layer, op), xs in sorted(rec.inputs.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1])):
        z = np.concatenate([real_rows(x, m) for x, m in zip(xs, masks, strict=True)])  # (rows, d)   real tokens only
        ratio = _ratios(z)
        name = f"layer.{layer} {op}" if layer is not None else op
        sites.append(
            SiteHazard(
                name,
                int(z.shape[0]),
                float(np.median(ratio)),
                float(np.percentile(ratio, 99)),
                float(np.max(ratio)),
                float(np.max(np.abs(z))),
            )
        )
        if layer is None or op not in ("attn_qkv", "ffn_up"):
            continue  # the encoder's last LayerNorm feeds no linear layer
        ln = _prepared_ln(cfg, layer, op)
        F = w[f"layer.{layer}.qkv"] if op == "attn_qkv" else w[f"layer.{layer}.ffn_up"]  # (d, m)
        rows = _subsample(z, MAX_ROWS)
        for d in dtypes:
            if resolve_dtype(d).itemsize <= 2:
                cells.append((name, rows, w[f"{ln}.gamma"], w[f"{ln}.beta"], F, cfg.norm_eps, d))
    measured = fork_map(lambda k: _site_dtype(*cells[k]), list(range(len(cells))), workers)  # workers inherit cells
    return HazardReport(tuple(sites), tuple(measured))


def _prepared_ln(cfg: Any, layer: int, op: str) -> str:
    """The prepared-weights name of the LayerNorm that feeds site `op` of block `layer`."""
    if op == "ffn_up":
        return f"layer.{layer}.attn_ln"
    src = ln_feeding(cfg, layer)
    return "embeddings.ln" if src == "embeddings.LayerNorm" else f"layer.{layer - 1}.ffn_ln"


def _pct(share: float) -> str:
    return "0" if share == 0 else f"{100 * share:.1f}%"


def hazard_markdown(h: HazardReport) -> str:
    """The hazard's section of docs/accuracy.md, generated from the measurements."""
    lines = [
        "### The LayerNorm centring hazard on real activations",
        "",
        "docs/hazards.md, hazard 1: the stored fold W = F' + Delta no longer has zero column sums r, and the fused "
        "order's error gains mu s r, which grows with |mu|/sigma of the LayerNorm's input. The real inputs of every "
        "LayerNorm of the float64 run on the corpus sentences (real tokens only):",
        "",
        "| LayerNorm feeding | rows | \\|mu\\|/sigma median | p99 | max | max \\|z\\| |",
        "|---|---|---|---|---|---|",
    ]
    for s in h.sites:
        lines.append(
            f"| {s.site} | {s.rows} | {s.ratio_median:.3g} | {s.ratio_p99:.3g} | {s.ratio_max:.3g} | {s.abs_max:.3g} |"
        )
    worst = max(h.sites, key=lambda s: s.ratio_max)
    lines += [
        "",
        f"BERT's outlier channels are there (max |z| up to {max(s.abs_max for s in h.sites):.0f}), but a few large "
        f"entries move the mean by little and the spread by much: k equal outliers in n otherwise zero channels give "
        f"|mu|/sigma ~ sqrt(k/n). The largest |mu|/sigma anywhere is {worst.ratio_max:.3g} ({worst.site}).",
        "",
        "**Prediction and measurement**, per site and storage dtype (the site's real weights and inputs stored in the "
        "dtype; both orders against the reference order in float64 on the same stored inputs; at most "
        f"{MAX_ROWS} rows per site). *threshold*: the |mu|/sigma from which the hazard term |mu| s max|r| exceeds the "
        "reference order's median error, i.e. where the fold should start to lose (r: the stored fold's column sums). "
        "*fails*: rows failing the equivalence criterion (docs/numerics.md), strict. *fused/ref*: median ratio of the "
        "errors. The same rows shifted to 1x and 4x the threshold (sigma unchanged) check the prediction; the "
        "mitigations are measured on the real rows.",
    ]
    for d in dict.fromkeys(c.dtype for c in h.cells):
        cells = [c for c in h.cells if c.dtype == d]
        lines += [
            "",
            f"{d}:",
            "",
            "| site | threshold | predicted | fused/ref | fails | at 1x: fused/ref | at 4x: fused/ref, fails | "
            "wide-fold | compensate | subtract |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in cells:
            sw = dict(c.sweep)
            at = sorted(sw)
            one = sw[at[1]] if len(at) > 1 else None
            four = sw[at[-1]] if at else None
            mit = [f"{c.mitigations[k].ratio:.2f} ({_pct(c.mitigations[k].failing)})" for k in MITIGATION_OPTIONS]
            lines.append(
                f"| {c.site} | {c.threshold:.2f} | {_pct(c.predicted_share)} | {c.fused.ratio:.2f} | "
                f"{_pct(c.fused.failing)} | {one.ratio if one else float('nan'):.2f} | "
                f"{four.ratio if four else float('nan'):.2f}, {_pct(four.failing) if four else '-'} | {' | '.join(mit)} |"
            )
    low = min(h.cells, key=lambda c: c.threshold) if h.cells else None
    if low is not None:
        lines += ["", _verdict(h, low)]
    return "\n".join(lines)


#: A median error ratio fused/reference above this is a fold that visibly loses (the tests' criterion too).
BREAKS = 1.5


def _verdict(h: HazardReport, low: SiteDtypeHazard) -> str:
    """The prediction against the measurement, in words chosen by the numbers (never written in advance)."""
    below = low.threshold / h.max_ratio  # how far the largest real |mu|/sigma stays below the lowest threshold
    failing = max(c.fused.failing for c in h.cells)
    lo, hi = min(c.fused.ratio for c in h.cells), max(c.fused.ratio for c in h.cells)
    predicted_break = below < 1
    measured_break = hi > BREAKS
    if predicted_break:
        prediction = (
            f"the largest real |mu|/sigma is {1 / below:.1f}x it, so the prediction is that the fold loses on the rows "
            f"past it"
        )
    else:
        prediction = (
            f"the real inputs stay {below:.0f}x and more below it, so the prediction is that the fold does not break"
        )
    agreement = "agrees" if predicted_break == measured_break else "disagrees"
    text = (
        f"The lowest predicted threshold is {low.threshold:.2f} ({low.dtype}, {low.site}); {prediction}. The "
        f"measurement {agreement}: {_pct(failing)} of the real rows fail in the worst cell, and the fused order's "
        f"median error is {lo:.2f}-{hi:.2f} of the reference's."
    )
    one = [dict(c.sweep)[sorted(dict(c.sweep))[1]] for c in h.cells if len(c.sweep) > 1]
    four = [dict(c.sweep)[max(dict(c.sweep))] for c in h.cells if c.sweep]
    if one and four:
        holds = min(m.ratio for m in four) > BREAKS
        text += (
            f" Shifted to the threshold, the fused order's median error is "
            f"{min(m.ratio for m in one):.2f}-{max(m.ratio for m in one):.2f} of the reference's; at 4x it the fused "
            f"order's is {min(m.ratio for m in four):.1f}-{max(m.ratio for m in four):.1f}x the reference's "
            f"({_pct(max(m.failing for m in four))} of rows failing the worst-case criterion at most): "
            + (
                "where the prediction says the fold breaks, it does."
                if holds
                else f"the prediction overstates the break in some cells (fused/ref <= {BREAKS} at 4x the threshold)."
            )
        )
    return text
