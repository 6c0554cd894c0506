"""One module per `segpipe` subcommand: `add_arguments(parser)` and `run(args) -> int`."""
