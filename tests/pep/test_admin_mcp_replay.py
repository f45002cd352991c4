"""Replaying and explaining a recorded decision read ``now`` as the time of its record."""

from __future__ import annotations

from typing import Any

from pdp.catalog import Resources
from pdp.explain import render_explanation
from pep.admin_mcp.explain import RecordedUsage, explained
from pep.admin_mcp.replay import Replayer, rebuilt
from tests.conftest import bundle_of

POLICY = """
permit business_hours
  call tool "search"
  when hour(now, "Europe/Berlin") >= 9 and hour(now, "Europe/Berlin") < 17
"""

ASKED: dict[str, Any] = {"agent": {"id": "bot"}, "tool": "search"}
MORNING = {"at": "2026-03-30T07:30:00Z"}  # 09:30 in Berlin
EVENING = {"at": "2026-03-30T16:00:00Z"}  # 18:00 in Berlin


def test_a_replayed_decision_is_made_at_the_time_of_its_record() -> None:
    replayer = Replayer(bundle_of(POLICY))
    assert replayer.decide(ASKED, MORNING)["decision"] == "allow"
    assert replayer.decide(ASKED, EVENING)["decision"] == "deny"


def test_an_explained_decision_reads_now_as_the_time_of_its_record() -> None:
    bundle = bundle_of(POLICY)
    typed = rebuilt(ASKED, bundle, Resources(bundle, None))
    assert not isinstance(typed, str)
    evening = explained(bundle, typed, EVENING, RecordedUsage(EVENING, bundle.rules))
    assert not evening.decision.allow
    text = render_explanation(evening)
    assert 'because hour(now, "Europe/Berlin") < 17  →  false' in text
    assert 'where hour(now, "Europe/Berlin") = 18' in text
    morning = explained(bundle, typed, MORNING, RecordedUsage(MORNING, bundle.rules))
    assert morning.decision.allow
