"""``tessera status``: replicas side by side, in step or not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pdp.engine import Engine
from pdp.loader import load_directory
from pep.cli import main
from pep.status import addresses
from tests.conftest import SHIPPED_POLICIES
from tests.counters.places import closed_port
from tests.servers import Server


def served(directory: Path) -> Server:
    return Server(Engine(load_directory(directory).bundle))


@pytest.fixture
def two() -> Iterator[tuple[Server, Server]]:
    first, second = served(SHIPPED_POLICIES), served(SHIPPED_POLICIES)
    yield first, second
    first.close()
    second.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["status", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_replicas_serving_one_bundle_are_in_step(
    two: tuple[Server, Server], capsys: pytest.CaptureFixture[str]
) -> None:
    ports = [s.running.port for s in two]
    code, out, _ = run(capsys, *(f"127.0.0.1:{p}" for p in ports))
    version = two[0].running.point.version
    assert code == 0, out
    for port in ports:
        assert f"127.0.0.1:{port}  SERVING  {version}" in out
    assert out.splitlines()[-1] == f"in step: 2 serving bundle {version}"


def test_a_replica_on_other_policies_or_down_is_not_in_step(
    two: tuple[Server, Server], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "other.pol").write_text("package other\n\npermit everything\n")
    other = served(tmp_path)
    try:
        listed = [f"127.0.0.1:{s.running.port}" for s in (*two, other)]
        code, out, _ = run(capsys, *listed)
        assert code == 1
        assert "NOT in step: 2 bundles are being decided with" in out
        assert other.running.point.version in out
        down = f"127.0.0.1:{closed_port()}"
        code, out, _ = run(capsys, "--json", "--timeout", "1", listed[0], down)
        assert code == 1
        rows = [json.loads(line) for line in out.splitlines()]
        assert [r["health"] for r in rows] == ["SERVING", "UNREACHABLE"]
        assert rows[1]["bundle"] == "-"
    finally:
        other.close()


def test_a_name_stands_for_each_of_its_addresses() -> None:
    assert addresses(["localhost:50051", "127.0.0.1:50051"])[0] in (
        "127.0.0.1:50051",
        "[::1]:50051",
    )
    assert addresses(["no-such-host.invalid:1"]) == ["no-such-host.invalid:1"]


def test_an_address_without_a_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "127.0.0.1")
    assert code == 2
    assert "'127.0.0.1' is not host:port" in err
