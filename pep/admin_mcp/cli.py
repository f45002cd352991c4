"""``tessera admin-mcp``: serve the admin tools over MCP, on stdio for an IDE or over
Streamable HTTP behind Tessera's own OAuth (see docs/admin-mcp.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from issuer.netloc import hostport
from pdp.commands import OK, USAGE, Command
from pdp.commands.serve import open_configured_store


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", metavar="URL", help="the store (default: as tessera serve)")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument(
        "--policies", metavar="DIR", help="the policy directory (default: as tessera serve)"
    )
    parser.add_argument(
        "--admin",
        metavar="NAME",
        help="stdio: who the changes are recorded for (default: local:<login name>)",
    )
    parser.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio",
    )
    parser.add_argument(
        "--issuer",
        metavar="URL",
        help="--http: the issuer whose tokens are accepted (default: as tessera serve)",
    )
    parser.add_argument(
        "--resource",
        metavar="URL",
        help="--http: this server's resource URI, the audience tokens must name "
        "(default: http://HOST:PORT/mcp)",
    )
    parser.add_argument(
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
    misused = _misused_flag(args)
    if misused is not None:
        print(f"tessera admin-mcp: {misused}", file=err)
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
            serve_stdio(settings)
            return OK
        from pep.admin_mcp.http import serve_http_forever

        host, _, port = args.http.rpartition(":")
        issuer = args.issuer or config.issuer or f"http://{hostport(config.host, config.http_port)}"
        return serve_http_forever(settings, host, int(port), issuer, args.resource, err, args.jwks)
    finally:
        store.close()


def _misused_flag(args: argparse.Namespace) -> str | None:
    """What is wrong with the transport's flags, found before the store is opened."""
    if args.http is None:
        for flag in ("issuer", "resource", "jwks"):
            if getattr(args, flag):
                return f"--{flag} only goes with --http"
        return None
    host, _, port = args.http.rpartition(":")
    if not host or not port.isdigit():
        return f"--http {args.http}: use HOST:PORT"
    return None


ADMIN_MCP = Command(
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
    options=_options,
    run=_admin_mcp,
)
