"""The BERT forward on a random tiny BERT (no download): both orders against an independent textbook composition,
against each other in float32, float16 and bfloat16 (the equivalence criterion, Hypothesis-drawn), the padding
invariance, the schedule each order issues, and a shape-only run.

The textbook composition (`textbook`) is BERT written with the reference layers of `normfuse_ref.layers`
(layer_norm, linear, attention with a boolean mask) in float64, with GELU from the standard library's math.erf: it
shares no code with the executor forward (which computes LayerNorm from executor reductions, attention from
executor matmuls and the softmax sites, GELU with scipy). Both orders must agree with it to float64 rounding:
`hidden_bound(..., "float64")`, ~1e-13 here, while any slip (a bias in the wrong place, a
missing centring, a leaked padding key) is of order 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from numpy.typing import NDArray

from normfuse_ref import layers
from normfuse_ref.models.bert import forward, get_preset, hidden_bound, prepare, prepared_shapes, random_params
from normfuse_ref.models.bert.forward import gelu
from normfuse_ref.models.bert.model import mean_pool
from normfuse_ref.models.bert.weights import Mode
from normfuse_ref.ops import NumpyExecutor, SoftmaxTiles
from normfuse_ref.precision import dtype_info
from tests.bert_support import MODES
from tests.test_rule_sites import RecordingExecutor

Array = NDArray[Any]
CFG = get_preset("tiny-bert")


def textbook(params: dict[str, Array], ids: Array, mask: Array) -> Array:
    """BERT from the reference layers, float64: hidden states (B, T, d). See the module docstring."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    B, T = ids.shape
    H, hd, eps = CFG.n_heads, CFG.head_dim, CFG.norm_eps
    erf = np.vectorize(math.erf)

    def ln(x: Array, name: str) -> Array:
        return layers.layer_norm(x, p[f"{name}.weight"], p[f"{name}.bias"], eps)

    def lin(x: Array, name: str) -> Array:
        return layers.linear(x, p[f"{name}.weight"]) + p[f"{name}.bias"]

    x = p["embeddings.word_embeddings.weight"][ids] + p["embeddings.token_type_embeddings.weight"][0]  # (B, T, d)
    x = ln(x + p["embeddings.position_embeddings.weight"][:T], "embeddings.LayerNorm")  # (B, T, d)
    for i in range(CFG.n_layers):
        b = f"encoder.layer.{i}"
        q, k, v = (lin(x, f"{b}.attention.self.{n}").reshape(B, T, H, hd) for n in ("query", "key", "value"))
        o = layers.attention(q, k, v, causal=False, mask=mask.astype(bool)[:, None, None, :])  # (B, T, H, hd)
        x = ln(x + lin(o.reshape(B, T, H * hd), f"{b}.attention.output.dense"), f"{b}.attention.output.LayerNorm")
        h = lin(x, f"{b}.intermediate.dense")  # (B, T, f)
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = ln(x + lin(h, f"{b}.output.dense"), f"{b}.output.LayerNorm")  # (B, T, d)
    return x


