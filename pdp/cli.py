"""The ``tessera`` command of the decision point and the issuer: policies (check, test,
format, evaluate, explain), the decision service, audit trails, reports and signing keys.

Exit codes: 0 fine; 1 a failed check or test, a file that ``fmt --check`` would change, or
a deny from ``eval``/``explain``; 2 a usage or input error (bad flags, unreadable files,
malformed request JSON, a policy directory that does not load for ``eval``/``explain``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from pdp.audit.baselines import ALERTS
from pdp.audit.chain import TRAILS
from pdp.lang.errors import Diagnostic, PolicyError

if TYPE_CHECKING:
    from pdp.audit.query import Filters
    from pdp.loader import Loaded

OK, FAILED, USAGE = 0, 1, 2

DEFAULT_POLICIES = "policies"


class _Parser(argparse.ArgumentParser):
    """argparse that exits with 2 and one clear line on usage errors."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]
"""A command: its parsed arguments, standard output and error, to an exit code."""


@dataclass(frozen=True)
class Command:
    """A command another package adds to ``tessera`` (the enforcement plane's, which this
    package must not import): how to add its parser, and how to run it."""

    add: Callable[[Any], None]
    run: Handler


def build_parser(extra: Sequence[Command] = ()) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tessera",
        description="Tessera: identity and authorization for AI agents.",
        epilog="Run 'tessera COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"tessera {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    check = commands.add_parser(
        "check",
        help="parse and type-check a policy directory",
        description="Parse and type-check every .pol file below DIR as one bundle. "
        "Prints errors and warnings with file:line:col; exits 1 on any error.",
    )
    check.add_argument(
        "directory",
        nargs="?",
        default=DEFAULT_POLICIES,
        metavar="DIR",
        help=f"policy directory (default: {DEFAULT_POLICIES})",
    )
    check.add_argument("--json", action="store_true", help="print diagnostics as JSON")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")

    test = commands.add_parser(
        "test",
        help="run the policy tests of a directory",
        description="Run every test block of the bundle in DIR; print each failure with "
        "its decision trace; exit 1 if any test fails.",
    )
    test.add_argument(
        "directory",
        nargs="?",
        default=DEFAULT_POLICIES,
        metavar="DIR",
        help=f"policy directory (default: {DEFAULT_POLICIES})",
    )
    test.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")

    fmt = commands.add_parser(
        "fmt",
        help="rewrite .pol files in canonical form",
        description="Rewrite .pol files in canonical form, in place. Directories are "
        "searched for .pol files. Formatting twice changes nothing.",
    )
    fmt.add_argument(
        "paths",
        nargs="*",
        default=[DEFAULT_POLICIES],
        metavar="FILE",
        help=f"files or directories (default: {DEFAULT_POLICIES})",
    )
    fmt.add_argument(
        "--check",
        action="store_true",
        help="change nothing; list files that are not formatted and exit 1",
    )

    for name, what in (
        ("eval", "print the decision as JSON"),
        ("explain", "print why each candidate rule did what it did"),
    ):
        sub = commands.add_parser(
            name,
            help=f"decide one request and {what}",
            description=f"Decide the request in REQUEST.json ('-' for standard input) and "
            f"{what}. Exit 0 on allow, 1 on deny. The request format is in README.md.",
        )
        sub.add_argument("request", metavar="REQUEST.json", help="request file, or - for stdin")
        sub.add_argument(
            "--policies",
            default=DEFAULT_POLICIES,
            metavar="DIR",
            help=f"policy directory (default: {DEFAULT_POLICIES})",
        )
        if name == "explain":
            sub.add_argument(
                "--all",
                action="store_true",
                help="also list the rules whose target does not cover the request",
            )
    serve = commands.add_parser(
        "serve",
        help="run the gRPC decision service",
        description="Load the policies and serve tessera.v1.Authorizer over gRPC (with the "
        "standard health and reflection services) until SIGINT or SIGTERM; then drain "
        "in-flight calls and stop. Changes to the policy directory are loaded while "
        "serving; a directory that does not load is logged and the previous policies keep "
        "serving. Each setting comes from its flag, else TESSERA_<NAME> in the "
        "environment, else the [serve] table of --config (default ./tessera.toml if it "
        "exists), else its default.",
    )
    serve.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    serve.add_argument("--policies", metavar="DIR", help="policy directory (default: policies)")
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (default: 50051; 0 picks one)")
    serve.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="how long in-flight calls may finish on shutdown (default: 5)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="Prometheus /metrics port on the same host (default: 9464; 0 picks one; -1 off)",
    )
    serve.add_argument(
        "--cache-size", type=int, metavar="N", help="decision cache entries (default: 10000; 0 off)"
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="server certificate chain: TLS on")
    serve.add_argument("--tls-key", metavar="PEM", help="server private key")
    serve.add_argument(
        "--tls-client-ca", metavar="PEM", help="require client certificates from this CA (mTLS)"
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="the directory: sqlite:///var/tessera.db (default), postgresql://host/db, or '' "
        "to decide on the attributes callers send",
    )
    serve.add_argument(
        "--http-port",
        type=int,
        metavar="PORT",
        help="SCIM 2.0 at /scim/v2 on this port (default: 8080; 0 picks one; -1 off)",
    )
    serve.add_argument(
        "--issuer",
        metavar="URL",
        help="the OAuth issuer URL (default: http(s)://HOST:HTTP_PORT)",
    )
    serve.add_argument(
        "--signing-alg",
        choices=["ES256", "RS256", "EdDSA"],
        help="access token signature algorithm for new keys (default: ES256)",
    )
    serve.add_argument(
        "--token-lifetime",
        type=int,
        metavar="SECONDS",
        help="how long access tokens are valid (default: 300)",
    )
    serve.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="bootstrap admin bearer token for SCIM (prefer TESSERA_ADMIN_TOKEN; "
        "default: a random one, printed at start)",
    )
    audit = commands.add_parser(
        "audit",
        help="verify, query or export the audit trails",
        description="The audit trails live in the store: 'agent' holds every decision and "
        "token, 'admin' what administrators did, 'checkpoint' the issuer-signed heads of "
        "the others. 'verify' walks a trail's hash chain and names every changed, deleted, "
        "inserted or reordered entry, then checks the signed checkpoints for that trail "
        "(a rewritten or truncated history; exit 1 when anything is broken); "
        "'query' lists records matching the filters; 'export' writes them as JSON lines "
        "for a SIEM; 'alerts' lists the anomaly alerts raised on agents.",
    )
    audit.add_argument("action", choices=["verify", "query", "export", "alerts"])
    audit.add_argument("--store", metavar="URL", help="the store (default: as tessera serve)")
    audit.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    audit.add_argument("--trail", choices=TRAILS, default="agent")
    audit.add_argument("--agent", help="only this agent's records")
    audit.add_argument("--user", help="only records for this user")
    audit.add_argument("--decision", choices=["allow", "deny"], help="only allows or denies")
    audit.add_argument("--tool", help="only calls of this tool (resource id of type tool)")
    audit.add_argument("--since", metavar="TIME", help="RFC 3339, e.g. 2026-11-28T10:00:00Z")
    audit.add_argument("--until", metavar="TIME", help="RFC 3339")
    audit.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="verify: check the signed checkpoints with this JWK Set, e.g. a copy of the "
        "issuer's /oauth/jwks kept by the auditor (default: every key in the store)",
    )
    audit.add_argument(
        "--issuer", metavar="URL", help="verify: the issuer the checkpoints must name"
    )
    audit.add_argument("--alert", choices=ALERTS, help="alerts: only this kind")
    audit.add_argument("--json", action="store_true", help="alerts: a JSON array")
    _add_report_parser(commands)
    keys = commands.add_parser(
        "keys",
        help="list or rotate the issuer's signing keys",
        description="The issuer's signing keys live in the store. 'list' shows them; 'rotate' "
        "makes a new current key (running servers pick it up on its first token); the old "
        "key stays published until the tokens it signed have expired.",
    )
    keys.add_argument("action", choices=["list", "rotate"])
    keys.add_argument(
        "--store",
        metavar="URL",
        help="the store (default: as tessera serve: TESSERA_STORE, "
        "tessera.toml, else sqlite:///var/tessera.db)",
    )
    keys.add_argument("--alg", choices=["ES256", "RS256", "EdDSA"], help="for rotate")
    keys.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    for command in extra:
        command.add(commands)
    return parser


