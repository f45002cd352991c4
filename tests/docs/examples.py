"""The fenced examples of the Markdown documentation, and the markers that say how to run them.

A fenced block whose info string is ``sh`` (or ``bash``, ``shell``) is an example that
runs. An HTML comment on the lines just before its fence may say otherwise or add to it:

    <!-- example: not run (REASON) -->      never run; the reason is required and listed
    <!-- example: needs PROGRAM -->         run where PROGRAM is on the PATH, else listed
    <!-- example: setup (WHAT IT SETS UP)
    SHELL LINES
    -->                                     run, unseen by readers, just before the block

A ``json`` or ``text`` block marked ``<!-- example: output -->`` is what the run block
before it prints: the harness compares the two (:func:`fits`), ``…`` standing for what
changes from run to run (an id, a token). Anything else that starts
``<!-- example`` is an error, and so is a marker that is not just before a fence, so a
misspelt marker cannot silently leave a block unrun.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN = frozenset({"sh", "bash", "shell"})
OUTPUT = frozenset({"json", "text"})
ELLIPSIS = "…"

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_NOT_RUN = re.compile(r"not run \((?P<reason>[^()]*\S[^()]*)\)")
_NEEDS = re.compile(r"needs (?P<program>[A-Za-z0-9_.+-]+)")
_SETUP = re.compile(r"setup \((?P<what>[^()]*\S[^()]*)\)\n(?P<script>.*)", re.DOTALL)


class MarkerError(ValueError):
    """A marker the harness cannot follow; the message names the file and line."""


@dataclass(frozen=True)
class Marker:
    """What the comments before a block say: why it is not run, what it needs, what
    runs before it, whether it is the output of the block before."""

    not_run: str | None = None
    needs: str | None = None
    setup: str = ""
    output: bool = False


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (the fence's line, from 1), its info string's
    first word, its text, and its marker."""

    path: Path
    line: int
    lang: str
    text: str
    marker: Marker = Marker()

    @property
    def runs(self) -> bool:
        """Whether the block is an example the harness runs (its marker aside)."""
        return self.lang in RUN

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def blocks(path: Path, name: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown file, in order; ``name`` is how messages name the
    file (default: the path)."""
    shown = Path(name) if name is not None else path
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    comments: list[tuple[int, str]] = []  # the marker comments just above, with lines
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            after, comment = _comment(lines, index, shown)
            if comment is None and comments:
                raise MarkerError(f"{shown}:{comments[0][0]}: a marker must be just before a fence")
            comments = [*comments, comment] if comment is not None else []
            index = after
            continue
        end = _closing(lines, index, fence.group("fence"), shown)
        indent = len(fence.group("indent"))
        text = "\n".join(line[indent:] for line in lines[index + 1 : end])
        lang = (fence.group("info").split() or [""])[0].lower()
        marker = _marker(comments, shown)
        found.append(Block(shown, index + 1, lang, text + "\n" if text else "", marker))
        _check(found[-1])
        comments = []
        index = end + 1
    if comments:
        raise MarkerError(f"{shown}:{comments[0][0]}: an example marker with no block after it")
    return found


def _comment(lines: list[str], index: int, shown: Path) -> tuple[int, tuple[int, str] | None]:
    """The line after a marker comment starting at ``index`` and the comment (its line
    and text), or the next line and None when ``index`` holds no marker."""
    stripped = lines[index].strip()
    if not stripped.startswith("<!-- example"):
        return index + 1, None
    body = [stripped.removeprefix("<!--")]
    end = index
    while "-->" not in body[-1]:
        end += 1
        if end == len(lines):
            raise MarkerError(f"{shown}:{index + 1}: an example marker that never closes")
        body.append(lines[end])
    text = "\n".join(body).split("-->", 1)[0].strip()
    if not text.startswith("example:"):
        raise MarkerError(f"{shown}:{index + 1}: write markers as <!-- example: … -->")
    return end + 1, (index + 1, text.removeprefix("example:").strip())


def _closing(lines: list[str], index: int, fence: str, shown: Path) -> int:
    """The line of the fence that closes the block opened at ``index`` (CommonMark: the
    same character, at least as long, nothing after it)."""
    for end in range(index + 1, len(lines)):
        closing = lines[end].strip()
        if closing.startswith(fence) and set(closing) == {fence[0]}:
            return end
    raise MarkerError(f"{shown}:{index + 1}: a fenced block that never closes")


def _marker(comments: list[tuple[int, str]], shown: Path) -> Marker:
    not_run = needs = None
    setup, output = "", False
    for line, text in comments:
        if text == "output":
            output = True
        elif found := _NOT_RUN.fullmatch(text):
            not_run = found.group("reason").strip()
        elif found := _NEEDS.fullmatch(text):
            needs = found.group("program")
        elif found := _SETUP.fullmatch(text):
            setup += found.group("script").strip("\n") + "\n"
        else:
            raise MarkerError(
                f"{shown}:{line}: unknown example marker {text!r}: expected 'not run (REASON)', "
                "'needs PROGRAM', 'setup (WHAT)' followed by shell lines, or 'output'"
            )
    return Marker(not_run, needs, setup, output)


def _check(block: Block) -> None:
    """Markers fit the block they stand before."""
    marker = block.marker
    if marker.output and (block.lang not in OUTPUT or marker != Marker(output=True)):
        raise MarkerError(f"{block.where}: 'output' marks a json or text block, and nothing else")
    if not block.runs and (marker.not_run or marker.needs or marker.setup):
        raise MarkerError(f"{block.where}: a {block.lang or 'plain'} block is never run")


def fits(output: Block, printed: str) -> bool:
    """Whether what an example printed is the output documented in the block ``output``:
    for ``json``, the same JSON values in order (see :func:`matches`); for ``text``, the
    same lines but for trailing space, each ``…`` standing for any text."""
    if output.lang == "json":
        expected, actual = json_values(output.text), json_values(printed)
        return actual is not None and matches(expected, actual)
    wanted, got = _lines(output.text), _lines(printed)
    return len(wanted) == len(got) and all(
        re.fullmatch(".*".join(map(re.escape, line.split(ELLIPSIS))), text, re.DOTALL)
        for line, text in zip(wanted, got, strict=True)
    )


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(expected: Any, actual: Any) -> bool:
    """Whether printed JSON fits the documented: equal, except that a documented string
    ``"…"`` stands for any value and one ending in ``…`` for any string it begins."""
    if isinstance(expected, str) and expected.endswith(ELLIPSIS):
        if expected == ELLIPSIS:
            return True
        return isinstance(actual, str) and actual.startswith(expected[: -len(ELLIPSIS)])
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(matches(value, actual[key]) for key, value in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return type(expected) is type(actual) and expected == actual


def json_values(text: str) -> list[Any] | None:
    """The JSON values ``text`` holds one after another (whitespace between), or None
    when it holds anything else."""
    decoder = json.JSONDecoder()
    values, index = [], 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index == len(text):
            return values
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return None
        values.append(value)
