"""One module per `interp-bench` subcommand, each with `HELP`, `add_arguments(p)` and `run(args)`."""

NAMES = ("cache", "inspect", "train", "analyze", "splice", "steer", "report", "demo")
