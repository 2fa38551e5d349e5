"""`normfuse_ref.fields`: every wrong field of a file is one FieldError naming the file, the field, what is allowed
and what was found; right fields come back with their types."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from normfuse_ref import fields
from normfuse_ref.fields import FieldError

SRC = "model/config.json"
RAW: dict[str, Any] = {"hidden_size": 576, "eps": 1e-5, "theta": 10000, "name": "x", "tied": True, "zero": 0}


def test_good_fields_come_back_typed() -> None:
    assert fields.integer(RAW, "hidden_size", SRC, minimum=1) == 576
    assert fields.number(RAW, "eps", SRC, positive=True) == 1e-5
    assert fields.number(RAW, "theta", SRC) == 10000.0 and isinstance(fields.number(RAW, "theta", SRC), float)
    assert fields.string(RAW, "name", SRC) == "x"
    assert fields.boolean(RAW, "tied", SRC) is True
    assert fields.integer(RAW, "missing", SRC, default=7) == 7
    assert fields.integer(RAW | {"nulled": None}, "nulled", SRC, default=None) is None  # null counts as missing
    assert fields.integer(RAW, "zero", SRC, minimum=0) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fields.integer({"hidden_size": "big"}, "hidden_size", SRC, minimum=1),
         "model/config.json: field 'hidden_size' must be an integer >= 1; got 'big'"),
        (lambda: fields.integer({"num_attention_heads": 0}, "num_attention_heads", SRC, minimum=1),
         "model/config.json: field 'num_attention_heads' must be an integer >= 1; got 0"),
        (lambda: fields.integer({"n": True}, "n", SRC), "field 'n' must be an integer; got True"),
        (lambda: fields.integer({"n": 2.0}, "n", SRC), "field 'n' must be an integer; got 2.0"),
        (lambda: fields.integer({"n": 9}, "n", SRC, minimum=1, maximum=8), "must be an integer >= 1 and <= 8; got 9"),
        (lambda: fields.integer({}, "n", SRC), "model/config.json: field 'n' is missing"),
        (lambda: fields.number({"eps": 0.0}, "eps", SRC, positive=True), "field 'eps' must be a finite number > 0"),
        (lambda: fields.number({"eps": float("nan")}, "eps", SRC), "must be a finite number; got nan"),
        (lambda: fields.number({"eps": "1e-5"}, "eps", SRC), "must be a finite number; got '1e-5'"),
        (lambda: fields.number({"eps": False}, "eps", SRC), "must be a finite number; got False"),
        (lambda: fields.string({"s": 3}, "s", SRC), "field 's' must be a string; got 3"),
        (lambda: fields.boolean({"b": 1}, "b", SRC), "field 'b' must be true or false; got 1"),
        (lambda: fields.mapping([1, 2], SRC), "model/config.json must hold a JSON object {...}; it holds a list"),
        (lambda: fields.mapping("text", SRC), "it holds a string"),
    ],
)  # fmt: skip
def test_bad_fields_name_the_file_and_the_field(call: Any, message: str) -> None:
    with pytest.raises(FieldError) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_json_object_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "config.json"
    good.write_text(json.dumps({"a": 1}))
    assert fields.json_object(good) == {"a": 1}
    for content, message in [
        (b"[1, 2]", "must hold a JSON object {...}; it holds a list"),
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00binary", "is not a UTF-8 text file"),
    ]:
        good.write_bytes(content)
        with pytest.raises(FieldError, match=r"config\.json") as info:
            fields.json_object(good)
        assert message in str(info.value)
    with pytest.raises(FieldError, match="is not a regular file, so not JSON"):
        fields.json_object(tmp_path)  # a directory
    with pytest.raises(FieldError, match="cannot read"):
        fields.json_object(tmp_path / "missing.json")


def test_construct_names_the_file_for_cross_field_checks() -> None:
    @dataclass(frozen=True)
    class Heads:
        dim: int
        n_heads: int

        def __post_init__(self) -> None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")

    assert fields.construct(Heads, SRC, dim=8, n_heads=2) == Heads(8, 2)
    with pytest.raises(FieldError, match=r"^model/config.json: dim 9 is not a multiple of n_heads 2$"):
        fields.construct(Heads, SRC, dim=9, n_heads=2)
