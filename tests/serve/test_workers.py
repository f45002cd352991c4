"""``tessera serve --workers N``: several processes on the same ports, one parent.

Each test talks to a real ``tessera serve --workers 2`` subprocess over loopback. Which
worker answered shows in the decision id: its first 16 hex digits are a random prefix of
the process that decided (``pdp.decide.decision_ids``), and a fresh channel is a fresh
connection, which the kernel hands to either worker.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.conftest import SHIPPED_POLICIES
from tests.serve.test_reload import rewrite_unseen
from tests.servers import tessera_serve

TOKEN = "test-admin-token-0123456789"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
WORKERS = 2
CALLS = 2000  # fresh connections tried before giving up on seeing every worker
DEADLINE = 20.0  # seconds for a change to reach every worker (the feeds take about 1 s)
EXE = Path(sys.executable).parent / "tessera"


@dataclass
class Served:
    """A running ``tessera serve --workers 2`` and where it listens."""

    process: subprocess.Popen[str]
    policies: Path
    grpc_port: int
    metrics: str
    scim: str
    pids: list[int]


def started(process: subprocess.Popen[str], lines: list[str], policies: Path) -> Served:
    text = "".join(lines)
    grpc_port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", text)
    metrics = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", text)
    scim = re.search(r"SCIM 2\.0 at (http://127\.0\.0\.1:\d+/scim/v2)", text)
    assert grpc_port and metrics and scim, text
    pids = [int(pid) for pid in re.findall(r"worker \d of 2 serving, pid (\d+)", text)]
    assert len(pids) == WORKERS, text
    return Served(process, policies, int(grpc_port.group(1)), metrics.group(1), scim.group(1), pids)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``tessera serve --workers 2`` on a SQLite store and a copy of the shipped
    policies, for the tests of this module."""
    tmp = tmp_path_factory.mktemp("workers")
    policies = tmp / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    with tessera_serve(
        *("--workers", str(WORKERS), "--policies", str(policies)),
        *("--store", f"sqlite:///{tmp}/tessera.db", "--admin-token", TOKEN),
        *("--port", "0", "--http-port", "0", "--metrics-port", "0", "--grace", "1"),
        lines=8 + WORKERS + 1,  # the startup lines, a line per worker, the policies
    ) as (process, lines):
        yield started(process, lines, policies)


