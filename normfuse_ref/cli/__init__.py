"""The `normfuse` command: one module per subcommand, one console wrapper (`console.Console`)."""
