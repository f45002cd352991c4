"""``tessera status``: every decision service of a deployment, side by side.

Each address (``host:port``; a name with several DNS records stands for each of them) is
asked two things over gRPC: the standard health check, and the policy bundle it decides
with (``ListAllowed`` with no candidates answers its ``bundle_version`` and decides
nothing). A deployment is in step when every replica is SERVING the same bundle.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from issuer.netloc import bare, hostport
from pdp.commands import FAILED, OK, USAGE, Command
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc

UNKNOWN = "-"


@dataclass(frozen=True)
class Replica:
    """What one address answered."""

    address: str
    health: str  # SERVING, NOT_SERVING, ... or UNREACHABLE
    bundle: str
    milliseconds: float | None
    error: str = ""


def addresses(targets: Sequence[str]) -> list[str]:
    """Each ``host:port``, a name standing for every address it resolves to (in order,
    without repeats); a name that does not resolve stays as given (then unreachable)."""
    found: list[str] = []
    for target in targets:
        host, _, port = target.rpartition(":")
        try:
            infos = socket.getaddrinfo(bare(host), int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            infos = []
        resolved = [hostport(str(info[4][0]), port) for info in infos] or [target]
        found.extend(a for a in resolved if a not in found)
    return found


def ask(address: str, credentials: grpc.ChannelCredentials | None, timeout: float) -> Replica:
    """The health and bundle of the service at ``address``."""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    with channel:
        started = time.perf_counter()
        try:
            checked = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
            health = health_pb2.HealthCheckResponse.ServingStatus.Name(checked.status)
            stub = pb_grpc.AuthorizerStub(channel)  # type: ignore[no-untyped-call]
            listed = stub.ListAllowed(pb.ListAllowedRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            health = "UNREACHABLE" if code is grpc.StatusCode.UNAVAILABLE else code.name
            return Replica(address, health, UNKNOWN, None, exc.details() or "")  # type: ignore[attr-defined]
        elapsed = (time.perf_counter() - started) * 1000
        return Replica(address, health, listed.bundle_version or UNKNOWN, round(elapsed, 2))


def in_step(replicas: Sequence[Replica]) -> bool:
    """Every replica serving, all with one bundle."""
    return all(r.health == "SERVING" for r in replicas) and len({r.bundle for r in replicas}) == 1


def render(replicas: Sequence[Replica], out: TextIO) -> None:
    rows = [("ADDRESS", "HEALTH", "BUNDLE", "ANSWERED IN")]
    for r in replicas:
        answered = f"{r.milliseconds:.1f} ms" if r.milliseconds is not None else r.error
        rows.append((r.address, r.health, r.bundle, answered))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + row[3],
            file=out,
        )
    bundles = {r.bundle for r in replicas if r.bundle != UNKNOWN}
    if in_step(replicas):
        print(f"in step: {len(replicas)} serving bundle {bundles.pop()}", file=out)
    elif len(bundles) > 1:
        print(f"NOT in step: {len(bundles)} bundles are being decided with", file=out)
    else:
        print("NOT in step: not every address is serving", file=out)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets", nargs="+", metavar="ADDRESS", help="host:port of a decision service"
    )
    parser.add_argument("--tls-ca", metavar="PEM", help="verify TLS servers against this CA")
    parser.add_argument(
        "--timeout", type=float, default=2.0, metavar="SECONDS", help="per call (default: 2)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per address")


def _status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    credentials = None
    if args.tls_ca:
        try:
            credentials = grpc.ssl_channel_credentials(Path(args.tls_ca).read_bytes())
        except OSError as exc:
            print(f"tessera status: cannot read {args.tls_ca}: {exc}", file=err)
            return USAGE
    for target in args.targets:
        if not target.rpartition(":")[2].isdigit():
            print(f"tessera status: {target!r} is not host:port", file=err)
            return USAGE
    replicas = [ask(a, credentials, args.timeout) for a in addresses(args.targets)]
    if args.json:
        for replica in replicas:
            print(json.dumps(asdict(replica)), file=out)
    else:
        render(replicas, out)
    return OK if in_step(replicas) else FAILED


STATUS = Command(
    "status",
    help="show the health and policy bundle of each decision service",
    description="Ask each decision service (host:port; a DNS name stands for each of its "
    "addresses) for its health and the policy bundle it decides with, and show them side "
    "by side. Exits 0 when every one is SERVING the same bundle, 1 otherwise.",
    options=_options,
    run=_status,
)
