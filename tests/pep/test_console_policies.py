"""The console's Policies page on a real ``tessera serve``: the serving bundle, its files
(shown escaped), its tests with coverage, and the what-if, which decides as the admin MCP
server's simulate_request does and leaves nothing behind."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page

from pdp.lang.schema import Type
from pdp.loader import load_directory
from pep.console.whatif import FormError, context_from
from tests.conftest import SHIPPED_POLICIES
from tests.pep.test_console import TOKEN, add_agent, browser_page, sign_in_with_token, token_session
from tests.servers import Serving, tessera_on


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    url = f"sqlite:///{tmp_path_factory.mktemp('console-policies')}/tessera.db"
    with tessera_on(SHIPPED_POLICIES, url, TOKEN) as served:
        yield served


@pytest.fixture(scope="module")
def page(serving: Serving) -> Iterator[Page]:
    """A browser signed in with the bootstrap token."""
    with browser_page() as page:
        sign_in_with_token(page, serving.http, "/console/policies")
        assert page.url == f"{serving.http}/console/policies"
        yield page


# ---------------------------------------------------------------- the context's typing


def test_context_lines_are_typed_by_the_schema() -> None:
    declared = {"n": Type("number"), "ok": Type("bool"), "tags": Type("set", Type("string"))}
    lines = "n=3\nok=true\n\ntags=a, b\namount=200 USD"
    context = context_from(lines, declared)
    assert context == {"n": 3, "ok": True, "tags": ["a", "b"], "amount": "200 USD"}


def test_a_context_line_of_the_wrong_type_names_its_line() -> None:
    with pytest.raises(FormError, match=r"context line 2 \(n\): expected a number"):
        context_from("ok=false\nn=three", {"n": Type("number"), "ok": Type("bool")})
    with pytest.raises(FormError, match="context line 1: write name=value"):
        context_from("amount", {})


# ---------------------------------------------------------------- in a browser


def test_the_page_shows_the_serving_bundle_its_files_and_its_tests(page: Page) -> None:
    base = page.url.split("/console")[0]
    page.goto(f"{base}/console/policies")
    bundle = load_directory(SHIPPED_POLICIES).bundle
    assert page.inner_text("#version") == bundle.version
    names = page.locator("#files tbody td:first-child").all_inner_texts()
    assert "agents.pol" in names and "schema.pol" in names
    summary = page.inner_text("#tests-summary")
    assert f"{len(bundle.tests)} of {len(bundle.tests)} passed" in summary
    assert "coverage" in summary
    assert page.locator("#coverage tbody tr").count() == len(bundle.rules)


def test_a_file_is_shown_as_its_text_escaped(page: Page) -> None:
    base = page.url.split("/console")[0]
    page.goto(f"{base}/console/policies")
    page.click("#files a:text('agents.pol')")
    text = (SHIPPED_POLICIES / "agents.pol").read_text()
    assert "<" in text  # the file has markup characters, which must stay text
    assert page.locator("#source").text_content() == text
    assert "&lt;" in page.content()


def test_what_if_decides_explains_and_records_nothing(serving: Serving, page: Page) -> None:
    agent = add_agent(serving, "whatif-bot")
    for _ in range(100):  # until the change feed has brought the agent (10 s at most)
        page.goto(f"{serving.http}/console/policies")
        page.fill("#whatif input[name=agent]", "whatif-bot")
        page.fill("#whatif input[name=tool]", "search")
        page.fill("#whatif textarea[name=context]", "amount=20 USD")
        page.click("#decide")
        if "not in the directory" not in page.inner_text("#whatif-explanation"):
            break
        time.sleep(0.1)
    assert page.inner_text("#whatif-decision") == "allow"
    assert page.inner_text("#whatif-rules") == "agents.read_only"
    assert "permit agents.read_only" in page.inner_text("#whatif-explanation")
    with token_session(serving) as client:
        listed = client.get("/console/decisions", params={"agent": agent})
        assert 'href="/console/decisions/' not in listed.text  # no decision was audited


def test_what_if_says_what_is_wrong_with_the_form(page: Page) -> None:
    base = page.url.split("/console")[0]
    page.goto(f"{base}/console/policies")
    page.fill("#whatif input[name=agent]", "anyone")
    page.click("#decide")
    assert "name a tool" in page.inner_text("#whatif-error")


def test_what_if_needs_the_sessions_form_token(serving: Serving) -> None:
    with token_session(serving) as client:
        form = {"agent": "x", "tool": "search", "csrf": "0" * 64}
        assert client.post("/console/policies/whatif", data=form).status_code == 403
