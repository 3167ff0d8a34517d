"""`interp-bench` entry point: a thin dispatcher over `interp_bench.commands.*`."""

import argparse
import importlib
import os
import sys

from interp_bench.commands import NAMES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interp-bench",
        description="Cache activations, train SAEs/transcoders, analyse and steer features.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in NAMES:
        module = importlib.import_module(f"interp_bench.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input gets one clear line, not a traceback; the message names the fix.
        # Under torchrun every rank prints its own line: say which rank it is.
        world = int(os.environ.get("WORLD_SIZE", "1"))
        who = f" (rank {os.environ.get('RANK', '0')} of {world})" if world > 1 else ""
        print(f"interp-bench {args.command}{who}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
