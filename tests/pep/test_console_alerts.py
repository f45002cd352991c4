"""The console's Alerts page on a real ``tessera serve``: an anomaly alert with what was
observed against the baseline, and acknowledging it, kept in the store and recorded on
the admin trail as the operator's."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
    return tmp_path_factory.mktemp("console-alerts") / "tessera.db"


@pytest.fixture(scope="module")
def serving(database: Path) -> Iterator[Serving]:
    with tessera_on(SHIPPED_POLICIES, f"sqlite:///{database}", TOKEN) as served:
        yield served


def rows(database: Path, trail: str) -> list[dict[str, object]]:
    with sqlite3.connect(database) as db:
        found = db.execute("SELECT record FROM audit WHERE trail = ? ORDER BY seq", (trail,))
        return [json.loads(text) for (text,) in found.fetchall()]


def an_alert(database: Path) -> bool:
    """Whether the alert trail holds an alert (looked at every 50 ms, 10 s at most)."""
    for _ in range(200):
        if rows(database, "alert"):
            return True
        time.sleep(0.05)
    return False


def test_an_operator_acknowledges_a_denials_alert(serving: Serving, database: Path) -> None:
    agent = add_agent(serving, "probe-bot", owner="ops", purpose="probing", risk="critical")
    for _ in range(12):  # a burst of denials: the one alert that needs no baseline
        assert not authorize(serving, agent).allow
    assert an_alert(database)
    with browser_page() as page:
        sign_in_with_token(page, serving.http, "/console/alerts")
        row = page.locator("#alerts tbody tr").first
        assert "denials" in row.inner_text() and agent in row.inner_text()
        cells = row.locator("td")
        assert cells.nth(4).inner_text() and cells.nth(5).inner_text()  # observed, baseline
        row.locator("button.acknowledge").click()
        assert "by bootstrap admin" in page.locator("#alerts tbody tr td.ack").first.inner_text()
    # every worker and replica reads the acknowledgement from the store
    with token_session(serving) as client:
        assert "by bootstrap admin" in client.get("/console/alerts").text
    admin = [r for r in rows(database, "admin") if "AlertAcknowledgement" in json.dumps(r)]
    assert admin and "bootstrap-admin" in json.dumps(admin[-1])


def test_acknowledging_needs_the_form_token_and_a_real_alert(serving: Serving) -> None:
    with token_session(serving) as client:
        assert client.post("/console/alerts/1/ack", data={"csrf": "0" * 64}).status_code == 403
        page = client.get("/console/alerts").text
        token = page.split('name="csrf" value="')[1].split('"')[0]
        missing = client.post("/console/alerts/999999/ack", data={"csrf": token})
        assert missing.status_code == 404
    assert httpx.post(f"{serving.http}/console/alerts/1/ack", timeout=10).status_code == 403
