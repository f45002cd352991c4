"""The benchmarks say what they could not measure: a row that cannot run is named, with
why, and fails ``--strict``; and a ``--quick`` window is long enough to hold what it
measures. The scripts run as people run them, against servers on loopback; the
unreachable ones are a closed port on 127.0.0.1. No script hides a module the project
imports, and the engine benchmark decides alike whenever it runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType

import pytest

from pdp.engine import Engine
from pdp.lang import ast
from pdp.loader import load_directory
from pdp.model import Request
from pdp.policytest import run_tests
from pdp.request import request_from_json

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
NO_POSTGRES = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"
NO_REDIS = "redis://127.0.0.1:1/0"


def bench(script: str, *flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
        cwd=BENCHMARKS.parent,
    )


@pytest.mark.parametrize(
    ("script", "row"),
    [
        ("audit.py", "async_pg (the audit writer on PostgreSQL)"),
        ("anomaly.py", "postgresql"),
        ("counters.py", "postgresql"),
    ],
)
def test_strict_fails_naming_a_postgres_row_that_cannot_run(script: str, row: str) -> None:
    """The PostgreSQL row used to be skipped in silence and --strict passed."""
    done = bench(script, "--quick", "--strict", TESSERA_TEST_POSTGRES=NO_POSTGRES)
    assert done.returncode == 1, done.stderr
    assert f"--strict: {row}: could not run: " in done.stderr
    assert "127.0.0.1:1/test" in done.stderr and "Connection refused" in done.stderr


def test_strict_fails_naming_a_redis_row_that_cannot_run() -> None:
    done = bench("counters.py", "--quick", "--strict", TESSERA_TEST_REDIS=NO_REDIS)
    assert done.returncode == 1, done.stderr
    assert f"--strict: redis: could not run: {NO_REDIS} is not reachable: " in done.stderr


def test_without_strict_a_row_that_cannot_run_is_said_and_the_rest_is_measured() -> None:
    done = bench("counters.py", "--quick", TESSERA_TEST_REDIS=NO_REDIS)
    assert done.returncode == 0, done.stderr
    assert f"skipped: redis: {NO_REDIS} is not reachable: " in done.stderr
    assert f"redis                          skipped: {NO_REDIS} is not reachable" in done.stdout
    assert "SKIP  redis charge median µs: n/a (<= 250); not measured: " in done.stdout
    assert "sqlite " in done.stdout  # the other rows ran


@pytest.mark.parametrize("strict", [True, False])
def test_the_footprint_rows_without_valgrind_are_said_and_fail_strict(
    tmp_path: Path, strict: bool
) -> None:
    """The footprint benchmark needs valgrind: on a PATH without it, it says so."""
    done = bench(
        "door_footprint.py", "--quick", *(["--strict"] if strict else []), PATH=str(tmp_path)
    )
    assert done.returncode == (1 if strict else 0), done.stderr
    said = "door and floor (cachegrind): could not run: valgrind is not installed"
    assert (f"--strict: {said}" if strict else f"skipping: {said}") in done.stderr
    if not strict:  # the report is printed, and standard error names the row again
        assert "skipped: door and floor (cachegrind): valgrind is not installed" in done.stderr
        assert "door / floor, lines: not measured" in done.stdout


def test_a_quick_audit_run_sees_several_writer_commits_in_each_batch_window() -> None:
    """The quick batch window used to be shorter than one of the writer's batch commits
    (it gathers for 0.1 s), so its records/s counted zero, one or two commits by chance."""
    done = bench("audit.py", "--quick", "--json", "--no-postgres")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    writer = result["batch"]["async"]
    assert writer["writer_commits_in_windows"] >= 2 * result["method"]["rounds"]
    assert writer["writer_records_per_s"] > 0
    assert "async_pg" not in result["batch"]  # left out on purpose: no target, no failure
    assert not any("PostgreSQL" in target["name"] for target in result["targets"])


def test_no_benchmark_script_is_named_like_a_module_found_elsewhere(tmp_path: Path) -> None:
    """A script run from benchmarks/ has that directory first on sys.path: benchmarks/
    issuer.py stood in for the issuer package, and `make bench` died on it."""
    names = sorted(path.stem for path in BENCHMARKS.glob("*.py"))
    find = "import importlib.util as u, sys; print([n for n in sys.argv[1:] if u.find_spec(n)])"
    done = subprocess.run(
        [sys.executable, "-P", "-c", find, *names],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_make_bench_runs_the_engine_benchmark_to_its_report() -> None:
    done = bench("engine.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    shipped = json.loads(done.stdout)["shipped"]
    assert [r["allow"] for r in shipped["requests"]] == [
        r["expect"] == "allow" for r in shipped["requests"]
    ]
    assert shipped["test_requests_cross_checked"] > 0


def engine_benchmark(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("engine_benchmark", BENCHMARKS / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "engine_benchmark", module)
    spec.loader.exec_module(module)
    return module


# The machine's clock on a Saturday night, and on a Monday at 20:30 in Berlin.
@pytest.mark.parametrize("wall_clock", ["2027-01-16T02:00:00Z", "2027-01-18T19:30:00Z"])
def test_the_engine_benchmark_decides_alike_whenever_it_runs(
    monkeypatch: pytest.MonkeyPatch, wall_clock: str
) -> None:
    """The shipped finance rule reads the time in Berlin: the benchmark's engines, floor and
    Cedar decide on a fixed clock and each request's own time, not on the machine's."""
    bench = engine_benchmark(monkeypatch)
    bundle = load_directory(bench.POLICIES).bundle
    requests = [request_from_json(case.data, bundle.schema) for case in bench.SHIPPED_CASES]
    moment = datetime.fromisoformat(wall_clock).timestamp()
    monkeypatch.setattr(time, "time", lambda: moment)
    allow, compared = bench.check_decisions(bundle, requests)
    assert allow == [case.expect == "allow" for case in bench.SHIPPED_CASES]
    assert compared > 0
    deciders = {Engine(bundle, clock=bench.fixed_clock).decide(r).decided_by for r in requests}
    assert {("agents.support_reads_customers",), ("agents.finance_reporting",)} <= deciders


def test_the_engine_benchmark_compares_each_test_step_at_the_tests_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shipped policy tests move their clock (`at`, `after`): the floor must be asked
    at each step's instant, not at the benchmark's fixed clock."""
    bench = engine_benchmark(monkeypatch)
    bundle = load_directory(bench.POLICIES).bundle
    steps: set[float] = set()

    def step(test: ast.Test, request: Request, engine: Engine) -> None:
        steps.add(engine.clock())

    run_tests(bundle, observe=step)
    asked: set[float] = set()
    floor = bench.floor_decide

    def recorded(request: Request, clock: float = bench.CLOCK) -> bool:
        asked.add(clock)
        return bool(floor(request, clock))

    monkeypatch.setattr(bench, "floor_decide", recorded)
    bench.cross_check_tests(bundle)
    assert len(steps) > 1
    assert asked == steps


def test_a_quick_console_run_times_every_page_on_both_stores() -> None:
    done = bench("console.py", "--quick", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["stores"]) == {"sqlite", "postgresql"}
    for found in result["stores"].values():
        assert set(found["pages"]) >= {"agents list", "agent", "decisions", "alerts", "policies"}
        assert all(row["samples"] > 0 for row in found["pages"].values())
    assert all(t["value"] is not None for t in result["targets"])  # measured, not skipped


def test_strict_fails_naming_the_console_postgres_row_that_cannot_run() -> None:
    done = bench("console.py", "--quick", "--strict", TESSERA_TEST_POSTGRES=NO_POSTGRES)
    assert done.returncode == 1, done.stderr
    assert "--strict: postgresql: could not run: " in done.stderr
