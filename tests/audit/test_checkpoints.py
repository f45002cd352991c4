"""Signed checkpoints: the issuer's key vouches for each trail's head, so a history
rewritten with fresh hashes or cut short is found, with the published JWK Set alone."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from issuer.keys import KeyRing, generate
from issuer.store import Store, open_store
from pdp.audit.chain import GENESIS, canonical, link
from pdp.audit.checkpoints import TYPE, Checkpointer
from pdp.audit.writer import AuditWriter
from pdp.serve.proto import authorizer_pb2 as pb
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc
from tests.audit.test_cli import AGENT_TRAIL, execute, run
from tests.conftest import SHIPPED_POLICIES
from tests.servers import HttpServer, tessera_serve
from tests.stores import BACKENDS, store_url

ISSUER = "https://issuer.example"


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with store_url(request.param, tmp_path) as opened:
        yield opened


@contextlib.contextmanager
def writing(url: str) -> Iterator[tuple[Store, AuditWriter, KeyRing]]:
    store = open_store(url)
    writer = AuditWriter(store)
    try:
        yield store, writer, KeyRing(store)
    finally:
        writer.close()
        store.close()


def checkpointed(url: str, records: list[dict[str, Any]] = AGENT_TRAIL) -> dict[str, Any]:
    """The agent trail holds ``records``, vouched for by one checkpoint; the JWK Set."""
    with writing(url) as (store, writer, keys):
        for record in records:
            writer.write("agent", record)
        for done in Checkpointer(store, writer, keys, ISSUER).checkpoint():
            done.result(10)
        return keys.jwks()


def checkpoints(url: str) -> list[dict[str, Any]]:
    with contextlib.closing(open_store(url)) as store:
        return [json.loads(entry.record) for entry in store.audit("checkpoint")]


def test_a_checkpoint_signs_the_head_of_each_trail_that_grew_and_only_those(url: str) -> None:
    with writing(url) as (store, writer, keys):
        for record in AGENT_TRAIL[:3]:
            writer.write("agent", record)
        writer.write("admin", {"kind": "change", "op": "create"})
        first = Checkpointer(store, writer, keys, ISSUER)
        assert [done.result(10) for done in first.checkpoint()] == [1, 2]
        assert first.checkpoint() == []  # nothing grew
        writer.write("agent", AGENT_TRAIL[3])
        again = Checkpointer(store, writer, keys, ISSUER)  # as after a restart
        assert [done.result(10) for done in again.checkpoint()] == [3]
        head = store.audit_tail("agent")
    assert head is not None
    agent = checkpoints(url)[2]
    assert (agent["trail"], agent["seq"], agent["hash"]) == ("agent", 4, head.hash)
    header = jwt.get_unverified_header(agent["jws"])
    assert (header["typ"], header["kid"]) == (TYPE, agent["kid"])
    jwk = next(k for k in keys.jwks()["keys"] if k["kid"] == agent["kid"])
    claims = jwt.decode(agent["jws"], jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]])
    assert claims == {
        "iss": ISSUER,
        "trail": "agent",
        "seq": 4,
        "hash": head.hash,
        "iat": claims["iat"],
    }


def test_verify_checks_the_checkpoints_with_the_stores_keys(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    checkpointed(url)
    code, out, err = run(capsys, "audit", "verify", "--store", url)
    assert (code, err) == (0, "")
    assert out == (
        "the agent trail verifies: 7 entries, chain intact; "
        "1 signed checkpoint(s) verified, the newest for entry 7\n"
    )
    code, out, _ = run(capsys, "audit", "verify", "--store", url, "--trail", "checkpoint")
    assert (code, out) == (
        0,
        "the checkpoint trail verifies: 1 entries, chain intact; 1 signed checkpoint(s) verified\n",
    )


def rewrite_history(url: str, changed_seq: int) -> None:
    """What someone with write access to the database could do: change an entry and
    recompute every hash after it, so the chain alone verifies again."""
    with contextlib.closing(open_store(url)) as store:
        entries = store.audit("agent")
    prev = GENESIS
    for entry in entries:
        record = json.loads(entry.record)
        if entry.seq == changed_seq:
            record["allow"] = not record["allow"]
        text = canonical(record)
        digest = link(prev, text)
        execute(
            url,
            "UPDATE audit SET record = ?, prev_hash = ?, hash = ? WHERE trail = ? AND seq = ?",
            (text, prev, digest, "agent", entry.seq),
        )
        prev = digest


def test_a_history_rewritten_with_fresh_hashes_is_found_by_its_checkpoint(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    checkpointed(url)
    rewrite_history(url, 3)
    code, out, _ = run(capsys, "audit", "verify", "--store", url)
    assert code == 1
    assert out == (
        "checkpoint trail, entry 1: checkpoint of the agent trail at entry 7: the trail's "
        "entry differs from the one signed: history was rewritten\n"
        "the agent trail is BROKEN: 1 problem(s)\n"
    )


def test_a_trail_cut_short_is_found_by_its_checkpoint(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    checkpointed(url)
    execute(url, "DELETE FROM audit WHERE trail = ? AND seq > ?", ("agent", 5))
    code, out, _ = run(capsys, "audit", "verify", "--store", url)
    assert code == 1
    assert "at entry 7: the trail no longer reaches that entry: entries were cut off" in out


def forge(url: str, claims: dict[str, Any], alg: str = "ES256", kid: str = "x") -> None:
    """Replace the checkpoint's JWS (and keep the checkpoint trail's chain intact)."""
    key: Any = {"ES256": generate("ES256"), "none": None, "HS256": b"k" * 32}[alg]
    token = jwt.encode(claims, key, alg, {"kid": kid, "typ": TYPE})
    with contextlib.closing(open_store(url)) as store:
        entry = store.audit("checkpoint")[0]
    record = {**json.loads(entry.record), "jws": token}
    text = canonical(record)
    execute(
        url,
        "UPDATE audit SET record = ?, hash = ? WHERE trail = ? AND seq = 1",
        (text, link(GENESIS, text), "checkpoint"),
    )


@pytest.mark.parametrize(
    ("forgery", "problem"),
    [
        ("other key", "signed by key 'x', which is not in the JWK Set"),
        ("alg none", "not a JWS (empty or padded base64url)"),
        ("same kid", "the signature does not verify"),
        ("HS256", "does not match key"),
    ],
)
def test_a_forged_checkpoint_is_refused(
    capsys: pytest.CaptureFixture[str], url: str, forgery: str, problem: str
) -> None:
    jwks = checkpointed(url)
    signed = checkpoints(url)[0]
    claims = {"iss": ISSUER, "trail": "agent", "seq": 7, "hash": signed["hash"], "iat": 1}
    if forgery == "other key":
        forge(url, claims)
    elif forgery in ("alg none", "HS256"):
        forge(url, claims, forgery.removeprefix("alg "), signed["kid"])
    else:
        forge(url, claims, kid=jwks["keys"][0]["kid"])
    code, out, _ = run(capsys, "audit", "verify", "--store", url)
    assert code == 1
    assert problem in out


def test_a_checkpoint_record_that_differs_from_what_was_signed_is_refused(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    checkpointed(url)
    entry = checkpoints(url)[0]
    text = canonical({**entry, "seq": 6})
    execute(
        url,
        "UPDATE audit SET record = ?, hash = ? WHERE trail = ? AND seq = 1",
        (text, link(GENESIS, text), "checkpoint"),
    )
    code, out, _ = run(capsys, "audit", "verify", "--store", url)
    assert code == 1
    assert "the record's seq differs from the signed one" in out


def test_verify_with_the_published_jwks_from_a_file_or_a_url(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path
) -> None:
    published = checkpointed(url)
    saved = tmp_path / "jwks.json"
    saved.write_text(json.dumps(published))
    code, out, _ = run(capsys, "audit", "verify", "--store", url, "--jwks", str(saved))
    assert code == 0 and "1 signed checkpoint(s) verified" in out
    code, out, _ = run(
        capsys, "audit", "verify", "--store", url, "--jwks", str(saved), "--issuer", "https://x"
    )
    assert code == 1 and "signed by issuer 'https://x'" not in out
    assert f"signed by issuer {ISSUER!r}, not 'https://x'" in out

    def build(port: int) -> ASGIApp:
        return Starlette(routes=[Route("/jwks", lambda _: JSONResponse(published))])

    served = HttpServer(build)
    try:
        where = f"http://127.0.0.1:{served.port}/jwks"
        code, out, _ = run(capsys, "audit", "verify", "--store", url, "--jwks", where)
        assert code == 0 and "1 signed checkpoint(s) verified" in out
    finally:
        served.close()


def test_verify_with_a_jwks_that_lacks_the_key_says_so(
    capsys: pytest.CaptureFixture[str], url: str, tmp_path: Path
) -> None:
    checkpointed(url)
    empty = tmp_path / "jwks.json"
    empty.write_text('{"keys": []}')
    code, out, _ = run(capsys, "audit", "verify", "--store", url, "--jwks", str(empty))
    assert code == 1 and "which is not in the JWK Set" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [("[]", "not a JWK Set"), ("{", "Expecting"), (None, "No such file")],
)
def test_a_bad_jwks_argument_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
    url: str,
    tmp_path: Path,
    content: str | None,
    message: str,
) -> None:
    where = tmp_path / "jwks.json"
    if content is not None:
        where.write_text(content)
    code, out, err = run(capsys, "audit", "verify", "--store", url, "--jwks", str(where))
    assert (code, out) == (2, "")
    assert err.startswith(f"tessera audit: --jwks {where}: ") and message in err


def test_tessera_serve_signs_what_it_wrote_when_it_stops(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "tessera.toml"
    config.write_text("[serve]\naudit_checkpoint_interval = 3600.0\n")
    saved = tmp_path / "jwks.json"
    with store_url("sqlite", tmp_path) as url:
        with tessera_serve(
            *("--config", str(config), "--policies", str(SHIPPED_POLICIES), "--store", url),
            *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
            lines=3,
        ) as (_, lines):
            port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", lines[0])
            issuer = re.search(r"OAuth issuer (\S+) ", lines[2])
            assert port and issuer, lines
            with grpc.insecure_channel(f"127.0.0.1:{port.group(1)}") as channel:
                stub = pb_grpc.AuthorizerStub(channel)
                for _ in range(3):
                    request = pb.AuthorizeRequest(
                        agent=pb.Agent(id="nobody"),
                        action="tool.call",
                        resource=pb.Resource(type="tool", id="search"),
                    )
                    assert not stub.Authorize(request, timeout=10).allow
            saved.write_text(httpx.get(f"{issuer.group(1)}/oauth/jwks", timeout=10).text)
        code, out, _ = run(
            capsys,
            *("audit", "verify", "--store", url, "--jwks", str(saved)),
            *("--issuer", issuer.group(1)),
        )
    assert (code, out) == (
        0,
        "the agent trail verifies: 3 entries, chain intact; "
        "1 signed checkpoint(s) verified, the newest for entry 3\n",
    )
