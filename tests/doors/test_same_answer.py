"""Every door asks the one decision point the same question, and gets the same answer.

The same question is put to ``tessera.v1.Authorizer/Authorize``, AuthZEN's
``/access/v1/evaluation``, Envoy's ext_authz ``Check`` and the MCP proxy deciding locally
(a ``tools/call``), all real servers on 127.0.0.1 over one store (SQLite and PostgreSQL),
with the shipped policies and the directory. For each question:

- each door's call reaches a :class:`~pdp.decide.DecisionPoint` once, with a
  :class:`~pdp.model.Request` it built with one conversion from its wire form (no
  protobuf message, no dict, no request JSON on the way);
- the requests from the doors are the same question: agent, user, delegation, action,
  resource and the context they share;
- the decisions are equal (allow, deciding rules, reasons, obligations, rule errors,
  bundle version), and so is what each door told its caller of them;
- the audit records are equal in every field but ``decision_id``, ``at``,
  ``latency_us`` and ``pep``, once the context attributes a door adds by design are
  taken out.

What a door cannot express it is not asked: an HTTP request through Envoy carries no call
arguments, so ext_authz is not asked a transfer with an amount; the same transfer without
the amount is asked of all four doors instead.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

import pdp.request
from pdp.decide import DecisionPoint
from pdp.lang.values import Money
from pdp.model import DEFAULT_DENY_REASON, Answer, Request
from tests.doors.world import CLIENT_ADDRESS, UPSTREAM, Asked, Doors, Said, doors
from tests.stores import BACKENDS

DOORS = ("grpc", "authzen", "ext_authz", "mcp")
PDP, PROXY = "pdp", "mcp-proxy"  # the two decision points: the service's, the proxy's
GRPC = (PDP, "answer")  # where the gRPC door's Authorize reaches its point (it awaits none)

# Context attributes a door adds to every question by design, with the value it adds:
# Envoy tells the client's address (``ip``, so policies can read where a call comes
# from), and the MCP proxy names the MCP method and upstream (so the trail names the
# call). The other doors do not know these, so they are compared without them.
ADDED = {
    "grpc": {},
    "authzen": {},
    "ext_authz": {"ip": CLIENT_ADDRESS},
    "mcp": {"mcp_method": "tools/call", "mcp_server": UPSTREAM},
}
# What differs between two records of the same question by nature: its id, when it
# was made, how long it took, and who asked.
PER_CALL = ("decision_id", "at", "latency_us", "pep")


# ------------------------------------------------------------------ the questions


@dataclass(frozen=True)
class Question:
    """A question and the decision the shipped policies give it. ``agent`` is the SCIM
    extension of the asking agent; ``limited`` says a ``limit`` could decide it, so the
    MCP proxy defers it to the decision service; ``{agent}`` in a reason is the agent id;
    ``limits`` the record's limits, when a limit was checked."""

    name: str
    agent: dict[str, Any]
    tool: str
    allow: bool
    decided_by: tuple[str, ...]
    reasons: tuple[str, ...]
    obligations: tuple[tuple[str, str], ...] = ()
    delegated: bool = False
    amount: int | None = None
    limited: bool = False
    doors: tuple[str, ...] = DOORS
    limits: tuple[dict[str, Any], ...] = ()


QUESTIONS = [
    Question(
        "allowed-by-a-plain-permit",
        {},
        "search",
        True,
        ("agents.read_only",),
        ("permit agents.read_only applies",),
    ),
    Question("default-deny", {}, "shell.exec", False, (), (DEFAULT_DENY_REASON,)),
    Question(
        "denied-by-a-forbid",
        {"riskLevel": "critical"},
        "fs.write_file",
        False,
        ("agents.risky_writes",),
        ("forbid agents.risky_writes matched",),
    ),
    Question(
        "a-delegated-transfer-awaits-consent",
        {"purpose": "payments"},
        "payments.transfer",
        False,
        ("agents.small_transfers",),
        ('permit agents.small_transfers requires consent("payments:transfer")',),
        (("consent", "payments:transfer"),),
        delegated=True,
        amount=200,
        limited=True,
        doors=("grpc", "authzen", "mcp"),  # Envoy's HTTP request carries no amount
        limits=(  # checked, not charged: the call awaits consent
            {
                "rule": "agents.small_transfers",
                "limit": 0,
                "text": "sum <= 5000 USD per 24h per agent",
                "window": 86_400.0,
                "cap": "5000",
                "amount": "200",
                "used": "0",
            },
        ),
    ),
    Question(
        "a-delegated-transfer-without-an-amount",
        {"purpose": "payments"},
        "payments.transfer",
        False,
        (),
        (
            DEFAULT_DENY_REASON,
            "permit agents.small_transfers failed and does not apply: "
            "context.amount is absent from the request",
            "permit agents.large_transfers failed and does not apply: "
            "context.amount is absent from the request",
        ),
        delegated=True,
        limited=True,
    ),
    Question(
        "refused-by-the-directory",
        {"status": "suspended"},
        "search",
        False,
        ("directory",),
        ("agent {agent!r} is suspended",),
    ),
]


