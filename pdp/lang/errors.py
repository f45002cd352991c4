"""Diagnostics for policy authors: file:line:col, the line, a caret under the spot, a hint.

Every error the language raises is a :class:`PolicyError` carrying one or more
:class:`Diagnostic`; the CLI prints them, and nothing prints a Lark traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Span:
    """Where a piece of source lives: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NO_SPAN = Span("<generated>", 0, 0, 0, 0)
# How many places of a root's follow-ons its rendering names; the rest are counted.
FOLLOW_ONS_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One message about one place in a policy file.

    A diagnostic that other spots fail because of (a broken schema declaration, an
    undefined let) has a ``key`` naming what is broken; each of those spots has that key
    as its ``cause``. :func:`pdp.lang.diagnostics.root_first` folds them into their root's
    ``follow_ons``, so the root is printed once, first, with a count of the rest.
    """

    severity: Severity
    message: str
    span: Span
    line_text: str = ""
    hint: str = ""
    key: str = ""
    cause: str = ""
    follow_ons: tuple[Diagnostic, ...] = ()

    def render(self) -> str:
        """The message as a person reads it: location, line, caret, hint, follow-ons."""
        return self._render_head() + self._render_follow_ons()

    def _render_follow_ons(self) -> str:
        if not self.follow_ons:
            return ""
        shown = ", ".join(str(d.span) for d in self.follow_ons[:FOLLOW_ONS_SHOWN])
        if len(self.follow_ons) > FOLLOW_ONS_SHOWN:
            shown += ", …"
        return f"\n  … and {len(self.follow_ons)} more caused by this: {shown}"

    def _render_head(self) -> str:
        head = f"{self.span}: {self.severity}: {self.message}"
        if not self.line_text or self.span.line <= 0:
            return head + (f"\n  hint: {self.hint}" if self.hint else "")
        gutter = f"{self.span.line} | "
        width = 1
        if self.span.end_line == self.span.line and self.span.end_column > self.span.column:
            width = self.span.end_column - self.span.column
        caret = " " * (len(gutter) + self.span.column - 1) + "^" * width
        lines = [head, gutter + self.line_text.rstrip("\n"), caret]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "message": self.message,
            "file": self.span.file,
            "line": self.span.line,
            "column": self.span.column,
            "hint": self.hint,
            "follow_ons": [d.to_json() for d in self.follow_ons],
        }


class LanguageError(Exception):
    """The root of the policy language's errors (it imports nothing else of Tessera, so
    its root is its own; the rest of the decision plane's is :class:`pdp.errors.PdpError`)."""


class PolicyError(LanguageError):
    """A policy set that cannot be used; carries every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__("\n\n".join(d.render() for d in diagnostics))


def source_lines(text: str) -> list[str]:
    """The lines of a file as the parser counts them: split at newline characters only."""
    return [line.rstrip("\r") for line in text.split("\n")]


class Sources:
    """The text of every file read, so a diagnostic can quote its line."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def add(self, file: str, text: str) -> None:
        self._lines[file] = source_lines(text)

    def line(self, span: Span) -> str:
        lines = self._lines.get(span.file, [])
        if 1 <= span.line <= len(lines):
            return lines[span.line - 1]
        return ""

    def diagnostic(
        self,
        severity: Severity,
        message: str,
        span: Span,
        hint: str = "",
        *,
        key: str = "",
        cause: str = "",
    ) -> Diagnostic:
        return Diagnostic(severity, message, span, self.line(span), hint, key, cause)
