"""What the OAuth issuer costs: client_credentials tokens per second over HTTP, and how long
a resource server takes to verify an access token.

What it measures, in one run, on loopback (127.0.0.1) only:

* **tokens/s**: ``POST /oauth/token`` with ``grant_type=client_credentials``, the client
  authenticated by ``private_key_jwt`` (an ES256 assertion, RFC 7523), against the real
  service as users run it: ``tessera serve --policies policies --store sqlite:///<tmp>``
  in a subprocess (gRPC and HTTP on ports the OS picks, metrics off; SQLite file store made
  for the run). An agent is created over SCIM and registered as a client over
  ``/oauth/register`` with the public half of a P-256 key made for the run.
  The load comes from N worker processes (multiprocessing, spawn), each with one
  keep-alive ``httpx.Client`` sending one request at a time, for a fixed time; N = 1, 2
  and 4. Every assertion (its own ``jti``, ``exp`` = ``iat`` + 60) is signed before the
  timed window opens, in the worker, so the client's signing cost is off the clock; the
  client's HTTP cost is not (it shares the machine's cores with the server).
  Per level: tokens/s, p50/p99/max latency per request, errors (any answer but a 200 with
  an access token; there must be none), the server's and the clients' CPU time per
  request (the server's from ``/proc/<pid>/stat``), and the machine's other busy CPU
  meanwhile (``/proc/stat`` less the server and the workers), which tells a run beside
  other work from a clean one.
* **baseline**: a bare Starlette app on the same uvicorn settings (``issuer.app.bind`` and
  ``serve_http``), in its own process, whose one route reads the body and answers a
  fixed JSON body the size of a real token response, with the same headers, under the same
  load (the same pre-signed request bodies, the same workers). The ratio is tokens/s over
  the bare requests/s: the share of plain HTTP serving the token endpoint keeps.
* **verify**: ``issuer.oauth.tokens.TokenVerifier`` in this process on access tokens
  signed with ES256 (the default), RS256 and EdDSA by ``KeyRing`` + ``TokenMinter`` on an
  in-memory store, with the claims the token endpoint gives; and ES256 tokens served by
  ``tessera serve`` above. The verifier's key lookup is built from the JWK Set
  (``jwt.PyJWK(jwk).key`` per key, the served ones from ``GET /oauth/jwks``), as a
  resource server builds it; keys are cached, so a call is the signature and the claims.
  Baseline: the raw ``cryptography`` ``verify`` of the same signing input and signature
  (ES256's already DER-encoded), the crypto floor; the ratio is the verifier's median over
  it. PyJWT's ``jwt.decode`` of the same tokens is shown for comparison. Each call is
  timed alone (``time.perf_counter_ns``), cycling over 64 distinct tokens, after a
  warm-up; gc is collected before and disabled during each timing window.

Targets (from the issue): ≥ 1,000 tokens/s with private_key_jwt over HTTP (the best level,
with no error at any level), and an ES256 verify median ≤ 100 µs. Printed as PASS/FAIL;
``--strict`` exits 1 on a miss.

``--profile PSTATS`` instead serves the token endpoint through the Python API (as ``tessera
serve`` builds it, without the gRPC side) under cProfile in every thread, on each thread's
CPU clock, loads it for one window and prints where the server's CPU goes.

    python benchmarks/oauth_issuer.py [--json] [--quick] [--strict] [--profile PSTATS]
"""

from __future__ import annotations

import os
import sys

# The project root first: no script here may stand in for one of Tessera's packages
# (sibling scripts stay importable from this directory, next on the path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import contextlib
import gc
import math
import multiprocessing as mp
import queue
import secrets
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from engine import Target, benchmark_parser, environment, finish, fmt, percentile, ratio
from jwt.algorithms import ECAlgorithm

from issuer.keys import KeyRing, PublicKey, thumbprint
from issuer.models import AGENT_EXTENSION, AGENT_SCHEMA
from issuer.oauth.tokens import InvalidToken, TokenMinter, TokenVerifier
from issuer.store import open_store

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TOKEN_PATH = "/oauth/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FORM = "application/x-www-form-urlencoded"
ASSERTION_LIFETIME_S = 60
SCOPE = "read"
ALGORITHMS = ("ES256", "RS256", "EdDSA")

WORKERS = (1, 2, 4)
HTTP_TIMEOUT_S = 10.0  # one request
START_TIMEOUT_S = 30.0  # a server or a worker to come up
READY_TIMEOUT_S = 120.0  # the workers to pre-sign and warm up
STOP_TIMEOUT_S = 20.0
# Pre-signed assertions per phase: enough for this many tokens/s over the whole window
# (each jti is accepted once). A worker that runs out stops early and says so.
POOL_RATE = 3_000
BARE_POOL = 1_000  # the bare endpoint reads no jti: its workers cycle over these
TOKENS_PER_VERIFY_POOL = 64