def padded_batch(lengths: list[int], seed: int) -> tuple[Array, Array]:
    """Random ids (B, T) right-padded with the pad id to the longest length, and the 0/1 attention mask."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    ids = np.full((len(lengths), T), CFG.pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(lengths), T), dtype=np.int64)  # (B, T)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(1, CFG.vocab_size, n)
        mask[b, :n] = 1
    return ids, mask


def run(params: dict[str, Array], ids: Array, mask: Array, mode: Mode, ex: NumpyExecutor) -> Array:
    return np.asarray(forward(prepare(params, CFG, mode), CFG, ids, mask, mode=mode, ex=ex))


# ---------------------------------------------------------------------------------------------------------------
# both orders against the textbook composition, float64
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_both_orders_equal_the_textbook_composition(mode: Mode) -> None:
    params = random_params(CFG, seed=3, dtype="float64")
    ids, mask = padded_batch([7, 3, 12, 1], seed=0)
    want = textbook(params, ids, mask)  # (B, T, d)
    got = run(params, ids, mask, mode, NumpyExecutor(np.float64))
    keep = mask.astype(bool)
    diff = float(np.abs(got - want)[keep].max())
    assert diff <= hidden_bound(CFG, want, "float64"), (mode, diff)


def test_single_text_without_a_batch_axis() -> None:
    params = random_params(CFG, seed=4, dtype="float64")
    ids, mask = padded_batch([9], seed=1)
    got = run(params, ids[0], mask[0], "fused", NumpyExecutor(np.float64))  # (T, d)
    assert got.shape == (9, CFG.dim)
    np.testing.assert_allclose(got, textbook(params, ids, mask)[0], rtol=0, atol=hidden_bound(CFG, got, "float64"))


def test_gelu_is_the_exact_erf_form() -> None:
    t = np.linspace(-12, 12, 24001)  # (N,)
    want = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in t])  # (N,)  the standard library's erf
    # float64 (scipy): t/2 (1 + erf): erf within ~2 ulps of a number <= 1 and the add within an ulp of a number <= 2
    # in both computations give an absolute error <= 4 u |t| each; relative to the result it grows where 1 + erf
    # cancels (t << 0), which is why the bound is absolute in |t| and not relative to gelu(t)
    assert np.all(np.abs(gelu(t) - want) <= 8 * 2.0**-53 * np.abs(t))
    # float32 (the erfc fit): within 7 u |t| of the exact value (derivation in gelu's docstring)
    t32 = t.astype(np.float32)
    exact = np.array([0.5 * float(v) * math.erfc(-float(v) / math.sqrt(2)) for v in t32])  # (N,)
    err32 = np.abs(gelu(t32).astype(np.float64) - exact)
    assert gelu(t32).dtype == np.float32
    assert np.all(err32 <= 7 * 2.0**-24 * np.abs(t32.astype(np.float64)))
    # the tanh approximation (GELU "gelu_new") differs by up to ~5e-4: not what BERT's "gelu" means
    tanh = 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))
    assert np.abs(gelu(t) - tanh).max() > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# padding: a text's hidden states and embedding do not depend on the batch it is in
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_padded_batch_equals_each_text_alone(mode: Mode, dtype: str) -> None:
    params = random_params(CFG, seed=5, dtype=dtype)
    lengths = [5, 11, 2, 11]
    ids, mask = padded_batch(lengths, seed=2)
    ex = NumpyExecutor(dtype)
    batch = run(params, ids, mask, mode, ex)  # (B, T, d)
    pooled = mean_pool(batch, mask)  # (B, d)
    for b, n in enumerate(lengths):
        alone = run(params, ids[b : b + 1, :n], mask[b : b + 1, :n], mode, ex)  # (1, n, d)
        tol = hidden_bound(CFG, alone, dtype)
        np.testing.assert_allclose(batch[b, :n], alone[0], rtol=0, atol=tol, err_msg=f"text {b}")
        np.testing.assert_allclose(pooled[b], mean_pool(alone, mask[b : b + 1, :n])[0], rtol=0, atol=10 * tol)


@pytest.mark.parametrize("mode", MODES)
def test_a_padded_batch_runs_its_real_tokens_rows_alone(mode: Mode) -> None:
    """Padding costs no work outside the attention: every linear layer reads the N real tokens' rows (N = the
    mask's ones), not B x T, and the output is exactly zero at the padded positions and nowhere else; the batch
    without its padding (each text alone, so nothing to pack) is the other implementation the rows must match."""
    params = random_params(CFG, seed=7, dtype="float32")
    lengths = [6, 2, 9]
    ids, mask = padded_batch(lengths, seed=4)
    keep = mask.astype(bool)
    ex = RecordingExecutor("float32")
    h = np.asarray(forward(prepare(params, CFG, mode), CFG, ids, mask, mode=mode, ex=ex))  # (B, T, d)
    for op in ("attn_qkv", "attn_output", "ffn_up", "ffn_down"):
        (x, _), y = ex.calls[op]
        assert x.shape[:-1] == y.shape[:-1] == (sum(lengths),), op
    assert h.shape == (*ids.shape, CFG.dim)
    assert not h[~keep].any() and h[keep].any(axis=-1).all()
    for b, n in enumerate(lengths):
        alone = run(params, ids[b : b + 1, :n], mask[b : b + 1, :n], mode, NumpyExecutor("float32"))  # (1, n, d)
        np.testing.assert_allclose(h[b, :n], alone[0], rtol=0, atol=hidden_bound(CFG, alone, "float32"))


def test_padding_changes_nothing_even_with_other_ids_under_the_mask() -> None:
    """What sits under a 0 in the mask is invisible: replacing the pad ids by arbitrary tokens changes nothing."""
    params = random_params(CFG, seed=6, dtype="float64")
    ids, mask = padded_batch([4, 9], seed=3)
    other = np.where(mask == 1, ids, 17)  # (B, T)
    ex = NumpyExecutor(np.float64)
    for mode in MODES:
        a, b = run(params, ids, mask, mode, ex), run(params, other, mask, mode, ex)
        keep = mask.astype(bool)
        assert np.array_equal(a[keep], b[keep]), mode


# ---------------------------------------------------------------------------------------------------------------
# the equivalence criterion on the tiny BERT, in the narrow dtypes
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[int], str, int | None]:
    seed = draw(st.integers(0, 2**16))
    lengths = draw(st.lists(st.integers(1, 24), min_size=1, max_size=4))
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    tile = draw(st.one_of(st.none(), st.integers(1, 16)))
    return seed, lengths, dtype, tile


@given(scenarios())
def test_fused_bert_is_no_less_accurate_than_baseline(case: tuple[int, list[int], str, int | None]) -> None:
    """|fused - exact| <= 2 |baseline - exact| + 2 u_s max|exact|, max norm over the real tokens' hidden states.

    The oracle is the baseline forward in float64 on the same stored weights (it equals the independent textbook
    composition to ~1e-13: test_both_orders_equal_the_textbook_composition). c = 2 and atol = 2 u_s max|exact| as
    for the tiny Llama (tests/test_fuzz_tiny_model.py): both orders issue the same primitives with the same
    roundings except at the fusion sites, where each rounds one factor of the same product once (baseline the
    normalised activations or probabilities, fused the folded weight F' or nothing), so their error fields have
    the same size; atol covers the last rounding to storage when the baseline happens to be nearly exact.
    """
    seed, lengths, dtype, tile = case
    params = random_params(CFG, seed=seed, dtype=dtype)
    ids, mask = padded_batch(lengths, seed=seed)
    keep = mask.astype(bool)
    exact = run({k: v.astype(np.float64) for k, v in params.items()}, ids, mask, "baseline", NumpyExecutor(np.float64))
    ex = NumpyExecutor(dtype, tile_size=tile)
    base = run(params, ids, mask, "baseline", ex).astype(np.float64)
    fused = run(params, ids, mask, "fused", ex).astype(np.float64)
    e_base, e_fused = np.abs(base - exact)[keep].max(), np.abs(fused - exact)[keep].max()
    atol = 2 * dtype_info(dtype).unit_roundoff * np.abs(exact[keep]).max()
    note(f"seed={seed} dtype={dtype} tile={tile} lengths={lengths}")
    note(f"E_baseline={e_base:.3e} E_fused={e_fused:.3e} allowance={2 * e_base + atol:.3e}")
    assert e_fused <= 2 * e_base + atol


def test_the_criterion_rejects_a_fold_without_centring() -> None:
    """Folding Gamma F instead of (I - E/n) Gamma F (forgetting the mean) must fail the same criterion."""
    from normfuse_ref.models.bert import weights

    params = random_params(CFG, seed=1, dtype="float32")
    ids, mask = padded_batch([8, 5], seed=1)
    keep = mask.astype(bool)
    exact = run({k: v.astype(np.float64) for k, v in params.items()}, ids, mask, "baseline", NumpyExecutor(np.float64))
    ex = NumpyExecutor("float32")
    base = run(params, ids, mask, "baseline", ex)
    w = prepare(params, CFG, "fused")
    for i in range(CFG.n_layers):  # replace the folded Q|K|V weights by Gamma F: the centring forgotten
        ln = weights.ln_feeding(CFG, i)
        F = w[f"layer.{i}.qkv"]
        g = params[f"{ln}.weight"][:, None]
        w[f"layer.{i}.qkv"] = (g * np.concatenate([params[f"encoder.layer.{i}.attention.self.{n}.weight"]
                                                   for n in ("query", "key", "value")], axis=1)).astype(F.dtype)  # fmt: skip
    wrong = np.asarray(forward(w, CFG, ids, mask, mode="fused", ex=ex))
    e_base, e_wrong = np.abs(base - exact)[keep].max(), np.abs(wrong - exact)[keep].max()
    assert e_wrong > 2 * e_base + 2 * 2.0**-24 * np.abs(exact[keep]).max()


# ---------------------------------------------------------------------------------------------------------------
# the schedule: what each order issues, and a shape-only run
# ---------------------------------------------------------------------------------------------------------------


class Recorder(NumpyExecutor):
    """A NumpyExecutor that logs every primitive: (kind, op, inputs, output), keeping the arrays alive."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.log: list[tuple[str, str, tuple[Any, ...], Any]] = []

    def matmul(self, x: Array, F: Array, *, op: str, keep_acc: bool = False) -> Array:
        out = super().matmul(x, F, op=op, keep_acc=keep_acc)
        self.log.append(("matmul", op, (x, F), out))
        return out

    def reduce(self, x: Array, kind: Any, *, op: str, eps: float = 0.0) -> Array:
        out = super().reduce(x, kind, op=op, eps=eps)
        self.log.append(("reduce", op, (x,), out))
        return out

    def elementwise(self, fn: Any, *xs: Array, op: str, keep_acc: bool = False) -> Array:
        out = super().elementwise(fn, *xs, op=op, keep_acc=keep_acc)
        self.log.append(("elementwise", op, xs, out))
        return out

    def find(self, kind: str, op: str) -> list[int]:
        return [j for j, e in enumerate(self.log) if e[0] == kind and e[1] == op]


@pytest.mark.parametrize("site", ["attn_qkv", "ffn_up"])
def test_fused_order_starts_the_matmul_on_the_raw_sum(site: str) -> None:
    """At every LayerNorm -> linear site: fused issues the matmul on the raw residual sum z before the statistics,
    and the residual branch adds LN(z); baseline computes both statistics first and multiplies LN(z)."""
    params = random_params(CFG, seed=2, dtype="float32")
    ids, mask = padded_batch([6, 4], seed=4)
    for mode in MODES:
        ex = Recorder()
        forward(prepare(params, CFG, mode), CFG, ids, mask, mode=mode, ex=ex)
        mms, means, lns = (
            ex.find("matmul", site),
            ex.find("reduce", f"{site}.mean"),
            ex.find("elementwise", f"{site}.norm_shift"),
        )
        residuals = ex.find("elementwise", "residual")
        assert len(mms) == len(means) == len(lns) == CFG.n_layers
        for mm, mean, ln in zip(mms, means, lns, strict=True):
            z, x_in, x_out = ex.log[mean][2][0], ex.log[mm][2][0], ex.log[ln][3]
            if mode == "fused":
                assert mm < mean and x_in is z, "the fused matmul must start first, on the raw sum"
            else:
                assert mean < ln < mm and x_in is x_out, "the baseline matmul must read LN(z)"
            nxt = next(r for r in residuals if r > mm)  # the residual add after this sublayer
            assert ex.log[nxt][2][0] is x_out, "the residual branch must carry LN(z)"


class ShapeOnly(NumpyExecutor):
    """Every primitive returns a zero-byte array of the right shape (as a cost-only emulator does): a forward that
    computed anything on activations outside the executor would fail on these."""

    @staticmethod
    def _dummy(shape: tuple[int, ...]) -> Array:
        return np.empty(shape, dtype=np.dtype((np.void, 0)))

    def matmul(self, x: Array, F: Array, *, op: str, keep_acc: bool = False) -> Array:
        return self._dummy((*np.broadcast_shapes(x.shape[:-1], (*F.shape[:-2], 1)), F.shape[-1]))

    def elementwise(self, fn: Any, *xs: Array, op: str, keep_acc: bool = False) -> Array:
        return self._dummy(np.broadcast_shapes(*(np.shape(x) for x in xs)))

    def reduce(self, x: Array, kind: Any, *, op: str, eps: float = 0.0) -> Array:
        return self._dummy((*x.shape[:-1], 1))

    def softmax_tiles(self, z: Array, V: Array, *, op: str) -> SoftmaxTiles:
        lead = z.shape[:-1]
        return SoftmaxTiles(
            self._dummy((*lead, 1, 1)), self._dummy((*lead, 1, 1)), self._dummy((*lead, 1, V.shape[-1]))
        )

    def softmax_merge(self, t: SoftmaxTiles, *, op: str) -> SoftmaxTiles:
        return t

    def rows(self, fn: Any, x: Array, *xs: Any, batched: tuple[Any, ...] = (), op: str) -> Array:
        return fn(self, x, *xs, *batched)


@pytest.mark.parametrize("mode", MODES)
def test_forward_runs_shape_only_on_prepared_shapes(mode: Mode) -> None:
    cfg = get_preset("all-minilm-l6-v2")
    w = {k: ShapeOnly._dummy(s) for k, s in prepared_shapes(cfg).items()}
    ids, mask = np.zeros((3, 20), dtype=np.int64), np.ones((3, 20), dtype=np.int64)
    mask[1, 12:] = 0
    out = forward(w, cfg, ids, mask, mode=mode, ex=ShapeOnly())
    assert out.shape == (3, 20, cfg.dim)


@pytest.mark.parametrize("mode", MODES)
def test_prepared_shapes_match_prepare(mode: Mode) -> None:
    w = prepare(random_params(CFG, seed=0), CFG, mode)
    assert {k: v.shape for k, v in w.items()} == prepared_shapes(CFG)


def test_bad_inputs_are_refused() -> None:
    w = prepare(random_params(CFG, seed=0), CFG, "fused")
    ids = np.arange(1, 6)
    with pytest.raises(ValueError, match="out of range"):
        forward(w, CFG, [0, CFG.vocab_size])
    with pytest.raises(ValueError, match="exceed the model's context of 64 tokens"):
        forward(w, CFG, np.ones(CFG.max_positions + 1, dtype=np.int64))
    with pytest.raises(ValueError, match="attention_mask must be 0/1"):
        forward(w, CFG, ids, np.ones(4, dtype=np.int64))
    with pytest.raises(ValueError, match="attention_mask must be 0/1"):
        forward(w, CFG, ids, np.full(5, 2))
    with pytest.raises(ValueError, match="token_type_ids"):
        forward(w, CFG, ids, None, np.full(5, CFG.type_vocab_size))
    with pytest.raises(ValueError, match="mode must be"):
        forward(w, CFG, ids, mode="textbook")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        forward(w, CFG, np.zeros((2, 0), dtype=np.int64))
