"""Between the language's spans and LSP's positions.

A :class:`~pdp.lang.errors.Span` counts lines and columns from 1, in characters, lines
split at newline characters only (as the parser counts them); LSP counts from 0, columns
in the code units the client and server agreed on (UTF-16 unless the client offers
another), which differ from characters beyond the Basic Multilingual Plane.
"""

from __future__ import annotations

from collections.abc import Sequence

from lsprotocol import types
from pygls.workspace.position_codec import PositionCodec

from pdp.lang.errors import Span


def _position(lines: Sequence[str], line: int, column: int, codec: PositionCodec) -> types.Position:
    """The LSP position of 1-based ``line`` and ``column`` (characters)."""
    if line < 1:
        return types.Position(0, 0)
    if line > len(lines):
        last = len(lines) - 1
        return types.Position(max(last, 0), codec.client_num_units(lines[-1]) if lines else 0)
    text = lines[line - 1]
    return types.Position(line - 1, codec.client_num_units(text[: max(column - 1, 0)]))


def to_range(span: Span, lines: Sequence[str], codec: PositionCodec) -> types.Range:
    """The LSP range of ``span`` in a file of ``lines``; a span of no place (line 0) is
    the start of the file."""
    start = _position(lines, span.line, span.column, codec)
    if span.end_line < span.line or (span.end_line == span.line and span.end_column <= span.column):
        return types.Range(start, start)
    return types.Range(start, _position(lines, span.end_line, span.end_column, codec))


def end_of(lines: Sequence[str], codec: PositionCodec) -> types.Position:
    """The position just after the last character of a file of ``lines``."""
    if not lines:
        return types.Position(0, 0)
    return types.Position(len(lines) - 1, codec.client_num_units(lines[-1]))


def from_position(
    position: types.Position, lines: Sequence[str], codec: PositionCodec
) -> tuple[int, int]:
    """The 1-based line and column (characters) of an LSP position."""
    if position.line >= len(lines):
        return (len(lines) + 1, 1)
    text = lines[position.line]
    units = 0
    for index, char in enumerate(text):
        if units >= position.character:
            return (position.line + 1, index + 1)
        units += codec.client_num_units(char)
    return (position.line + 1, len(text) + 1)
