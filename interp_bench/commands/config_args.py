"""Command-line flags generated from the config dataclasses, as sparsify's simple_parsing
configs do: each field becomes ``--field-name``, its docstring the help, its default the
default. So a default or a description is written once, in ``interp_bench/config.py``."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import math
import textwrap
import typing
from typing import Any

from interp_bench.commands.counts import parse_count


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (its attribute docstring)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def parse_float(text: str) -> float:
    """A finite float; NaN and inf are refused at parse time."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _list_of(parse):
    def parse_list(text: str) -> list:
        values = [parse(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"empty list: {text!r}")
        return values

    return parse_list


def _base_type(annotation: Any) -> type:
    """int | None -> int, and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _sequence_item(annotation: Any) -> type | None:
    """tuple[int, ...] / list[int] -> int; None for anything else."""
    if typing.get_origin(annotation) not in (tuple, list):
        return None
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return args[0] if args and args[0] in (int, float, str) else None


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
    sweep: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    aliases: dict[str, str] | None = None,
) -> None:
    """Add one flag per field of ``cls`` (those in ``include``, if given, less ``exclude``).
    Fields in ``sweep`` take comma-separated lists (one dictionary per value); ``aliases`` adds
    a short flag for a field (``{"l1_coefficient": "--l1"}``)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").split("\n")[0])
    for f in dataclasses.fields(cls):
        if (include is not None and f.name not in include) or f.name in exclude:
            continue
        kind = _base_type(hints[f.name])
        item = _sequence_item(kind)
        if kind not in (int, float, str, bool) and item is None:
            continue
        default = (defaults or {}).get(f.name, f.default)
        if default is dataclasses.MISSING:
            default = None
        flags = ["--" + f.name.replace("_", "-")]
        if aliases and f.name in aliases:
            flags.append(aliases[f.name])
        help_text = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if kind is bool:
            group.add_argument(
                *flags, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
            continue
        if item is not None:  # a tuple / list field takes one comma-separated value
            parse = _list_of({int: parse_count, float: parse_float, str: str}[item])
            shown = "none" if default is None else ",".join(map(str, default))
            group.add_argument(
                *flags,
                type=parse,
                default=default,
                dest=f.name,
                help=f"{help_text}; comma-separated (default: {shown})",
            )
            continue
        parse = {int: parse_count, float: parse_float, str: str}[kind]
        if f.name in sweep:
            parse = _list_of(parse)
            help_text += "; a comma-separated list sweeps (one dictionary per value)"
        shown = "auto" if default is None else default
        group.add_argument(
            *flags, type=parse, default=default, dest=f.name, help=f"{help_text} (default: {shown})"
        )


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any):
    """An instance of ``cls`` from the parsed flags; ``fixed`` values win."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    values.update(fixed)
    return cls(**{k: v for k, v in values.items() if k in names})
