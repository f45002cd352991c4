"""The tessera command: exit codes, output, and clear errors on bad input."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from issuer.store import open_store
from pep.cli import main
from tests.stores import postgres_schema

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"

SUSPENDED = {"agent": {"id": "helper", "risk": "low", "status": "suspended"}, "tool": "search"}
READER = {"agent": {"id": "helper", "risk": "low", "status": "active"}, "tool": "search"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    copy = tmp_path / "policies"
    shutil.copytree(POLICIES, copy)
    return copy


def write_json(tmp_path: Path, data: object, name: str = "request.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_check_passes_on_the_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", str(POLICIES))
    assert code == 0
    assert out.startswith("ok: ") and "0 warnings" in out


def test_check_lists_a_schema_typo_first_and_folds_what_it_breaks(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    schema = policies / "schema.pol"
    schema.write_text(schema.read_text().replace("status: string", "status: strng"))
    code, _, err = run(capsys, "check", str(policies))
    assert code == 1
    first, *rest = err.split("\n\n")
    assert first.startswith(f"{schema}:13:13: error: unknown type 'strng'\n")
    # Every rule and test that reads or sets agent.status follows from the one typo.
    follow_ons = (policies / "agents.pol").read_text().count("agent.status")
    follow_ons += (policies / "agents_test.pol").read_text().count("status:")
    assert first.endswith(
        f"  … and {follow_ons} more caused by this: {policies}/agents.pol:14:32, "
        f"{policies}/agents_test.pol:4:36, {policies}/agents_test.pol:10:39, …"
    )
    assert rest == [f"1 error ({follow_ons} more caused by it) in {policies}\n"]


def test_check_warns_about_a_forbid_on_an_absent_attribute_and_strict_fails(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    (policies / "extra.pol").write_text('forbid unowned\n  when agent.owner != "ops"\n')
    code, out, err = run(capsys, "check", str(policies))
    assert code == 0
    assert "extra.pol:2:8: warning: forbid unowned denies every request that lacks" in err
    assert "1 warnings" in out
    code, _, _ = run(capsys, "check", "--strict", str(policies))
    assert code == 1


def test_check_reports_errors_with_location_and_exits_1(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    (policies / "broken.pol").write_text("permit x\n  when agent.risk < hihg\n")
    code, _, err = run(capsys, "check", str(policies))
    assert code == 1
    assert "broken.pol:2:21: error: unknown name 'hihg'" in err
    assert "did you mean 'high'?" in err
    assert "1 error in" in err


def test_check_json(capsys: pytest.CaptureFixture[str], policies: Path) -> None:
    (policies / "broken.pol").write_text("permit x when agent.nope == 1\n")
    code, out, _ = run(capsys, "check", "--json", str(policies))
    assert code == 1
    body = json.loads(out)
    assert body["ok"] is False
    assert body["diagnostics"][0]["line"] == 1
    assert body["diagnostics"][0]["severity"] == "error"


def test_check_strict_fails_on_warnings(capsys: pytest.CaptureFixture[str], policies: Path) -> None:
    (policies / "never.pol").write_text('permit never call tool "x" when 1 > 2\n')
    assert run(capsys, "check", str(policies))[0] == 0
    code, _, err = run(capsys, "check", "--strict", str(policies))
    assert code == 1
    assert "warning" in err


def test_check_of_a_missing_directory_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "check", str(tmp_path / "nope"))
    assert code == 2
    assert "is not a directory" in err


def test_policy_tests_pass_on_the_shipped_policies(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test", str(POLICIES))
    assert code == 0
    assert out.strip().endswith(" passed, 0 failed")


def test_a_failing_policy_test_prints_its_trace_and_exits_1(
    capsys: pytest.CaptureFixture[str], policies: Path
) -> None:
    (policies / "extra_test.pol").write_text(
        "package agents\n"
        'test "a suspended agent may search (wrong on purpose)" {\n'
        '  agent { id: "x", risk: low, status: "suspended" }\n'
        '  call tool "search"\n'
        "  expect allow\n"
        "}\n"
    )
    code, out, _ = run(capsys, "test", str(policies))
    assert code == 1
    assert "FAIL a suspended agent may search (wrong on purpose)" in out
    assert "expected allow, got deny" in out
    assert "forbid agents.inactive_agents" in out  # the trace names the deciding rule
    assert 'agent.status != "active"' in out
    assert out.strip().endswith(" passed, 1 failed")


CAPPED = """package pay

