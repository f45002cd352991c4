"""The OpenID AuthZEN interop scenarios, sent unchanged to a live ``tessera serve``.

Each scenario's example bundle (``policies/examples/authzen-*``) is served on a fresh
SQLite store, its people are provisioned with the bundle's own ``provision.sh`` over
SCIM, and every published request (``vectors/``, copied from the working group's
repository) goes to the endpoint the working group's harness sends it to: single
evaluations to ``/access/v1/evaluation`` (and, all of one file together, to
``/access/v1/evaluations``), batches to ``/access/v1/evaluations``, searches to
``/access/v1/search/*``. Every answer must equal the published one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.interop.conftest import SENT
from tests.servers import tessera_on

VECTORS = Path(__file__).parent / "vectors"
EXAMPLES = Path(__file__).parents[2] / "policies" / "examples"
TOKEN = "interop-admin-token-0123456789"
API = "/access/v1"

Json = dict[str, Any]


@contextmanager
def scenario(bundle: str, people: str, tmp: Path) -> Iterator[httpx.Client]:
    """``tessera serve`` on the example bundle and a new store, with the people of
    ``people``'s provisioning script in its directory; a client of its HTTP port."""
    store = f"sqlite:///{tmp / 'tessera.db'}"
    with tessera_on(EXAMPLES / bundle, store, TOKEN) as served:
        base = served.http
        script = EXAMPLES / people / "provision.sh"
        env = {**os.environ, "TESSERA_ADMIN_TOKEN": TOKEN}
        done = subprocess.run(
            ["sh", str(script), base], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            yield client


def vectors(name: str) -> Json:
    data = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def ask(client: httpx.Client, path: str, body: Json) -> Json:
    answer = client.post(f"{API}{path}", json=body)
    assert answer.status_code == 200, (
        f"{path} {json.dumps(body)}: {answer.status_code} {answer.text}"
    )
    found = answer.json()
    assert isinstance(found, dict)
    return found


def evaluations(client: httpx.Client, data: Json) -> tuple[int, list[str]]:
    """Sends a file's vectors; (how many were sent, how each that differed differed)."""
    wrong = []
    singles = data.get("evaluation", [])
    for vector in singles:
        got = ask(client, "/evaluation", vector["request"])
        if got != {"decision": vector["expected"]}:
            wrong.append(f"/evaluation {json.dumps(vector['request'])}: {got}")
    if singles:  # the same questions as one batch: the same answers, in order
        batch = {"evaluations": [vector["request"] for vector in singles]}
        got = ask(client, "/evaluations", batch)
        expected = [{"decision": vector["expected"]} for vector in singles]
        if got != {"evaluations": expected}:
            wrong.append(f"/evaluations of every single vector: {got}")
    for vector in data.get("evaluations", []):
        got = ask(client, "/evaluations", vector["request"])
        if got != {"evaluations": vector["expected"]}:
            wrong.append(f"/evaluations {json.dumps(vector['request'])}: {got}")
    return len(singles) + len(data.get("evaluations", [])), wrong


def searches(client: httpx.Client, kind: str, data: Json) -> tuple[int, list[str]]:
    """Sends a search file's vectors; results are compared as sets (a search's order is
    not part of its answer, AuthZEN 1.0 §8)."""
    wrong = []
    for vector in data["evaluation"]:
        got = ask(client, f"/search/{kind}", vector["request"])
        expected = vector["expected"]["results"]
        if sorted(map(json.dumps, got["results"])) != sorted(map(json.dumps, expected)):
            wrong.append(f"/search/{kind} {json.dumps(vector['request'])}: {got['results']}")
    return len(data["evaluation"]), wrong


def test_the_todo_scenario_decides_every_published_request(tmp_path: Path) -> None:
    sent, wrong = 0, []
    with scenario("authzen-todo", "authzen-todo", tmp_path) as client:
        for name in ("todo-1_0-01.json", "todo-1_0-02.json"):
            count, differed = evaluations(client, vectors(name))
            sent, wrong = sent + count, wrong + differed
    assert not wrong, "\n".join(wrong)
    assert sent == 83
    SENT["todo"] = sent


def test_the_gateway_scenario_decides_every_published_request(tmp_path: Path) -> None:
    with scenario("authzen-gateway", "authzen-todo", tmp_path) as client:
        sent, wrong = evaluations(client, vectors("gateway.json"))
    assert not wrong, "\n".join(wrong)
    assert sent == 25
    SENT["gateway"] = sent


def test_the_search_scenario_finds_every_published_answer(tmp_path: Path) -> None:
    sent, wrong = 0, []
    with scenario("authzen-search", "authzen-search", tmp_path) as client:
        for kind in ("subject", "resource", "action"):
            count, differed = searches(client, kind, vectors(f"search-{kind}.json"))
            sent, wrong = sent + count, wrong + differed
    assert not wrong, "\n".join(wrong)
    assert sent == 198
    SENT["search"] = sent


@pytest.mark.parametrize("bundle", ["authzen-todo", "authzen-gateway", "authzen-search"])
def test_each_example_bundle_passes_its_own_tests(bundle: str) -> None:
    exe = Path(sys.executable).parent / "tessera"
    done = subprocess.run(
        [str(exe), "test", str(EXAMPLES / bundle)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 failed" in done.stdout