def main(argv: Sequence[str] | None = None, extra: Mapping[str, Command] | None = None) -> int:
    """Run ``tessera ARGV``; ``extra`` adds commands by name."""
    extra = extra or {}
    args = build_parser(list(extra.values())).parse_args(argv)
    handler: dict[str, Handler] = {
        "check": _check,
        "test": _test,
        "fmt": _fmt,
        "eval": _eval,
        "explain": _explain,
        "serve": _serve,
        "keys": _keys,
        "audit": _audit,
        "report": _report,
        **{name: command.run for name, command in extra.items()},
    }
    try:
        code: int = handler[args.command](args, sys.stdout, sys.stderr)
    except BrokenPipeError:
        code = OK
    return code


# ------------------------------------------------------------------ commands


def print_diagnostics(diagnostics: Sequence[Diagnostic], err: TextIO) -> None:
    for diagnostic in diagnostics:
        print(diagnostic.render(), file=err)
        print(file=err)


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.loader import load_directory

    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"tessera check: {directory} is not a directory", file=err)
        return USAGE
    try:
        loaded = load_directory(directory)
    except PolicyError as exc:
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "diagnostics": [d.to_json() for d in exc.diagnostics]}, indent=2
                ),
                file=out,
            )
        else:
            print_diagnostics(exc.diagnostics, err)
            count = len(exc.diagnostics)
            print(f"{count} error{'s' if count != 1 else ''} in {directory}", file=err)
        return FAILED
    warnings = loaded.warnings
    failed = bool(warnings) and args.strict
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not failed,
                    "version": loaded.bundle.version,
                    "diagnostics": [d.to_json() for d in warnings],
                },
                indent=2,
            ),
            file=out,
        )
        return FAILED if failed else OK
    print_diagnostics(warnings, err)
    bundle = loaded.bundle
    print(
        f"{'FAILED' if failed else 'ok'}: {len(bundle.rules)} rules, {len(bundle.tests)} tests "
        f"in {len(loaded.modules)} files, {len(warnings)} warnings (version {bundle.version})",
        file=out,
    )
    return FAILED if failed else OK


