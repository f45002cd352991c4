"""The live server every fuzzer of this package shares (started once, seeded once)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz.live import Live, live_server


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("fuzz")) as running:
        yield running
