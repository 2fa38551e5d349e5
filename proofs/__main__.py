"""`python -m proofs [NAME ...]` (in a wheel: `python -m normfuse_ref._proofs`): print every checked derivation, or
the named ones; exit status 0 if all pass."""

from __future__ import annotations

import functools
import sys

from . import PROOFS, prove
from ._display import run_as_script


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in PROOFS]
    if unknown:
        print(f"error: unknown proof {unknown[0]!r}; choose from: {', '.join(PROOFS)}", file=sys.stderr)
        return 2
    status = 0
    for number, name in enumerate(names or list(PROOFS)):
        module = PROOFS[name]
        if number:
            print()
        status |= run_as_script(name, module.TITLE, functools.partial(prove, name), symbolic=module.SYMBOLIC_N)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