@pytest.fixture(scope="module", params=BACKENDS)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Doors]:
    with doors(request.param, tmp_path_factory.mktemp(request.param)) as running:
        yield running


# ------------------------------------------------------------------ the spies


@dataclass(frozen=True)
class Reached:
    """One call that reached a decision point: which point and method, the request it
    got, how many requests had been built since the door was asked when it came and when
    it returned (the point builds the request as the directory knows who asks), and the
    answer."""

    point: str
    method: str
    request: Any
    built: int
    built_after: int
    answer: Answer | None


@dataclass
class Spy:
    """What reached the decision points since :meth:`take`, and how often request JSON
    was read."""

    reached: list[Reached] = field(default_factory=list)
    built: int = 0  # Request objects constructed since the last take
    json_requests: int = 0

    def take(self) -> list[Reached]:
        reached, self.reached, self.built = self.reached, [], 0
        return reached


SYNC_METHODS = ("decide_now", "answer")  # the deciding methods a caller does not await


def spy_on(point: DecisionPoint, name: str, spy: Spy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record every call of ``point``'s deciding methods (on the instance its doors use)."""

    def record(method: str) -> Any:
        original = getattr(point, method)

        async def spied(request: Any, *args: Any, **kwargs: Any) -> Any:
            built = spy.built
            answer = await original(request, *args, **kwargs)
            spy.reached.append(Reached(name, method, request, built, spy.built, answer))
            return answer

        def spied_now(request: Any, *args: Any, **kwargs: Any) -> Any:
            built = spy.built
            returned = original(request, *args, **kwargs)
            answer = returned[0] if method == "answer" else returned  # (answer, its record)
            spy.reached.append(Reached(name, method, request, built, spy.built, answer))
            return returned

        return spied_now if method in SYNC_METHODS else spied

    for method in ("decide", "decide_without_limits", "decide_many", *SYNC_METHODS):
        monkeypatch.setattr(point, method, record(method))


def count_requests(spy: Spy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Count the :class:`Request` objects built, and every read of request JSON (in any
    module that imported :func:`pdp.request.request_from_json` by name, too)."""
    init = Request.__init__

    def counted_init(self: Request, *args: Any) -> None:
        spy.built += 1
        init(self, *args)

    monkeypatch.setattr(Request, "__init__", counted_init)
    original = pdp.request.request_from_json

    def counted_json(data: Any, schema: Any) -> Request:
        spy.json_requests += 1
        return original(data, schema)

    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", {})
        if names.get("request_from_json") is original:
            monkeypatch.setattr(module, "request_from_json", counted_json)


@pytest.fixture
def spy(world: Doors, monkeypatch: pytest.MonkeyPatch) -> Spy:
    watching = Spy()
    spy_on(world.point, PDP, watching, monkeypatch)
    spy_on(world.local.point, PROXY, watching, monkeypatch)
    count_requests(watching, monkeypatch)
    return watching


# ------------------------------------------------------------------ the test


def asked_of(world: Doors, question: Question) -> Asked:
    """The question's agent (and user) made in the directory."""
    agent = world.agent(**question.agent)
    user = world.user() if question.delegated else None
    return Asked(agent, user, question.tool, question.amount)


@pytest.mark.parametrize("question", QUESTIONS, ids=[q.name for q in QUESTIONS])
def test_every_door_gets_the_same_decision_and_record(
    world: Doors, spy: Spy, question: Question
) -> None:
    """The question is asked of each door that can express it (ext_authz cannot carry a
    call's amount); each reaches a decision point after one conversion, and gets the
    same decision and the same audit record."""
    asked = asked_of(world, question)
    said: dict[str, Said] = {}
    reached: dict[str, list[Reached]] = {}
    spy.take()
    for door in question.doors:
        said[door] = getattr(world, door)(asked)
        reached[door] = spy.take()
    assert spy.json_requests == 0, "a door read its question as request JSON"

    deciding = {door: one_conversion(door, question, reached[door]) for door in question.doors}
    same_requests(asked, question, reached)
    same_decisions(world, asked, question, said, deciding)
    same_records(world, asked, question, said)


def one_conversion(door: str, question: Question, reached: list[Reached]) -> Answer:
    """The door's call reached a decision point once, with a Request built once from its
    wire form; the answer it got there.

    The MCP proxy decides locally what no limit could decide. A question a limit could
    decide reaches its point (which answers None and records nothing), then the decision
    service as an ``Authorize`` call, which converts that message once more: by design,
    the counters live in one process."""
    assert all(isinstance(r.request, Request) for r in reached), reached
    if door == "mcp" and question.limited:
        local, remote = reached
        assert (local.point, local.method, local.built, local.answer) == (
            PROXY,
            "decide_without_limits",
            1,
            None,
        )
        assert (remote.point, remote.method) == GRPC
        assert remote.built == local.built_after + 1
        assert remote.answer is not None
        return remote.answer
    (call,) = reached
    expected = {"mcp": (PROXY, "decide_without_limits"), "grpc": GRPC}.get(door, (PDP, "decide"))
    assert (call.point, call.method, call.built) == (*expected, 1)
    assert call.answer is not None
    return call.answer


def same_requests(asked: Asked, question: Question, reached: dict[str, list[Reached]]) -> None:
    """The requests from every door are one question; what a door adds by design, and the
    resource attribute Envoy's routes cannot give (the tool's ``server``), aside."""
    shapes = []
    for door, calls in reached.items():
        for call in calls:
            request = call.request
            context = dict(request.context)
            for key, value in ADDED[door].items():
                assert str(context.pop(key)) == value, (door, key)
            resource = dict(request.resource)
            server = resource.pop("server", None)
            assert server == (None if door == "ext_authz" else UPSTREAM), door
            asked_there = (request.agent, request.user, request.delegation, request.action)
            shapes.append((door, *asked_there, resource, context))
    chain = (asked.agent,) if asked.user is not None else ()
    expected = (
        {"id": asked.agent},  # with a directory, what a caller says of the agent is dropped
        None if asked.user is None else {"id": asked.user},
        {"delegated": asked.user is not None, "depth": len(chain), "chain": chain},
        "tool.call",
        {"type": "tool", "id": question.tool},
        {} if asked.amount is None else {"amount": Money(Decimal(asked.amount), "USD")},
    )
    for shape in shapes:
        assert shape[1:] == expected, shape


def reasons_of(asked: Asked, question: Question) -> tuple[str, ...]:
    return tuple(reason.format(agent=asked.agent) for reason in question.reasons)


def same_decisions(
    world: Doors,
    asked: Asked,
    question: Question,
    said: dict[str, Said],
    deciding: dict[str, Answer],
) -> None:
    """Every door got the expected decision, told its caller what its protocol carries of
    it, and under the id of the answer the decision point gave."""
    expected = (
        question.allow,
        question.decided_by,
        reasons_of(asked, question),
        question.obligations,
    )
    version = world.point.version
    assert world.local.point.version == version  # the proxy loaded the same bundle
    decisions = {door: answer.decision for door, answer in deciding.items()}
    for door, decision in decisions.items():
        obligations = tuple((o.kind, o.value) for o in decision.obligations)
        told = (decision.allow, decision.decided_by, decision.reasons, obligations)
        assert told == expected, door
        assert decision.bundle_version == version, door
        tells = said[door]
        assert tells.decision_id == deciding[door].decision_id, door
        assert tells.allow == decision.allow, door
        for name, value in (
            ("decided_by", decision.decided_by),
            ("reasons", decision.reasons),
            ("obligations", obligations),
            ("bundle_version", decision.bundle_version),
        ):
            if getattr(tells, name) is not None:
                assert getattr(tells, name) == value, (door, name)
    first, *others = decisions.values()
    assert all(decision == first for decision in others), decisions
    # whether a PEP may keep the answer (no limit could decide it) is part of the answer
    assert len({answer.cacheable for answer in deciding.values()}) == 1, deciding


def same_records(world: Doors, asked: Asked, question: Question, said: dict[str, Said]) -> None:
    """The audit records of the doors' decisions are the same but for what is per call,
    and the context attributes a door adds by design (see ``ADDED``); and they record
    the question and its decision."""
    comparable = {}
    for door, tells in said.items():
        record = world.record(tells.decision_id)
        if door == "mcp" and not question.limited:
            assert record["pep"] == PROXY
        else:  # the service's caller: this test, or the proxy asking for a limited call
            assert record["pep"].startswith("ipv4:127.0.0.1:"), record["pep"]
        context = dict(record["context"])
        for key, value in ADDED[door].items():
            assert context.pop(key) == value, (door, key)
        comparable[door] = {
            **{k: v for k, v in record.items() if k not in PER_CALL},
            "context": context,
        }
    amount = {"amount": {"amount": str(asked.amount), "currency": "USD"}}
    expected = {
        "kind": "decision",
        "agent": asked.agent,
        "user": asked.user,
        "delegation": [] if asked.user is None else [asked.agent],
        "action": "tool.call",
        "resource": {"type": "tool", "id": question.tool},
        "context": {} if asked.amount is None else amount,
        "allow": question.allow,
        "decided_by": list(question.decided_by),
        "obligations": [f"{kind}:{value}" for kind, value in question.obligations],
        "reasons": list(reasons_of(asked, question)),
        "bundle_version": world.point.version,
    }
    if question.limits:
        expected["limits"] = list(question.limits)
    assert list(comparable) == list(question.doors)
    for door, record in comparable.items():
        assert record == expected, door
