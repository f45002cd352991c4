"""What every ``tessera`` command shares: its exit codes, how a plane declares a command,
and the parser that puts the planes' commands together under one ``tessera``.

Each plane declares its commands next to its code: the policy commands in
:mod:`pdp.commands.policy`, ``serve`` in :mod:`pdp.commands.serve`, ``audit`` and
``report`` in :mod:`pdp.audit.cli`, ``keys`` in :mod:`issuer.cli`, ``mcp-proxy`` and
``admin-mcp`` beside their servers in ``pep``. The console script, :mod:`pep.cli`, is the
one place that sees every plane (the arrows point ``pep`` → ``pdp`` → ``issuer``) and
hands their commands to :func:`run`.

Exit codes: 0 fine; 1 a failed check or test, a file that ``fmt --check`` would change, a
deny from ``eval``/``explain``, a broken audit chain; 2 a usage or input error (bad flags,
unreadable files, malformed request JSON, a policy directory that does not load for
``eval``/``explain``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import NoReturn, TextIO

OK, FAILED, USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]
"""How a command runs: its parsed arguments, standard output and error, to an exit code."""


@dataclass(frozen=True)
class Command:
    """One ``tessera`` command as ``tessera --help`` and ``tessera NAME --help`` show it,
    and how it runs."""

    name: str
    help: str
    """The one line ``tessera --help`` gives it."""
    description: str
    options: Callable[[argparse.ArgumentParser], None]
    """Adds the command's arguments to its parser."""
    run: Handler
    epilog: str | None = None


class _Parser(argparse.ArgumentParser):
    """argparse that exits with 2 and one clear line on usage errors."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    """``tessera`` with ``commands``, listed by ``--help`` in their order."""
    parser = _Parser(
        prog="tessera",
        description="Tessera: identity and authorization for AI agents.",
        epilog="Run 'tessera COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"tessera {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for command in commands:
        command.options(
            subparsers.add_parser(
                command.name,
                help=command.help,
                description=command.description,
                epilog=command.epilog,
            )
        )
    return parser


def run(commands: Sequence[Command], argv: Sequence[str] | None = None) -> int:
    """Run ``tessera ARGV`` with ``commands``; a reader that stops reading (``| head``) is
    no failure."""
    args = build_parser(commands).parse_args(argv)
    handler = {command.name: command.run for command in commands}[args.command]
    try:
        code = handler(args, sys.stdout, sys.stderr)
    except BrokenPipeError:
        code = OK
    return code


def _version() -> str:
    try:
        return metadata.version("tessera")
    except metadata.PackageNotFoundError:
        return "unknown"
