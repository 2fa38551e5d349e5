"""Bad input gets one clear error, never a silent broadcast."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from normfuse_ref import fusion, layers
from normfuse_ref.precision import accumulation_dtype, resolve_dtype

x = np.ones((3, 4))
F = np.ones((4, 2))
g = np.ones(4)

SHAPE_MISMATCHES: list[tuple[str, Callable[[], Any], tuple[str, ...]]] = [
    ("linear F rows", lambda: layers.linear(x, np.ones((5, 2))), ("(5, 2)", "(3, 4)")),
    ("linear F not 2-D", lambda: layers.linear(x, np.ones(4)), ("(4,)", "(3, 4)")),
    ("rms_norm g", lambda: layers.rms_norm(x, np.ones(3)), ("(3,)", "(3, 4)")),
    ("layer_norm beta", lambda: layers.layer_norm(x, g, np.ones(5)), ("(5,)", "(3, 4)")),
    ("rms_norm_linear F", lambda: fusion.rms_norm_linear(x, g, np.ones((3, 2))), ("(3, 2)", "(3, 4)")),
    ("rms_norm_linear g", lambda: fusion.rms_norm_linear(x, np.ones(2), F), ("(2,)",)),
    ("layer_norm_linear gamma", lambda: fusion.layer_norm_linear(x, np.ones(1), g, F), ("(1,)",)),
    ("layer_norm_linear_folded b", lambda: fusion.layer_norm_linear_folded(x, F, np.ones(3)), ("(3,)", "(4, 2)")),
    ("softmax_linear V", lambda: fusion.softmax_linear(x, np.ones((5, 2))), ("(5, 2)", "(3, 4)")),
    (
        "softmax_linear batched V",
        lambda: fusion.softmax_linear(np.ones((2, 3, 4)), np.ones((3, 4, 2))),
        ("(3, 4, 2)", "(2, 3, 4)"),
    ),
    ("rope positions", lambda: layers.rope(np.ones((3, 2, 4)), np.arange(5)), ("(5,)", "(3, 2, 4)")),
    (
        "attention heads",
        lambda: layers.attention(np.ones((2, 3, 4)), np.ones((2, 2, 4)), np.ones((2, 2, 4))),
        ("3 heads", "2"),
    ),
    (
        "attention head dim",
        lambda: layers.attention(np.ones((2, 2, 4)), np.ones((2, 2, 6)), np.ones((2, 2, 6))),
        ("(2, 2, 6)", "(2, 2, 4)"),
    ),
    (
        "attention mask",
        lambda: layers.attention(
            np.ones((2, 2, 4)), np.ones((2, 2, 4)), np.ones((2, 2, 4)), mask=np.ones((3, 3), bool)
        ),
        ("(3, 3)",),
    ),
    ("swiglu up", lambda: layers.swiglu(x, F, np.ones((4, 3)), np.ones((2, 4))), ("(4, 3)", "(4, 2)")),
    ("softmax_tile_state V", lambda: fusion.softmax_tile_state(x, np.ones((5, 2))), ("(5, 2)", "(3, 4)")),
    (
        "online_softmax_merge rows",
        lambda: fusion.online_softmax_merge(fusion.softmax_tile_state(x, F), fusion.softmax_tile_state(x[:2], F)),
        ("(3, 1)", "(2, 1)"),
    ),
    (
        "online_softmax_merge state",
        lambda: fusion.online_softmax_merge(
            fusion.SoftmaxState(np.ones(3), np.ones(3), F), fusion.softmax_tile_state(x, F)
        ),
        ("m (3,)", "l (3,)", "o (4, 2)"),
    ),
    (
        "softmax_finalize o",
        lambda: fusion.softmax_finalize(fusion.SoftmaxState(np.ones((3, 1)), np.ones((3, 1)), np.ones((2, 5)))),
        ("o (2, 5)",),
    ),
]


@pytest.mark.parametrize(("name", "call", "needles"), SHAPE_MISMATCHES, ids=[s[0] for s in SHAPE_MISMATCHES])
def test_shape_mismatch_is_a_value_error_naming_the_shapes(
    name: str, call: Callable[[], Any], needles: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError) as info:
        call()
    for needle in needles:
        assert needle in str(info.value), f"{name}: {info.value}"


@pytest.mark.parametrize(
    "bad", [np.ones((3, 4), dtype=np.int32), np.ones((3, 4), dtype=np.complex64), np.ones((3, 4), dtype=bool)]
)
@pytest.mark.parametrize(
    "call",
    [
        lambda a: layers.softmax(a),
        lambda a: layers.rms_norm(a, g),
        lambda a: layers.layer_norm(a, g, g),
        lambda a: layers.linear(a, F),
        lambda a: fusion.rms_norm_linear(a, g, F),
        lambda a: fusion.layer_norm_linear(a, g, g, F),
        lambda a: fusion.softmax_linear(a, F),
        lambda a: fusion.rms_norm_linear(x, g, a.T[:, :2] if a.ndim == 2 else a),
        lambda a: fusion.softmax_tile_state(a, F),
        lambda a: fusion.softmax_finalize(fusion.SoftmaxState(np.ones((3, 1)), np.ones((3, 1)), a)),
    ],
)
def test_integer_bool_complex_arrays_are_type_errors(bad: np.ndarray, call: Callable[[np.ndarray], Any]) -> None:
    with pytest.raises(TypeError, match="floating array"):
        call(bad)


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
def test_eps_must_be_finite_and_positive(eps: float) -> None:
    for call in (
        lambda: layers.rms_norm(x, g, eps),
        lambda: layers.layer_norm(x, g, g, eps),
        lambda: fusion.rms_norm_linear(x, g, F, eps),
        lambda: fusion.layer_norm_linear(x, g, g, F, eps),
    ):
        with pytest.raises(ValueError, match="eps must be finite and > 0"):
            call()


@pytest.mark.parametrize("empty", [np.ones((3, 0)), np.ones(()), np.ones(0)])
def test_empty_last_axis_is_a_value_error(empty: np.ndarray) -> None:
    for call in (
        lambda: layers.softmax(empty),
        lambda: layers.rms_norm(empty, np.ones(0)),
        lambda: fusion.softmax_linear(empty, np.ones((0, 2))),
        lambda: fusion.rms_norm_linear(empty, np.ones(0), np.ones((0, 2))),
    ):
        with pytest.raises(ValueError, match="non-empty last axis"):
            call()


def test_a_softmax_state_is_a_softmax_state_of_floating_arrays() -> None:
    state = fusion.softmax_tile_state(x, F)
    with pytest.raises(TypeError, match="b must be a SoftmaxState"):
        fusion.online_softmax_merge(state, tuple(state))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"state\.l must be a floating array"):
        fusion.softmax_finalize(fusion.SoftmaxState(state.m, state.l.astype(int), state.o))


def test_other_bad_arguments() -> None:
    with pytest.raises(ValueError, match="tile_size"):
        fusion.softmax_linear(x, F, tile_size=0)
    with pytest.raises(ValueError, match="even"):
        layers.rope(np.ones((2, 3)), np.arange(2))
    with pytest.raises(TypeError, match="integer"):
        layers.rope(np.ones((2, 4)), np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="boolean"):
        layers.attention(np.ones((2, 2, 4)), np.ones((2, 2, 4)), np.ones((2, 2, 4)), mask=np.ones((2, 2)))
    with pytest.raises(ValueError, match="layout"):
        layers.rope(np.ones((2, 4)), np.arange(2), layout="spiral")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported dtype"):
        resolve_dtype("int8")
    with pytest.raises(ValueError, match="storage-only"):
        accumulation_dtype(np.float16, "float8_e4m3fn")


@pytest.mark.parametrize(
    ("prompt", "error", "needle"),
    [
        ([1.5], TypeError, "integer token ids; got dtype float64"),  # was run as token 1
        (b"hi", TypeError, "integer token ids; got bytes"),  # was run as the tokens 104, 105
        (["12"], TypeError, "integer token ids; got dtype str"),  # was run as token 12
        (None, TypeError, "integer token ids; got NoneType"),
        ([[1, 2]], TypeError, "integer token ids; got dtype int64, shape (1, 2)"),
        ("a\ud800b", ValueError, "the prompt is not valid UTF-8 text (a lone surrogate U+D800 at character 2)"),
    ],
)
def test_a_prompt_is_text_or_integer_token_ids_never_coerced(prompt: Any, error: type, needle: str) -> None:
    from normfuse_ref import load_model
    from normfuse_ref.models.llama.model import Model, generate

    model = load_model("tiny")
    assert isinstance(model, Model)
    with pytest.raises(error, match=re.escape(needle)):
        generate(model, prompt, 2)


def test_texts_to_embed_must_be_utf8_text() -> None:
    from normfuse_ref import load_model
    from normfuse_ref.models.bert import BertModel

    model = load_model("tiny-bert")
    assert isinstance(model, BertModel)
    with pytest.raises(ValueError, match=re.escape("text 2 is not valid UTF-8 text (a lone surrogate U+DFFF at")):
        model.embed(["fine", "not \udfff fine"])


def test_more_bad_arguments_name_the_argument() -> None:
    """A second battery's findings: each was a deep NumPy error, a silent NaN or a silent coercion."""
    from normfuse_ref import load_model
    from normfuse_ref.models.bert import BertModel
    from normfuse_ref.models.llama.model import Model, generate
    from normfuse_ref.ops import NumpyExecutor

    ex = NumpyExecutor()
    with pytest.raises(ValueError, match="eps must be finite and > 0; got -1"):  # with an executor: a silent NaN
        fusion.rms_norm_linear_folded(x, F, eps=-1, ex=ex)
    for bad_eps in ("a", None):
        with pytest.raises(TypeError, match="eps must be a finite number > 0"):
            fusion.rms_norm_linear(x, g, F, eps=bad_eps)  # type: ignore[arg-type]
    for base in (0, -1, 1, float("nan")):  # angles of NaN, or all 0
        with pytest.raises(ValueError, match="the RoPE base must be a finite number > 1"):
            layers.rope(np.ones((2, 1, 4)), np.arange(2)[:, None], base=base)
    with pytest.raises(TypeError, match="causal must be True or False; got 'no'"):  # "no" is truthy: causal
        layers.attention(np.ones((2, 1, 4)), np.ones((2, 1, 4)), np.ones((2, 1, 4)), causal="no")  # type: ignore[arg-type]
    for tile in (1.5, True, 0):
        with pytest.raises(ValueError, match="tile_size must be a positive integer"):
            NumpyExecutor(tile_size=tile)  # type: ignore[arg-type]
    llama = load_model("tiny")
    assert isinstance(llama, Model)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"max_new_tokens": 1.5}, "max_new_tokens must be a positive integer; got 1.5"),
        ({"temperature": "1"}, "temperature must be a finite number >= 0; got '1'"),
        ({"seed": -1}, "seed must be an integer >= 0; got -1"),
        ({"seed": 1.5}, "seed must be an integer >= 0; got 1.5"),
        ({"temperature": 1.0, "top_k": 2.0}, "top_k must be a positive integer; got 2.0"),
    ]
    for kwargs, needle in cases:
        with pytest.raises((TypeError, ValueError), match=re.escape(needle)):
            generate(llama, "hi", **kwargs)
    bert = load_model("tiny-bert")
    assert isinstance(bert, BertModel)
    with pytest.raises(ValueError, match=re.escape("batch_size must be a positive integer; got 1.5")):
        bert.embed(["hi"], batch_size=1.5)  # type: ignore[arg-type]
    np.testing.assert_array_equal(bert.embed(t for t in ("hi", "there")), bert.embed(["hi", "there"]))  # any iterable
