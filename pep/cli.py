"""The ``tessera`` command: every plane's commands, put together in the order ``tessera
--help`` lists them.

The console script starts here because the enforcement plane is the top layer, the one
that may see all three planes (``pep`` → ``pdp`` → ``issuer``). Each plane declares its
commands next to its code; :mod:`pdp.commands` holds what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from issuer import cli as keys
from pdp.audit.cli import AUDIT, REPORT
from pdp.commands import OK, USAGE, Command, run
from pdp.commands.policy import CHECK, EVAL, EXPLAIN, FMT, LSP, TEST
from pdp.commands.serve import open_configured_store, serving
from pep.admin_mcp.cli import ADMIN_MCP
from pep.mcp_proxy.cli import MCP_PROXY
from pep.status import STATUS

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from pdp.serve.extensions import HttpParts


def _console(parts: HttpParts) -> Sequence[BaseRoute]:
    """The operator console (imported when ``tessera serve`` serves HTTP, not before)."""
    from pep.console.app import console

    return console(parts)


def _keys(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``tessera keys`` on the store and signing settings ``tessera serve`` would use (the
    identity plane cannot read the decision service's configuration itself)."""
    opened = open_configured_store(args, err, "keys")
    if opened is None:
        return USAGE
    store, config = opened
    try:
        keys.keys(args, store, config.signing_alg, config.token_lifetime, out)
    finally:
        store.close()
    return OK


KEYS = Command(
    "keys", help=keys.HELP, description=keys.DESCRIPTION, options=keys.add_options, run=_keys
)

# `tessera serve` with the operator console on its HTTP port, in every worker too
SERVE = serving([_console], "pep.console.worker")

COMMANDS = (
    CHECK,
    TEST,
    FMT,
    LSP,
    EVAL,
    EXPLAIN,
    SERVE,
    STATUS,
    AUDIT,
    REPORT,
    KEYS,
    MCP_PROXY,
    ADMIN_MCP,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tessera ARGV``."""
    return run(COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
