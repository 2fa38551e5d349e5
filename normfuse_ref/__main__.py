"""`python -m normfuse_ref ...` is the `normfuse` command."""

from .cli.main import main

raise SystemExit(main())
