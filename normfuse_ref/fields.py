"""Read typed fields from a mapping that came from a file, and name the file and the field when one is wrong.

Model files carry their hyper-parameters as loosely typed key-value data (a GGUF file's metadata, an HF
`config.json`, a tokenizer config). A loader that does `int(raw["hidden_size"])` crashes with a bare
`ValueError: invalid literal for int()` on `"big"`, or divides by a head count of 0. These helpers turn every such
mistake into one `FieldError` (a ValueError) that names the file, the field, what is allowed and what was found:

    cfg = fields.mapping(json.loads(text), "model/config.json")     # a JSON list is refused here
    d = fields.integer(cfg, "hidden_size", "model/config.json", minimum=1)
    eps = fields.number(cfg, "rms_norm_eps", "model/config.json", default=1e-6, positive=True)

-> `model/config.json: field 'hidden_size' must be an integer >= 1; got 'big'`.

Rules (the same for every loader): an integer is a Python int and never a bool (JSON `true` is not 1); a number is
an int or a float, never a bool, always finite; a missing field is an error unless a `default` is given; a field
present with the value `None` (JSON `null`) counts as missing.
"""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "MAX_TEXT_FILE",
    "FieldError",
    "boolean",
    "construct",
    "integer",
    "json_object",
    "mapping",
    "number",
    "positive_int",
    "string",
    "text_file",
]

T = TypeVar("T")

_MISSING: Any = object()


class FieldError(ValueError):
    """A field of a file is missing or has the wrong type or value; the message names the file and the field."""


def mapping(obj: Any, source: str) -> Mapping[str, Any]:
    """`obj` if it is a mapping (a JSON object), else FieldError naming `source` and what it holds instead."""
    if not isinstance(obj, Mapping):
        raise FieldError(f"{source} must hold a JSON object {{...}}; it holds {_kind(obj)}")
    return obj


#: The largest file `text_file` reads: a config or hardware description is kilobytes (HF's tokenizer_config.json
#: of a large model a few megabytes); anything larger was given by mistake.
MAX_TEXT_FILE = 64 << 20


def text_file(path: Path, kind: str) -> str:
    """The UTF-8 text of the file at `path`; one FieldError naming the file if it cannot be read, is not a regular
    file (a device such as /dev/zero would be read forever, a FIFO wait forever) or is larger than MAX_TEXT_FILE, or
    is not UTF-8 text (a binary file given where `kind`, e.g. "JSON" or "a TOML hardware description", was
    expected)."""
    try:
        info = path.stat()  # (a missing file: the OSError below)
        if not stat.S_ISREG(info.st_mode):
            raise FieldError(f"{path} is not a regular file, so not {kind}")
        if info.st_size > MAX_TEXT_FILE:
            raise FieldError(f"{path} is {info.st_size / 2**20:.0f} MiB, too large for {kind}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError(f"{path} is not a UTF-8 text file, so not {kind}") from None
    except OSError as exc:
        raise FieldError(f"cannot read {path}: {exc.strerror or exc}") from None


def json_object(path: Path) -> Mapping[str, Any]:
    """The JSON object in the file at `path`; one FieldError naming the file if it cannot be read, is not UTF-8,
    is not JSON, or holds something other than an object (a list, a string, ...)."""
    text = text_file(path, "JSON")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FieldError(f"{path} is not valid JSON ({exc})") from None
    return mapping(obj, str(path))


def construct(build: Callable[..., T], where: str, /, **values: Any) -> T:
    """`build(**values)` (a config dataclass whose `__post_init__` checks how fields fit together), with a
    ValueError it raises reported as a FieldError naming the file `where`."""
    try:
        return build(**values)
    except ValueError as exc:
        raise FieldError(f"{where}: {exc}") from None


def _kind(v: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return "null" if v is None else names.get(type(v), f"a {type(v).__name__}")


def _present(m: Mapping[str, Any], key: str, source: str, default: Any) -> bool:
    """Whether `key` holds a value; FieldError if it does not and there is no default."""
    if m.get(key) is not None:
        return True
    if default is _MISSING:
        raise FieldError(f"{source}: field {key!r} is missing")
    return False


def _bad(source: str, key: str, allowed: str, v: Any) -> FieldError:
    return FieldError(f"{source}: field {key!r} must be {allowed}; got {v!r}")


def integer(
    m: Mapping[str, Any],
    key: str,
    source: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    default: Any = _MISSING,
) -> int:
    """The int at `key`, within [minimum, maximum] when given; `default` (returned as is) when it is missing."""
    if not _present(m, key, source, default):
        return default
    v = m[key]
    lo = "" if minimum is None else f" >= {minimum}"
    hi = "" if maximum is None else f" <= {maximum}"
    allowed = f"an integer{lo}{' and' if lo and hi else ''}{hi}"
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(source, key, allowed, v)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise _bad(source, key, allowed, v)
    return v


def positive_int(v: Any, name: str) -> int:
    """`v`, an argument called `name` that must be a positive integer under the rule above (an int, never a bool);
    ValueError naming it otherwise."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer; got {v!r}")
    return v


def number(m: Mapping[str, Any], key: str, source: str, *, positive: bool = False, default: Any = _MISSING) -> float:
    """The finite number at `key` as a float (> 0 when `positive`); `default` when it is missing."""
    if not _present(m, key, source, default):
        return default
    v = m[key]
    allowed = "a finite number" + (" > 0" if positive else "")
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or (positive and not v > 0):
        raise _bad(source, key, allowed, v)
    return float(v)


def string(m: Mapping[str, Any], key: str, source: str, *, default: Any = _MISSING) -> str:
    """The str at `key`; `default` when it is missing."""
    if not _present(m, key, source, default):
        return default
    v = m[key]
    if not isinstance(v, str):
        raise _bad(source, key, "a string", v)
    return v


def boolean(m: Mapping[str, Any], key: str, source: str, *, default: Any = _MISSING) -> bool:
    """The bool at `key` (JSON true/false only, not 0/1); `default` when it is missing."""
    if not _present(m, key, source, default):
        return default
    v = m[key]
    if not isinstance(v, bool):
        raise _bad(source, key, "true or false", v)
    return v
