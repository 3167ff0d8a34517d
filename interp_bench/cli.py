"""`interp-bench` entry point: a thin dispatcher over `interp_bench.commands.*`."""

import argparse
import errno
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


def one_line(err: BaseException) -> str:
    """The message of `err` on one line (library messages may span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def os_error_line(err: OSError) -> str:
    """Disk full, permissions and the like: what failed, where, and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        return (
            f"no space left on the device{where}; free some space and rerun the same command: "
            "finished work (listed shards, the last checkpoint) is kept and resumed"
        )
    return f"{err.strerror or one_line(err)}{where}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun every rank prints its own line: say which rank it is.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    who = f" (rank {os.environ.get('RANK', '0')} of {world})" if world > 1 else ""
    prefix = f"interp-bench {args.command}{who}"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:
        # Bad input gets one clear line, not a traceback; the message names the fix.
        print(f"{prefix}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{prefix}: error: {os_error_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
