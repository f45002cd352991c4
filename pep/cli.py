"""The ``tessera`` command with the enforcement plane's commands: ``mcp-proxy`` and
``admin-mcp`` beside the decision point's and the issuer's (:mod:`pdp.cli`).

The console script starts here, so the decision point's command line never imports this
package (the arrow points from ``pep`` to ``pdp``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pdp.cli import OK, USAGE, Command, open_configured_store
from pdp.cli import main as tessera_main


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tessera ARGV``."""
    return tessera_main(argv, COMMANDS)


def _add_mcp_proxy(commands: Any) -> None:
    proxy = commands.add_parser(
        "mcp-proxy",
        help="put MCP servers behind OAuth 2.1 and tool-level policy",
        description="Serve each upstream MCP server of the [mcp_proxy] table (Streamable "
        "HTTP URL or stdio command) at its path. Every request needs an access token from "
        "the issuer for that path's resource URI; every tools/call, prompts/get and "
        "resources/read is decided by the PDP (over gRPC, or in this process with "
        "decisions = local), lists show only what the caller may use, and the upstream "
        "gets its own credential, never the caller's token. See docs/mcp.md.",
        epilog="example: tessera mcp-proxy --config tessera.toml --port 8090",
    )
    proxy.add_argument(
        "--config",
        metavar="FILE",
        default="tessera.toml",
        help="configuration file with an [mcp_proxy] table (default: tessera.toml)",
    )
    proxy.add_argument("--host", help="listen address (default: the file's, else 127.0.0.1)")
    proxy.add_argument("--port", type=int, help="listen port (default: the file's, else 8090)")
    proxy.add_argument("--pdp", metavar="HOST:PORT", help="the gRPC decision service")
    proxy.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (0: any free one; default: the "
        "file's, else off)",
    )
    proxy.add_argument(
        "--decisions",
        choices=("pdp", "local"),
        help="pdp: ask the PDP over gRPC for every call; local: decide in this process on "
        "the PDP's policies and store, asking the PDP only what a limit could decide "
        "(default: the file's, else pdp)",
    )


def _mcp_proxy(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import dataclasses

    import uvloop

    from issuer.store import StoreError
    from pdp.cli import load_served
    from pep.mcp_proxy.config import ConfigError, load_config
    from pep.mcp_proxy.serve import proxy_forever

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tessera mcp-proxy: {exc}", file=err)
        return USAGE
    names = ("host", "port", "pdp", "decisions", "metrics_port")
    flags = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    config = dataclasses.replace(config, **flags)
    loaded = None
    if config.decisions == "local":
        loaded = load_served(config.policies, "mcp-proxy", err)
        if loaded is None:
            return USAGE
    try:
        # uvloop: a tenth of a millisecond less per proxied call than asyncio's own loop
        uvloop.run(proxy_forever(config, loaded))
    except (OSError, StoreError) as exc:
        print(f"tessera mcp-proxy: {exc}", file=err)
        return USAGE
    return OK


def _add_admin_mcp_parser(commands: Any) -> None:
    admin = commands.add_parser(
        "admin-mcp",
        help="serve the admin tools over MCP (for an IDE's AI chat)",
        description="Serve Tessera's administration tools over the Model Context Protocol: "
        "list, register, update, suspend and retire agents, issue and rotate their "
        "credentials, list users and consents, check, test and what-if policy changes, "
        "simulate and explain decisions, list anomaly alerts, write compliance reports. "
        "Writes ask the person to confirm (MCP elicitation) and are recorded in the admin "
        "audit trail under the administrator's name. Over stdio (the default, for an IDE "
        "that starts the command) the administrator is --admin. Over Streamable HTTP "
        "(--http) every request needs an access token from Tessera's issuer with the "
        "tessera:admin scope and this server's URL as audience; its subject is the "
        "administrator. See docs/admin-mcp.md.",
        epilog="example (an IDE's MCP configuration): tessera admin-mcp --store "
        "sqlite:///var/tessera.db --policies policies --admin alice@example.com",
    )
    admin.add_argument("--store", metavar="URL", help="the store (default: as tessera serve)")
    admin.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    admin.add_argument(
        "--policies", metavar="DIR", help="the policy directory (default: as tessera serve)"
    )
    admin.add_argument(
        "--admin",
        metavar="NAME",
        help="stdio: who the changes are recorded for (default: local:<login name>)",
    )
    admin.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio",
    )
    admin.add_argument(
        "--issuer",
        metavar="URL",
        help="--http: the issuer whose tokens are accepted (default: as tessera serve)",
    )
    admin.add_argument(
        "--resource",
        metavar="URL",
        help="--http: this server's resource URI, the audience tokens must name "
        "(default: http://HOST:PORT/mcp)",
    )
    admin.add_argument(
        "--jwks",
        metavar="URL",
        help="--http: verify tokens with the keys the issuer publishes here, e.g. "
        "ISSUER/oauth/jwks (default: the signing keys in the store)",
    )


def _admin_mcp(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import getpass

    from pdp.serve.config import ConfigError, load_config

    flags = {"store": args.store, "policies": args.policies}
    try:
        config = load_config(flags, config_file=args.config)
    except ConfigError as exc:
        print(f"tessera admin-mcp: {exc}", file=err)
        return USAGE
    if not Path(config.policies).is_dir():
        print(f"tessera admin-mcp: {config.policies} is not a directory", file=err)
        return USAGE
    opened = open_configured_store(args, err, "admin-mcp")
    if opened is None:
        return USAGE
    store, _ = opened
    from pep.admin_mcp.server import Settings, serve_stdio

    admin = args.admin or f"local:{getpass.getuser()}"
    settings = Settings(store, Path(config.policies), admin)
    try:
        if args.http is None:
            for flag in ("issuer", "resource", "jwks"):
                if getattr(args, flag):
                    print(f"tessera admin-mcp: --{flag} only goes with --http", file=err)
                    return USAGE
            serve_stdio(settings)
            return OK
        from pep.admin_mcp.http import serve_http_forever

        host, _, port = args.http.rpartition(":")
        if not host or not port.isdigit():
            print(f"tessera admin-mcp: --http {args.http}: use HOST:PORT", file=err)
            return USAGE
        issuer = args.issuer or config.issuer or f"http://{config.host}:{config.http_port}"
        return serve_http_forever(settings, host, int(port), issuer, args.resource, err, args.jwks)
    finally:
        store.close()


COMMANDS = {
    "mcp-proxy": Command(_add_mcp_proxy, _mcp_proxy),
    "admin-mcp": Command(_add_admin_mcp_parser, _admin_mcp),
}
