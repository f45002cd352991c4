"""A step-up through the proxy: the token's ``acr`` claim is the decision's
``context.acr``, as through Envoy's ext_authz, so ``require step_up("mfa")`` is met by a
token from a strong login and by no other. Decided by the PDP over gRPC and by the proxy
itself (``decisions = "local"``), for calls and for lists."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from pep.mcp_proxy.jsonrpc import FORBIDDEN
from tests.pep.mcp_proxy.test_consent import answer_of, rpc
from tests.pep.mcp_proxy.test_listing import listed_tools
from tests.pep.mcp_proxy.test_proxy import claims_for, signed
from tests.pep.mcp_proxy.world import POLICIES, World, world

# No limit could decide fs.delete, so with local decisions the proxy decides it itself.
STEP_UP = """package step_up

permit deletes_after_a_strong_login
  call tool "fs.delete"
  require step_up("mfa")
"""


@pytest.fixture(scope="module", params=["pdp", "local"])
def w(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    policies = tmp_path_factory.mktemp("policies")
    for path in POLICIES.glob("*.pol"):
        shutil.copy(path, policies / path.name)
    (policies / "step_up.pol").write_text(STEP_UP, encoding="utf-8")
    folder = tmp_path_factory.mktemp("step_up")
    with world("sqlite", folder, policies, decisions=request.param) as built:
        yield built


def token(w: World, acr: Any = None) -> str:
    """A token for a new agent allowed to ask for fs.delete, with ``acr`` (none: no claim)."""
    return signed(w, claims_for(w, w.add_agent(), scope="mcp:tools fs:write", acr=acr))


def test_a_token_from_a_strong_login_meets_the_step_up(w: World) -> None:
    strong = token(w, acr="mfa")
    answer = answer_of(rpc(w, strong, "fs.delete", {"path": "/tmp/x"}))
    assert answer["result"]["content"][0]["text"] == "deleted /tmp/x", answer
    assert "fs.delete" in listed_tools(w, strong)


@pytest.mark.parametrize("acr", [None, "pwd", ["mfa"]], ids=["none", "another", "not-a-string"])
def test_without_that_acr_the_call_is_denied_and_not_listed(w: World, acr: Any) -> None:
    weak = token(w, acr=acr)
    answer = answer_of(rpc(w, weak, "fs.delete", {"path": "/tmp/x"}))
    assert answer["error"]["code"] == FORBIDDEN, answer
    assert "fs.delete" not in listed_tools(w, weak)
