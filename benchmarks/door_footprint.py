"""The gRPC door's memory footprint per call: the cache lines an ``Authorize`` misses when
the calls before it left the cache cold, against a floor measured in the same run.

In the server, between two calls of the door, gRPC, the event loop and the client on the
other core run through megabytes of other memory, so what the door costs is mostly the
lines of code and data it must fetch again (see README.md, ``grpc_service.py``, "What
instructions miss"). Timed rounds cannot resolve a cut of a few percent on this machine;
a simulated cache can, exactly: each row runs under ``valgrind --tool=cachegrind`` with a
2 MiB last-level cache (this machine's L2 per core), a 4 MiB copy between two calls to
push everything out, and is the difference of a run with the calls and a run of the
copies alone, over N calls.

Rows: the door (``AuthorizerDoor.Authorize`` on the typical request, the shipped policies,
no decision cache) and the floor (a function that parses the same message and reads its
agent, attributes, action and resource, and nothing more). The ratio is door / floor.

    python benchmarks/door_footprint.py [--quick] [--json] [--strict]

It needs valgrind; without it the rows cannot run: said, and ``--strict`` fails.
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gc
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine import benchmark_parser, environment, finish, refuse_skips  # a sibling script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHES = ("--I1=32768,8,64", "--D1=49152,12,64", "--LL=2097152,16,64")
COPY_BYTES = 4 << 20  # twice the simulated last-level cache
WARMUP = 200
# Multiples of the decision ids made at once (pdp.decide.ID_BATCH): every window holds the
# same share of the calls that make a batch.
CALLS, QUICK_CALLS = 2048, 1024
RUN_TIMEOUT_S = 900
EVENTS = {"I refs": "instructions", "LLi misses": "code lines", "LLd misses": "data lines"}


# ------------------------------------------------------------------ the child, under valgrind


def _door() -> Any:
    """A function that makes one ``Authorize`` call of the typical request."""
    from grpc_service import POLICIES, typical_request

    from pdp.decide import DecisionPoint
    from pdp.doors.grpc import AuthorizerDoor
    from pdp.engine import Engine
    from pdp.loader import load_directory

    class Context:  # what the door reads of grpc.aio's ServicerContext
        def peer(self) -> str:
            return "ipv4:127.0.0.1:50000"

        def invocation_metadata(self) -> tuple[()]:
            return ()

    door = AuthorizerDoor(DecisionPoint(Engine(load_directory(POLICIES).bundle), cache_size=0))
    raw, context = typical_request().SerializeToString(), Context()

    def call() -> None:
        coroutine = door.Authorize(raw, context)
        try:
            coroutine.send(None)  # nothing in it waits: it ends at the first send
        except StopIteration:
            return
        coroutine.close()
        raise RuntimeError("the door's Authorize waited on something")

    return call


def _floor() -> Any:
    """A function that parses the typical request and reads what every decision needs."""
    from grpc_service import typical_request

    from pdp.serve.proto import authorizer_pb2 as pb

    parse, kind = pb.AuthorizeRequest.FromString, pb.Value.WhichOneof
    raw = typical_request().SerializeToString()

    def call() -> tuple[Any, ...]:
        message = parse(raw)
        agent = message.agent
        attributes = agent.attributes
        read = {"id": agent.id}
        for key in attributes:
            value = attributes[key]
            read[key] = getattr(value, str(kind(value, "kind")))
        resource = message.resource
        return (read, message.action, resource.type, resource.id)

    return call


def child(mode: str, calls: int) -> None:
    """Set up both rows and warm both in every mode, so that the runs differ only in the
    calls measured: the door's, the floor's, or none (the copies alone)."""
    door, floor = _door(), _floor()
    for _ in range(WARMUP):
        door()
        floor()
    # What was made so far is left out of collections: whether the window happens to hold
    # a full collection of the whole heap would otherwise move the count by several %.
    gc.collect()
    gc.freeze()
    step = {"door": door, "floor": floor, "copy": lambda: None}[mode]
    source, target = bytearray(os.urandom(COPY_BYTES)), bytearray(COPY_BYTES)
    for _ in range(calls):
        target[:] = source  # push the door's lines out, as the server's other work does
        step()


# ------------------------------------------------------------------ the parent


def counted(mode: str, calls: int) -> dict[str, int]:
    """The cachegrind summary of one child run (``EVENTS``), or RuntimeError saying why."""
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=yes",
        *CACHES,
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        mode,
        str(calls),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=ROOT
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{mode} run exited {done.returncode}: {' / '.join(tail)}")
    found = {}
    for line in done.stderr.splitlines():
        match = re.search(r"== ([A-Za-z0-9 ]+?):\s+([\d,]+)", line)
        event = " ".join(match.group(1).split()) if match else ""
        if match and event in EVENTS:
            found[EVENTS[event]] = int(match.group(2).replace(",", ""))
    if len(found) != len(EVENTS):
        raise RuntimeError(f"{mode} run: cachegrind printed no summary")
    return found


def measure(calls: int) -> dict[str, Any]:
    """Per call, each row over the copies alone; the three runs two at a time (the
    counts do not depend on what else the machine runs)."""
    with ThreadPoolExecutor(2) as pool:
        runs = dict(
            zip(
                ("copy", "door", "floor"),
                pool.map(lambda m: counted(m, calls), ("copy", "door", "floor")),
                strict=True,
            )
        )
    rows = {}
    for mode in ("door", "floor"):
        row = {name: (runs[mode][name] - runs["copy"][name]) / calls for name in EVENTS.values()}
        row["lines"] = row["code lines"] + row["data lines"]
        rows[mode] = {name: round(value, 1) for name, value in row.items()}
    floor = rows["floor"]["lines"]
    return {"rows": rows, "ratio": round(rows["door"]["lines"] / floor, 2) if floor > 0 else None}


ROW = "door and floor (cachegrind)"


def report(result: dict[str, Any]) -> None:
    print(
        f"Cache lines missed per call, cold (cachegrind {' '.join(CACHES)}; "
        f"{result['calls']} calls, a {COPY_BYTES >> 20} MiB copy between calls)\n"
    )
    print(f"{'':8}{'instructions':>14}{'code lines':>12}{'data lines':>12}{'lines':>9}")
    for mode, row in result.get("rows", {}).items():
        print(
            f"{mode:8}{row['instructions']:>14,.0f}{row['code lines']:>12,.0f}"
            f"{row['data lines']:>12,.0f}{row['lines']:>9,.0f}"
        )
    ratio = result.get("ratio")
    said = f"{ratio}x" if ratio is not None else "not measured"
    print(f"\ndoor / floor, lines: {said}    ({result['seconds']} s)")


def main() -> int:
    parser = benchmark_parser(__doc__.split("\n\n")[0], f"{QUICK_CALLS} calls, not {CALLS}")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "CALLS"), help="(internal)")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return 0
    calls = QUICK_CALLS if args.quick else CALLS
    skipped = {}
    if shutil.which("valgrind") is None:
        skipped[ROW] = "valgrind is not installed (apt-get install -y valgrind)"
    refuse_skips(args, skipped)
    started = time.monotonic()
    result: dict[str, Any] = {"environment": environment(args.quick), "calls": calls}
    if not skipped:
        try:
            result.update(measure(calls))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            skipped[ROW] = str(exc)
    result.update(seconds=round(time.monotonic() - started, 1), caches=CACHES)
    finish(result, [], args, report, skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
