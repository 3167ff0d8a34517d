"""One module per `interp-bench` subcommand: each has `HELP`, `add_arguments(p)`, `run(args)`."""

NAMES = (
    "cache",
    "inspect",
    "train",
    "analyze",
    "splice",
    "steer",
    "report",
    "attribute",
    "demo",
)