def search_by(agent_id: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(
        agent=pb.Agent(id=agent_id),
        action="tool.call",
        resource=pb.Resource(type="tool", id="search"),
    )


def ask(port: int, request: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
    """One call on a connection of its own (no subchannel shared with earlier calls)."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        response: pb.AuthorizeResponse = pb_grpc.AuthorizerStub(channel).Authorize(
            request, timeout=10
        )
        return response


def worker_of(response: pb.AuthorizeResponse) -> str:
    return response.decision_id[:16]


def by_worker(
    served: Served,
    request: pb.AuthorizeRequest,
    done: Callable[[pb.AuthorizeResponse], bool] = lambda _: True,
) -> dict[str, pb.AuthorizeResponse]:
    """Ask on fresh connections until every worker's latest answer is ``done``; each
    worker's latest answer. Bounded by :data:`CALLS` and :data:`DEADLINE`."""
    latest: dict[str, pb.AuthorizeResponse] = {}
    deadline = time.monotonic() + DEADLINE
    for _ in range(CALLS):
        response = ask(served.grpc_port, request)
        latest[worker_of(response)] = response
        if len(latest) >= WORKERS and all(done(r) for r in latest.values()):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.005)
    return latest


def scrape(served: Served) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The parent's metrics: sample name -> labels -> value."""
    text = httpx.get(served.metrics, timeout=10).text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def decisions(served: Served) -> float:
    return sum(scrape(served).get("tessera_decisions_total", {}).values())


def test_every_worker_answers(served: Served) -> None:
    answers = by_worker(served, search_by("nobody"))
    assert len(answers) == WORKERS
    for response in answers.values():
        assert not response.allow
        assert list(response.reasons) == ["agent 'nobody' is not in the directory"]


def test_the_metrics_endpoint_sums_the_decisions_of_every_worker(served: Served) -> None:
    before = decisions(served)
    seen: set[str] = set()
    made = 0
    while made < CALLS and (made < 20 or len(seen) < WORKERS):
        seen.add(worker_of(ask(served.grpc_port, search_by("nobody"))))
        made += 1
    assert len(seen) == WORKERS
    assert decisions(served) - before == made
    assert scrape(served)["tessera_workers"][()] == WORKERS


def test_a_policy_change_is_decided_by_every_worker(served: Served) -> None:
    old = versions(served)
    (served.policies / "change.pol").write_text(
        'package change\n\nforbid workers_change\n  call tool "never-called"\n'
    )
    answers = by_worker(served, search_by("nobody"), lambda r: r.bundle_version not in old)
    assert len(answers) == WORKERS
    assert len({r.bundle_version for r in answers.values()}) == 1
    assert all(r.bundle_version not in old for r in answers.values())


def versions(served: Served) -> set[str]:
    """The bundle versions the workers decide with now."""
    return {r.bundle_version for r in by_worker(served, search_by("nobody")).values()}


def test_sighup_loads_the_policies_in_every_worker_at_once(served: Served) -> None:
    """The file changes without changing its size or modification time, which the
    directory's poll cannot see; SIGHUP loads it anyway."""
    policy = served.policies / "hangup.pol"
    old = versions(served)
    policy.write_text('package hangup\n\nforbid hangup_a\n  call tool "never-called"\n')
    polled = by_worker(served, search_by("nobody"), lambda r: r.bundle_version not in old)
    seen = old | {r.bundle_version for r in polled.values()}
    assert len(seen) == len(old) + 1  # the poll loaded it, in every worker

    rewrite_unseen(policy, 'package hangup\n\nforbid hangup_b\n  call tool "never-called"\n')
    served.process.send_signal(signal.SIGHUP)
    after = by_worker(served, search_by("nobody"), lambda r: r.bundle_version not in seen)
    assert len(after) == WORKERS
    assert all(r.bundle_version not in seen for r in after.values())
    assert len({r.bundle_version for r in after.values()}) == 1


def test_sighup_loads_the_policies_of_a_lone_server_too(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    policy = policies / "hangup.pol"
    policy.write_text('package hangup\n\nforbid hangup_a\n  call tool "x"\n')
    with tessera_serve(
        *("--policies", str(policies), "--store", "", "--port", "0"),
        *("--metrics-port", "-1", "--grace", "1"),
        lines=4,
    ) as (process, lines):
        port = int(re.findall(r"Authorizer on 127\.0\.0\.1:(\d+)", lines[0])[0])
        before = ask(port, search_by("helper")).bundle_version
        rewrite_unseen(policy, 'package hangup\n\nforbid hangup_b\n  call tool "x"\n')
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + DEADLINE
        while ask(port, search_by("helper")).bundle_version == before:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.02)


def test_a_scim_suspension_is_enforced_by_every_worker(served: Served) -> None:
    scim = httpx.Client(base_url=served.scim, headers={"Authorization": f"Bearer {TOKEN}"})
    created = scim.post(
        "/Agents",
        json={
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": "reporter",
            AGENT_EXTENSION: {"owner": "finance", "riskLevel": "low"},
        },
    )
    assert created.status_code == 201, created.text
    agent = created.json()["id"]
    allowed = by_worker(served, search_by(agent), lambda r: r.allow)
    assert len(allowed) == WORKERS and all(r.allow for r in allowed.values())

    suspend = {
        "schemas": [PATCH],
        "Operations": [
            {"op": "replace", "path": f"{AGENT_EXTENSION}:status", "value": "suspended"}
        ],
    }
    assert scim.patch(f"/Agents/{agent}", json=suspend).status_code == 200
    suspended = [f"agent {agent!r} is suspended"]
    denied = by_worker(served, search_by(agent), lambda r: list(r.reasons) == suspended)
    assert len(denied) == WORKERS
    for response in denied.values():
        assert not response.allow
        assert list(response.reasons) == suspended
    scim.close()


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists, a zombie included: gone means its parent reaped it,
    after its last thread exited and its sockets were closed. (The main thread of a killed
    process turns zombie while other threads still hold its sockets open.)"""
    return Path(f"/proc/{pid}").exists()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE} s: {what}"
        time.sleep(0.05)


def test_a_killed_worker_is_replaced_and_the_server_keeps_answering(served: Served) -> None:
    before = set(by_worker(served, search_by("nobody")))
    victim = next(pid for pid in served.pids if alive(pid))
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not alive(victim), f"worker {victim} is gone, reaped by the parent")
    # Every call is answered meanwhile, by the worker left, until the replacement serves.
    seen: set[str] = set()
    for _ in range(CALLS):
        seen.add(worker_of(ask(served.grpc_port, search_by("nobody"))))
        if seen - before:
            break
    assert seen - before, "no new worker answered"
    wait_for(lambda: scrape(served)["tessera_workers"][()] == WORKERS, "two workers serve")
    assert len(by_worker(served, search_by("nobody"))) == WORKERS


def test_sigterm_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    # Started where a file is named like a package of Tessera's: workers ignore it.
    (tmp_path / "issuer.py").write_text('raise SystemExit("not the issuer package")\n')
    process = subprocess.Popen(
        [
            *(str(EXE), "serve", "--workers", "2", "--policies", str(SHIPPED_POLICIES)),
            *("--store", "", "--counters", f"sqlite:///{tmp_path}/c.db", "--port", "0"),
            *("--metrics-port", "-1", "--grace", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = startup(process)
        pids = [int(pid) for pid in re.findall(r"serving, pid (\d+)", "".join(lines))]
        assert len(pids) == WORKERS, lines
        port = int(re.findall(r"Authorizer on 127\.0\.0\.1:(\d+)", lines[0])[0])
        assert ask(port, search_by("helper")).decision_id
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not any(alive(pid) for pid in pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize(
    ("arguments", "environment", "message"),
    [
        (["--workers", "0"], {}, "argument --workers: at least 1 process (or 'auto'), got 0"),
        (
            ["--workers", "x"],
            {},
            "argument --workers: expected a number of processes or 'auto', got 'x'",
        ),
        ([], {"TESSERA_WORKERS": "-2"}, "TESSERA_WORKERS: at least 1 process (or 'auto')"),
    ],
)
def test_a_bad_number_of_workers_is_a_usage_error(
    arguments: list[str], environment: dict[str, str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(EXE), "serve", *arguments, "--policies", str(SHIPPED_POLICIES), "--store", ""],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, **environment},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_a_taken_port_is_a_clear_error_before_any_worker_starts(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                *(str(EXE), "serve", "--workers", "2", "--policies", str(SHIPPED_POLICIES)),
                *("--store", "", "--counters", f"sqlite:///{tmp_path}/c.db", "--port", str(port)),
                *("--metrics-port", "-1"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert f"tessera serve: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "serving" not in result.stdout


def lone_workers(policies: Path, place: Path) -> subprocess.Popen[str]:
    """``tessera serve --workers 2`` without a store, on ``policies``, counting limits in
    a SQLite file in ``place``."""
    return subprocess.Popen(
        [
            *(str(EXE), "serve", "--workers", "2", "--policies", str(policies)),
            *("--store", "", "--counters", f"sqlite:///{place}/counters.db", "--port", "0"),
            *("--metrics-port", "-1", "--grace", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def startup(process: subprocess.Popen[str]) -> list[str]:
    """The lines ``tessera serve`` prints up to the last of its startup (the policies')."""
    assert process.stdout is not None
    lines: list[str] = []
    while not lines or " rules from " not in lines[-1]:
        line = process.stdout.readline()
        assert line, f"tessera serve stopped before serving: {lines}"
        lines.append(line)
    return lines


def exited(pid: int) -> bool:
    """Whether every thread of ``pid`` has exited (it may wait, a zombie, for a reaper)."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return all(state in ("Z", "X") for state in states)


def test_workers_that_keep_dying_at_start_stop_everything(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(SHIPPED_POLICIES, policies)
    process = lone_workers(policies, tmp_path)
    try:
        assert process.stderr is not None
        lines = startup(process)
        pids = [int(pid) for pid in re.findall(r"serving, pid (\d+)", "".join(lines))]
        assert len(pids) == WORKERS, lines
        (policies / "broken.pol").write_text("forbid broken when\n")  # no worker can start
        os.kill(pids[0], signal.SIGKILL)
        assert process.wait(timeout=60) == 1
        errors = process.stderr.read()
        assert "tessera serve: worker 1 (pid" in errors
        assert "died 5 times in a row within 10 s of starting" in errors
        assert "the policies do not load" in errors
        assert all(exited(pid) for pid in pids)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_workers_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    process = lone_workers(SHIPPED_POLICIES, tmp_path)
    try:
        lines = startup(process)
        pids = [int(pid) for pid in re.findall(r"serving, pid (\d+)", "".join(lines))]
        assert len(pids) == WORKERS, lines
        process.kill()
        process.wait(timeout=10)
        wait_for(lambda: all(exited(pid) for pid in pids), "the orphaned workers stop")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("counters", [(), ("--counters", "memory")])
def test_workers_refuse_to_count_limits_in_memory(
    tmp_path: Path, counters: tuple[str, ...]
) -> None:
    result = subprocess.run(
        [
            *(str(EXE), "serve", "--workers", "2", "--policies", str(SHIPPED_POLICIES)),
            *("--store", "", *counters),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "each of 2 workers would count limits in its own memory" in result.stderr
    assert "set --counters to a redis:// URL or a database" in result.stderr


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_an_ipv6_host_is_served_and_named_in_brackets(tmp_path: Path, host: str) -> None:
    """``--host ::1`` (or ``[::1]``): every port listens on the IPv6 loopback, and each
    address printed, the issuer's URL among them, is one a client can use."""
    import httpx

    with tessera_serve(
        *("--workers", str(WORKERS), "--host", host, "--policies", str(SHIPPED_POLICIES)),
        *("--store", f"sqlite:///{tmp_path}/tessera.db", "--admin-token", TOKEN),
        *("--port", "0", "--http-port", "0", "--metrics-port", "0", "--grace", "1"),
        lines=8 + WORKERS + 1,
    ) as (_, lines):
        text = "".join(lines)
        grpc_port = re.search(r"Authorizer on \[::1\]:(\d+) \(plaintext\)", text)
        metrics = re.search(r"metrics on (http://\[::1\]:\d+/metrics)", text)
        issuer = re.search(r"OAuth issuer (http://\[::1\]:\d+) ", text)
        assert grpc_port and metrics and issuer, text
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"[::1]:{grpc_port.group(1)}", options=options) as channel:
            stub = pb_grpc.AuthorizerStub(channel)
            allowed = pb.AuthorizeRequest(
                agent=pb.Agent(id="helper", attributes={"risk": pb.Value(risk="low")}),
                action="tool.call",
                resource=pb.Resource(type="tool", id="search"),
            )
            allowed.agent.attributes["status"].string = "active"
            # No such agent in the directory: refused by it, answered all the same.
            assert not stub.Authorize(allowed, timeout=10).allow
        found = httpx.get(f"{issuer.group(1)}/.well-known/oauth-authorization-server", timeout=10)
        assert found.status_code == 200
        assert found.json()["issuer"] == issuer.group(1)
        assert httpx.get(metrics.group(1), timeout=10).status_code == 200