def _test(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.explain import render_explanation
    from pdp.interpreter import Interpreter
    from pdp.loader import load_directory
    from pdp.policytest import TEST_CLOCK, run_tests

    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"tessera test: {directory} is not a directory", file=err)
        return USAGE
    try:
        loaded = load_directory(directory)
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics, err)
        print("the policies do not load, so no test ran", file=err)
        return FAILED
    results = run_tests(loaded.bundle)
    failed = [r for r in results if not r.passed]
    for result in results:
        if result.passed:
            if args.verbose:
                print(f"PASS {result.test.name}", file=out)
            continue
        failure = result.failure
        assert failure is not None
        where = f"step {failure.step}" + (
            f", repetition {failure.repetition}" if failure.repetition > 1 else ""
        )
        print(f"FAIL {result.test.name}  ({result.span}, {where})", file=out)
        print(f"  {failure.message}", file=out)
        if failure.request is not None:
            bundle = loaded.bundle
            interpreter = Interpreter(
                bundle.rules, bundle.lets, bundle.version, clock=lambda: TEST_CLOCK
            )
            explanation = interpreter.explain(failure.request, commit=False)
            print(_indent(render_explanation(explanation), "  | "), file=out)
        print(file=out)
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=out)
    return FAILED if failed else OK


def _fmt(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.lang.formatter import format_source
    from pdp.loader import SUFFIX, policy_files

    files: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(policy_files(path))
        elif path.is_file():
            files.append(path)
        else:
            print(f"tessera fmt: {path}: no such file or directory", file=err)
            return USAGE
    if not files:
        print(f"tessera fmt: no {SUFFIX} files in {', '.join(args.paths)}", file=err)
        return USAGE
    changed: list[Path] = []
    broken = False
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
            formatted = format_source(text, str(path))
        except PolicyError as exc:
            print_diagnostics(exc.diagnostics, err)
            broken = True
            continue
        except (OSError, UnicodeDecodeError) as exc:
            print(f"tessera fmt: {path}: {exc}", file=err)
            broken = True
            continue
        if formatted != text:
            changed.append(path)
            if not args.check:
                path.write_text(formatted, encoding="utf-8")
    verb = "would reformat" if args.check else "reformatted"
    for path in changed:
        print(f"{verb} {path}", file=out)
    print(f"{len(changed)} of {len(files)} files {verb}", file=out)
    if broken:
        return USAGE
    return FAILED if (args.check and changed) else OK


def _decide(args: argparse.Namespace, err: TextIO) -> tuple[Any, Any] | int:
    from pdp.loader import load_directory
    from pdp.model import RequestError
    from pdp.request import request_from_json

    try:
        loaded = load_directory(args.policies)
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics, err)
        return USAGE
    try:
        if args.request == "-":
            raw = sys.stdin.read()
        else:
            raw = Path(args.request).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tessera {args.command}: cannot read {args.request}: {exc}", file=err)
        return USAGE
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        print(
            f"tessera {args.command}: {args.request}:{exc.lineno}:{exc.colno}: "
            f"invalid JSON: {exc.msg}",
            file=err,
        )
        return USAGE
    try:
        request = request_from_json(data, loaded.bundle.schema)
    except RequestError as exc:
        print(f"tessera {args.command}: {args.request}: invalid request: {exc}", file=err)
        return USAGE
    return loaded.bundle, request


