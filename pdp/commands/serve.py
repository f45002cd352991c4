"""``tessera serve``, and what other commands take from it: the policies a server decides
with and the store it would open.

This is the one place the command line reaches into the decision service
(:func:`pdp.server.serve_forever`, or :func:`pdp.workers.supervise` for several workers).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from pdp.commands import OK, USAGE, Command
from pdp.commands.policy import print_diagnostics
from pdp.lang.errors import PolicyError

if TYPE_CHECKING:
    from issuer.store import Store
    from pdp.loader import Loaded
    from pdp.serve.config import ServeConfig
    from pdp.serve.extensions import HttpExtension
    from pdp.serve.sources import PolicySource


def _serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument(
        "--policies",
        metavar="DIR|git+URL",
        help="policy directory (default: policies), or a git repository: "
        "git+URL[?dir=PATH][#REF] (REF a branch, tag or commit; default: the remote's HEAD)",
    )
    parser.add_argument(
        "--policy-poll-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between fetches of a git policy repository (default: 30)",
    )
    parser.add_argument(
        "--host", help="address to listen on, an IPv6 one bare or in brackets (default: 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, help="gRPC port (default: 50051; 0 picks one)")
    parser.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="how long calls in flight may take to finish on SIGTERM or SIGINT; those "
        "still running then end UNAVAILABLE (default: 5)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="serving processes on the same ports (default: 1; 'auto': one per CPU this "
        "process may use)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="Prometheus /metrics port on the same host (default: 9464; 0 picks one; -1 off)",
    )
    parser.add_argument(
        "--cache-size", type=int, metavar="N", help="decision cache entries (default: 10000; 0 off)"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="server certificate chain: TLS on")
    parser.add_argument("--tls-key", metavar="PEM", help="server private key")
    parser.add_argument(
        "--tls-client-ca", metavar="PEM", help="require client certificates from this CA (mTLS)"
    )
    parser.add_argument(
        "--caller-auth",
        choices=["auto", "required", "insecure-none"],
        help="who may ask for decisions on the gRPC port: auto (callers authenticate, by "
        "mTLS or a bearer token with tessera:decide, when --host reaches beyond loopback; "
        "the default), required (on loopback too), insecure-none (anyone who reaches it)",
    )
    parser.add_argument(
        "--agent-token-audience",
        metavar="AUDIENCES",
        help="the audiences an agent token in a question may name (default: the issuer URL)",
    )
    _identity_options(parser)


def _workers(text: str) -> int:
    from pdp.serve.config import ConfigError, workers_count

    try:
        return workers_count(text, "")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(": ")) from None


def _identity_options(parser: argparse.ArgumentParser) -> None:
    """The identity plane ``tessera serve`` runs beside the decisions: the directory, SCIM
    and the token issuer."""
    parser.add_argument(
        "--store",
        metavar="URL",
        help="the directory: sqlite:///var/tessera.db (default), postgresql://host/db, or '' "
        "to decide on the attributes callers send",
    )
    parser.add_argument(
        "--counters",
        metavar="WHERE",
        help="where limit usage is counted: store (the database of --store; the default "
        "with a store), memory (this process only; the default without one), "
        "redis://host:6379/0 (shared by replicas), or a database URL of their own",
    )
    parser.add_argument(
        "--counters-timeout",
        type=float,
        metavar="SECONDS",
        help="how long a limit check may take before the limit denies (default: 0.1)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        metavar="PORT",
        help="SCIM 2.0 at /scim/v2 on this port (default: 8080; 0 picks one; -1 off)",
    )
    parser.add_argument(
        "--issuer",
        metavar="URL",
        help="the OAuth issuer URL (default: http(s)://HOST:HTTP_PORT)",
    )
    parser.add_argument(
        "--signing-alg",
        choices=["ES256", "RS256", "EdDSA"],
        help="access token signature algorithm for new keys (default: ES256)",
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        metavar="SECONDS",
        help="how long access tokens are valid (default: 300)",
    )
    parser.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="bootstrap admin bearer token for SCIM (prefer TESSERA_ADMIN_TOKEN; "
        "default: a random one, printed at start)",
    )


def serving(extensions: Sequence[HttpExtension] = (), worker: str = "pdp.workers") -> Command:
    """The ``serve`` command; ``extensions`` add routes to the HTTP port (the layer above
    gives its operator console), ``worker`` is the module each of ``--workers N`` runs
    (one that passes the same extensions on)."""

    def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        return _serve(args, err, extensions, worker)

    return dataclasses.replace(SERVE, run=run)


def _serve(
    args: argparse.Namespace,
    err: TextIO,
    extensions: Sequence[HttpExtension] = (),
    worker: str = "pdp.workers",
) -> int:
    import asyncio

    from issuer.store import StoreError
    from pdp.engine import Engine
    from pdp.serve.reload import log_reloads
    from pdp.serve.sources import open_source
    from pdp.server import serve_forever

    config = _configured(args, err)
    if config is None:
        return USAGE
    try:
        source = open_source(config.policies)
    except OSError as exc:
        print(f"tessera serve: {exc}", file=err)
        return USAGE
    try:
        loaded = load_served(source, "serve", err)
        if loaded is None:
            return USAGE
        summary = _summary(config, source, loaded)
        log_reloads(err)
        if config.workers > 1:
            from pdp.workers import supervise

            source.close()  # each worker follows the policies with a source of its own
            return supervise(config, [summary], err, worker)
        engine = Engine(loaded.bundle)
        serving = serve_forever(engine, config, [summary], policies=source, extensions=extensions)
        asyncio.run(serving)
    except (OSError, StoreError) as exc:
        print(f"tessera serve: {exc}", file=err)
        return USAGE
    finally:
        source.close()
    return OK


def _configured(args: argparse.Namespace, err: TextIO) -> ServeConfig | None:
    """The settings from flags, environment and file; None after printing why not."""
    from pdp.serve.config import ConfigError, load_config

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        config = load_config(flags, config_file=args.config)
        config.credentials()  # fail now, not after loading the policies
    except ConfigError as exc:
        print(f"tessera serve: {exc}", file=err)
        return None
    return config


def _summary(config: ServeConfig, source: PolicySource, loaded: Loaded) -> str:
    """The startup line that says what is decided with, and how it is followed."""
    from pdp.serve.sources import is_git

    bundle = loaded.bundle
    if is_git(config.policies):
        follow = f"fetched every {config.policy_poll_interval:g} s and on SIGHUP"
    else:
        follow = "reloaded when they change"
    return (
        f"tessera: {len(bundle.rules)} rules from {source.where} (bundle {bundle.version}), "
        f"{follow}; health and reflection are on"
    )


SERVE = Command(
    "serve",
    help="run the gRPC decision service",
    description="Load the policies and serve tessera.v1.Authorizer over gRPC (with the "
    "standard health and reflection services) until SIGINT or SIGTERM; then drain "
    "in-flight calls and stop. Changes to the policy directory are loaded while "
    "serving (a git+URL repository is fetched every --policy-poll-interval seconds and "
    "a new commit loaded); policies that do not load are logged and the previous "
    "policies keep serving; SIGHUP loads them at once (a repository: fetched at once). "
    "With --workers N, N processes serve the same ports under one parent, which "
    "restarts a worker that dies and serves the metrics of all. Each setting comes "
    "from its flag, else TESSERA_<NAME> in the environment, else the [serve] table of "
    "--config (default ./tessera.toml if it exists), else its default.",
    options=_serve_options,
    run=lambda args, out, err: _serve(args, err),
)


def load_served(policies: str | PolicySource, command: str, err: TextIO) -> Loaded | None:
    """The policies a server is to decide with, from ``policies`` (a directory, or a
    source), their warnings printed; None, with the diagnostics or the reason printed,
    when they cannot be had or do not load (the server must not start)."""
    from pdp.serve.sources import DirectorySource, SourceError

    source = DirectorySource(policies) if isinstance(policies, str) else policies
    try:
        loaded = source.load_first()
    except SourceError as exc:
        print(f"tessera {command}: {exc}", file=err)
        print(f"tessera {command}: the policies cannot be had; nothing is served", file=err)
        return None
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics, err)
        print(f"tessera {command}: the policies do not load; nothing is served", file=err)
        return None
    print_diagnostics(loaded.warnings, err)
    return loaded


def open_configured_store(
    args: argparse.Namespace, err: TextIO, command: str
) -> tuple[Store, ServeConfig] | None:
    """(the store ``tessera serve`` would use, the configuration it came from), from flag,
    environment and file; None after printing why not.

    Only an existing store opens: ``tessera serve`` makes stores, while the commands
    that read or administer one (audit, report, keys, admin-mcp) would otherwise answer
    from a new, empty store, made where a mistyped URL points."""
    from issuer.store import MissingStore, StoreError, open_store
    from pdp.serve.config import ConfigError, load_config

    try:
        config = load_config({"store": args.store}, config_file=args.config)
    except ConfigError as exc:
        print(f"tessera {command}: {exc}", file=err)
        return None
    if not config.store:
        print(f"tessera {command}: no store is configured", file=err)
        return None
    try:
        return open_store(config.store, create=False), config
    except MissingStore as exc:
        print(
            f"tessera {command}: {exc}; nothing was created (tessera serve creates a store; "
            "check --store, TESSERA_STORE and the configuration file)",
            file=err,
        )
        return None
    except StoreError as exc:
        print(f"tessera {command}: {exc}", file=err)
        return None
