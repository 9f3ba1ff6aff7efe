"""The `convserve` command: a thin dispatcher over the subcommands the packages register.

Each package declares its subcommands as entry points of the group `convserve.commands`
(pyproject.toml): `NAME = "package.module:add_NAME"`, a function that fills in the
subcommand's parser and sets `run`. Only the chosen subcommand's module is imported, so
`convserve health` loads neither the server nor TensorFlow; `convserve --help` imports every
command module, and none of them imports TensorFlow or the server before it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

__all__ = ["ENTRY_POINT_GROUP", "CommandError", "main", "positive_int"]

ENTRY_POINT_GROUP = "convserve.commands"


class CommandError(Exception):
    """A user error: printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    """An argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _not_installed(name: str, missing: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise CommandError(f"{name} is not installed here (no module {missing!r})")

    return run


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The command's parser; of the subcommands, only the one `argv` names is filled in
    (all of them when it names none)."""
    commands = {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}
    chosen = argv[0] if argv and argv[0] in commands else None
    parser = argparse.ArgumentParser(
        prog="convserve", description="Train and serve convolutional image classifiers over gRPC."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, entry in commands.items():
        if chosen not in (None, name):
            subparsers.add_parser(name)  # a valid name whose module stays unloaded
            continue
        try:
            add = entry.load()
        except ImportError as exc:  # e.g. the server's image has no training/
            missing = exc.name or entry.module
            subparsers.add_parser(name, help=f"(not installed: no module {missing})").set_defaults(
                run=_not_installed(name, missing)
            )
            continue
        summary = (add.__doc__ or "").strip()
        add(subparsers.add_parser(name, help=summary.splitlines()[0] if summary else None,
                                  description=summary))  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.run(args))
    except (CommandError, OSError, ValueError) as exc:
        print(f"convserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
