"""The `normfuse` command: one module per subcommand, one console wrapper (`console.Console`).

`entry` is the installed command's entry point. It imports the command-line modules (rich among them, a few
hundredths of a second) inside its own handler, so that Ctrl-C while they load is the same one line and status 130
as Ctrl-C later, not a traceback of the import.
"""

import sys


def entry() -> int:
    """`normfuse` as a command: `main.main()` on the process's own arguments."""
    try:
        from .main import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    return main()
