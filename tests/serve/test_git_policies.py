"""``tessera serve --policies git+URL``: a real server follows a repository's ref.

Each test makes a bare repository in its temporary directory and a working clone that
pushes commits to it (``file://`` URLs only), then runs ``tessera serve`` as a subprocess
and asks it over loopback gRPC. Which policies answered shows in the bundle version of
each answer: the content version of the commit's policy files.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pdp.loader import content_version
from pdp.serve.proto import authorizer_pb2 as pb
from tests.serve.repositories import BROKEN, OPEN, SHUT, Repository
from tests.serve.test_workers import EXE, ask, startup, worker_of

DEADLINE = 30.0  # seconds for a pushed commit to be decided with
WORKERS = 2
SEARCH = pb.AuthorizeRequest(
    agent=pb.Agent(id="bot"), action="tool.call", resource=pb.Resource(type="tool", id="search")
)
OPEN_VERSION = content_version({"p.pol": OPEN})
SHUT_VERSION = content_version({"p.pol": SHUT})


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository(tmp_path)


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``tessera serve ARGS`` without a store, on free ports, with what it printed up to
    its last startup line. SIGTERM must stop it cleanly when the block ends normally."""
    process = subprocess.Popen(
        [str(EXE), "serve", "--store", "", "--port", "0", "--grace", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, "".join(startup(process))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def grpc_port(startup_text: str) -> int:
    found = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", startup_text)
    assert found, startup_text
    return int(found.group(1))


def metrics_url(startup_text: str) -> str:
    found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", startup_text)
    assert found, startup_text
    return found.group(1)


def answer_once(port: int, done: Callable[[pb.AuthorizeResponse], bool]) -> pb.AuthorizeResponse:
    """Ask until an answer is ``done`` (bounded by :data:`DEADLINE`): the last answer."""
    deadline = time.monotonic() + DEADLINE
    response = ask(port, SEARCH)
    while not done(response) and time.monotonic() < deadline:
        time.sleep(0.05)
        response = ask(port, SEARCH)
    return response


def samples(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The metrics served at ``url``: sample name -> labels -> value."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def commits_shown(url: str) -> set[str]:
    """The commits ``tessera_policy_source_info`` shows."""
    series = samples(url).get("tessera_policy_source_info", {})
    return {dict(labels)["commit"] for labels, value in series.items() if value == 1}


def failed_reloads(url: str) -> float:
    return samples(url).get("tessera_reloads_total", {}).get((("result", "failure"),), 0.0)


def test_serve_decides_with_the_repository_and_follows_a_push(repository: Repository) -> None:
    first = repository.commit({"p.pol": OPEN})
    with serving(
        *("--policies", f"git+{repository.url}", "--metrics-port", "-1"),
        *("--policy-poll-interval", "0.1"),
    ) as (_, text):
        assert f"from git+{repository.url} at commit {first[:12]}" in text
        port = grpc_port(text)
        answer = ask(port, SEARCH)
        assert (answer.allow, answer.bundle_version) == (True, OPEN_VERSION)

        repository.commit({"p.pol": SHUT})
        answer = answer_once(port, lambda a: a.bundle_version == SHUT_VERSION)
        assert (answer.allow, answer.bundle_version) == (False, SHUT_VERSION)


def test_sighup_fetches_a_new_commit_at_once(repository: Repository) -> None:
    """An hour between polls: only the poke can explain the new commit being used."""
    repository.commit({"p.pol": OPEN})
    with serving(
        *("--policies", f"git+{repository.url}#main", "--metrics-port", "0"),
        *("--policy-poll-interval", "3600"),
    ) as (process, text):
        port = grpc_port(text)
        second = repository.commit({"p.pol": SHUT})
        assert ask(port, SEARCH).bundle_version == OPEN_VERSION
        process.send_signal(signal.SIGHUP)
        answer = answer_once(port, lambda a: a.bundle_version == SHUT_VERSION)
        assert (answer.allow, answer.bundle_version) == (False, SHUT_VERSION)
        assert commits_shown(metrics_url(text)) == {second}


def test_a_broken_commit_keeps_the_previous_bundle_serving(repository: Repository) -> None:
    first = repository.commit({"p.pol": OPEN})
    with serving(
        *("--policies", f"git+{repository.url}", "--metrics-port", "0"),
        *("--policy-poll-interval", "0.1"),
    ) as (process, text):
        port, metrics = grpc_port(text), metrics_url(text)
        repository.commit({"p.pol": BROKEN})
        deadline = time.monotonic() + DEADLINE
        while failed_reloads(metrics) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failed_reloads(metrics) == 1  # tried once, not on every poll
        answer = ask(port, SEARCH)
        assert (answer.allow, answer.bundle_version) == (True, OPEN_VERSION)
        assert commits_shown(metrics) == {first}

        fixed = repository.commit({"p.pol": SHUT})
        answer = answer_once(port, lambda a: a.bundle_version == SHUT_VERSION)
        assert answer.bundle_version == SHUT_VERSION
        assert commits_shown(metrics) == {fixed}
    assert process.stderr is not None
    errors = process.stderr.read()
    assert "policy reload rejected; the previous bundle keeps serving" in errors
    assert "p.pol:1:19: error" in errors
    assert f"loaded from git+{repository.url} at commit {fixed[:12]}" in errors


def test_a_tag_and_a_directory_of_the_repository(repository: Repository) -> None:
    tagged = repository.commit({"tessera/p.pol": OPEN, "elsewhere/x.pol": BROKEN})
    repository.tag("v1")
    repository.commit({"tessera/p.pol": SHUT})
    source = f"git+{repository.url}?dir=tessera#v1"
    with serving("--policies", source, "--metrics-port", "-1") as (_, text):
        assert f"from {source} at commit {tagged[:12]}" in text
        answer = ask(grpc_port(text), SEARCH)
        assert (answer.allow, answer.bundle_version) == (True, OPEN_VERSION)


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("#nope", "couldn't find remote ref nope"),
        ("?dir=missing", "'missing' is not a directory of git+file://"),
        ("-gone", "does not appear to be a git repository"),
        ("#a..b", "policies: git+file://"),
    ],
)
def test_policies_that_cannot_be_had_are_a_usage_error(
    repository: Repository, suffix: str, message: str
) -> None:
    repository.commit({"p.pol": OPEN})
    result = subprocess.run(
        [
            *(str(EXE), "serve", "--policies", f"git+{repository.url}{suffix}"),
            *("--store", "", "--port", "0", "--metrics-port", "-1"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "serving" not in result.stdout


def test_every_worker_follows_the_same_ref(repository: Repository, tmp_path: Path) -> None:
    repository.commit({"p.pol": OPEN})
    with serving(
        *("--workers", str(WORKERS), "--counters", f"sqlite:///{tmp_path}/counters.db"),
        *("--policies", f"git+{repository.url}#main", "--metrics-port", "0"),
        *("--policy-poll-interval", "3600"),
    ) as (process, text):
        port = grpc_port(text)
        second = repository.commit({"p.pol": SHUT})
        process.send_signal(signal.SIGHUP)  # passed on: every worker fetches at once
        latest: dict[str, str] = {}
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and not (
            len(latest) == WORKERS and set(latest.values()) == {SHUT_VERSION}
        ):
            answer = ask(port, SEARCH)  # a fresh connection: either worker
            latest[worker_of(answer)] = answer.bundle_version
        assert latest == dict.fromkeys(latest, SHUT_VERSION) and len(latest) == WORKERS
        assert commits_shown(metrics_url(text)) == {second}
