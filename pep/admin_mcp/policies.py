"""Policy work for administrators: check and test a proposed change, simulate a request,
replay audited decisions against a proposal (what-if), explain a past decision
(:mod:`pep.admin_mcp.explain`).

A *proposed change* maps policy file names, relative to the policy directory (e.g.
``agents.pol``), to their new text, or to None to delete the file. The proposal is the
directory's files with those changes applied; nothing is written to disk.

What-if rebuilds each request from its agent-trail record (:mod:`pep.admin_mcp.replay`):
the agent's attributes as the directory held them when the decision was made (from the
change log), the user's roles and groups and the user's consents as they are now, and
the recorded action, resource (type and id, the rest from the resource catalog) and
context; a person's decision with the person as the directory holds them now. Limits
replay in order from zero, each decision at its recorded time.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from cachetools import LRUCache

from issuer.store import Store
from pdp.audit.query import Filters, records
from pdp.catalog import Resources
from pdp.directory import Directory
from pdp.engine import Bundle
from pdp.explain import render_explanation
from pdp.interpreter import Interpreter
from pdp.lang.errors import PolicyError
from pdp.loader import SUFFIX, Loaded, bundle_files, content_version, load_texts
from pdp.model import Decision, RequestError
from pdp.policytest import run_tests
from pdp.request import request_from_json
from pdp.subjects import PERSONS
from pep.admin_mcp.errors import AdminError
from pep.admin_mcp.explain import explain_decision
from pep.admin_mcp.replay import TRAIL, Replay, Replayer

MAX_REPLAY = 10_000  # decisions one what-if replays at most
LISTED = 200  # changed decisions one what-if lists at most (all are counted)

Changes = Mapping[str, str | None]


class Policies:
    """The policy directory the PDP serves, and proposals against it."""

    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory)
        # Parsing and checking dominate a call; a bundle is kept by its content version.
        self._loaded: LRUCache[str, Loaded] = LRUCache(maxsize=8)
        self._lock = threading.Lock()

    # -- files

    def files(self) -> dict[str, str]:
        """Every file of the bundle (policy files, and the resource catalog's
        ``*.resources.json``), by its name relative to the directory: the bundle the
        decision point loads, and so its version."""
        if not self.root.is_dir():
            raise AdminError(f"the policy directory {self.root} does not exist")
        return {
            path.relative_to(self.root).as_posix(): path.read_text(encoding="utf-8")
            for path in bundle_files(self.root)
        }

    def read(self, name: str) -> str:
        files = self.files()
        if name not in files:
            raise AdminError(f"no policy file {name!r}; list_policies names them")
        return files[name]

    def schema_text(self) -> str:
        """The files that declare the schema (``schema { … }``), concatenated."""
        loaded = self.current()
        parts = [
            f"# {Path(module.path).relative_to(self.root).as_posix()}\n{module.source}"
            for module in loaded.modules
            if module.schemas
        ]
        return "\n".join(parts)

    def proposed_texts(self, changes: Changes) -> dict[str, str]:
        """The directory's files with ``changes`` applied."""
        texts = self.files()
        if not changes:
            raise AdminError("the proposed change is empty: map at least one file name to text")
        for name, text in changes.items():
            _check_name(name)
            if text is None:
                if name not in texts:
                    raise AdminError(f"cannot delete {name!r}: there is no such policy file")
                del texts[name]
            else:
                texts[name] = text
        if not texts:
            raise AdminError("the proposal deletes every policy file")
        return texts

    def current(self) -> Loaded:
        try:
            return self._load(self.files())
        except PolicyError as exc:
            raise AdminError(
                "the policy directory does not load: "
                + "; ".join(d.render() for d in exc.diagnostics)
            ) from None

    def _load(self, texts: Mapping[str, str]) -> Loaded:
        version = content_version(dict(texts))
        with self._lock:
            loaded = self._loaded.get(version)
        if loaded is None:
            loaded = load_texts(
                {str(self.root / name): text for name, text in texts.items()},
                version_of=dict(texts),
            )
            with self._lock:
                self._loaded[version] = loaded
        return loaded

    def proposed(self, changes: Changes) -> Loaded:
        """The proposal, loaded; AdminError listing every diagnostic when it does not."""
        try:
            return self._load(self.proposed_texts(changes))
        except PolicyError as exc:
            raise AdminError(
                "the proposed policies do not load:\n"
                + "\n".join(d.render() for d in exc.diagnostics)
            ) from None

    # -- reading

    def listing(self) -> dict[str, Any]:
        loaded = self.current()
        rules_by_file: dict[str, list[dict[str, Any]]] = {}
        for module in loaded.modules:
            name = Path(module.path).relative_to(self.root).as_posix()
            rules_by_file[name] = [
                {"id": rule.id, "effect": rule.effect, "line": rule.span.line}
                for rule in module.rules
            ]
        return {
            "directory": str(self.root),
            "bundle_version": loaded.bundle.version,
            "files": [
                {
                    "name": name,
                    "uri": f"tessera://policies/{name}",
                    "rules": rules_by_file.get(name, []),
                    "tests": len(module.tests),
                    "declares_schema": bool(module.schemas),
                }
                for module in loaded.modules
                for name in [Path(module.path).relative_to(self.root).as_posix()]
            ],
        }

    # -- proposals

    def check(self, changes: Changes) -> dict[str, Any]:
        """Whether the proposal parses and type-checks, with every diagnostic."""
        texts = self.proposed_texts(changes)
        try:
            loaded = self._load(texts)
        except PolicyError as exc:
            return {
                "ok": False,
                "errors": [_diagnostic(d) for d in exc.diagnostics if d.severity == "error"],
                "warnings": [_diagnostic(d) for d in exc.diagnostics if d.severity != "error"],
            }
        return {
            "ok": True,
            "bundle_version": loaded.bundle.version,
            "rules": len(loaded.bundle.rules),
            "errors": [],
            "warnings": [_diagnostic(d) for d in loaded.warnings],
        }

    def test(self, changes: Changes) -> dict[str, Any]:
        """The proposal's policy tests (``test "…" { … }`` blocks), each failure explained."""
        checked = self.check(changes)
        if not checked["ok"]:
            return {**checked, "passed": 0, "failed": None, "failures": []}
        bundle = self.proposed(changes).bundle
        results = run_tests(bundle)
        failures = []
        for result in results:
            failure = result.failure
            if failure is None:
                continue
            entry: dict[str, Any] = {
                "test": result.test.name,
                "where": str(result.span),
                "step": failure.step,
                "message": failure.message,
            }
            if failure.explanation is not None:
                entry["explanation"] = render_explanation(failure.explanation)
            failures.append(entry)
        return {
            "ok": not failures,
            "bundle_version": bundle.version,
            "passed": len(results) - len(failures),
            "failed": len(failures),
            "failures": failures,
        }

    def simulate(
        self,
        request: Any,
        changes: Changes | None = None,
        directory: Directory | None = None,
    ) -> dict[str, Any]:
        """Decide one request JSON (without using up any limit) and explain it. With a
        directory, who asks is who the directory says, as the PDP decides it
        (:func:`as_known`); the resource's attributes the request does not send come from
        the resource catalog (the bundle's entries, and with a directory the store's), as
        the PDP's do."""
        bundle = (self.proposed(changes) if changes else self.current()).bundle
        return simulate(bundle, request, directory)

    def what_if(
        self,
        store: Store,
        changes: Changes,
        filters: Filters,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """Replay the most recent ``limit`` audited decisions that match ``filters`` under
        the current policies and under the proposal; list every decision whose outcome
        (allow or deny, and the obligations) would change."""
        if not 1 <= limit <= MAX_REPLAY:
            raise AdminError(f"limit is between 1 and {MAX_REPLAY}")
        current = self.current().bundle
        proposed = self.proposed(changes).bundle
        recent: deque[tuple[int, dict[str, Any]]] = deque(maxlen=limit)
        for seq, record in records(store, TRAIL, filters):
            if record.get("kind") == "decision":
                recent.append((seq, record))
        replay = Replay(store)
        before = Replayer(current, replay.directory)
        after = Replayer(proposed, replay.directory)
        changed: list[dict[str, Any]] = []
        count = 0
        for seq, record in recent:
            count += 1
            asked = replay.request(record)
            old, new = before.decide(asked, record), after.decide(asked, record)
            if _outcome(old) == _outcome(new):
                continue
            changed.append(
                {
                    "seq": seq,
                    "decision_id": record.get("decision_id"),
                    "at": record.get("at"),
                    "agent": record.get("agent"),
                    "user": record.get("user"),
                    "action": record.get("action"),
                    "resource": record.get("resource"),
                    "recorded": _recorded(record),
                    "current": old,
                    "proposed": new,
                }
            )
        return {
            "replayed": count,
            "changed": len(changed),
            "current_version": current.version,
            "proposed_version": proposed.version,
            "decisions": changed[:LISTED],
            "listed": min(len(changed), LISTED),
        }

    def explain_decision(self, store: Store, decision_id: str) -> dict[str, Any]:
        """A past decision by its id: the recorded answer and why (see
        :mod:`pep.admin_mcp.explain`), and how the policies in force now decide it."""
        return explain_decision(store, self.current().bundle, decision_id)


def simulate(bundle: Bundle, request: Any, directory: Directory | None = None) -> dict[str, Any]:
    """Decide one request JSON with ``bundle`` (without using up any limit) and explain
    it: what :meth:`Policies.simulate` answers, and the operator console's what-if."""
    if not isinstance(request, dict):
        raise AdminError("the request is a JSON object (see the request format)")
    data = dict(request)
    if directory is not None:
        known = as_known(data, directory)
        if isinstance(known, str):
            decision = Decision(False, (), ("directory",), (known,), (), bundle.version)
            return {**decision.to_json(), "explanation": f"refused by the directory: {known}"}
        data = known
    try:
        typed = request_from_json(data, bundle.schema)
    except RequestError as exc:
        raise AdminError(f"invalid request: {exc}") from None
    filled = Resources(bundle, directory).request(typed)  # the resource catalog's
    if isinstance(filled, str):
        decision = Decision(False, (), ("directory",), (filled,), (), bundle.version)
        return {**decision.to_json(), "explanation": f"refused by the directory: {filled}"}
    explanation = Interpreter(bundle.rules, bundle.lets, bundle.version).explain(
        filled, commit=False
    )
    return {
        **explanation.decision.to_json(),
        "explanation": render_explanation(explanation),
    }


def as_known(data: dict[str, Any], directory: Directory) -> dict[str, Any] | str:
    """Request JSON with who asks as the directory knows them, or why the PDP would refuse
    it. An agent it does not know or that is not active is refused, and its user (named
    by any id: :meth:`pdp.subjects.People.identify`) must be known and active; their
    attributes and the user's consents for the agent are the directory's. A subject that
    is no agent (``"subject"``) is decided as ``DecisionPoint._other_subject`` decides
    it: a person the directory knows on its facts, whatever was sent (refused when not
    active), one it does not know on the properties sent; nobody's consents."""
    if "subject" in data and "agent" not in data:
        return _other_subject(data, directory)
    agent = data.get("agent")
    agent_id = agent.get("id") if isinstance(agent, dict) else None
    if not isinstance(agent_id, str):
        raise AdminError(
            "agent.id is required: the directory id of the agent (or name another "
            'subject: "subject": {"type": "user", "id": "…"})'
        )
    user = data.get("user")
    user_id = user.get("id") if isinstance(user, dict) else None
    if isinstance(user_id, str):
        user_id = _identified(directory, user_id, "user.id")
    chain = (data.get("delegation") or {}).get("chain") or ()
    identities = directory.resolve(agent_id, user_id, chain)
    if isinstance(identities, str):
        return identities
    known = {**data, "agent": identities.agent}
    if identities.user is not None:
        known["user"] = identities.user
    known["context"] = {**(data.get("context") or {}), "consents": list(identities.consents)}
    return known


def _other_subject(data: dict[str, Any], directory: Directory) -> dict[str, Any] | str:
    """Request JSON about a subject that is no agent, as the directory knows it."""
    subject = data.get("subject")
    known = {**data, "context": {**(data.get("context") or {}), "consents": []}}
    if not isinstance(subject, dict) or subject.get("type") not in PERSONS:
        return known  # a declared subject type: on the properties sent
    name = subject.get("id")
    if not isinstance(name, str) or not name:
        return known  # the request's own check names the field
    user_id = _identified(directory, name, "subject.id")
    person = directory.person(user_id)
    if person is not None and not person.active:
        return f"user {user_id!r} is not active"
    sent = data.get("user")
    if person is not None:
        known["user"] = person.attributes()  # the directory's facts replace what was sent
    elif isinstance(sent, dict):
        known["user"] = {**sent, "id": user_id}
    return known


def _identified(directory: Directory, name: str, where: str) -> str:
    """The directory's id of the person ``name`` names, as the PDP identifies them."""
    try:
        return directory.people.identify(name, where)
    except RequestError as exc:
        raise AdminError(f"invalid request: {exc}") from None


def _outcome(answer: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    return str(answer["decision"]), tuple(sorted(answer.get("obligations") or ()))


def _recorded(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "decision": "allow" if record.get("allow") else "deny",
        "decided_by": record.get("decided_by"),
        "bundle_version": record.get("bundle_version"),
    }


def _diagnostic(diagnostic: Any) -> dict[str, Any]:
    return {**diagnostic.to_json(), "text": diagnostic.render()}


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or ".." in path.parts
        or "\\" in name
        or not name.endswith(SUFFIX)
    ):
        raise AdminError(
            f"{name!r} is not a policy file name: a path relative to the policy directory, "
            f"ending in {SUFFIX}, e.g. agents.pol"
        )


def changes_from(raw: Iterable[Any]) -> dict[str, str | None]:
    """Proposed changes from a list of {"file", "text"} items (text null deletes)."""
    changes: dict[str, str | None] = {}
    for item in raw:
        file, text = item.file, item.text
        if file in changes:
            raise AdminError(f"{file!r} appears twice in the proposed change")
        changes[file] = text
    return changes


__all__ = ["Policies", "changes_from", "simulate"]
