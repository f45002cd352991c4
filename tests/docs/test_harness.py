"""The harness that runs the documentation: how it reads blocks and markers, and how a
shell session runs and fails examples (no Tessera server needed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.docs.examples import Block, Marker, MarkerError, blocks, fits, matches
from tests.docs.served import clean_env
from tests.docs.shell import Session
from tests.servers import HttpServer


def markdown(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return path


def test_blocks_are_read_with_their_line_language_and_text(tmp_path: Path) -> None:
    doc = markdown(
        tmp_path,
        '# Title\n\n```sh\necho one\n```\n\n- a list\n\n  ```json\n  {"a": 1}\n  ```\n',
    )
    found = blocks(doc, "doc.md")
    assert [(b.where, b.lang, b.text, b.runs) for b in found] == [
        ("doc.md:3", "sh", "echo one\n", True),
        ("doc.md:9", "json", '{"a": 1}\n', False),
    ]


def test_markers_say_why_a_block_is_not_run_what_it_needs_and_its_setup(
    tmp_path: Path,
) -> None:
    doc = markdown(
        tmp_path,
        "<!-- example: not run (serves until stopped) -->\n```sh\ntessera serve\n```\n"
        "<!-- example: needs grpcurl -->\n```sh\ngrpcurl list\n```\n"
        "<!-- example: setup (an agent)\nAGENT=x\n-->\n```sh\necho $AGENT\n```\n"
        '<!-- example: output -->\n```json\n"x"\n```\n',
    )
    assert [b.marker for b in blocks(doc)] == [
        Marker(not_run="serves until stopped"),
        Marker(needs="grpcurl"),
        Marker(setup="AGENT=x\n"),
        Marker(output=True),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- example: not run -->\n```sh\nx\n```\n", "unknown example marker"),
        ("<!-- example: not run () -->\n```sh\nx\n```\n", "unknown example marker"),
        ("<!-- example: skip (why) -->\n```sh\nx\n```\n", "unknown example marker"),
        ("<!-- example: not run (why) -->\n\n```sh\nx\n```\n", "just before a fence"),
        ("<!-- example: not run (why) -->\n", "no block after it"),
        ("<!-- example: not run (why) -->\n```json\n{}\n```\n", "never run"),
        ("<!-- example: output -->\n```sh\nx\n```\n", "marks a json or text block"),
        ("<!-- example: setup (x)\nA=1\n", "never closes"),
        ("```sh\nx\n", "never closes"),
    ],
)
def test_a_marker_the_harness_cannot_follow_is_an_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(MarkerError, match=message):
        blocks(markdown(tmp_path, text))


def output(lang: str, text: str) -> Block:
    return Block(Path("doc.md"), 1, lang, text, Marker(output=True))


def test_documented_json_output_matches_with_ellipses() -> None:
    assert matches({"a": [1, "x"], "t": "eyJv…"}, {"a": [1, "x"], "t": "eyJvIjoyfQ"})
    assert matches({"id": "…"}, {"id": {"any": "value"}})
    assert not matches({"a": 1}, {"a": 1, "b": 2})
    assert not matches({"a": True}, {"a": 1})
    assert not matches({"t": "eyJv…"}, {"t": "other"})
    documented = output("json", '{"decision": true}\n{"decision":\n  false}\n')
    assert fits(documented, '{"decision":true}\n{"decision":false}\n')
    assert not fits(documented, '{"decision":true}\n')
    assert not fits(documented, 'noise {"decision":true}\n{"decision":false}\n')


def test_documented_text_output_matches_line_by_line_with_ellipses() -> None:
    documented = output("text", "400 action is required\n401 a bearer token … required\n")
    assert fits(documented, "400 action is required  \n401 a bearer token is required\n\n")
    assert not fits(documented, "400 action is required\n")
    assert not fits(documented, "400 action is required\n401 a bearer token is optional\n")


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    (tmp_path / "scripts").mkdir()
    running = Session(tmp_path, tmp_path / "scripts", clean_env(tmp_path))
    yield running
    running.close()


def test_examples_share_the_session_and_print(session: Session) -> None:
    assert session.run("GREETING=hello\n", 10).ok
    ran = session.run('echo "$GREETING"; echo to-stderr >&2\n', 10)
    assert (ran.ok, ran.output) == (True, "hello\nto-stderr\n")


@pytest.mark.parametrize(
    "script",
    [
        "false\necho never\n",
        "false | cat\n",
        'echo "$UNSET_VARIABLE"\n',
        "X=$(false; echo late)\n",
        "read line\n",  # the next example is not its standard input
    ],
)
def test_an_example_fails_at_its_first_failing_command(session: Session, script: str) -> None:
    ran = session.run(script, 10)
    assert not ran.ok
    assert "never" not in ran.output
    assert ran.why.startswith("exited")
    assert not session.run("true\n", 10).ok  # the session has ended


def test_an_example_past_its_deadline_fails(session: Session) -> None:
    ran = session.run("echo started\nsleep 60\n", 0.5)
    assert (ran.ok, ran.output, ran.why) == (False, "started\n", "timed out after 0.5 s")


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """A web server on loopback that answers 404 to everything but /ok."""

    async def ok(_: object) -> PlainTextResponse:
        return PlainTextResponse("fine")

    server = HttpServer(lambda port: Starlette(routes=[Route("/ok", ok)]))
    yield f"http://127.0.0.1:{server.port}"
    server.close()


def test_curl_fails_an_example_on_an_http_error(session: Session, web: str) -> None:
    assert session.run(f"curl -s {web}/ok\n", 10).output == "fine"
    ran = session.run(f"curl -s {web}/missing\n", 10)
    assert (ran.ok, ran.why) == (False, "exited 22")


@pytest.mark.parametrize(
    "options", ["-o /dev/null -w '%{http_code}'", "-si", "--include", "-sf || true"]
)
def test_curl_leaves_the_status_to_an_example_that_asks_for_it(
    session: Session, web: str, options: str
) -> None:
    ran = session.run(f"curl -s {web}/missing {options}\n", 10)
    assert ran.ok, ran.output
