"""The pre-LayerNorm decoder family (GPT-2, OPT) on its random tiny configs: two implementations must agree.

- decode == recompute: a prompt, then one token at a time through the KV cache, equals one forward call over all
  tokens (a position off by one, OPT's offset forgotten, a stale cache slot or a wrong mask move logits by O(1));
- fused == baseline within the equivalence criterion in float32, float16 and bfloat16, against the float64
  baseline as the oracle (the criterion of tests/test_bert_forward.py);
- normfuse == HF transformers (GPT2LMHeadModel, OPTForCausalLM) on the same random weights, in float64: an
  independent implementation of the architecture (pre-LN placement, tanh GELU, biases, tied head, OPT's offset).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from normfuse_ref.accuracy.bounds import forward_bound
from normfuse_ref.models.gpt import GptConfig, forward, get_preset, prepare, prepared_shapes, random_params
from normfuse_ref.models.llama.weights import Mode
from normfuse_ref.ops import NumpyExecutor
from normfuse_ref.precision import dtype_info
from tests.hf_support import require

CONFIGS = ("tiny-gpt", "tiny-opt")
U32, U64 = dtype_info("float32").unit_roundoff, dtype_info("float64").unit_roundoff


def ids_of(cfg: GptConfig, T: int, seed: int = 0, batch: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, size=(T,) if batch is None else (batch, T))  # ([B,] T)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mode", ["baseline", "fused"])
@pytest.mark.parametrize("batch", [None, 2])
def test_decode_equals_recompute(name: str, mode: Mode, batch: int | None) -> None:
    """Logits of a 7-token prompt then 5 single tokens through the cache equal one call over the 12 tokens.

    Tolerance: `forward_bound` (probabilistic, derived in normfuse_ref.accuracy.bounds) with K = 5 (L + 1) products
    in series of length <= max(d, f, S): the two computations differ only in BLAS's summation order (matrix-vector
    against matrix-matrix products), so their difference is two float32 roundings of the same pass."""
    cfg = get_preset(name)
    w = prepare(random_params(cfg, seed=4), cfg, mode)
    ids = ids_of(cfg, 12, batch=batch)
    whole, _ = forward(w, cfg, ids, mode=mode)
    steps, cache = [], None
    logits, cache = forward(w, cfg, ids[..., :7], cache, mode=mode)
    steps.append(logits)
    for t in range(7, 12):
        logits, cache = forward(w, cfg, ids[..., t : t + 1], cache, mode=mode)
        steps.append(logits)
    inc = np.concatenate(steps, axis=-2)
    assert cache.length == 12
    tol = forward_bound(
        n_max=max(cfg.dim, cfg.ffn_dim, 12), products=5 * (cfg.n_layers + 1), dtype="float32",
        scale=float(np.abs(whole).max()),
    )  # fmt: skip
    assert float(np.abs(inc - whole).max()) <= tol, (name, mode, float(np.abs(inc - whole).max()), tol)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("seed", range(4))
def test_fused_is_no_less_accurate_than_baseline(name: str, dtype: str, seed: int) -> None:
    """|fused - exact| <= 2 |baseline - exact| + 2 u_s max|exact| over the logits (the criterion and its
    justification of tests/test_bert_forward.py::test_fused_bert_is_no_less_accurate_than_baseline: both orders
    round alike except at the fusion sites, where each rounds one factor of the same product once)."""
    cfg = get_preset(name)
    params = random_params(cfg, seed=seed, dtype=dtype)
    ids = ids_of(cfg, 10, seed=seed, batch=2)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    exact, _ = forward(prepare(p64, cfg, "baseline"), cfg, ids, mode="baseline", ex=NumpyExecutor(np.float64))
    ex = NumpyExecutor(dtype)
    base, _ = forward(prepare(params, cfg, "baseline"), cfg, ids, mode="baseline", ex=ex)
    fused, _ = forward(prepare(params, cfg, "fused"), cfg, ids, mode="fused", ex=ex)
    e_base = float(np.abs(base.astype(np.float64) - exact).max())
    e_fused = float(np.abs(fused.astype(np.float64) - exact).max())
    atol = 2 * dtype_info(dtype).unit_roundoff * float(np.abs(exact).max())
    assert e_fused <= 2 * e_base + atol, (name, dtype, seed, e_fused, e_base, atol)


def test_the_criterion_rejects_a_fold_without_centring() -> None:
    """Folding Gamma F instead of (I - E/n) Gamma F (the mean forgotten) must fail the same criterion."""
    cfg = get_preset("tiny-gpt")
    params = random_params(cfg, seed=1)
    ids = ids_of(cfg, 10, seed=1)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    exact, _ = forward(prepare(p64, cfg, "baseline"), cfg, ids, mode="baseline", ex=NumpyExecutor(np.float64))
    base, _ = forward(prepare(params, cfg, "baseline"), cfg, ids, mode="baseline")
    w = prepare(params, cfg, "fused")
    for i in range(cfg.n_layers):
        g = params[f"h.{i}.ln_1.weight"][:, None]
        w[f"blk.{i}.attn_qkv"] = g * params[f"h.{i}.attn.c_attn.weight"]  # Gamma F: no centring
    wrong, _ = forward(w, cfg, ids, mode="fused")
    e_base, e_wrong = float(np.abs(base - exact).max()), float(np.abs(wrong - exact).max())
    assert e_wrong > 2 * e_base + 2 * U32 * float(np.abs(exact).max())


@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_prepared_shapes_cover_prepare(mode: Mode) -> None:
    """The shape-only weights the emulator times are those `prepare` makes (the union of both modes)."""
    cfg = get_preset("tiny-opt")
    w = prepare(random_params(cfg), cfg, mode)
    shapes = prepared_shapes(cfg)
    assert {k: v.shape for k, v in w.items()}.items() <= shapes.items()


def test_bad_inputs_are_refused() -> None:
    cfg = get_preset("tiny-gpt")
    w = prepare(random_params(cfg), cfg, "fused")
    with pytest.raises(ValueError, match="exceed the model's context of 64"):
        forward(w, cfg, np.zeros(65, dtype=np.int64))
    with pytest.raises(ValueError, match="out of range"):
        forward(w, cfg, np.array([96]))
    with pytest.raises(ValueError, match="mode must be"):
        forward(w, cfg, np.array([1]), mode="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing"):
        prepare({}, cfg, "fused")


# ---------------------------------------------------------------------------------------------------------------
# against HF transformers (an independent implementation)
# ---------------------------------------------------------------------------------------------------------------


def _hf_gpt2(cfg: GptConfig, params: dict[str, np.ndarray]) -> Any:
    torch, transformers = require("torch"), require("transformers")
    hc = transformers.GPT2Config(
        n_embd=cfg.dim, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.ffn_dim, vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length, layer_norm_epsilon=cfg.norm_eps, activation_function="gelu_new",
        attn_implementation="eager", bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    m = transformers.GPT2LMHeadModel(hc).double().eval()
    # GPT-2's Conv1D weights are (n_in, n_out), like normfuse's: the names and arrays go in as they are
    missing, unexpected = m.transformer.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=False)
    assert not [k for k in missing if not k.endswith("attn.bias")] and not unexpected, (missing, unexpected)
    m.tie_weights()
    return m


def _hf_opt(cfg: GptConfig, params: dict[str, np.ndarray]) -> Any:
    torch, transformers = require("torch"), require("transformers")
    hc = transformers.OPTConfig(
        hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, ffn_dim=cfg.ffn_dim,
        vocab_size=cfg.vocab_size, max_position_embeddings=cfg.context_length, word_embed_proj_dim=cfg.dim,
        do_layer_norm_before=True, activation_function="relu", attn_implementation="eager", pad_token_id=1,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    m = transformers.OPTForCausalLM(hc).double().eval()
    d, sd = cfg.dim, {}
    names = {"attn.c_proj": "self_attn.out_proj", "mlp.c_fc": "fc1", "mlp.c_proj": "fc2",
             "ln_1": "self_attn_layer_norm", "ln_2": "final_layer_norm"}  # fmt: skip
    for k, v in params.items():
        t = torch.tensor(v)
        if k in ("wte.weight", "wpe.weight"):
            sd[
                {
                    "wte.weight": "model.decoder.embed_tokens.weight",
                    "wpe.weight": "model.decoder.embed_positions.weight",
                }[k]
            ] = t
        elif k.startswith("ln_f."):
            sd[f"model.decoder.final_layer_norm.{k[5:]}"] = t
        else:
            _, i, *rest = k.split(".")
            layer, kind, part = f"model.decoder.layers.{i}.", ".".join(rest[:-1]), rest[-1]
            if kind == "attn.c_attn":  # one (d, 3d) Q|K|V into three (out, in) projections
                for j, x in enumerate("qkv"):
                    piece = t[:, j * d : (j + 1) * d].T if part == "weight" else t[j * d : (j + 1) * d]
                    sd[f"{layer}self_attn.{x}_proj.{part}"] = piece.contiguous()
            else:
                sd[f"{layer}{names[kind]}.{part}"] = t.T.contiguous() if t.ndim == 2 else t
    sd["lm_head.weight"] = torch.tensor(params["wte.weight"])
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return m


#: The HF model of each tiny config, and the tolerance in units of max|logit| of both orders in float64 against it:
#: - GPT2LMHeadModel, float64 throughout: 1024 u64, two float64 computations of ~30 dependent products of length
#:   <= 80 (measured ~1e-14 at max|logit| ~25);
#: - OPTForCausalLM: HF's OPT attention computes its softmax in float32 even in a float64 model
#:   (`softmax(..., dtype=torch.float32)` in modeling_opt), so each probability carries one float32 rounding, a
#:   relative u32 in every attention output that the later products carry to the logits: 64 u32 (measured 0.5 u32).
#: Any architectural slip (a forgotten offset, a misplaced LayerNorm, a wrong activation) is O(max|logit|).
HF_MODELS = {"tiny-gpt": (_hf_gpt2, 1024 * U64), "tiny-opt": (_hf_opt, 64 * U32)}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("mode", ["baseline", "fused"])
def test_equals_hf_transformers(name: str, mode: Mode) -> None:
    """Both orders in float64 against HF's implementation in float64 on the same random weights (gains and biases
    not 1 and 0, so the folds are real), a batch of two sequences."""
    torch = require("torch")
    build, tol = HF_MODELS[name]
    cfg = get_preset(name)
    params = random_params(cfg, seed=2, dtype=np.float64)
    ids = ids_of(cfg, 11, seed=2, batch=2)
    with torch.no_grad():
        ref = build(cfg, params)(torch.tensor(ids)).logits.numpy()
    got, _ = forward(prepare(params, cfg, mode), cfg, ids, mode=mode, ex=NumpyExecutor(np.float64))
    assert float(np.abs(got - ref).max()) <= tol * float(np.abs(ref).max()), (name, mode)
