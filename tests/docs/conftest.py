"""The documentation's examples that were not run, listed at the end of the run."""

from __future__ import annotations

import pytest

from tests.docs.test_examples import NOT_RUN


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    listed = terminalreporter.config.stash.get(NOT_RUN, [])
    if listed:
        terminalreporter.write_sep("-", f"{len(listed)} documentation examples not run")
        for line in listed:
            terminalreporter.write_line(line)
