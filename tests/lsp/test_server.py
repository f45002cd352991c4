"""``tessera lsp`` over standard input and output, as an editor drives it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from lsprotocol import types

from pdp.lsp.bundle import MAX_DOCUMENT
from pdp.lsp.files import MAX_FILES
from tests.lsp.client import Editor, editing, uri

SCHEMA = """\
schema {
  agent { risk: risk }
  context { amount: money<USD> }
}
"""

RULES = """\
package pay

let small = 100 USD

permit small_transfers
  call tool "pay"
  when agent.risk < high and context.amount <= small
"""

TESTS = """\
package pay

test "a small transfer" {
  agent { id: "bot", risk: low }
  call tool "pay" with { amount: 20 USD }
  expect allow by small_transfers
}
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A bundle of three files below the workspace folder ``tmp_path``."""
    root = tmp_path / "pay"
    root.mkdir()
    (root / "bundle.toml").write_text("")
    (root / "schema.pol").write_text(SCHEMA)
    (root / "rules.pol").write_text(RULES)
    (root / "rules_test.pol").write_text(TESTS)
    return root


def run(
    workspace: Path,
    scenario: Callable[[Editor], Awaitable[None]],
    capabilities: types.ClientCapabilities | None = None,
) -> None:
    async def session() -> None:
        async with editing(workspace, capabilities) as editor:
            await scenario(editor)

    asyncio.run(session())


def test_an_error_is_shown_where_it_is_and_goes_when_it_is_fixed(bundle: Path) -> None:
    rules = bundle / "rules.pol"
    # The emoji is two UTF-16 code units: the error's columns count them so.
    broken = RULES.replace("when agent.risk <", 'when tool.name != "😀" and agent.riks <')

    async def scenario(editor: Editor) -> None:
        editor.open(rules, broken)
        [diagnostic] = await editor.published(rules)
        assert diagnostic.severity == types.DiagnosticSeverity.Error
        assert "riks" in diagnostic.message and "did you mean 'agent.risk'" in diagnostic.message
        line = broken.splitlines()[6]
        start = len(line[: line.index("agent.riks")].encode("utf-16-le")) // 2
        assert diagnostic.range == types.Range(
            types.Position(6, start), types.Position(6, start + len("agent.riks"))
        )
        editor.change(rules, RULES)
        assert await editor.published(rules) == []

    run(bundle.parent, scenario)


def test_closing_a_file_shows_the_saved_text_diagnostics(bundle: Path) -> None:
    rules = bundle / "rules.pol"

    async def scenario(editor: Editor) -> None:
        editor.open(rules, RULES.replace("agent.risk", "agent.riks"))
        [error] = await editor.published(rules)
        assert "riks" in error.message
        editor.close(rules)  # unsaved: the file on disk has no error
        assert await editor.published(rules) == []

    run(bundle.parent, scenario)


def test_a_syntax_error_is_shown_and_the_other_files_are_not_checked(bundle: Path) -> None:
    rules = bundle / "rules.pol"
    tests = bundle / "rules_test.pol"

    async def scenario(editor: Editor) -> None:
        editor.open(tests, TESTS)
        assert await editor.published(tests) == []
        editor.open(rules, RULES.replace("when agent.risk < high", "when agent.risk < high &&"))
        [error] = await editor.published(rules)
        assert error.message.startswith("unexpected character '&'")
        assert error.range.start == types.Position(6, 25)
        [note] = await editor.published(tests)
        assert note.severity == types.DiagnosticSeverity.Information
        assert "not type-checked" in note.message

    run(bundle.parent, scenario)


def test_errors_a_root_causes_are_shown_in_their_own_files(bundle: Path) -> None:
    """The checker folds follow-on errors into their root; an editor shows each where it is."""
    schema = bundle / "schema.pol"
    rules = bundle / "rules.pol"

    async def scenario(editor: Editor) -> None:
        editor.open(rules, RULES)
        assert await editor.published(rules) == []
        editor.open(schema, SCHEMA.replace("risk: risk", "risk: rsik"))
        [root] = await editor.published(schema)
        assert "unknown type 'rsik'" in root.message
        [follow_on] = await editor.published(rules)
        assert follow_on.severity == types.DiagnosticSeverity.Error
        assert follow_on.range.start.line == 6  # agent.risk < high

    run(bundle.parent, scenario)


def test_a_file_of_another_bundle_gets_none_of_its_diagnostics(bundle: Path) -> None:
    """The outer workspace is a bundle of its own; the nested one (bundle.toml) is apart."""
    outer = bundle.parent / "outer.pol"
    outer.write_text("permit reads\n  when small\n")
    nested = bundle / "rules.pol"

    async def scenario(editor: Editor) -> None:
        editor.open(outer, outer.read_text())
        [unknown] = await editor.published(outer)
        assert "small" in unknown.message  # the nested bundle's let is not this one's
        editor.open(nested, RULES.replace("agent.risk", "agent.riks"))
        [error] = await editor.published(nested)
        assert "riks" in error.message
        assert editor.unread(outer) == 0

    run(bundle.parent, scenario)


def test_hover_shows_types_of_attributes_and_lets_and_rules(bundle: Path) -> None:
    rules = bundle / "rules.pol"
    tests = bundle / "rules_test.pol"

    async def scenario(editor: Editor) -> None:
        editor.open(rules, RULES)
        await editor.published(rules)
        when = RULES.splitlines()[6]
        shown = await _hover(editor, rules, 6, when.index("risk"))
        assert shown == "`agent.risk`: `risk`"
        shown = await _hover(editor, rules, 6, when.index("amount"))
        assert shown == "`context.amount`: `money<USD>`"
        shown = await _hover(editor, rules, 6, when.index("small") + 2)
        assert shown.startswith("let `small`: `money<USD>`") and "let small = 100 USD" in shown
        shown = await _hover(editor, tests, 5, len("  expect allow by small"))
        assert shown.startswith("permit `pay.small_transfers`")
        assert 'call tool "pay"' in shown

    run(bundle.parent, scenario)


async def _hover(editor: Editor, path: Path, line: int, character: int) -> str:
    found = await editor.hover(path, line, character)
    assert found is not None
    assert isinstance(found.contents, types.MarkupContent)
    return found.contents.value


def test_definition_finds_a_let_and_a_rule_a_test_names(bundle: Path) -> None:
    rules = bundle / "rules.pol"
    tests = bundle / "rules_test.pol"

    async def scenario(editor: Editor) -> None:
        editor.open(rules, RULES)
        await editor.published(rules)
        when = RULES.splitlines()[6]
        found = await editor.definition(rules, 6, when.index("small") + 1)
        assert found == types.Location(
            uri(rules), types.Range(types.Position(2, 4), types.Position(2, 9))
        )
        for named in ("small_transfers", "pay.small_transfers"):
            editor.open(tests, TESTS.replace("by small_transfers", f"by {named}"))
            await editor.published(tests)
            found = await editor.definition(tests, 5, len("  expect allow by s"))
            assert found == types.Location(
                uri(rules), types.Range(types.Position(4, 7), types.Position(4, 22))
            )

    run(bundle.parent, scenario)


def test_formatting_rewrites_a_file_and_refuses_one_that_does_not_parse(bundle: Path) -> None:
    rules = bundle / "rules.pol"
    messy = RULES.replace("  when agent.risk", "    when   agent.risk").replace(
        "let small", "let  small"
    )

    async def scenario(editor: Editor) -> None:
        editor.open(rules, messy)
        await editor.published(rules)
        [edit] = await editor.format(rules) or []
        assert edit.new_text == RULES
        assert edit.range == types.Range(types.Position(0, 0), types.Position(7, 0))
        editor.change(rules, RULES)
        await editor.published(rules)
        assert await editor.format(rules) == []
        editor.change(rules, RULES + "permit\n")
        await editor.published(rules)
        assert await editor.format(rules) is None
        message = await asyncio.wait_for(editor.messages.get(), 30)
        assert message.startswith("not formatted: ") and "rules.pol:8:" in message

    run(bundle.parent, scenario)


def test_a_file_over_the_size_bound_gets_one_diagnostic_and_no_parse(bundle: Path) -> None:
    rules = bundle / "rules.pol"
    huge = RULES + "#" * MAX_DOCUMENT + "\npermit (\n"

    async def scenario(editor: Editor) -> None:
        editor.open(rules, huge)
        [diagnostic] = await editor.published(rules)
        assert "larger than 1 MiB" in diagnostic.message

    run(bundle.parent, scenario)


def test_a_folder_with_too_many_files_checks_the_open_ones_and_says_how_to_fix_it(
    tmp_path: Path,
) -> None:
    """Without a bundle.toml the workspace folder is the bundle; past the bound it is not
    read (a home directory, a monorepo), and the open file is checked on its own."""
    for number in range(MAX_FILES + 1):
        (tmp_path / f"r{number:04}.pol").write_text(f"permit r{number}\n")
    opened = tmp_path / "r0000.pol"

    async def scenario(editor: Editor) -> None:
        editor.open(opened, "permit r0\n  when agent.riks == 1\n")
        error, warning = await editor.published(opened)
        assert "riks" in error.message
        assert warning.severity == types.DiagnosticSeverity.Warning
        assert warning.message.startswith(f"{tmp_path} holds more than 2,000 .pol files")
        assert "create an empty bundle.toml" in warning.message

    run(tmp_path, scenario)


def test_a_file_created_on_disk_is_read_once_the_client_says_so(bundle: Path) -> None:
    rules = bundle / "rules.pol"
    lets = bundle / "lets.pol"
    without_the_let = RULES.replace("let small = 100 USD\n", "")

    async def scenario(editor: Editor) -> None:
        editor.open(rules, without_the_let)
        [unknown] = await editor.published(rules)
        assert "unknown name 'small'" in unknown.message
        lets.write_text("package pay\n\nlet small = 100 USD\n")
        editor.files_changed(lets)
        assert await editor.published(rules) == []

    run(bundle.parent, scenario)


def test_the_server_asks_a_client_that_can_be_asked_to_watch_policy_files(
    bundle: Path,
) -> None:
    watched = types.DidChangeWatchedFilesClientCapabilities(dynamic_registration=True)
    capabilities = types.ClientCapabilities(
        workspace=types.WorkspaceClientCapabilities(did_change_watched_files=watched)
    )

    async def scenario(editor: Editor) -> None:
        registration = await asyncio.wait_for(editor.registrations.get(), 30)
        assert registration.method == types.WORKSPACE_DID_CHANGE_WATCHED_FILES
        assert registration.register_options == {
            "watchers": [{"globPattern": "**/*.pol"}, {"globPattern": "**/bundle.toml"}]
        }

    run(bundle.parent, scenario, capabilities)
