"""Prints how many published AuthZEN interop vectors the run sent, so a run's output says
how much of the scenarios it covered."""

from __future__ import annotations

from typing import Any

import pytest

SENT: dict[str, int] = {}  # scenario -> vectors sent and decided as published


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if SENT:
        counts = ", ".join(f"{name} {count}" for name, count in sorted(SENT.items()))
        total = sum(SENT.values())
        terminalreporter.write_line(
            f"AuthZEN interop: {total} vectors decided as published ({counts})"
        )
