"""``tessera audit`` (verify, query, export the audit trails, list the anomaly alerts) and
``tessera report`` (a compliance report over the trails), on the store ``tessera serve``
would use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pdp.audit.baselines import ALERTS
from pdp.audit.chain import TRAILS
from pdp.commands import FAILED, OK, USAGE, Command
from pdp.commands.serve import open_configured_store

if TYPE_CHECKING:
    from pdp.audit.query import Filters


def _audit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["verify", "query", "export", "alerts"])
    parser.add_argument("--store", metavar="URL", help="the store (default: as tessera serve)")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument("--trail", choices=TRAILS, default="agent")
    parser.add_argument("--agent", help="only this agent's records")
    parser.add_argument("--user", help="only records for this user")
    parser.add_argument("--decision", choices=["allow", "deny"], help="only allows or denies")
    parser.add_argument("--tool", help="only calls of this tool (resource id of type tool)")
    parser.add_argument("--since", metavar="TIME", help="RFC 3339, e.g. 2026-11-28T10:00:00Z")
    parser.add_argument("--until", metavar="TIME", help="RFC 3339")
    parser.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="verify: check the signed checkpoints with this JWK Set, e.g. a copy of the "
        "issuer's /oauth/jwks kept by the auditor (default: every key in the store)",
    )
    parser.add_argument(
        "--issuer", metavar="URL", help="verify: the issuer the checkpoints must name"
    )
    parser.add_argument("--alert", choices=ALERTS, help="alerts: only this kind")
    parser.add_argument("--json", action="store_true", help="alerts: a JSON array")


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
    jwk_set = None
    if args.action == "verify" and args.jwks:
        try:
            jwk_set = _read_jwks(args.jwks)
        except (OSError, ValueError) as exc:
            print(f"tessera audit: --jwks {args.jwks}: {exc}", file=err)
            return USAGE
    opened = open_configured_store(args, err, "audit")
    if opened is None:
        return USAGE
    store, _ = opened
    try:
        if args.action == "verify":
            return _verify(store, args.trail, jwk_set, args.issuer, out)
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


def _verify(
    store: Any, trail: str, jwk_set: dict[str, Any] | None, issuer: str | None, out: TextIO
) -> int:
    """The trail's hash chain, then the signed checkpoints that vouch for it (with
    ``jwk_set``, else every key in the store)."""
    from issuer.keys import every_public_key
    from pdp.audit.checkpoints import TRAIL, verify_checkpoints
    from pdp.audit.query import verify_trail

    if jwk_set is None:
        jwk_set = every_public_key(store)
    count, problems = verify_trail(store, trail)
    for problem in problems:
        print(f"{trail} trail, {problem}", file=out)
    signed, newest, refused = verify_checkpoints(
        store, jwk_set, issuer, None if trail == TRAIL else trail
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


AUDIT = Command(
    "audit",
    help="verify, query or export the audit trails",
    description="The audit trails live in the store: 'agent' holds every decision and "
    "token, 'admin' what administrators did, 'checkpoint' the issuer-signed heads of "
    "the others. 'verify' walks a trail's hash chain and names every changed, deleted, "
    "inserted or reordered entry, then checks the signed checkpoints for that trail "
    "(a rewritten or truncated history; exit 1 when anything is broken); "
    "'query' lists records matching the filters; 'export' writes them as JSON lines "
    "for a SIEM; 'alerts' lists the anomaly alerts raised on agents.",
    options=_audit_options,
    run=_audit,
)


def _report_options(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--agent", metavar="ID", help="the agent: its id or its name")
    who.add_argument("--all", action="store_true", help="every agent of the period")
    parser.add_argument(
        "--since", metavar="TIME", help="start, inclusive; RFC 3339, e.g. 2026-11-01T00:00:00Z"
    )
    parser.add_argument("--until", metavar="TIME", help="end, exclusive; RFC 3339")
    parser.add_argument(
        "--format", choices=["html", "json", "md"], default="html", help="default: html"
    )
    parser.add_argument(
        "--output", metavar="FILE", help="write the report here (default: standard output)"
    )
    parser.add_argument("--store", metavar="URL", help="the store (default: as tessera serve)")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    parser.add_argument(
        "--jwks",
        metavar="FILE|URL",
        help="check the signed checkpoints with this JWK Set, e.g. the issuer's published "
        "/oauth/jwks (default: every key in the store)",
    )
    parser.add_argument("--issuer", metavar="URL", help="the issuer the checkpoints must name")


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


REPORT = Command(
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
    options=_report_options,
    run=_report,
)
