"""`python -m normfuse_ref ...` is the `normfuse` command."""

from .cli import entry

raise SystemExit(entry())
