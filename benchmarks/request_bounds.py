"""What a flood of oversized decision requests leaves behind in ``tessera serve``.

The attack this answers: 300 audited ``Authorize`` calls, each carrying a 3.9 MB context
string no schema declares. Unbounded, the server's resident memory grew to 3.3 GB and
stayed there, and the store grew by 3.6 GB. Each scenario below runs against a fresh
``tessera serve`` in a subprocess on loopback, with a fresh SQLite store and the shipped
policies, audit ``async`` (the default):

* **flood**: the attack as shipped: ``--calls`` calls of ``--size`` bytes, ``--workers``
  in flight. Each must be refused RESOURCE_EXHAUSTED (gRPC's own, from the message's
  length prefix: over ``max_message_bytes``);
* **flood, transport bound raised**: the same with ``TESSERA_MAX_MESSAGE_BYTES`` at
  8 MiB, so that each message is read whole and refused by the request's bounds
  (``max_undeclared_bytes``), RESOURCE_EXHAUSTED naming ``context.note``;
* **within**: ``--calls`` calls as large as every bound allows (60 undeclared values of
  1,000 bytes, about 61 KB): each decided and recorded.

For each: the server's resident memory before and after (``VmRSS``) and at its peak
(``VmHWM``), how much the store grew (the database file and its write-ahead log, after
the audit writer committed everything it was given), the answers by status, and the
time taken. Targets (from the issue): peak RSS under 400 MB and store growth under
100 MB in every scenario, and every call of a flood refused.

    .venv/bin/python benchmarks/request_bounds.py            # the full case
    .venv/bin/python benchmarks/request_bounds.py --quick    # 30 calls per scenario
    .venv/bin/python benchmarks/request_bounds.py --json --strict

Caveats: RSS counts what the server process holds; the anomaly watcher runs in a process
of its own and is not counted. The store is measured on disk; SQLite reuses freed pages,
so a store that had records deleted would grow less.
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from engine import Target, benchmark_parser, environment, finish, print_targets

from issuer.store import open_store
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
EXE = Path(sys.executable).parent / "tessera"
RSS_BOUND_MB = 400.0
STORE_BOUND_MB = 100.0
WAIT_S = 120.0  # for the server to start, and the audit writer to commit
CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Scenario:
    name: str
    request: pb.AuthorizeRequest
    refused: bool  # every call must be refused (else: every call decided)
    environ: Mapping[str, str]


def ask(note: str, **more: str) -> pb.AuthorizeRequest:
    context = {"note": pb.Value(string=note), **{k: pb.Value(string=v) for k, v in more.items()}}
    return pb.AuthorizeRequest(
        agent=pb.Agent(id="flooder"),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
        context=context,
    )


def scenarios(size: int) -> list[Scenario]:
    oversized = ask("x" * size)
    within = ask("y" * 1_000, **{f"n{n}": "z" * 1_000 for n in range(59)})
    raised = {"TESSERA_MAX_MESSAGE_BYTES": str(8 << 20)}
    return [
        Scenario("flood", oversized, True, {}),
        Scenario("flood, transport bound raised", oversized, True, raised),
        Scenario("within every bound", within, False, {}),
    ]


def megabytes(value: int) -> float:
    return round(value / (1 << 20), 1)


def memory(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB$", status, re.MULTILINE))
    return {name: int(kb) * 1024 for name, kb in found.items()}


def store_size(database: Path) -> int:
    files = [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))]
    return sum(f.stat().st_size for f in files if f.exists())


@contextmanager
def serving(database: Path, environ: Mapping[str, str]) -> Iterator[tuple[int, int]]:
    """``tessera serve`` on a fresh SQLite store: its pid and gRPC port."""
    command = [str(EXE), "serve", "--policies", str(POLICIES), "--store", f"sqlite:///{database}"]
    command += ["--port", "0", "--http-port", "-1", "--metrics-port", "-1", "--grace", "1"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **environ},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", line)
        if port is None:
            raise SystemExit(f"tessera serve did not start: {line!r}")
        yield process.pid, int(port.group(1))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def recorded(database: Path) -> int:
    store = open_store(f"sqlite:///{database}")
    try:
        return len(store.audit("agent", 0, 10_000_000))
    finally:
        store.close()


def run(scenario: Scenario, calls: int, workers: int) -> dict[str, Any]:
    """One scenario against a fresh server: memory, store growth, answers, time."""
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "tessera.db"
        with serving(database, scenario.environ) as (pid, port):
            before, stored_before = memory(pid), store_size(database)
            began = time.monotonic()
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.AuthorizerStub(channel)  # type: ignore[no-untyped-call]

                def one(_: int) -> str:
                    try:
                        stub.Authorize(scenario.request, timeout=CALL_TIMEOUT_S)
                    except grpc.RpcError as error:
                        return f"{error.code().name}: {error.details()[:80]}"
                    return "OK"

                with ThreadPoolExecutor(workers) as pool:
                    answers = Counter(pool.map(one, range(calls)))
            seconds = time.monotonic() - began
            expected = 0 if scenario.refused else calls
            deadline = time.monotonic() + WAIT_S
            while recorded(database) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
            after = memory(pid)
            grown = store_size(database) - stored_before
            kept = recorded(database)
    ok = answers.get("OK", 0)
    return {
        "scenario": scenario.name,
        "calls": calls,
        "request_bytes": scenario.request.ByteSize(),
        "answers": dict(answers),
        "as_expected": (ok == 0) if scenario.refused else (ok == calls and kept == calls),
        "records": kept,
        "rss_before_mb": megabytes(before["VmRSS"]),
        "rss_after_mb": megabytes(after["VmRSS"]),
        "rss_peak_mb": megabytes(after["VmHWM"]),
        "store_growth_mb": megabytes(grown),
        "seconds": round(seconds, 1),
    }


def targets_of(rows: list[dict[str, Any]]) -> list[Target]:
    peak = max(r["rss_peak_mb"] for r in rows)
    grown = max(r["store_growth_mb"] for r in rows)
    return [
        Target(
            "peak server RSS, any scenario (MB)", f"< {RSS_BOUND_MB:g}", peak, peak < RSS_BOUND_MB
        ),
        Target(
            "store growth, any scenario (MB)",
            f"< {STORE_BOUND_MB:g}",
            grown,
            grown < STORE_BOUND_MB,
        ),
        Target(
            "every call answered as the bounds say (scenarios)",
            f"= {len(rows)}",
            float(sum(r["as_expected"] for r in rows)),
            all(r["as_expected"] for r in rows),
        ),
    ]


def report(result: dict[str, Any]) -> None:
    print("tessera serve against a flood of oversized Authorize calls (SQLite, audit async)\n")
    for row in result["scenarios"]:
        print(
            f"{row['scenario']}: {row['calls']} calls of {row['request_bytes']:,} bytes "
            f"in {row['seconds']} s"
        )
        for answer, count in sorted(row["answers"].items()):
            print(f"  {count:5d} x {answer}")
        print(
            f"  RSS {row['rss_before_mb']} MB before, {row['rss_after_mb']} MB after, "
            f"{row['rss_peak_mb']} MB at peak; store +{row['store_growth_mb']} MB, "
            f"{row['records']} records\n"
        )
    print_targets(result["targets"], result["seconds"])


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "30 calls per scenario, not 300")
    parser.add_argument("--calls", type=int, help="calls per scenario (default: 300)")
    parser.add_argument("--size", type=int, default=3_900_000, help="bytes of the oversized string")
    parser.add_argument("--workers", type=int, default=4, help="calls in flight (default: 4)")
    args = parser.parse_args()
    calls = args.calls or (30 if args.quick else 300)
    began = time.monotonic()
    rows = [run(s, calls, args.workers) for s in scenarios(args.size)]
    targets = targets_of(rows)
    result = {
        "environment": environment(args.quick),
        "scenarios": rows,
        "targets": [t.to_json(1) for t in targets],
        "seconds": round(time.monotonic() - began),
    }
    finish(result, targets, args, lambda r: report({**r, "targets": targets}))


if __name__ == "__main__":
    main()