def _eval(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.engine import Engine

    prepared = _decide(args, err)
    if isinstance(prepared, int):
        return prepared
    bundle, request = prepared
    decision = Engine(bundle).decide(request)
    print(json.dumps(decision.to_json(), indent=2), file=out)
    return OK if decision.allow else FAILED


def _explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.explain import render_explanation
    from pdp.interpreter import Interpreter

    prepared = _decide(args, err)
    if isinstance(prepared, int):
        return prepared
    bundle, request = prepared
    explanation = Interpreter(bundle.rules, bundle.lets, bundle.version).explain(request)
    print(render_explanation(explanation, show_untargeted=args.all), file=out)
    return OK if explanation.decision.allow else FAILED


def _serve(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import asyncio

    from issuer.store import StoreError
    from pdp.engine import Engine
    from pdp.serve.config import ConfigError, load_config
    from pdp.serve.grpc import serve_forever

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        config = load_config(flags, config_file=args.config)
        config.credentials()  # fail now, not after loading the policies
    except ConfigError as exc:
        print(f"tessera serve: {exc}", file=err)
        return USAGE
    loaded = load_served(config.policies, "serve", err)
    if loaded is None:
        return USAGE
    bundle = loaded.bundle
    summary = (
        f"tessera: {len(bundle.rules)} rules from {config.policies} "
        f"(bundle {bundle.version}), reloaded when they change; health and reflection are on"
    )
    try:
        asyncio.run(serve_forever(Engine(bundle), config, [summary]))
    except (OSError, StoreError) as exc:
        print(f"tessera serve: {exc}", file=err)
        return USAGE
    return OK


def load_served(directory: str, command: str, err: TextIO) -> Loaded | None:
    """The policies a server is to decide with, their warnings printed; None, with the
    diagnostics printed, when they do not load (the server must not start)."""
    from pdp.loader import load_directory

    try:
        loaded = load_directory(directory)
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics, err)
        print(f"tessera {command}: the policies do not load; nothing is served", file=err)
        return None
    print_diagnostics(loaded.warnings, err)
    return loaded


def open_configured_store(
    args: argparse.Namespace, err: TextIO, command: str
) -> tuple[Any, Any] | None:
    """(the store ``tessera serve`` would use, the configuration it came from), from flag,
    environment and file; None after printing why not."""
    from issuer.store import StoreError, open_store
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
        return open_store(config.store), config
    except StoreError as exc:
        print(f"tessera {command}: {exc}", file=err)
        return None


def _audit(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.audit.query import Filters, records

    try:
        filters = Filters.parse(
            agent=args.agent,
            user=args.user,
            decision=args.decision,
            tool=args.tool,
            since=args.since,
            until=args.until,
        )
    except ValueError as exc:
        print(f"tessera audit: {exc}", file=err)
        return USAGE
    only_alerts = [flag for flag in ("alert", "json") if getattr(args, flag)]
    if args.action != "alerts" and only_alerts:
        print(f"tessera audit: --{only_alerts[0]} only goes with 'alerts'", file=err)
        return USAGE
    if args.action == "alerts":
        return _audit_alerts(args, filters, out, err)
    opened = open_configured_store(args, err, "audit")
    if opened is None:
        return USAGE
    store, _ = opened
    try:
        if args.action == "verify":
            return _verify(store, args, out, err)
        for seq, record in records(store, args.trail, filters):
            if args.action == "export":
                print(json.dumps({**record, "trail": args.trail, "seq": seq}), file=out)
            else:
                verdict = "allow" if record.get("allow") else "deny"
                resource = record.get("resource") or {}
                print(
                    f"{seq:>8}  {record.get('at', '')[:19]}  {verdict:5}  "
                    f"{record.get('agent', '')}  {record.get('action', '')} "
                    f"{resource.get('type', '')}:{resource.get('id', '')}  "
                    f"{record.get('decision_id', '')}",
                    file=out,
                )
    finally:
        store.close()
    return OK


def _verify(store: Any, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The trail's hash chain, then the signed checkpoints that vouch for it."""
    from issuer.keys import every_public_key
    from pdp.audit.checkpoints import TRAIL, verify_checkpoints
    from pdp.audit.query import verify_trail

    trail = args.trail
    if args.jwks:
        try:
            jwk_set = _read_jwks(args.jwks)
        except (OSError, ValueError) as exc:
            print(f"tessera audit: --jwks {args.jwks}: {exc}", file=err)
            return USAGE
    else:
        jwk_set = every_public_key(store)
    count, problems = verify_trail(store, trail)
    for problem in problems:
        print(f"{trail} trail, {problem}", file=out)
    signed, newest, refused = verify_checkpoints(
        store, jwk_set, args.issuer, None if trail == TRAIL else trail
    )
    for problem in refused:
        print(f"{TRAIL} trail, {problem}", file=out)
    if problems or refused:
        total = len(problems) + len(refused)
        print(f"the {trail} trail is BROKEN: {total} problem(s)", file=out)
        return FAILED
    if not signed:
        vouched = "no signed checkpoint yet"
    elif trail == TRAIL:
        vouched = f"{signed} signed checkpoint(s) verified"
    else:
        vouched = f"{signed} signed checkpoint(s) verified, the newest for entry {newest}"
    print(f"the {trail} trail verifies: {count} entries, chain intact; {vouched}", file=out)
    return OK


def _read_jwks(where: str) -> dict[str, Any]:
    """A JWK Set from a file or an http(s) URL (the issuer's published /oauth/jwks)."""
    if where.startswith(("https://", "http://")):
        import httpx

        try:
            response = httpx.get(where, timeout=10)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise OSError(str(exc)) from None
        text = response.text
    else:
        text = Path(where).read_text()
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWK Set (a JSON object with a keys list)")
    return data


def _audit_alerts(args: argparse.Namespace, filters: Filters, out: TextIO, err: TextIO) -> int:
    """``tessera audit alerts``: the alert trail, as a table or a JSON array."""
    from pdp.audit.query import records

    unused = [flag for flag in ("user", "decision", "tool") if getattr(args, flag)]
    if args.trail != "agent":
        unused.append("trail")
    if unused:
        print(f"tessera audit: --{unused[0]} does not apply to alerts", file=err)
        return USAGE
    opened = open_configured_store(args, err, "audit")
    if opened is None:
        return USAGE
    store, _ = opened
    try:
        found = [
            {"seq": seq, **record}
            for seq, record in records(store, "alert", filters)
            if record.get("kind") == "alert" and args.alert in (None, record.get("alert"))
        ]
    finally:
        store.close()
    if args.json:
        print(json.dumps(found, indent=2), file=out)
        return OK
    if not found:
        print("no alerts", file=out)
        return OK
    print(
        f"{'SEQ':>6}  {'TIME (UTC)':19}  {'SEVERITY':8}  {'ALERT':8}  {'AGENT':16}  MESSAGE",
        file=out,
    )
    for alert in found:
        print(
            f"{alert['seq']:>6}  {str(alert.get('at', ''))[:19]:19}  "
            f"{alert.get('severity', '')!s:8}  {alert.get('alert', '')!s:8}  "
            f"{alert.get('agent', '')!s:16}  {alert.get('message', '')}",
            file=out,
        )
    return OK


def _add_report_parser(commands: Any) -> None:
    report = commands.add_parser(
        "report",
        help="write a compliance report on one agent or every agent",
        description="Write a compliance report for a period: each agent's identity (owner, "
        "purpose, risk, status history), credentials, delegations and consents, decisions "
        "over time, denials and anomaly alerts, and whether every audit trail's hash chain "
        "verifies. HTML is one self-contained page (a chart, no scripts, no external "
        "links); JSON has the stable keys of docs/audit.md; md is Markdown. Exit 0 when "
        "the report is written and the chains verify, 1 when it is written but a chain "
        "is broken, 2 on a usage error (an unknown agent, a bad time).",
        epilog="example: tessera report --agent pay-bot --since 2026-11-01T00:00:00Z "
        "--until 2026-12-01T00:00:00Z --format html --output pay-bot-november.html",
    )
    who = report.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", help="the agent: its id or its name")
    who.add_argument("--all", action="store_true", help="every agent of the period")
    report.add_argument(
        "--since", metavar="TIME", help="start, inclusive; RFC 3339, e.g. 2026-11-01T00:00:00Z"
    )
    report.add_argument("--until", metavar="TIME", help="end, exclusive; RFC 3339")
    report.add_argument(
        "--format", choices=["html", "json", "md"], default="html", help="default: html"
    )
    report.add_argument(
        "--output", metavar="FILE", help="write the report here (default: standard output)"
    )
    report.add_argument("--store", metavar="URL", help="the store (default: as tessera serve)")
    report.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    report.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="check the signed checkpoints with this JWK Set, e.g. the issuer's published "
        "/oauth/jwks (default: every key in the store)",
    )
    report.add_argument("--issuer", metavar="URL", help="the issuer the checkpoints must name")


def _report(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.audit.query import Filters
    from pdp.audit.report import Period, ReportError, gather
    from pdp.audit.report_formats import render

    try:
        times = Filters.parse(
            agent=None, user=None, decision=None, tool=None, since=args.since, until=args.until
        )
        period = Period(times.since, times.until)
    except ValueError as exc:
        print(f"tessera report: {exc}", file=err)
        return USAGE
    jwk_set = None
    if args.jwks:
        try:
            jwk_set = _read_jwks(args.jwks)
        except (OSError, ValueError) as exc:
            print(f"tessera report: --jwks {args.jwks}: {exc}", file=err)
            return USAGE
    opened = open_configured_store(args, err, "report")
    if opened is None:
        return USAGE
    store, _ = opened
    try:
        report = gather(
            store,
            agent=None if args.all else args.agent,
            period=period,
            jwk_set=jwk_set,
            issuer=args.issuer,
        )
    except ReportError as exc:
        print(f"tessera report: {exc}", file=err)
        return USAGE
    finally:
        store.close()
    text = render(report, args.format)
    if args.output is None:
        out.write(text)
    else:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"tessera report: cannot write {args.output}: {exc}", file=err)
            return USAGE
        print(f"wrote the report to {args.output}", file=err)
    if not report.intact:
        print("tessera report: the audit chain is BROKEN (see the report)", file=err)
        return FAILED
    return OK


def _keys(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from issuer.keys import KeyRing

    opened = open_configured_store(args, err, "keys")
    if opened is None:
        return USAGE
    store, config = opened
    try:
        ring = KeyRing(store, args.alg or config.signing_alg, config.token_lifetime)
        if args.action == "rotate":
            key = ring.rotate(args.alg)
            print(f"new signing key {key.kid} ({key.alg})", file=out)
        published = {jwk["kid"] for jwk in ring.jwks()["keys"]}
        current = ring.signing_key().kid
        for key in ring.all():
            state = (
                "current"
                if key.kid == current
                else ("published" if key.kid in published else "expired")
            )
            print(f"{key.kid}  {key.alg:6}  {key.created:%Y-%m-%d %H:%M}  {state}", file=out)
    finally:
        store.close()
    return OK


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.splitlines())


def _version() -> str:
    try:
        return metadata.version("tessera")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
