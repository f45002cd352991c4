"""The Policies page: the bundle the decision point serves, its files, its tests and
their coverage, and a what-if (:mod:`pep.console.whatif`).

The version, the tests and the what-if are the serving bundle's (the decision point's
engine, as reloaded). The files are read from the policy directory ``tessera serve``
watches (:class:`pep.admin_mcp.policies.Policies`, as the admin MCP server reads them);
a git source has no directory of its own to show, so its files are not listed. The tests
run once per bundle version, with coverage (:mod:`pdp.coverage`), and are kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from issuer.store import Store
from pdp.coverage import Coverage, render_percent
from pdp.decide import DecisionPoint
from pdp.directory import Directory
from pdp.engine import Bundle
from pdp.explain import render_explanation
from pdp.policytest import run_tests
from pdp.serve.sources import is_git
from pep.admin_mcp.errors import AdminError
from pep.admin_mcp.naming import AgentNames
from pep.admin_mcp.policies import Policies
from pep.console.render import Renderer
from pep.console.security import form_of, signed_in
from pep.console.sessions import Session, Sessions
from pep.console.whatif import Asked, what_if

MAX_AGENTS = 200  # agents the what-if form offers, first by name (any id or name is taken)


@dataclass(frozen=True)
class TestRun:
    """A bundle's tests as the page shows them: each test's outcome, and coverage."""

    __test__ = False  # not a pytest test class

    version: str
    results: list[dict[str, Any]]
    passed: int
    coverage: dict[str, Any]
    percent: str


def test_run(bundle: Bundle) -> TestRun:
    """Run every test of ``bundle`` with coverage."""
    coverage = Coverage(bundle)
    results = []
    for result in run_tests(bundle, observe=coverage.observe):
        failure = result.failure
        entry: dict[str, Any] = {
            "name": result.test.name,
            "where": str(result.span),
            "passed": failure is None,
        }
        if failure is not None:
            entry["message"] = f"step {failure.step}: {failure.message}"
            if failure.explanation is not None:
                entry["explanation"] = render_explanation(failure.explanation)
        results.append(entry)
    report = coverage.report()
    passed = sum(1 for entry in results if entry["passed"])
    return TestRun(bundle.version, results, passed, report.to_json(), render_percent(report))


class PolicyPages:
    """The Policies routes over one decision point, store and policy source."""

    def __init__(
        self,
        point: DecisionPoint,
        store: Store,
        source: str,
        sessions: Sessions,
        render: Renderer,
    ) -> None:
        self.point = point
        self.store = store
        self.files = None if is_git(source) else Policies(Path(source))
        self.source = source
        self.sessions = sessions
        self.render = render
        self._run: TestRun | None = None
        self._lock = threading.Lock()

    def routes(self) -> list[Route]:
        return [
            Route("/policies", signed_in(self.sessions, self.show), methods=["GET"]),
            Route("/policies/file", signed_in(self.sessions, self.file), methods=["GET"]),
            Route("/policies/whatif", signed_in(self.sessions, self.whatif), methods=["POST"]),
        ]

    def tests(self) -> TestRun:
        """The serving bundle's test run, run again only when the bundle changed."""
        bundle = self.point.engine.bundle
        with self._lock:
            if self._run is None or self._run.version != bundle.version:
                self._run = test_run(bundle)
            return self._run

    def _directory(self) -> Directory:
        """The decision point's directory (kept current by the change feed), or one read
        now when the point decides without one."""
        if self.point.directory is not None:
            return self.point.directory
        fresh = Directory(self.store)
        fresh.load()
        return fresh

    def _listing(self) -> list[dict[str, Any]]:
        if self.files is None:
            return []
        try:
            texts = self.files.files()
        except AdminError:
            return []
        return [{"name": name, "size": len(text.encode())} for name, text in texts.items()]

    def _context(self) -> dict[str, Any]:
        agents = [
            {"id": record.id, "name": record.data.get("name", "")}
            for record in self.store.search("Agent", "", "name", False, MAX_AGENTS, 0)[1]
        ]
        return {
            "version": self.point.engine.bundle.version,
            "source": self.source,
            "files": self._listing(),
            "git": self.files is None,
            "run": self.tests(),
            "agents": agents,
        }

    async def show(self, request: Request, session: Session) -> Response:
        context = await to_thread.run_sync(self._context)
        context.update(asked=Asked(), answer=None, error=None)
        return self.render(request, "policies.html.j2", context, session)

    async def file(self, request: Request, session: Session) -> Response:
        """One file's text, escaped in the page."""
        name = request.query_params.get("name", "")
        if self.files is None:
            return PlainTextResponse("a git source's files are not listed here", 404)
        try:
            text = await to_thread.run_sync(self.files.read, name)
        except AdminError as exc:
            return PlainTextResponse(str(exc), 404)
        context = {"name": name, "text": text}
        return self.render(request, "policy_file.html.j2", context, session)

    async def whatif(self, request: Request, session: Session) -> Response:
        asked = Asked.from_form(form_of(request))
        bundle = self.point.engine.bundle

        def decide() -> Any:
            return what_if(asked, bundle, self._directory(), AgentNames(self.store))

        answer, error = None, None
        try:
            answer = await to_thread.run_sync(decide)
        except AdminError as exc:
            error = str(exc)
        context = await to_thread.run_sync(self._context)
        context.update(asked=asked, answer=answer, error=error)
        return self.render(request, "policies.html.j2", context, session, 200 if answer else 400)
