"""The mutant table: plausible bugs planted in the library, each caught by the suite's own tests.

Every mutant replaces one function (everywhere the library bound it: `plant`) with a wrong copy, and runs the tests
that must catch it; each must fail with an AssertionError. CI (the `ci` fuzz profile) runs each mutant against its
first catching test; the `dev` and `thorough` profiles run every listed catcher. The table, by mutant:

| mutant                                | planted in                         | caught by (first: the CI sample)            |
|---------------------------------------|------------------------------------|---------------------------------------------|
| eps outside the sqrt                  | ops.NumpyExecutor.reduce           | rms cell float32; rms proof tie             |
| missing centring                      | fusion.fold_layer_norm             | ln cell float32; ln proof tie               |
| beta @ F dropped                      | fusion.fold_layer_norm             | ln cell float32; ln proof tie               |
| merge without rescale                 | fusion.online_softmax_merge        | merge cell float32; merge proof tie         |
| max of l instead of m                 | fusion.online_softmax_merge        | merge cell float32                          |
| no max shift                          | layers.shifted_exp                 | softmax cell float32; layers vs oracle      |
| float16 accumulator silently float32  | precision.matmul_acc               | narrow accumulators test; adder tree test   |
| tree_sum dropping an odd partial      | precision.tree_sum                 | adder tree property; odd length test        |
| wrong axis in a shared mean           | precision.mean_acc                 | layers vs oracle; ln cell float32           |
| a fused block returning its input     | fuzz.rules.fused_decoder_block     | block cells bfloat16, e4m3fn, float32       |
| a fused block returning NaN           | fuzz.rules.fused_decoder_block     | block cells e5m2, float16                   |
| a 1% scale bias                       | ops.NumpyExecutor.reduce           | rms cell float32; block cell bfloat16       |
| RoPE off by one in decode             | models.llama.forward.rope_tables   | decode vs recompute (plain and HF-free)     |
| a site copy rounding y to storage     | models.sites.rms_norm_linear       | site == rule, float16                       |
| a LayerNorm site rounding before bias | models.sites.layer_norm_linear     | BERT site == rule, bfloat16                 |
| the attention mask forgotten          | models.sites.masked_scores         | GPT decode vs recompute; GPT-2 vs HF        |
| the lm head's folded beta F dropped   | models.gpt.weights.prepare         | GPT fused vs baseline float32; GPT-2 vs HF  |
| a product's last column block dropped | parallel.matmul_blocks             | blocked products == whole, float32          |
| threads dropping the last block       | parallel.run_blocks                | tiny model on 1 == 2 threads                |
| compensating with zero column sums    | fusion.fold_column_sums            | compensate property bf16; fold-error tie    |
| a LayerNorm fold ignoring its dtype   | fusion.fold_layer_norm             | wide-fold property bf16                     |
| an RMSNorm fold ignoring its dtype    | fusion.fold_rms_norm               | wide-fold property e4m3fn                   |
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import proofs
from normfuse_ref import fusion, layers, ops, parallel, precision
from normfuse_ref.fuzz import rules as fuzz_rules
from normfuse_ref.fuzz.profiles import active
from normfuse_ref.precision import Array

from . import test_forward_reference as forward_tests
from . import test_fuzz_decoder_block as block_tests
from . import test_fuzz_layer_norm_linear as ln_tests
from . import test_fuzz_rms_norm_linear as rms_tests
from . import test_fuzz_softmax_linear as sm_tests
from . import test_gpt_forward as gpt_tests
from . import test_layers as layer_tests
from . import test_llama_forward as llama_tests
from . import test_parallel as parallel_tests
from . import test_precision as precision_tests
from . import test_rule_sites as site_tests
from . import test_rule_sites_bert as bert_site_tests

forward_module = importlib.import_module("normfuse_ref.models.llama.forward")  # the package re-exports `forward`
sites_module = importlib.import_module("normfuse_ref.models.sites")
gpt_weights = importlib.import_module("normfuse_ref.models.gpt.weights")


def plant(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, wrong: Any) -> None:
    """Replace owner.name by `wrong`, and every other binding of the same object in normfuse_ref and the tests
    (`from .precision import mean_acc` copies the name into the importing module)."""
    right = getattr(owner, name)
    monkeypatch.setattr(owner, name, wrong)
    here = sys.modules[__name__]  # whose module-level copies of the right functions the wrong ones call
    for mod_name, module in list(sys.modules.items()):
        if mod_name.startswith(("normfuse_ref", "tests", "proofs")) and module not in (owner, here):
            for attr, value in list(vars(module).items()):
                if value is right:
                    monkeypatch.setattr(module, attr, wrong)


def _uncached_proof(name: str, n: int = 3) -> None:
    checked = proofs.PROOFS[name].prove(n)
    assert checked.passed, f"{name} at n = {n}: {checked.code}"


# --- the wrong copies ----------------------------------------------------------------------------------------

_REDUCE = ops.NumpyExecutor.reduce


def _reduce_eps_outside(self: ops.NumpyExecutor, x: Array, kind: ops.ReduceKind, *, op: str, eps: float = 0.0) -> Array:
    if kind != "rms_scale":
        return _REDUCE(self, x, kind, op=op, eps=eps)
    xa = x.astype(self._acc)
    return (1 / np.sqrt(precision.mean_acc(xa * xa)) + self._acc.type(eps)).astype(self._acc)


def _reduce_biased(self: ops.NumpyExecutor, x: Array, kind: ops.ReduceKind, *, op: str, eps: float = 0.0) -> Array:
    s = _REDUCE(self, x, kind, op=op, eps=eps)
    return s * s.dtype.type(1.01) if kind == "rms_scale" else s


def _fold_uncentred(gamma: Any, beta: Any, F: Any, *, dtype: Any = None) -> tuple[Array, Array]:
    F = np.asarray(F)
    GF = np.asarray(gamma, dtype=np.float64)[:, None] * F.astype(np.float64)  # forgets (I - E/n)
    b = np.asarray(beta, dtype=np.float64) @ F.astype(np.float64)
    out = dtype or F.dtype
    return GF.astype(out), b.astype(out)


_FOLD_LN = fusion.fold_layer_norm


def _fold_without_bias(gamma: Any, beta: Any, F: Any, *, dtype: Any = None) -> tuple[Array, Array]:
    F_prime, b = _FOLD_LN(gamma, beta, F, dtype=dtype)
    return F_prime, np.zeros_like(b)


def _merge_unscaled(a: fusion.SoftmaxState, b: fusion.SoftmaxState) -> fusion.SoftmaxState:
    return fusion.SoftmaxState(np.maximum(a.m, b.m), a.l + b.l, a.o + b.o)


def _merge_max_of_l(a: fusion.SoftmaxState, b: fusion.SoftmaxState) -> fusion.SoftmaxState:
    m = np.maximum(a.l, b.l)  # the running sums' max, not the running maxima's
    alpha, beta = layers.shifted_exp(a.m, m), layers.shifted_exp(b.m, m)
    return fusion.SoftmaxState(m, a.l * alpha + b.l * beta, a.o * alpha + b.o * beta)


def _exp_unshifted(z: Array, m: Array) -> Array:
    with np.errstate(over="ignore"):
        return np.exp(z)


def _matmul_wide(x: Array, F: Array, acc: np.dtype) -> Array:
    return np.matmul(x.astype(acc), F.astype(acc))  # numpy's float16 matmul sums in float32: the silent widening


_matmul_blocks, _run_blocks = parallel.matmul_blocks, parallel.run_blocks  # the originals, for the mutants


def _matmul_blocks_drop_last_column(x_shape: tuple[int, ...], F_shape: tuple[int, ...]) -> Any:
    blocks = _matmul_blocks(x_shape, F_shape)
    if blocks is not None and blocks[0][0] == ():  # cut by columns of F
        return blocks[:-1]
    return blocks


def _run_blocks_drops_last(work: Callable[[Any], None], blocks: Any, threads: int) -> None:
    _run_blocks(work, blocks[:-1] if threads > 1 else blocks, threads)


def _tree_drops_odd(x: Array, axis: int = -1) -> Array:
    p = np.moveaxis(x, axis, -1)
    while p.shape[-1] > 1:
        p = (p[..., 0 : p.shape[-1] - 1 : 2] + p[..., 1::2]).astype(x.dtype)  # an odd last partial is lost
    return np.moveaxis(p, -1, axis)


_SUM = precision.sum_acc


def _mean_wrong_axis(x: Array, axis: int = -1) -> Array:
    return (_SUM(x, 0) / x.dtype.type(x.shape[0])).astype(x.dtype)  # over the rows instead of along them


def _block_returns_input(**k: Any) -> Array:
    return np.asarray(k["x"])


def _block_returns_nan(**k: Any) -> Array:
    return np.full_like(np.asarray(k["x"]), np.nan)


_TABLES = forward_module.rope_tables


def _rope_tables_decode_off_by_one(positions: Array, hd: int, base: float) -> Any:
    return _TABLES(positions + 1 if positions.size == 1 and positions[0] > 0 else positions, hd, base)


def _site_rounding_y(ex: Any, x: Any, g: Any, F: Any, eps: float, mode: Any, op: str) -> Any:
    if mode != "fused":
        return fusion.rms_norm_linear_reference(x, g, F, eps, ex=ex, op=op)
    y = ex.matmul(x, F, op=op)  # the old site: y rounded to storage before the scale
    s = ex.reduce(x, "rms_scale", op=f"{op}.rms", eps=eps)
    return ex.elementwise(lambda y, s: y * s, y, s, op=f"{op}.scale")


def _ln_site_rounding_before_bias(
    ex: Any,
    x: Any,
    gamma: Any,
    beta: Any,
    F: Any,
    b: Any,
    eps: float,
    mode: Any,
    op: str,
    *,
    norm: bool,
    centring: Any = "fold",
    r: Any = None,
) -> Any:
    if mode == "fused":
        return fusion.layer_norm_linear_folded(x, F, b, eps, ex=ex, op=op, norm=(gamma, beta) if norm else None)
    y, h = fusion.layer_norm_linear_reference(x, gamma, beta, F, eps, ex=ex, op=op, return_norm=True)
    y = ex.elementwise(lambda y, b: y + b, y, b, op=f"{op}.bias")  # the product rounded to storage, then the bias
    return (y, h) if norm else y


def _column_sums_of_the_exact_fold(F_prime: Any) -> Array:
    return np.zeros(np.shape(F_prime)[1])  # 1 F' = 0 in exact arithmetic: compensates nothing


def _fold_ln_in_weight_dtype(gamma: Any, beta: Any, F: Any, *, dtype: Any = None) -> tuple[Array, Array]:
    return _FOLD_LN(gamma, beta, F)  # the wider dtype asked for is ignored


_FOLD_RMS = fusion.fold_rms_norm


def _fold_rms_in_weight_dtype(g: Any, F: Any, *, dtype: Any = None) -> Array:
    return _FOLD_RMS(g, F)  # the wider dtype asked for is ignored


_SCORES = sites_module.masked_scores


def _scores_unmasked(ex: Any, z: Any, keep: Any, hd: int) -> Any:
    return _SCORES(ex, z, None, hd)  # every key visible: the causal and padding masks forgotten


_PREPARE_GPT = gpt_weights.prepare


def _gpt_prepare_without_head_bias(params: Any, cfg: Any, mode: Any) -> Any:
    w = _PREPARE_GPT(params, cfg, mode)
    if mode == "fused":  # b' = beta_f F forgotten: the fold of the final LayerNorm's shift
        w["output_bias"] = np.zeros_like(w["output_bias"])
    return w


# --- the table -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    name: str
    owner: Any
    attr: str
    wrong: Any
    catchers: tuple[tuple[str, Callable[[], None]], ...]  # (test, how to run it); the first is the CI sample


MUTANTS = [
    Mutant(
        "eps outside the sqrt",
        ops.NumpyExecutor,
        "reduce",
        _reduce_eps_outside,
        (
            ("rms cell float32", lambda: rms_tests.test_rms_norm_linear_no_worse_than_reference("float32")),
            ("rms proof tie", lambda: _uncached_proof("rms_norm_linear")),
        ),
    ),
    Mutant(
        "missing centring",
        fusion,
        "fold_layer_norm",
        _fold_uncentred,
        (
            ("ln cell float32", lambda: ln_tests.test_layer_norm_linear_no_worse_than_reference("float32")),
            ("ln proof tie", lambda: _uncached_proof("layer_norm_linear")),
        ),
    ),
    Mutant(
        "beta @ F dropped",
        fusion,
        "fold_layer_norm",
        _fold_without_bias,
        (
            ("ln cell float32", lambda: ln_tests.test_layer_norm_linear_no_worse_than_reference("float32")),
            ("ln proof tie", lambda: _uncached_proof("layer_norm_linear")),
        ),
    ),
    Mutant(
        "merge without rescale",
        fusion,
        "online_softmax_merge",
        _merge_unscaled,
        (
            ("merge cell float32", lambda: sm_tests.test_any_tiling_any_merge_tree_no_worse_than_reference("float32")),
            ("merge proof tie", lambda: _uncached_proof("online_softmax_merge")),
        ),
    ),
    Mutant(
        "max of l instead of m",
        fusion,
        "online_softmax_merge",
        _merge_max_of_l,
        (("merge cell float32", lambda: sm_tests.test_any_tiling_any_merge_tree_no_worse_than_reference("float32")),),
    ),
    Mutant(
        "no max shift",
        layers,
        "shifted_exp",
        _exp_unshifted,
        (
            ("softmax cell float32", lambda: sm_tests.test_softmax_linear_no_worse_than_reference("float32")),
            ("layers vs oracle float32", lambda: layer_tests.test_layers_agree_with_the_independent_oracle("float32")),
        ),
    ),
    Mutant(
        "float16 accumulator silently float32",
        precision,
        "matmul_acc",
        _matmul_wide,
        (
            ("narrow accumulators", precision_tests.test_narrow_accumulators_really_accumulate_narrow),
            ("adder tree float16", lambda: precision_tests.test_the_adder_tree_is_a_pairwise_sum("float16")),
        ),
    ),
    Mutant(
        "tree_sum dropping an odd partial",
        precision,
        "tree_sum",
        _tree_drops_odd,
        (
            ("adder tree float16", lambda: precision_tests.test_the_adder_tree_is_a_pairwise_sum("float16")),
            ("odd length", precision_tests.test_an_odd_length_keeps_its_last_partial),
        ),
    ),
    Mutant(
        "wrong axis in a shared mean",
        precision,
        "mean_acc",
        _mean_wrong_axis,
        (
            ("layers vs oracle float32", lambda: layer_tests.test_layers_agree_with_the_independent_oracle("float32")),
            ("ln cell float32", lambda: ln_tests.test_layer_norm_linear_no_worse_than_reference("float32")),
        ),
    ),
    Mutant(
        "a fused block returning its input",
        fuzz_rules,
        "fused_decoder_block",
        _block_returns_input,
        (
            ("block cell bfloat16", lambda: block_tests.test_decoder_block_no_worse_than_reference("bfloat16")),
            (
                "block cell float8_e4m3fn",
                lambda: block_tests.test_decoder_block_no_worse_than_reference("float8_e4m3fn"),
            ),
            ("block cell float32", lambda: block_tests.test_decoder_block_no_worse_than_reference("float32")),
        ),
    ),
    Mutant(
        "a fused block returning NaN",
        fuzz_rules,
        "fused_decoder_block",
        _block_returns_nan,
        (
            ("block cell float8_e5m2", lambda: block_tests.test_decoder_block_no_worse_than_reference("float8_e5m2")),
            ("block cell float16", lambda: block_tests.test_decoder_block_no_worse_than_reference("float16")),
        ),
    ),
    Mutant(
        "a 1% scale bias",
        ops.NumpyExecutor,
        "reduce",
        _reduce_biased,
        (
            ("rms cell float32", lambda: rms_tests.test_rms_norm_linear_no_worse_than_reference("float32")),
            ("block cell bfloat16", lambda: block_tests.test_decoder_block_no_worse_than_reference("bfloat16")),
        ),
    ),
    Mutant(
        "RoPE off by one in decode",
        forward_module,
        "rope_tables",
        _rope_tables_decode_off_by_one,
        (
            (
                "decode vs recompute, float64",
                lambda: forward_tests.test_decode_one_token_at_a_time_equals_full_recompute("fused"),
            ),
            (
                "prefill + decode vs recompute",
                lambda: llama_tests.test_prefill_then_decode_equals_full_recompute_float32("baseline", 2),
            ),
        ),
    ),
    Mutant(
        "a site copy rounding y to storage",
        sites_module,
        "rms_norm_linear",
        _site_rounding_y,
        (
            (
                "site == rule float16",
                lambda: site_tests.test_the_models_rms_norm_site_is_the_rule("float16", "attn_qkv"),
            ),
        ),
    ),
    Mutant(
        "compensating with zero column sums",
        fusion,
        "fold_column_sums",
        _column_sums_of_the_exact_fold,
        (
            (
                "compensate property bfloat16",
                lambda: ln_tests.test_mitigation_is_no_worse_than_reference("bfloat16", "compensated"),
            ),
            ("fold-error proof tie", lambda: _uncached_proof("layer_norm_fold_error")),
        ),
    ),
    Mutant(
        "a LayerNorm fold ignoring its dtype",
        fusion,
        "fold_layer_norm",
        _fold_ln_in_weight_dtype,
        (
            (
                "wide-fold property bfloat16",
                lambda: ln_tests.test_mitigation_is_no_worse_than_reference("bfloat16", "wide_fold"),
            ),
        ),
    ),
    Mutant(
        "an RMSNorm fold ignoring its dtype",
        fusion,
        "fold_rms_norm",
        _fold_rms_in_weight_dtype,
        (
            (
                "wide-fold property e4m3fn",
                lambda: rms_tests.test_wide_fold_is_no_worse_even_for_subnormal_weights("float8_e4m3fn"),
            ),
        ),
    ),
    Mutant(
        "a LayerNorm site rounding before bias",
        sites_module,
        "layer_norm_linear",
        _ln_site_rounding_before_bias,
        (
            (
                "BERT site == rule bfloat16",
                lambda: bert_site_tests.test_the_models_baseline_layer_norm_site_is_the_reference_layers(
                    "bfloat16", "attn_qkv"
                ),
            ),
        ),
    ),
    Mutant(
        "the attention mask forgotten",
        sites_module,
        "masked_scores",
        _scores_unmasked,
        (
            ("GPT decode vs recompute", lambda: gpt_tests.test_decode_equals_recompute("tiny-gpt", "fused", None)),
            ("GPT-2 vs HF", lambda: gpt_tests.test_equals_hf_transformers("tiny-gpt", "baseline")),
        ),
    ),
    Mutant(
        "the lm head's folded beta F dropped",
        gpt_weights,
        "prepare",
        _gpt_prepare_without_head_bias,
        (
            (
                "GPT fused vs baseline float32",
                lambda: gpt_tests.test_fused_is_no_less_accurate_than_baseline("tiny-gpt", "float32", 0),
            ),
            ("GPT-2 vs HF", lambda: gpt_tests.test_equals_hf_transformers("tiny-gpt", "fused")),
        ),
    ),
    Mutant(
        "a product's last column block dropped",
        parallel,
        "matmul_blocks",
        _matmul_blocks_drop_last_column,
        (
            (
                "blocked products == whole float32",
                lambda: parallel_tests.test_products_cut_into_blocks_agree_with_the_whole("float32", False),
            ),
        ),
    ),
    Mutant(
        "threads dropping the last block",
        parallel,
        "run_blocks",
        _run_blocks_drops_last,
        (
            (
                "tiny 1 == 2 threads",
                lambda: parallel_tests.test_tiny_model_is_bit_identical_on_any_thread_count("fused", "float32"),
            ),
        ),
    ),
]

CASES = [
    pytest.param(m, test, run, id=f"{m.name} / {test}")
    for m in MUTANTS
    for k, (test, run) in enumerate(m.catchers)
    if k == 0 or not active().derandomize  # CI samples the first catcher of each mutant
]


@pytest.mark.filterwarnings("ignore")  # the mutants overflow, divide by zero and print long cases on purpose
@pytest.mark.parametrize(("mutant", "test", "run"), CASES)
def test_the_mutant_is_caught(
    mutant: Mutant, test: str, run: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    plant(monkeypatch, mutant.owner, mutant.attr, mutant.wrong)
    with pytest.raises(AssertionError):
        run()