# Must-reach targets (from the issue).
TARGET_TOKENS_PER_S = 1_000.0
TARGET_VERIFY_MEDIAN_US = 100.0


@dataclass(frozen=True)
class Budget:
    seconds: float  # timed window per level and endpoint
    warmup: int  # untimed requests per worker before the window
    verify_calls: int  # timed verify calls per row
    verify_warmup: int


FULL = Budget(seconds=10.0, warmup=200, verify_calls=20_000, verify_warmup=1_000)
QUICK = Budget(seconds=2.0, warmup=50, verify_calls=2_000, verify_warmup=200)


# ------------------------------------------------------------------ the client's side


@dataclass(frozen=True)
class ClientSpec:
    """What a load worker needs to sign assertions as the registered client."""

    client_id: str
    kid: str
    private_pem: bytes
    audience: str  # the token endpoint


def assertion_body(spec: ClientSpec, key: Any) -> bytes:
    """A token request, form-encoded, with a fresh private_key_jwt assertion."""
    now = int(time.time())
    claims = {
        "iss": spec.client_id,
        "sub": spec.client_id,
        "aud": spec.audience,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_S,
        "jti": uuid.uuid4().hex,
    }
    assertion = jwt.encode(claims, key, algorithm="ES256", headers={"kid": spec.kid})
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
    }
    return urlencode(form).encode()


def load_key(spec: ClientSpec) -> Any:
    return serialization.load_pem_private_key(spec.private_pem, password=None)


@dataclass(frozen=True)
class Phase:
    """One worker's share of a timed phase."""

    base: str
    spec: ClientSpec
    pool: int  # assertions to pre-sign
    cycle: bool  # reuse them (the bare endpoint); else each is sent once
    warmup: int
    seconds: float


