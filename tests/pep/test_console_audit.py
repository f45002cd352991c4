"""The console's Audit page on a real ``tessera serve``: verifying the trails (and seeing
a tampered one broken), and the compliance report for a bounded period, a download."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page

from issuer.store import open_store
from pep.console.audit import heads
from tests.conftest import SHIPPED_POLICIES
from tests.pep.test_console import (
    TOKEN,
    add_agent,
    authorize,
    browser_page,
    sign_in_with_token,
    token_session,
)
from tests.servers import Serving, tessera_on


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-audit") / "tessera.db"


@pytest.fixture(scope="module")
def serving(database: Path) -> Iterator[Serving]:
    with tessera_on(SHIPPED_POLICIES, f"sqlite:///{database}", TOKEN) as served:
        yield served


@pytest.fixture(scope="module")
def page(serving: Serving) -> Iterator[Page]:
    """A browser signed in with the bootstrap token, on the Audit page."""
    with browser_page(accept_downloads=True) as page:
        sign_in_with_token(page, serving.http, "/console/audit")
        assert page.url == f"{serving.http}/console/audit"
        yield page


def allowed(serving: Serving, agent: str) -> bool:
    """Whether Authorize allows the agent once the change feed has brought it to the
    decision point (asked every 50 ms, 10 s at most)."""
    for _ in range(200):
        if authorize(serving, agent).allow:
            return True
        time.sleep(0.05)
    return False


def decisions_recorded(database: Path, count: int) -> bool:
    """Whether the agent trail holds ``count`` entries (looked at every 50 ms, 10 s)."""
    for _ in range(200):
        with sqlite3.connect(database) as db:
            found = db.execute("SELECT count(*) FROM audit WHERE trail = 'agent'").fetchone()[0]
        if found >= count:
            return True
        time.sleep(0.05)
    return False


def test_the_report_is_a_download_for_a_bounded_period(serving: Serving, page: Page) -> None:
    agent = add_agent(serving, "report-bot")
    assert allowed(serving, agent)
    page.goto(f"{serving.http}/console/audit")
    with page.expect_download() as downloading:
        page.click("#download")
    download = downloading.value
    assert download.suggested_filename.startswith("tessera-report-")
    text = Path(download.path()).read_text()
    assert "report-bot" in text and "<html" in text
    today = datetime.now(UTC).date()
    with token_session(serving) as client:
        answer = client.get(
            "/console/audit/report", params={"since": str(today), "until": str(today)}
        )
        assert answer.headers["content-disposition"].startswith("attachment;")
        too_long = {"since": str(today - timedelta(days=400)), "until": str(today)}
        refused = client.get("/console/audit/report", params=too_long)
        assert refused.status_code == 400
        assert "at most 366 days" in refused.text
        backwards = {"since": str(today), "until": str(today - timedelta(days=1))}
        assert client.get("/console/audit/report", params=backwards).status_code == 400


def test_verifying_finds_the_trails_intact_then_a_tampered_one_broken(
    serving: Serving, database: Path, page: Page
) -> None:
    agent = add_agent(serving, "verify-bot")
    assert allowed(serving, agent)
    assert decisions_recorded(database, 1)
    page.goto(f"{serving.http}/console/audit")
    assert page.inner_text("#verdict") == "Not verified by this server yet."
    page.click("#verify")
    assert page.inner_text("#verdict") == "intact"
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE audit SET record = replace(record, 'tool', 'toot') "
            "WHERE trail = 'agent' AND seq = 1"
        )
    page.click("#verify")
    assert page.inner_text("#verdict") == "broken"
    assert "agent trail" in page.inner_text("#verification")


def test_verifying_needs_the_sessions_form_token(serving: Serving) -> None:
    with token_session(serving) as client:
        assert client.post("/console/audit/verify", data={"csrf": "0" * 64}).status_code == 403


def test_the_trails_table_names_each_trail_once(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/tessera.db")
    try:
        names = [head["trail"] for head in heads(store)]
    finally:
        store.close()
    assert len(names) == len(set(names)) and "checkpoint" in names
