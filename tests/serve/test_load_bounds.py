"""A flood of oversized decision requests against ``tessera serve``: each is refused with
the documented error, and the server's memory and its store stay bounded.

The full case, 300 audited ``Authorize`` calls each carrying a 3.9 MB undeclared context
string, is ``benchmarks/request_bounds.py``. This test makes the same calls, fewer
(enough that, were they taken, the store would grow past its bound), then calls as
large as every bound allows, which are decided and recorded: memory and store are
asserted after both. It does so twice: as shipped, where gRPC refuses each message from
its length prefix, and with ``max_message_bytes`` raised above the attack's size, where
each message is read whole and refused by the request's bounds, and nothing of it may
outlive its call.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from issuer.store import open_store
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.servers import tessera_serve

OVERSIZED = 3_900_000  # bytes of the undeclared context string the attack sent
FLOOD = 30  # oversized calls: 117 MB, more than the store may grow by
WITHIN = 200  # calls of 60 undeclared values of 1,000 bytes: within every bound
RSS_BOUND = 400 << 20  # the server's peak resident memory
STORE_BOUND = 100 << 20  # how much the store may grow
WAIT = 20.0  # seconds for the audit writer to commit what it was given


def rss_peak(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert found is not None, status
    return int(found.group(1)) * 1024


def store_size(database: Path) -> int:
    """The SQLite store's bytes on disk, its write-ahead log included."""
    files = [database, *(database.with_name(database.name + s) for s in ("-wal", "-shm"))]
    return sum(f.stat().st_size for f in files if f.exists())


def ask(note: str, **more: str) -> pb.AuthorizeRequest:
    context = {"note": pb.Value(string=note), **{k: pb.Value(string=v) for k, v in more.items()}}
    return pb.AuthorizeRequest(
        agent=pb.Agent(id="flooder"),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
        context=context,
    )


def recorded(url: str) -> int:
    store = open_store(url)
    try:
        return len(store.audit("agent", 0, 1_000_000))
    finally:
        store.close()


@pytest.mark.parametrize(
    ("message_bytes", "flood", "refusal"),
    [
        (None, FLOOD, "Received message larger than max (3900059 vs. 1048576)"),
        (8 << 20, 100, "context.note: 3,900,000 bytes, over the 1,024"),
    ],
    ids=["as shipped", "max_message_bytes raised"],
)
def test_a_flood_of_oversized_requests_is_refused_and_memory_and_store_stay_bounded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    message_bytes: int | None,
    flood: int,
    refusal: str,
) -> None:
    if message_bytes is not None:
        monkeypatch.setenv("TESSERA_MAX_MESSAGE_BYTES", str(message_bytes))
    database = tmp_path / "tessera.db"
    url = f"sqlite:///{database}"
    with tessera_serve(
        *("--policies", str(SHIPPED_POLICIES), "--store", url),
        *("--port", "0", "--http-port", "-1", "--metrics-port", "-1", "--grace", "1"),
        lines=1,
    ) as (process, (line,)):
        port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", line)
        assert port is not None, line
        before = store_size(database)
        with grpc.insecure_channel(f"127.0.0.1:{port.group(1)}") as channel:
            stub = pb_grpc.AuthorizerStub(channel)  # type: ignore[no-untyped-call]
            oversized = ask("x" * OVERSIZED)

            def call(_: int) -> grpc.RpcError:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Authorize(oversized, timeout=WAIT)
                return caught.value

            with ThreadPoolExecutor(4) as pool:  # a few in flight, as an attacker sends
                refusals = list(pool.map(call, range(flood)))
            assert {r.code() for r in refusals} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert all(refusal in r.details() for r in refusals)
            within = ask("y" * 1_000, **{f"n{n}": "z" * 1_000 for n in range(59)})
            answers = [stub.Authorize(within, timeout=WAIT) for _ in range(WITHIN)]
        deadline = time.monotonic() + WAIT
        while recorded(url) < WITHIN:
            assert time.monotonic() < deadline, "the decisions were not all recorded"
            time.sleep(0.1)
        peak = rss_peak(process.pid)
        grown = store_size(database) - before
    assert len({a.decision_id for a in answers}) == WITHIN  # every one decided
    assert recorded(url) == WITHIN  # and recorded; none of the flood
    assert peak < RSS_BOUND, f"peak RSS {peak >> 20} MB"
    assert grown < STORE_BOUND, f"the store grew by {grown >> 20} MB"