def load_worker(index: int, phase: Phase, results: Any, go: Any, start_at: Any) -> None:
    """A load process: pre-sign, warm up, say ready, then send one request at a time until
    the window closes; report latencies (ns), errors and CPU time."""
    try:
        key = load_key(phase.spec)
        bodies = [assertion_body(phase.spec, key) for _ in range(phase.pool + phase.warmup)]
        warm, bodies = bodies[: phase.warmup], bodies[phase.warmup :]
        headers = {"Content-Type": FORM}
        with httpx.Client(base_url=phase.base, timeout=HTTP_TIMEOUT_S, headers=headers) as http:
            for body in warm:
                answer = http.post(TOKEN_PATH, content=body)
                if answer.status_code != 200:
                    raise RuntimeError(f"warm-up: {answer.status_code} {answer.text[:300]}")
            results.put(("ready", index, None))
            if not go.wait(READY_TIMEOUT_S + START_TIMEOUT_S):
                raise RuntimeError("no start signal")
            begin = start_at.value
            end = begin + phase.seconds
            while time.monotonic() < begin:
                time.sleep(0.001)
            clock = time.perf_counter_ns
            latencies: list[int] = []
            errors = 0
            sample: str | None = None
            exhausted = False
            sent = 0
            cpu0 = time.process_time()
            while time.monotonic() < end:
                if sent == len(bodies):
                    if not phase.cycle:
                        exhausted = True
                        break
                    sent = 0
                body = bodies[sent]
                sent += 1
                t0 = clock()
                try:
                    answer = http.post(TOKEN_PATH, content=body)
                    ok = answer.status_code == 200 and b'"access_token"' in answer.content
                    if not ok and sample is None:
                        sample = f"{answer.status_code} {answer.text[:300]}"
                except httpx.HTTPError as exc:
                    ok = False
                    if sample is None:
                        sample = repr(exc)
                latencies.append(clock() - t0)
                errors += not ok
            last = time.monotonic()
            cpu = time.process_time() - cpu0
        results.put(
            (
                "done",
                index,
                {
                    "latencies_ns": latencies,
                    "errors": errors,
                    "error_sample": sample,
                    "last": last,
                    "cpu_s": cpu,
                    "exhausted": exhausted,
                },
            )
        )
    except Exception as exc:  # report, so the parent does not wait for nothing
        results.put(("failed", index, repr(exc)))


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux ``/proc``), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine so far (Linux ``/proc/stat``), or None."""
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
        # user nice system idle iowait irq softirq steal (guest time is already in user)
        fields = [int(v) for v in line.split()[1:9]]
    except (OSError, ValueError):
        return None
    total = sum(fields)
    return total - fields[3] - fields[4], total


def run_phase(
    ctx: Any, base: str, pid: int, spec: ClientSpec, workers: int, cycle: bool, budget: Budget
) -> dict[str, Any]:
    """N workers against one endpoint for the budget's window: rate, latency, errors, CPU."""
    pool = BARE_POOL if cycle else math.ceil(POOL_RATE * budget.seconds / workers) + 100
    phase = Phase(base, spec, pool, cycle, budget.warmup, budget.seconds)
    results = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    processes = [
        ctx.Process(target=load_worker, args=(i, phase, results, go, start_at), daemon=True)
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def receive(kind: str, timeout: float) -> Any:
        try:
            got, index, detail = results.get(timeout=timeout)
        except queue.Empty:
            raise SystemExit(f"a load worker sent no '{kind}' within {timeout:g} s") from None
        if got != kind:
            raise SystemExit(f"load worker {index}: {detail}")
        return detail

    try:
        for _ in processes:
            receive("ready", READY_TIMEOUT_S)
        cpu0 = cpu_seconds(pid)
        ticks0 = machine_ticks()
        start_at.value = time.monotonic() + 0.05
        go.set()
        done: list[dict[str, Any]] = []
        for _ in processes:
            done.append(receive("done", budget.seconds + 2 * HTTP_TIMEOUT_S + 30))
        cpu1 = cpu_seconds(pid)
        ticks1 = machine_ticks()
    finally:
        for process in processes:
            process.join(timeout=STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        results.close()
    latencies = [ns / 1e6 for d in done for ns in d["latencies_ns"]]
    errors = sum(d["errors"] for d in done)
    window = max(d["last"] for d in done) - start_at.value
    requests = len(latencies)
    server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    client_cpu = sum(d["cpu_s"] for d in done)
    # What else kept the machine busy meanwhile, in cores: everything busy, less the
    # server and the load workers (the other server idles; the parent waits).
    other = None
    if ticks0 is not None and ticks1 is not None and server_cpu is not None:
        busy = (ticks1[0] - ticks0[0]) / max(1, ticks1[1] - ticks0[1]) * (os.cpu_count() or 1)
        other = busy - (server_cpu + client_cpu) / window
    return {
        "workers": workers,
        "requests": requests,
        "seconds": round(window, 3),
        "per_s": round((requests - errors) / window, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "max_ms": round(max(latencies), 3),
        "errors": errors,
        "error_sample": next((d["error_sample"] for d in done if d["error_sample"]), None),
        "server_cpu_us_per_request": None
        if server_cpu is None
        else round(server_cpu * 1e6 / requests, 1),
        "server_cpu_share": None if server_cpu is None else round(server_cpu / window, 2),
        "client_cpu_us_per_request": round(client_cpu * 1e6 / requests, 1),
        "client_cpu_share": round(client_cpu / window, 2),
        "other_cpu_share": None if other is None else round(other, 2),
        "pool_exhausted": any(d["exhausted"] for d in done),
    }


# ------------------------------------------------------------------ the bare baseline


def bare_server(ports: Any, stop: Any, body: bytes) -> None:
    """A process serving a Starlette app whose POST /oauth/token reads the body and answers
    ``body`` with the token endpoint's headers, on the issuer's own uvicorn settings."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from issuer.app import bind, serve_http
    from issuer.oauth.errors import NO_STORE

    async def token(request: Request) -> Response:
        await request.body()
        return Response(body, headers=NO_STORE, media_type="application/json")

    async def main() -> None:
        app = Starlette(routes=[Route(TOKEN_PATH, token, methods=["POST"])])
        running = await serve_http(app, bind(HOST, 0))
        ports.put(running.port)
        deadline = time.monotonic() + 3600  # bounded: a parent that went away
        while not stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await running.stop()

    try:
        asyncio.run(main())
    except Exception as exc:
        ports.put(repr(exc))


@contextlib.contextmanager
def bare(ctx: Any, body: bytes) -> Iterator[tuple[str, int]]:
    """The bare server in its own process: (base URL, pid)."""
    ports = ctx.Queue()
    stop = ctx.Event()
    process = ctx.Process(target=bare_server, args=(ports, stop, body), daemon=True)
    process.start()
    try:
        port = ports.get(timeout=START_TIMEOUT_S)
        if not isinstance(port, int):
            raise SystemExit(f"bare server: {port}")
        yield f"http://{HOST}:{port}", process.pid
    finally:
        stop.set()
        process.join(timeout=STOP_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        ports.close()


def same_size_body(size: int) -> bytes:
    """A token-shaped JSON body of exactly ``size`` bytes."""
    shell = b'{"access_token":"","token_type":"Bearer","expires_in":300,"scope":"read"}'
    if size < len(shell):
        raise SystemExit(f"a token response of {size} bytes is smaller than expected")
    return shell.replace(b'""', b'"' + b"x" * (size - len(shell)) + b'"', 1)


# ------------------------------------------------------------------ tokens over HTTP


@dataclass(frozen=True)
class Setup:
    issuer: str
    spec: ClientSpec
    agent_id: str
    sample_answer: bytes  # one token response, as sent
    request_bytes: int
    served_tokens: list[str]  # for the verify rows
    jwks: dict[str, Any]


def set_up(base: str, token: str, tokens: int = TOKENS_PER_VERIFY_POOL) -> Setup:
    """Create an agent, register it as a private_key_jwt client, get ``tokens`` access
    tokens and check them, and that a replayed assertion is refused."""
    with httpx.Client(base_url=base, timeout=HTTP_TIMEOUT_S) as http:
        meta = http.get("/.well-known/oauth-authorization-server").json()
        issuer = meta["issuer"]
        if meta["token_endpoint"] != issuer + TOKEN_PATH:
            raise SystemExit(f"unexpected token endpoint {meta['token_endpoint']}")
        admin = {"Authorization": f"Bearer {token}"}
        agent = {
            "schemas": [AGENT_SCHEMA, AGENT_EXTENSION],
            "name": "issuer-bench",
            AGENT_EXTENSION: {"owner": "bench", "riskLevel": "low"},
        }
        answer = http.post("/scim/v2/Agents", json=agent, headers=admin)
        if answer.status_code != 201:
            raise SystemExit(f"POST /scim/v2/Agents: {answer.status_code} {answer.text}")
        agent_id = answer.json()["id"]
        private = ec.generate_private_key(ec.SECP256R1())
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        kid = thumbprint(jwk)
        registration = {
            "agent_id": agent_id,
            "token_endpoint_auth_method": "private_key_jwt",
            "grant_types": ["client_credentials"],
            "jwks": {"keys": [{**jwk, "kid": kid, "alg": "ES256", "use": "sig"}]},
            "scope": SCOPE,
            "client_name": "issuer benchmark",
        }
        answer = http.post("/oauth/register", json=registration, headers=admin)
        if answer.status_code != 201:
            raise SystemExit(f"POST /oauth/register: {answer.status_code} {answer.text}")
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        spec = ClientSpec(answer.json()["client_id"], kid, pem, meta["token_endpoint"])
        key = load_key(spec)
        served: list[str] = []
        raw = b""
        body = b""
        headers = {"Content-Type": FORM}
        for _ in range(tokens):
            body = assertion_body(spec, key)
            answer = http.post(TOKEN_PATH, content=body, headers=headers)
            if answer.status_code != 200:
                raise SystemExit(f"POST {TOKEN_PATH}: {answer.status_code} {answer.text}")
            raw = answer.content
            served.append(answer.json()["access_token"])
        replay = http.post(TOKEN_PATH, content=body, headers=headers)
        if replay.status_code != 401:
            raise SystemExit(f"a replayed assertion got {replay.status_code}, not 401")
        jwks = http.get("/oauth/jwks").json()
    claims = TokenVerifier(jwks_lookup(jwks), issuer, issuer).verify(served[0])
    expect = {"sub": agent_id, "client_id": spec.client_id, "scope": SCOPE, "agent_id": agent_id}
    if any(claims.get(k) != v for k, v in expect.items()):
        raise SystemExit(f"unexpected claims in a served token: {claims}")
    return Setup(issuer, spec, agent_id, raw, len(body), served, jwks)


def run_tokens(budget: Budget, progress: bool) -> tuple[dict[str, Any], Setup]:
    from directory import serve  # a sibling; imported here, as it imports this file's name

    token = secrets.token_urlsafe(32)
    ctx = mp.get_context("spawn")
    levels = []
    with (
        tempfile.TemporaryDirectory(prefix="tessera-bench-") as raw,
        serve(f"sqlite:///{raw}/tessera.db", Path(raw), token) as server,
    ):
        tessera_base = server.scim.removesuffix("/scim/v2")
        setup = set_up(tessera_base, token)
        with bare(ctx, same_size_body(len(setup.sample_answer))) as (bare_base, bare_pid):
            for workers in WORKERS:
                floor = run_phase(ctx, bare_base, bare_pid, setup.spec, workers, True, budget)
                tokens = run_phase(
                    ctx, tessera_base, server.process.pid, setup.spec, workers, False, budget
                )
                levels.append({"workers": workers, "bare": floor, "tessera": tokens})
                if progress:
                    print(
                        f"  {workers} worker(s): {tokens['per_s']:.0f} tokens/s, "
                        f"bare {floor['per_s']:.0f} requests/s",
                        file=sys.stderr,
                        flush=True,
                    )
    best = max(levels, key=lambda level: level["tessera"]["per_s"])
    best_bare = max(levels, key=lambda level: level["bare"]["per_s"])
    result = {
        "server": "tessera serve subprocess, SQLite file store, shipped policies, metrics off",
        "bare": "Starlette app on issuer.app.serve_http (same uvicorn config), own process",
        "request_bytes": setup.request_bytes,
        "response_bytes": len(setup.sample_answer),
        "levels": levels,
        "best": {"workers": best["workers"], "tokens_per_s": best["tessera"]["per_s"]},
        "best_bare": {
            "workers": best_bare["workers"],
            "requests_per_s": best_bare["bare"]["per_s"],
        },
        "errors": sum(level["tessera"]["errors"] + level["bare"]["errors"] for level in levels),
    }
    return result, setup


# ------------------------------------------------------------------ verifying tokens


def jwks_lookup(jwks: dict[str, Any]) -> Callable[[str], tuple[str, PublicKey] | None]:
    """kid -> (alg, key) from a JWK Set, each key parsed once: what a resource server keeps."""
    keys = {jwk["kid"]: (jwk["alg"], jwt.PyJWK(jwk).key) for jwk in jwks["keys"]}
    return keys.get


def floor_call(alg: str, key: PublicKey) -> Callable[[tuple[bytes, bytes]], None]:
    """The bare signature check of ``(signing input, signature)``, its objects made once."""
    if alg == "ES256":
        assert isinstance(key, ec.EllipticCurvePublicKey)
        ecdsa = ec.ECDSA(hashes.SHA256())
        return lambda item: key.verify(item[1], item[0], ecdsa)
    if alg == "RS256":
        assert isinstance(key, rsa.RSAPublicKey)
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
        return lambda item: key.verify(item[1], item[0], pkcs1, sha256)
    assert isinstance(key, ed25519.Ed25519PublicKey)
    return lambda item: key.verify(item[1], item[0])


def signed_parts(alg: str, token: str) -> tuple[bytes, bytes]:
    """(signing input, signature as ``cryptography`` takes it) of a compact JWS."""
    head, payload, signature = token.split(".")
    raw = jwt.utils.base64url_decode(signature)
    if alg == "ES256":
        raw = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    return f"{head}.{payload}".encode(), raw


def time_calls(
    call: Callable[[Any], object], items: Sequence[Any], budget: Budget
) -> dict[str, Any]:
    """Each call timed alone over ``items`` cycled; median, p99 in µs."""
    n = len(items)
    for i in range(budget.verify_warmup):
        call(items[i % n])
    clock = time.perf_counter_ns
    samples: list[int] = []
    gc.collect()
    gc.disable()
    try:
        for i in range(budget.verify_calls):
            item = items[i % n]
            t0 = clock()
            call(item)
            samples.append(clock() - t0)
    finally:
        gc.enable()
    us = [s / 1e3 for s in samples]
    return {
        "calls": len(us),
        "median_us": round(statistics.median(us), 2),
        "p99_us": round(percentile(us, 0.99), 2),
    }


def verify_row(
    label: str, alg: str, tokens: list[str], jwks: dict[str, Any], issuer: str, budget: Budget
) -> dict[str, Any]:
    lookup = jwks_lookup(jwks)
    verifier = TokenVerifier(lookup, issuer, issuer)
    for token in tokens:  # every token must verify, and a tampered one must not
        verifier.verify(token)
    head, payload, signature = tokens[0].split(".")
    tampered = f"{head}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with contextlib.suppress(InvalidToken):
        verifier.verify(tampered)
        raise SystemExit(f"{label}: a tampered token verified")
    kid = jwt.get_unverified_header(tokens[0])["kid"]
    found = lookup(kid)
    assert found is not None and found[0] == alg
    key = found[1]
    parts = [signed_parts(alg, token) for token in tokens]
    floor = floor_call(alg, key)
    for item in parts:
        floor(item)

    def pyjwt(token: str) -> object:
        return jwt.decode(token, key, algorithms=[alg], audience=issuer, issuer=issuer)

    timed = time_calls(verifier.verify, tokens, budget)
    bare = time_calls(floor, parts, budget)
    library = time_calls(pyjwt, tokens, budget)
    return {
        "label": label,
        "alg": alg,
        "token_bytes": len(tokens[0]),
        "tokens": len(tokens),
        "verify": timed,
        "crypto_floor": bare,
        "pyjwt_decode": library,
        "ratio_over_floor": ratio(timed["median_us"], bare["median_us"]),
        "overhead_us": round(timed["median_us"] - bare["median_us"], 2),
    }


def run_verify(budget: Budget, setup: Setup) -> list[dict[str, Any]]:
    issuer = "http://127.0.0.1:8080"
    rows = []
    for alg in ALGORITHMS:
        store = open_store("sqlite:///:memory:")
        try:
            ring = KeyRing(store, alg)
            minter = TokenMinter(ring, issuer)
            tokens = [
                minter.mint(
                    subject="agent-1",
                    client_id="client-1",
                    audience=[issuer],
                    scope=[SCOPE],
                    extra={"agent_id": "agent-1", "agent_type": "background"},
                ).token
                for _ in range(TOKENS_PER_VERIFY_POOL)
            ]
            jwks = ring.jwks()
        finally:
            store.close()
        rows.append(verify_row(f"{alg} (KeyRing + TokenMinter)", alg, tokens, jwks, issuer, budget))
    rows.append(
        verify_row(
            "ES256 (tessera serve, JWKS over HTTP)",
            "ES256",
            setup.served_tokens,
            setup.jwks,
            setup.issuer,
            budget,
        )
    )
    return rows


# ------------------------------------------------------------------ profiling the server

PROFILE_WORKERS = 4
PROFILE_TOP = 30


def profiled_server(ports: Any, stop: Any, db: str, token: str, out: str) -> None:
    """A process serving the issuer's HTTP app as ``tessera serve`` builds it (store, key
    ring, AuthorizationServer, ``issuer_app`` on ``serve_http``), with no gRPC service or
    directory beside it, under cProfile in every thread (the event loop's and the worker
    threads ``to_thread`` runs on), from when it serves until ``stop``; the merged profile
    goes to ``out`` (pstats). The profiler's clock is each thread's CPU time, so a thread
    waiting (on a lock, a queue, epoll) counts nothing."""
    import asyncio
    import cProfile
    import pstats
    import threading

    from issuer.app import bind, issuer_app, serve_http
    from issuer.oauth.endpoints import AuthorizationServer
    from issuer.scim import BootstrapToken

    profiles: list[cProfile.Profile] = []

    def profile_thread(*_: Any) -> None:  # a new thread's first event: profile it from there
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    threading.setprofile(profile_thread)

    async def main() -> None:
        store = open_store(db)
        try:
            admin = BootstrapToken(token)
            sock = bind(HOST, 0)
            issuer = f"http://{HOST}:{sock.getsockname()[1]}"
            keys = KeyRing(store, "ES256", published_for=300)
            oauth = AuthorizationServer(store, keys, issuer, admin, 300)
            running = await serve_http(issuer_app(store, admin, oauth), sock)
            loop_profile = cProfile.Profile(time.thread_time)
            profiles.append(loop_profile)
            loop_profile.enable()
            ports.put(running.port)
            deadline = time.monotonic() + 3600
            while not stop.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            loop_profile.disable()
            await running.stop()
        finally:
            store.close()

    class Snapshot:
        """A profile's finished calls, taken without disabling it: disabling another
        thread's profile from here would close its pending calls (a worker thread blocked
        on its queue) on this thread's CPU clock."""

        def __init__(self, profile: cProfile.Profile) -> None:
            self.profile = profile
            self.stats: dict[Any, Any] = {}

        def create_stats(self) -> None:
            self.profile.snapshot_stats()
            self.stats = self.profile.stats  # type: ignore[attr-defined]

    try:
        asyncio.run(main())
        stats = pstats.Stats(Snapshot(profiles[0]))
        for profile in profiles[1:]:
            stats.add(Snapshot(profile))
        stats.dump_stats(out)
        ports.put("dumped")
    except Exception as exc:
        ports.put(repr(exc))


def area(where: tuple[str, int, str]) -> str:
    """Which package a profiled function belongs to (builtins by what they are)."""
    path, _, name = where
    if path == "~":
        for word in ("sqlite3", "select", "epoll", "socket", "send", "recv", "lock", "json"):
            if word in name:
                return f"builtin: {word}"
        return f"builtin: {name}"
    parts = Path(path).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if "issuer" in parts:
        return "issuer." + ".".join(parts[parts.index("issuer") + 1 :]).removesuffix(".py")
    return "stdlib " + Path(path).stem


def run_profile(budget: Budget, out: Path) -> None:
    """Load the profiled server with PROFILE_WORKERS workers for the window; print where its
    time goes."""
    import pstats

    token = secrets.token_urlsafe(32)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as raw:
        ports = ctx.Queue()
        stop = ctx.Event()
        args = (ports, stop, f"sqlite:///{raw}/tessera.db", token, str(out))
        process = ctx.Process(target=profiled_server, args=args, daemon=True)
        process.start()
        try:
            port = ports.get(timeout=START_TIMEOUT_S)
            if not isinstance(port, int):
                raise SystemExit(f"profiled server: {port}")
            base = f"http://{HOST}:{port}"
            setup = set_up(base, token, tokens=1)
            quiet = Budget(budget.seconds, 10, 0, 0)
            load = run_phase(ctx, base, process.pid, setup.spec, PROFILE_WORKERS, False, quiet)
        finally:
            stop.set()
            done = ports.get(timeout=STOP_TIMEOUT_S + 60)
            process.join(timeout=STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    if done != "dumped":
        raise SystemExit(f"profiled server: {done}")
    print(
        f"under cProfile, {PROFILE_WORKERS} workers, {budget.seconds:g} s: "
        f"{load['per_s']:.0f} tokens/s, {load['errors']} errors, server CPU "
        f"{fmt(load['server_cpu_us_per_request'], 0)} µs per token (profiler included)"
    )
    stats = pstats.Stats(str(out))
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values())
    # Tokens served while profiled (the window, the warm-up and the setup's): one
    # authenticate call each.
    tokens = (
        sum(
            entry[0]
            for (path, _, name), entry in entries.items()
            if name == "authenticate" and path.endswith("client_auth.py")
        )
        or load["requests"]
    )
    by_area: dict[str, float] = {}
    for where, entry in entries.items():
        by_area[area(where)] = by_area.get(area(where), 0.0) + entry[2]
    print(f"\nown CPU time by package, µs per token (all threads; {tokens} tokens)")
    for name, seconds in sorted(by_area.items(), key=lambda item: -item[1])[:PROFILE_TOP]:
        print(f"  {seconds * 1e6 / tokens:8.1f}  {100 * seconds / total:5.1f}%  {name}")
    print(f"\nprofile written to {out}; the top functions:")
    stats.sort_stats("tottime").print_stats(PROFILE_TOP)
    stats.sort_stats("cumulative").print_stats(PROFILE_TOP)


# ------------------------------------------------------------------ verdict and report


def evaluate(
    tokens: dict[str, Any], verify: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[Target]]:
    best = tokens["best"]["tokens_per_s"]
    ratios: dict[str, Any] = {
        "tokens_over_bare_best": ratio(best, tokens["best_bare"]["requests_per_s"]),
        **{
            f"tokens_over_bare_{level['workers']}_workers": ratio(
                level["tessera"]["per_s"], level["bare"]["per_s"]
            )
            for level in tokens["levels"]
        },
        **{
            f"server_cpu_per_request_tessera_over_bare_{level['workers']}_workers": ratio(
                level["tessera"]["server_cpu_us_per_request"],
                level["bare"]["server_cpu_us_per_request"],
            )
            for level in tokens["levels"]
        },
        **{
            f"verify_over_floor_{row['alg']}": row["ratio_over_floor"]
            for row in verify
            if "KeyRing" in row["label"]
        },
    }
    ratios = {k: None if v is None else round(v, 3) for k, v in ratios.items()}
    es256 = next(row for row in verify if row["alg"] == "ES256")["verify"]["median_us"]
    targets = [
        Target(
            "client_credentials tokens/s, private_key_jwt, best level, 0 errors",
            f">= {TARGET_TOKENS_PER_S:,.0f}/s",
            best,
            best >= TARGET_TOKENS_PER_S and tokens["errors"] == 0,
        ),
        Target(
            "ES256 access token verify, median",
            f"<= {TARGET_VERIFY_MEDIAN_US:g} us",
            es256,
            es256 <= TARGET_VERIFY_MEDIAN_US,
        ),
    ]
    return ratios, targets


NOTES = (
    "tokens: each worker process holds one keep-alive httpx.Client and sends one request at "
    "a time; assertions are ES256-signed in the worker before the window opens (signing is "
    "off the clock, the client's HTTP work is not)",
    "tokens/s counts answers that are a 200 with an access token; any other answer is an "
    "error; latency is per request, client side, over every request of the window",
    "server CPU is the server process's user + system time over the window (/proc), per "
    "request; 'CPU share' is that time over the window (1.0 = one core busy); 'other' is "
    "the machine's busy cores (/proc/stat) less the server and the load workers: work "
    "that is not this benchmark's (or the kernel's loopback), which skews the row",
    "client, server(s) and the idle other server share the machine's cores; the bare "
    "server runs the same uvicorn config (h11, asyncio loop) but not the gRPC service and "
    "directory thread that tessera serve runs beside its HTTP side",
    "ratio (tokens): tokens/s over the bare endpoint's requests/s, same workers, same "
    "request bodies, same response size",
    "verify: each call timed alone, cycling over 64 distinct tokens; keys parsed once from "
    "the JWK Set (jwt.PyJWK); gc collected before and disabled while timing",
    "ratio (verify): TokenVerifier.verify median over the raw cryptography verify median of "
    "the same signing input and signature (ES256: signature already DER-encoded)",
)


def print_report(result: dict[str, Any]) -> None:
    env = result["environment"]
    tokens = result["tokens"]
    print(
        f"Tessera issuer benchmark  (Python {env['python']}, {env['machine']}, "
        f"{env['cpus']} CPUs, httpx {env['httpx']}, uvicorn {env['uvicorn']}"
        f"{', quick' if env['quick'] else ''})"
    )
    print(
        f"commit {env['commit']}; load average before {env['loadavg_before']}, "
        f"after {env['loadavg_after']}\n"
    )
    print(
        f"POST {TOKEN_PATH}, client_credentials + private_key_jwt (ES256), "
        f"{result['method']['seconds_per_phase']:g} s per phase; "
        f"request {tokens['request_bytes']} B, response {tokens['response_bytes']} B"
    )
    header = (
        f"{'workers':>7s}  {'endpoint':18s} {'per s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'max ms':>8s} {'errors':>6s} {'srv CPU µs':>10s} {'CPU share':>9s} {'cli CPU µs':>10s}"
        f" {'other':>6s} {'ratio':>6s}"
    )
    print(header)
    print("-" * len(header))
    for level in tokens["levels"]:
        for name, key in (("bare Starlette", "bare"), ("tessera /token", "tessera")):
            row = level[key]
            r = ""
            if key == "tessera":
                value = ratio(row["per_s"], level["bare"]["per_s"])
                r = "n/a" if value is None else f"{value:.2f}x"
            print(
                f"{level['workers']:>7d}  {name:18s} {row['per_s']:>8.0f}"
                f" {fmt(row['p50_ms'], 2):>8s} {fmt(row['p99_ms'], 2):>8s}"
                f" {fmt(row['max_ms'], 2):>8s} {row['errors']:>6d}"
                f" {fmt(row['server_cpu_us_per_request'], 0):>10s}"
                f" {fmt(row['server_cpu_share'], 2):>9s}"
                f" {fmt(row['client_cpu_us_per_request'], 0):>10s}"
                f" {fmt(row.get('other_cpu_share'), 2):>6s} {r:>6s}"
            )
            if row["error_sample"]:
                print(f"{'':9s}first error: {row['error_sample']}")
            if row["pool_exhausted"]:
                print(f"{'':9s}a worker ran out of pre-signed assertions (raise POOL_RATE)")
    print(
        f"best: {tokens['best']['tokens_per_s']:.0f} tokens/s with {tokens['best']['workers']} "
        f"worker(s); bare best {tokens['best_bare']['requests_per_s']:.0f} requests/s; "
        f"ratio {fmt(result['ratios']['tokens_over_bare_best'], 2)}x\n"
    )
    print("access token verify, in process, keys cached; µs per call")
    header = (
        f"{'':40s} {'bytes':>6s} {'median':>8s} {'p99':>8s} {'floor':>8s} {'p99':>8s}"
        f" {'ratio':>6s} {'PyJWT':>8s}"
    )
    print(header)
    print("-" * len(header))
    for row in result["verify"]:
        print(
            f"{row['label']:40s} {row['token_bytes']:>6d} {fmt(row['verify']['median_us'], 1):>8s}"
            f" {fmt(row['verify']['p99_us'], 1):>8s} {fmt(row['crypto_floor']['median_us'], 1):>8s}"
            f" {fmt(row['crypto_floor']['p99_us'], 1):>8s}"
            f" {fmt(row['ratio_over_floor'], 2) + 'x':>6s}"
            f" {fmt(row['pyjwt_decode']['median_us'], 1):>8s}"
        )
    print("  (floor: cryptography verify alone; PyJWT: jwt.decode median, for comparison)")
    print("\ntargets")
    for target in result["targets"]:
        print(
            f"  {target['verdict']:4s}  {target['name']:66s} {target['limit']:>11s}"
            f"   measured {fmt(target['value'], 1)}"
        )
    print("\nnotes")
    for note in result["notes"]:
        print(f"  - {note}")
    print(f"\n{result['seconds']} s")


def commit() -> str | None:
    """The checked-out commit, with "+dirty" when the working tree has changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.decode().strip() + ("+dirty" if status.stdout.strip() else "")


def main() -> None:
    parser = benchmark_parser(
        "Time the OAuth issuer: client_credentials tokens/s with private_key_jwt over HTTP "
        "against a bare Starlette endpoint, and access token verification against the "
        "bare signature check. Prints PASS/FAIL against the project's targets.",
        quick="2 s per load phase and 2,000 verify calls per row (a smoke run; noisy)",
    )
    parser.add_argument(
        "--profile",
        metavar="PSTATS",
        type=Path,
        help=(
            "instead: serve the token endpoint through the Python API under cProfile (all "
            f"threads), load it with {PROFILE_WORKERS} workers for one window, write the "
            "profile to PSTATS and print where the time goes"
        ),
    )
    args = parser.parse_args()

    budget = QUICK if args.quick else FULL
    if args.profile is not None:
        run_profile(budget, args.profile)
        return
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = time.perf_counter()
    tokens, setup = run_tokens(budget, progress=not args.json)
    verify = run_verify(budget, setup)
    ratios, targets = evaluate(tokens, verify)
    result: dict[str, Any] = {
        "benchmark": "oauth_issuer",
        "environment": {
            **environment(
                args.quick,
                **{
                    name: metadata.version(name)
                    for name in ("httpx", "uvicorn", "starlette", "pyjwt", "cryptography")
                },
            ),
            "commit": commit(),
            "loadavg_before": load_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "method": {
            "host": HOST,
            "timer": "time.perf_counter_ns",
            "workers": list(WORKERS),
            "seconds_per_phase": budget.seconds,
            "warmup_requests_per_worker": budget.warmup,
            "assertions": f"ES256, exp = iat + {ASSERTION_LIFETIME_S} s, unique jti, "
            "pre-signed in the worker before the window",
            "verify_calls_per_row": budget.verify_calls,
            "verify_warmup_calls": budget.verify_warmup,
            "gc_disabled_while_timing_verify": True,
        },
        "tokens": tokens,
        "verify": verify,
        "ratios": ratios,
        "targets": [t.to_json(2) for t in targets],
        "notes": list(NOTES),
        "seconds": round(time.perf_counter() - started, 1),
    }
    finish(result, targets, args, print_report)


if __name__ == "__main__":
    main()