permit daily_cap
  call tool "pay"
  limit sum(context.amount) <= 100 USD per 24h per agent

permit refunds
  call tool "refund"

schema {
  context { amount: money<USD> }
}

test "the cap refills after a day" {
  agent { id: "a" }
  at "2026-12-01T09:00:00Z"
  call tool "pay" with { amount: 100 USD }
  expect allow
  after 24h
  call tool "pay" with { amount: 100 USD }
  expect allow
}

test "a small payment" {
  agent { id: "a" }
  call tool "pay" with { amount: 1 USD }
  expect allow
}
"""


@pytest.fixture
def capped(tmp_path: Path) -> Path:
    (tmp_path / "pay.pol").write_text(CAPPED)
    return tmp_path


def test_filter_runs_only_the_tests_whose_name_contains_it(
    capsys: pytest.CaptureFixture[str], capped: Path
) -> None:
    code, out, _ = run(capsys, "test", "-v", "--filter", "REFILL", str(capped))
    assert code == 0
    assert out == ("selected 1 of 2 tests\nPASS the cap refills after a day\n1 passed, 0 failed\n")


def test_a_filter_that_selects_nothing_exits_2(
    capsys: pytest.CaptureFixture[str], capped: Path
) -> None:
    code, out, err = run(capsys, "test", "--filter", "nope", "--filter", "none", str(capped))
    assert (code, out) == (2, "")
    assert "no test name contains 'nope' or 'none'" in err


def test_a_filter_that_selects_nothing_still_prints_json(
    capsys: pytest.CaptureFixture[str], capped: Path
) -> None:
    code, out, err = run(capsys, "test", "--json", "--filter", "nope", str(capped))
    assert code == 2
    message = f"no test name contains 'nope' (ignoring case); 2 tests in {capped}"
    assert json.loads(out) == {
        "ok": False,
        "selected": 0,
        "total": 2,
        "passed": 0,
        "failed": 0,
        "tests": [],
        "message": message,
    }
    assert err == f"tessera test: {message}\n"


def test_coverage_lists_rules_and_the_minimum_names_the_untested_ones(
    capsys: pytest.CaptureFixture[str], capped: Path
) -> None:
    code, out, err = run(capsys, "test", "--coverage", str(capped))
    assert code == 0
    assert "  hit   permit pay.daily_cap  (" in out
    assert 'by "the cap refills after a day", "a small payment"' in out
    assert "  MISS  permit pay.refunds  (" in out
    assert out.endswith("1 of 2 rules hit (50%)\n")
    code, out, err = run(capsys, "test", "--coverage-min", "100", str(capped))
    assert code == 1
    assert "2 passed, 0 failed" in out
    assert err == (
        "tessera test: coverage 50% is under the minimum of 100%; rules no test hits:\n"
        f"  permit pay.refunds  ({capped / 'pay.pol'}:7:1)\n"
    )
    assert run(capsys, "test", "--coverage-min", "50", str(capped))[0] == 0


def test_test_results_and_coverage_as_json(
    capsys: pytest.CaptureFixture[str], capped: Path
) -> None:
    code, out, _ = run(capsys, "test", "--json", "--coverage-min", "60", str(capped))
    assert code == 1
    data = json.loads(out)
    assert (data["ok"], data["selected"], data["passed"], data["failed"]) == (False, 2, 2, 0)
    assert data["tests"][0] == {
        "name": "the cap refills after a day",
        "where": f"{capped / 'pay.pol'}:14:1",
        "passed": True,
    }
    coverage = data["coverage"]
    assert (coverage["hit"], coverage["total"], coverage["minimum"]) == (1, 2, 60.0)
    assert coverage["rules"][1] == {
        "id": "pay.refunds",
        "effect": "permit",
        "where": f"{capped / 'pay.pol'}:7:1",
        "tests": [],
    }


def test_a_failure_at_a_set_clock_says_the_time(
    capsys: pytest.CaptureFixture[str], capped: Path
) -> None:
    (capped / "pay.pol").write_text(CAPPED.replace("after 24h", "after 23h"))
    code, out, _ = run(capsys, "test", str(capped))
    assert code == 1
    assert "FAIL the cap refills after a day  (" in out
    assert ":14:1, step 2, clock 2026-12-02T08:00:00Z)\n  expected allow, got deny\n" in out
    assert "used 100, this call 100" in out


def test_eval_prints_the_decision_and_exits_by_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(
        capsys, "eval", "--policies", str(POLICIES), str(write_json(tmp_path, READER))
    )
    assert code == 0
    body = json.loads(out)
    assert body["decision"] == "allow"
    assert body["decided_by"] == ["agents.read_only"]
    assert body["bundle_version"].startswith("sha256:")
    code, out, _ = run(
        capsys, "eval", "--policies", str(POLICIES), str(write_json(tmp_path, SUSPENDED))
    )
    assert code == 1
    assert json.loads(out)["decided_by"] == ["agents.inactive_agents"]


def test_eval_reports_obligations(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    request = {
        "agent": {"id": "pay-bot", "purpose": "payments", "risk": "low", "status": "active"},
        "user": {"id": "alice"},
        "tool": "payments.transfer",
        "context": {"amount": "200 USD"},
    }
    code, out, _ = run(
        capsys, "eval", "--policies", str(POLICIES), str(write_json(tmp_path, request))
    )
    assert code == 1
    assert json.loads(out)["obligations"] == [
        {"kind": "consent", "value": "payments:transfer", "text": 'consent("payments:transfer")'}
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[]", "a request is a JSON object"),
        (json.dumps({"tool": "search"}), "agent: required"),
        (
            json.dumps({"agent": {"id": "a", "risk": "extreme"}, "tool": "search"}),
            "agent.risk: unknown risk level 'extreme'",
        ),
        (
            json.dumps({"agent": {"id": "a"}, "tool": "pay", "context": {"amount": 5}}),
            "context.amount: expected money",
        ),
    ],
)
def test_eval_rejects_bad_requests_with_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    code, out, err = run(capsys, "eval", "--policies", str(POLICIES), str(path))
    assert code == 2
    assert out == ""
    assert message in err


def test_eval_and_explain_decide_at_the_time_the_request_carries(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    office = tmp_path / "office"
    office.mkdir()
    (office / "office.pol").write_text(
        'permit open call tool "search"\n  when hour(now, "Europe/Berlin") < 17\n'
    )
    asked = {"agent": {"id": "bot"}, "tool": "search", "time": "2026-03-30T07:30:00Z"}
    code, out, _ = run(capsys, "eval", "--policies", str(office), str(write_json(tmp_path, asked)))
    assert (code, json.loads(out)["decision"]) == (0, "allow")
    late = write_json(tmp_path, {**asked, "time": "2026-03-30T16:00:00Z"}, "late.json")
    code, out, _ = run(capsys, "explain", "--policies", str(office), str(late))
    assert code == 1
    assert 'when hour(now, "Europe/Berlin") < 17  →  false' in out


def test_explain_shows_the_failing_sub_expression(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    request = {
        "agent": {"id": "pay-bot", "purpose": "payments", "risk": "high", "status": "active"},
        "tool": "payments.transfer",
        "context": {"amount": "200 USD"},
    }
    code, out, _ = run(
        capsys, "explain", "--policies", str(POLICIES), str(write_json(tmp_path, request))
    )
    assert code == 1
    assert out.startswith("decision: DENY")
    assert "permit agents.small_transfers" in out
    assert "because agent.risk <= medium  →  false" in out
    assert "where agent.risk = high" in out


def test_fmt_check_and_rewrite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    messy = tmp_path / "messy.pol"
    messy.write_text('permit   x call tool "a"   when agent.risk<high\n')
    code, out, _ = run(capsys, "fmt", "--check", str(messy))
    assert code == 1
    assert f"would reformat {messy}" in out
    assert messy.read_text() == 'permit   x call tool "a"   when agent.risk<high\n'
    assert run(capsys, "fmt", str(messy))[0] == 0
    assert messy.read_text() == 'permit x\n  call tool "a"\n  when agent.risk < high\n'
    assert run(capsys, "fmt", "--check", str(messy))[0] == 0


def test_fmt_check_diff_prints_a_unified_diff_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("rules").mkdir()
    messy = Path("rules/messy.pol")
    messy.write_text('# keep\npermit   x call tool "a"   when agent.risk<high\n')
    tidy = Path("rules/tidy.pol")
    tidy.write_text("permit y\n")
    code, out, err = run(capsys, "fmt", "--check", "--diff", "rules")
    assert code == 1
    assert out == (
        "--- a/rules/messy.pol\n"
        "+++ b/rules/messy.pol\n"
        "@@ -1,2 +1,4 @@\n"
        " # keep\n"
        '-permit   x call tool "a"   when agent.risk<high\n'
        "+permit x\n"
        '+  call tool "a"\n'
        "+  when agent.risk < high\n"
    )
    assert err == "would reformat rules/messy.pol\n1 of 2 files would reformat\n"
    assert messy.read_text() == '# keep\npermit   x call tool "a"   when agent.risk<high\n'
    assert run(capsys, "fmt", "--diff", "rules") == (1, out, err)  # --diff implies --check
    assert run(capsys, "fmt", "--check", "--diff", "rules/tidy.pol") == (
        0,
        "",
        "0 of 1 files would reformat\n",
    )


@pytest.mark.parametrize(
    "source",
    [
        '# keep\r\npermit   x call tool "a"\r\n\r\nforbid y\r\n',
        '# a\u2028b\x85c\x0bd\x1ce\npermit   x call tool "f\x0cg"\n# h\u2029i',
    ],
    ids=["crlf", "unicode-line-separators"],
)
def test_fmt_diff_applies_with_git_apply_to_the_formatted_text(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    from pdp.lang.formatter import format_source

    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    policy = Path("p.pol")
    policy.write_bytes(source.encode())
    code, patch, err = run(capsys, "fmt", "--diff", "p.pol")
    assert code == 1
    assert err == "would reformat p.pol\n1 of 1 files would reformat\n"
    subprocess.run(["git", "apply", "-"], input=patch.encode(), check=True)
    formatted = policy.read_bytes().decode()
    assert "\r" not in formatted
    assert formatted == format_source(source, "p.pol")
    assert run(capsys, "fmt", "--check", "p.pol")[0] == 0


def test_fmt_diff_marks_a_last_line_without_a_newline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bare.pol").write_text("permit   y")
    code, out, _ = run(capsys, "fmt", "--check", "--diff", "bare.pol")
    assert code == 1
    assert out.startswith(
        "--- a/bare.pol\n+++ b/bare.pol\n@@ -1 +1 @@\n"
        "-permit   y\n\\ No newline at end of file\n+permit y\n"
    )


def test_fmt_leaves_the_shipped_policies_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "fmt", "--check", str(POLICIES))
    assert code == 0, out


def test_fmt_refuses_a_broken_file_and_leaves_it_alone(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.pol"
    broken.write_text("permit x when (\n")
    code, _, err = run(capsys, "fmt", str(broken))
    assert code == 2
    assert "broken.pol:" in err
    assert broken.read_text() == "permit x when (\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main(["eval"])
    assert caught.value.code == 2
    assert "REQUEST.json" in capsys.readouterr().err


def test_help_lists_every_command_once_grouped_by_plane(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    listed = re.findall(r"^    (\S+)", capsys.readouterr().out, re.MULTILINE)
    assert listed == [
        *("check", "test", "fmt", "lsp", "eval", "explain"),
        *("serve", "status", "audit", "report", "keys", "mcp-proxy", "admin-mcp"),
    ]


@pytest.mark.parametrize(
    ("module", "may_import"),
    [
        ("issuer/cli.py", {"issuer"}),
        ("pdp/commands/__init__.py", set()),
        ("pdp/commands/policy.py", {"pdp"}),
        ("pdp/commands/serve.py", {"pdp", "issuer"}),
        ("pdp/audit/cli.py", {"pdp", "issuer"}),
    ],
)
def test_a_plane_declares_its_commands_without_the_planes_above_it(
    module: str, may_import: set[str]
) -> None:
    """The arrows point pep → pdp → issuer, in the imports inside functions too (where the
    commands import what they run)."""
    tree = ast.parse((ROOT / module).read_text())
    names = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    ]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    planes = {name.split(".")[0] for name in names} & {"issuer", "pdp", "pep"}
    assert planes <= may_import


def test_the_console_script_runs(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "tessera"
    result = subprocess.run(
        [str(exe), "check", str(POLICIES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_keys_rotate_makes_a_new_current_key_and_keeps_the_old_one_published(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/t.db"
    open_store(store).close()  # as tessera serve makes it
    code, out, _ = run(capsys, "keys", "list", "--store", store)
    assert code == 0
    [first] = out.splitlines()
    assert first.endswith("current") and "ES256" in first
    code, out, _ = run(capsys, "keys", "rotate", "--store", store, "--alg", "EdDSA")
    assert code == 0
    new, *listing = out.splitlines()
    assert new.startswith("new signing key") and new.endswith("(EdDSA)")
    assert [line.split()[-1] for line in listing] == ["published", "current"]
    assert listing[0].split()[0] == first.split()[0]


def test_keys_with_an_unknown_store_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "keys", "list", "--store", "mysql://nope")
    assert code == 2
    assert "store: 'mysql://nope' is neither" in err


# ------------------------------------------------------------------ a store that is not there

READERS = [
    ("report", "--all"),
    ("audit", "verify"),
    ("audit", "export"),
    ("audit", "query"),
    ("audit", "alerts"),
    ("keys", "list"),
    ("keys", "rotate"),
]


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_command_on_a_missing_store_file_refuses_it_and_creates_nothing(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: tuple[str, ...],
) -> None:
    """A mistyped --store must not "verify" a new, empty store made on the spot."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TESSERA_STORE", raising=False)
    code, out, err = run(capsys, *command, "--store", "sqlite:///var/tesera.db")
    assert (code, out) == (2, "")
    assert err.startswith(
        f"tessera {command[0]}: no store at sqlite:///var/tesera.db: "
        "the file var/tesera.db does not exist; nothing was created"
    )
    assert "tessera serve creates a store" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_command_on_the_default_store_that_is_not_there_refuses_it(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: tuple[str, ...],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TESSERA_STORE", raising=False)
    code, _, err = run(capsys, *command)
    assert code == 2
    assert "no store at sqlite:///var/tessera.db: the file var/tessera.db does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_a_file_without_tessera_tables_is_refused_and_left_as_it_was(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    code, _, err = run(capsys, "audit", "verify", "--store", f"sqlite:///{empty}")
    assert code == 2
    assert f"{empty} has no Tessera tables; nothing was created" in err
    assert empty.stat().st_size == 0
    assert [p.name for p in tmp_path.iterdir()] == ["empty.db"]


@pytest.mark.parametrize("command", READERS, ids=" ".join)
def test_a_command_on_a_postgres_schema_without_tables_refuses_it_and_creates_nothing(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    with postgres_schema() as url:
        code, out, err = run(capsys, *command, "--store", url)
        assert (code, out) == (2, "")
        schema = url.split("search_path%3D")[1].split("&")[0]
        assert f"no store at {url}: the schema {schema} has no Tessera tables" in err
        with psycopg.connect(url) as db:
            tables = db.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            ).fetchone()
        assert tables == (0,)


def test_the_store_commands_open_a_store_tessera_serve_made(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path}/var/tessera.db"
    open_store(store).close()
    for command in READERS:
        code, _, err = run(capsys, *command, "--store", store)
        assert code == 0, (command, err)
