"""The canonical text of a `.pol` file: ``tessera fmt`` and every expression a trace shows.

Formatting is a function of the syntax tree and the comments (plus, for blank lines
between items, where the source had them), so formatting twice changes nothing and
``parse(format_module(m)) == m`` holds: spans aside, and with comments that had no
trailing whitespace. The canonical form:

- ``package x`` first, then the items in source order. Between two top-level items there
  is one blank line where the source had at least one blank line or a comment between
  them, and none where they were adjacent, so consecutive ``let``s stay grouped. Blank
  lines among the comments before an item are kept (collapsed to one); blank lines inside
  a block are not. A tree built in code, with no spans, gets a blank line between items
  except between two ``let``s.
- A rule is ``permit NAME`` / ``forbid NAME`` on its own line, then one clause per line,
  indented two spaces, in grammar order: target, when, unless, limits, requires. Every
  limit names its scope (``per agent`` is written even where it was implied).
- Expressions have single spaces around operators and the fewest parentheses that keep
  the tree: or < and < not < comparison < atom. ``a and (b and c)`` keeps its parentheses,
  since without them it would parse as one flat ``and``. A function call is
  ``name(a, b)``. A path part, a ``has`` name or a map key that is not an identifier is
  written as a string (``agent.labels["team-x"]``). Literals: strings through
  :func:`values.quote`, money as ``1000 USD`` (the amount's digits as written), durations
  as written, risk levels bare, ``true``/``false``, ``ip("…")``, ``time("…")`` (in UTC,
  as ``Z``), ``date("…")``, numbers as Python writes them (a float never in exponent
  form). Lists are ``["a", "b"]``, maps ``{ team: "ops" }``.
- A condition (``when``, ``unless``, ``require … if``, and the value of a ``let``) whose
  top level is an ``and``/``or`` breaks when its line would exceed 88 characters, or when
  a comment would sit between its operands: the first operand after the keyword, each
  following one on its own line indented four spaces and starting with the operator.
- A ``let`` list, a schema entity, a test record or a step's ``with {…}`` is written on
  one line unless that line would exceed 88 characters or a comment would sit between its
  elements; then it gets one element per line, indented one level more, each with a
  trailing comma, and the closing bracket on a line of its own.
- A test block holds its records, then its steps; a step is its request line, with
  ``with {…}`` and ``times N`` only when they say something (not for ``{}`` or 1), and
  its ``expect`` line. An ``at`` or ``after`` before a step is a line of its own, the
  time of ``at`` in UTC (``at "2026-12-01T09:00:00Z"``), the duration of ``after`` as
  written.

Comments are kept, each exactly once and in their source order. A comment on a line of
its own goes before the next line of code (item, clause, operand, list element, schema
entry, test statement), at that line's indentation, or before the closing brace of its
block, or at the end of the file. A comment after code goes at the end of the printed line
that holds that code, two spaces after it; when that printed line joins several source
lines and the comment is not after its last piece of code, the comment moves to its own
line just above. Trailing whitespace is dropped from comments.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal

from pdp.lang import ast
from pdp.lang.errors import Span
from pdp.lang.parser import parse
from pdp.lang.values import Duration, Money, Risk, quote, render

__all__ = ["WIDTH", "format_expr", "format_module", "format_source"]

WIDTH = 88
"""The line length past which conditions, lists and blocks break."""

_CONTINUATION = 4
"""Indentation of the second and later operands of a broken condition."""

# Precedence levels, loosest first; an operand printed where a tighter level is needed
# gets parentheses.
_OR, _AND, _NOT, _COMPARE, _ATOM = range(1, 6)

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

Pos = tuple[int, int]


def format_source(text: str, path: str = "<string>") -> str:
    """Parse ``text`` and return its canonical form; raises ``PolicyError`` on bad input."""
    return format_module(parse(text, path))


def format_module(module: ast.Module) -> str:
    """The canonical text of a parsed file, ending with one newline (empty if it is empty)."""
    return _Printer(module).run()


def format_expr(expr: ast.Expr) -> str:
    """One line for an expression, with the fewest parentheses that keep its tree."""
    return _expr(expr, _OR)


# ------------------------------------------------------------------ expressions


def _precedence(expr: ast.Expr) -> int:
    if isinstance(expr, ast.BoolOp):
        return _OR if expr.op == "or" else _AND
    if isinstance(expr, ast.Not):
        return _NOT
    if isinstance(expr, ast.Compare | ast.Has):
        return _COMPARE
    return _ATOM


def _expr(expr: ast.Expr, needed: int) -> str:
    text = _bare(expr)
    return f"({text})" if _precedence(expr) < needed else text


def _operand_level(op: str) -> int:
    """The level an operand of ``and``/``or`` must have to stay a separate operand."""
    return _AND if op == "or" else _NOT


def _bare(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Literal_):
        return _literal(expr.value)
    if isinstance(expr, ast.ListExpr):
        return "[" + ", ".join(_expr(item, _OR) for item in expr.items) + "]"
    if isinstance(expr, ast.MapExpr):
        if not expr.entries:
            return "{}"
        entries = ", ".join(f"{_key(key)}: {_expr(value, _OR)}" for key, value in expr.entries)
        return "{ " + entries + " }"
    if isinstance(expr, ast.Path):
        return expr.root + "".join(
            f".{part}" if _is_name(part) else f"[{quote(part)}]" for part in expr.parts
        )
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.Flag):
        return expr.kind
    if isinstance(expr, ast.Not):
        return "not " + _expr(expr.operand, _NOT)
    if isinstance(expr, ast.BoolOp):
        level = _operand_level(expr.op)
        return f" {expr.op} ".join(_expr(operand, level) for operand in expr.operands)
    if isinstance(expr, ast.Compare):
        return f"{_expr(expr.left, _ATOM)} {expr.op} {_expr(expr.right, _ATOM)}"
    if isinstance(expr, ast.Has):
        return f"{_expr(expr.base, _ATOM)} has {_key(expr.name)}"
    if isinstance(expr, ast.Call):
        return f"{expr.name}(" + ", ".join(_expr(arg, _OR) for arg in expr.args) + ")"
    return repr(expr)  # pragma: no cover - every Expr is handled above


def _is_name(text: str) -> bool:
    # A keyword is fine here: where a path part, a ``has`` name or a key goes, the
    # contextual lexer expects a name, so ``context.when`` reads as a path.
    return _IDENTIFIER.fullmatch(text) is not None


def _key(text: str) -> str:
    """A ``has`` name or map key: bare when it is a plain name, else a string."""
    return text if _is_name(text) else quote(text)


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Risk):
        return value.name
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, Money):
        return f"{_decimal(value.amount)} {value.currency}"
    if isinstance(value, Duration):
        return value.text
    if isinstance(value, str):
        return quote(value)
    return render(value)  # time("…"), ip("…") and anything a tree built in code holds


def _decimal(value: Decimal) -> str:
    """The digits of a decimal, never in exponent form (the grammar has none)."""
    return format(value, "f")


def _float(value: float) -> str:
    """Python's shortest spelling, with exponent forms (``1e-07``) written out in full."""
    text = repr(value)
    if "e" not in text or not math.isfinite(value):
        return text  # nan and inf have no literal at all; keep Python's spelling
    text = _decimal(Decimal(text))
    return text if "." in text else text + ".0"


# ------------------------------------------------------------------ source positions


_TOKEN = re.compile(r'"(?:\\.|[^"\\\n])*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?|\S')


class _Tokens:
    """The code tokens of the source (comments left out) with their 1-based positions.

    Coarser than the grammar's tokens (``<=`` is two), which is enough to tell which
    printed line a piece of code belongs to and where a keyword or a bracket sits.
    """

    def __init__(self, text: str) -> None:
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.pos: list[Pos] = []
        self.text: list[str] = []
        for match in _TOKEN.finditer(text):
            word = match.group()
            if word.startswith("#"):
                continue
            offset = match.start()
            line = bisect.bisect_right(starts, offset)
            self.pos.append((line, offset - starts[line - 1] + 1))
            self.text.append(word)

    def __len__(self) -> int:
        return len(self.pos)

    def before(self, pos: Pos) -> int:
        """The index of the last token starting before ``pos``; -1 if none."""
        return bisect.bisect_left(self.pos, pos) - 1

    def after(self, pos: Pos) -> int:
        """The index of the first token starting after ``pos``; ``len`` if none."""
        return bisect.bisect_right(self.pos, pos)

    def opening(self, pos: Pos) -> int:
        """The index of the first of the ``(`` that directly precede the token at ``pos``."""
        index = bisect.bisect_left(self.pos, pos)
        while index > 0 and self.text[index - 1] == "(":
            index -= 1
        return index


def _start(span: Span) -> Pos | None:
    return (span.line, span.column) if span.line > 0 else None


def _end(span: Span) -> Pos | None:
    return (span.end_line, span.end_column) if span.line > 0 else None


def _last_char(span: Span) -> Pos | None:
    """Where the closing bracket of a bracketed construct sits."""
    return (span.end_line, span.end_column - 1) if span.line > 0 else None


# ------------------------------------------------------------------ layout


@dataclass(slots=True)
class _Comment:
    text: str
    line: int


@dataclass(slots=True)
class _Line:
    """One printed line: its text, its indentation, and where its code starts in the source."""

    indent: int
    text: str
    anchor: Pos | None
    comment_indent: int
    leading: list[_Comment] = field(default_factory=list)
    trailing: str | None = None

    def render(self) -> str:
        text = " " * self.indent + self.text
        return text + ("  " + self.trailing if self.trailing else "")


@dataclass(slots=True)
class _Element:
    """The lines of one top-level item (or of the package line)."""

    lines: list[_Line]
    is_let: bool
    start: int = 0
    end: int = 0


class _Printer:
    def __init__(self, module: ast.Module) -> None:
        self.module = module
        self.tokens = _Tokens(module.source) if module.source else None
        self.comments = sorted(
            (c for c in module.comments if c.span.line > 0),
            key=lambda c: (c.span.line, c.span.column),
        )
        self.unplaced = [c for c in module.comments if c.span.line <= 0]
        self.comment_pos = [(c.span.line, c.span.column) for c in self.comments]

    # source helpers --------------------------------------------------------
    def _splits_comment(self, lines: list[_Line], end: Pos | None) -> bool:
        """Whether a comment would sit between these lines, were a construct broken so.

        A construct that a comment would sit inside once broken stays broken; one whose
        comments would all go above its first line or after its last stays on one line.
        Both outcomes read the same way the second time, which keeps formatting stable.
        """
        tokens = self.tokens
        first = lines[0].anchor
        second = next((line.anchor for line in lines[1:] if line.anchor is not None), None)
        if tokens is None or first is None or second is None or end is None:
            return False
        index = bisect.bisect_right(self.comment_pos, first)
        while index < len(self.comment_pos) and self.comment_pos[index] < end:
            following = tokens.after(self.comment_pos[index])
            if following < len(tokens) and second <= tokens.pos[following] < end:
                return True
            index += 1
        return False

    def _keyword_before(self, span: Span, words: tuple[str, ...]) -> Pos | None:
        """The keyword (``when``, ``and`` …) written before an expression and its ``(``."""
        start = _start(span)
        if start is None or self.tokens is None:
            return start
        index = self.tokens.opening(start) - 1
        if index >= 0 and self.tokens.text[index] in words:
            return self.tokens.pos[index]
        return start

    def _with_parens(self, span: Span) -> Pos | None:
        """Where an expression starts, counting the ``(`` written around it."""
        start = _start(span)
        if start is None or self.tokens is None:
            return start
        index = self.tokens.opening(start)
        return self.tokens.pos[index] if index < len(self.tokens) else start

    def _next_token(self, after: Pos | None, text: str) -> Pos | None:
        if after is None or self.tokens is None:
            return None
        index = bisect.bisect_left(self.tokens.pos, after)
        while index < len(self.tokens):
            if self.tokens.text[index] == text:
                return self.tokens.pos[index]
            index += 1
        return None

    # the whole file ----------------------------------------------------------
    def run(self) -> str:
        elements: list[_Element] = []
        if self.module.package:
            anchor = self.tokens.pos[0] if self.tokens else None
            elements.append(
                _Element([_Line(0, f"package {self.module.package}", anchor, 0)], False)
            )
        for item in self.module.items:
            elements.append(_Element(self._item(item), isinstance(item, ast.Let)))
        trailer = self._place_comments(elements)
        self._measure(elements)
        return self._render(elements, trailer)

    def _item(self, item: ast.Item) -> list[_Line]:
        if isinstance(item, ast.Let):
            return self._let(item)
        if isinstance(item, ast.Rule):
            return self._rule(item)
        if isinstance(item, ast.Schema):
            return self._schema(item)
        return self._test(item)

    # lets and rules ----------------------------------------------------------
    def _let(self, let: ast.Let) -> list[_Line]:
        head = f"let {let.name} = "
        value = let.expr
        anchor = _start(let.span)
        if isinstance(value, ast.ListExpr) and value.items:
            lines = [_Line(0, head + "[", anchor, 0)]
            for item in value.items:
                lines.append(_Line(2, _expr(item, _OR) + ",", self._with_parens(item.span), 2))
            lines.append(_Line(0, "]", _last_char(value.span), 2))
            one = head + format_expr(value)
            if len(one) > WIDTH or self._splits_comment(lines, _end(value.span)):
                return lines
            return [_Line(0, one, anchor, 0)]
        return self._condition(0, head, value, anchor)

    def _condition(self, indent: int, head: str, expr: ast.Expr, anchor: Pos | None) -> list[_Line]:
        """``head`` and an expression; a long or commented ``and``/``or`` breaks."""
        one = [_Line(indent, head + format_expr(expr), anchor, indent)]
        if not (isinstance(expr, ast.BoolOp) and len(expr.operands) > 1):
            return one
        level = _operand_level(expr.op)
        first, *rest = expr.operands
        lines = [_Line(indent, head + _expr(first, level), anchor, indent)]
        for operand in rest:
            keyword = self._keyword_before(operand.span, (expr.op,))
            text = f"{expr.op} {_expr(operand, level)}"
            lines.append(_Line(_CONTINUATION, text, keyword, _CONTINUATION))
        if indent + len(one[0].text) > WIDTH or self._splits_comment(lines, _end(expr.span)):
            return lines
        return one

    def _rule(self, rule: ast.Rule) -> list[_Line]:
        lines = [_Line(0, f"{rule.effect} {rule.name}", _start(rule.span), 0)]
        if rule.target is not None:
            lines.append(_Line(2, _target(rule.target), _start(rule.target.span), 2))
        for word, expr in (("when", rule.when), ("unless", rule.unless)):
            if expr is not None:
                anchor = self._keyword_before(expr.span, (word,))
                lines += self._condition(2, f"{word} ", expr, anchor)
        for limit in rule.limits:
            lines.append(_Line(2, _limit(limit), _start(limit.span), 2))
        for require in rule.requires:
            head = f"require {require.obligation}"
            anchor = _start(require.span)
            if require.condition is None:
                lines.append(_Line(2, head, anchor, 2))
            else:
                lines += self._condition(2, head + " if ", require.condition, anchor)
        return lines

    # schema ------------------------------------------------------------------
    def _schema(self, schema: ast.Schema) -> list[_Line]:
        anchor = _start(schema.span)
        if not schema.entities:
            return [_Line(0, "schema {}", anchor, 0)]
        lines = [_Line(0, "schema {", anchor, 0)]
        for entity in schema.entities:
            head = entity.kind + (f" {entity.resource_type}" if entity.resource_type else "")
            attrs = [(f"{a.name}: {a.type}", _start(a.span)) for a in entity.attrs]
            closing = _last_char(entity.span)
            lines += self._block(2, head, attrs, "", _start(entity.span), closing)
        lines.append(_Line(0, "}", _last_char(schema.span), 2))
        return lines

    def _block(
        self,
        indent: int,
        head: str,
        entries: list[tuple[str, Pos | None]],
        tail: str,
        anchor: Pos | None,
        closing: Pos | None,
    ) -> list[_Line]:
        """``head { a, b }tail`` on one line, or one entry per line when long or commented."""
        inner = indent + 2
        lines = [_Line(indent, head + " {", anchor, indent)]
        lines += [_Line(inner, text + ",", pos, inner) for text, pos in entries]
        lines.append(_Line(indent, "}" + tail, closing, inner))
        end = (closing[0], closing[1] + 1) if closing is not None else None
        if self._splits_comment(lines, end):
            return lines
        if not entries:
            return [_Line(indent, f"{head} {{}}{tail}", anchor, indent)]
        one = f"{head} {{ {', '.join(text for text, _ in entries)} }}{tail}"
        if indent + len(one) > WIDTH:
            return lines
        return [_Line(indent, one, anchor, indent)]

    # policy tests ------------------------------------------------------------
    def _test(self, test: ast.Test) -> list[_Line]:
        lines = [_Line(0, f"test {quote(test.name)} {{", _start(test.span), 0)]
        for record in test.records:
            fields = [(f"{f.name}: {format_expr(f.value)}", _start(f.span)) for f in record.fields]
            closing = _last_char(record.span)
            lines += self._block(2, record.kind, fields, "", _start(record.span), closing)
        for step in test.steps:
            lines += self._step(step)
        lines.append(_Line(0, "}", _last_char(test.span), 2))
        return lines

    def _step(self, step: ast.Step) -> list[_Line]:
        lines = [_Line(2, _clock(move), _start(move.span), 2) for move in step.clock]
        if step.form == "call":
            head = f"call tool {quote(step.resource_id)}"
        else:
            head = f"action {quote(step.action)} on {step.resource_type} {quote(step.resource_id)}"
        times = f" times {step.times}" if step.times != 1 else ""
        anchor = _start(step.span)
        if step.context:
            fields = [(f"{f.name}: {format_expr(f.value)}", _start(f.span)) for f in step.context]
            closing = self._next_token(_end(step.context[-1].span), "}")
            lines += self._block(2, head + " with", fields, times, anchor, closing)
        else:
            lines.append(_Line(2, head + times, anchor, 2))
        lines.append(_Line(2, _expect(step.expect), _start(step.expect.span), 2))
        return lines

    # comments ----------------------------------------------------------------
    def _place_comments(self, elements: list[_Element]) -> list[_Comment]:
        """Hang every comment on a printed line; returns those that end the file."""
        lines: list[_Line] = []
        last: Pos | None = None
        for element in elements:
            for line in element.lines:
                if line.anchor is None:
                    continue
                if last is not None and line.anchor <= last:
                    line.anchor = None  # out of order: a tree edited by hand
                    continue
                lines.append(line)
                last = line.anchor
        unplaced = [_Comment(c.text.rstrip(), 0) for c in self.unplaced]
        tokens = self.tokens
        if tokens is None or not lines:
            return [_Comment(c.text.rstrip(), c.span.line) for c in self.comments] + unplaced
        trailer: list[_Comment] = []
        anchors = [line.anchor for line in lines if line.anchor is not None]

        def owner(index: int) -> int:
            return max(bisect.bisect_right(anchors, tokens.pos[index]) - 1, 0)

        for comment in self.comments:
            pos = (comment.span.line, comment.span.column)
            text = _Comment(comment.text.rstrip(), comment.span.line)
            before, after = tokens.before(pos), tokens.after(pos)
            on_code_line = before >= 0 and tokens.pos[before][0] == comment.span.line
            if after >= len(tokens):
                if on_code_line and lines[owner(before)].trailing is None:
                    lines[owner(before)].trailing = text.text
                else:
                    trailer.append(text)
                continue
            if before < 0:
                lines[owner(after)].leading.append(text)
                continue
            first, second = owner(before), owner(after)
            if first != second and on_code_line and lines[first].trailing is None:
                lines[first].trailing = text.text
            elif first != second:
                lines[second].leading.append(text)
            else:
                lines[first].leading.append(text)  # inside the line's code: goes above it
        return trailer + unplaced

    # blank lines -------------------------------------------------------------
    def _measure(self, elements: list[_Element]) -> None:
        """The source lines where each element starts and ends, 0 when unknown."""
        heads = [element.lines[0].anchor for element in elements]
        for index, element in enumerate(elements):
            head = heads[index]
            if head is None:
                continue
            element.start = head[0]
            following = next((h for h in heads[index + 1 :] if h is not None), None)
            if self.tokens is not None and len(self.tokens):
                last = self.tokens.before(following) if following else len(self.tokens) - 1
                element.end = max(self.tokens.pos[last][0], element.start)
            else:
                element.end = element.start
            for comment in element.lines[0].leading:
                comment.line = min(comment.line, element.start)

    def _render(self, elements: list[_Element], trailer: list[_Comment]) -> str:
        out: list[str] = []
        previous: _Element | None = None
        last = 0  # the source line of what was printed last, 0 if unknown
        for element in elements:
            head, *body = element.lines
            # Source lines of what comes before this element's head, in order.
            marks = [last, *(c.line for c in head.leading), element.start]
            gaps = [_gap(a, b) for a, b in itertools.pairwise(marks)]
            if previous is not None and not any(gaps):
                if previous.start == 0 or element.start == 0:
                    gaps[0] = not (previous.is_let and element.is_let)
                else:
                    gaps[0] = bool(head.leading)  # a comment between items sets them apart
            for comment, blank in zip(head.leading, gaps, strict=False):
                out += [""] * (blank and bool(out))
                out.append(" " * head.comment_indent + comment.text)
            out += [""] * (gaps[-1] and bool(out))
            out.append(head.render())
            for line in body:
                out += (" " * line.comment_indent + c.text for c in line.leading)
                out.append(line.render())
            previous = element
            last = element.end
        for comment in trailer:
            out += [""] * (_gap(last, comment.line) and bool(out))
            out.append(comment.text)
            last = comment.line
        return "\n".join(out) + "\n" if out else ""


def _gap(before: int, after: int) -> bool:
    """Whether the source had a line (blank or comment) between two known lines."""
    return before > 0 and after > 0 and after - before > 1


# ------------------------------------------------------------------ clauses


def _pattern(pattern: ast.Pattern) -> str:
    text = format_expr(pattern.expr)
    if pattern.form in ("like", "in"):
        return f"{pattern.form} {text}"
    return text


def _target(target: ast.Target) -> str:
    if target.form == "call":
        return "call tool" + (f" {_pattern(target.resource)}" if target.resource else "")
    text = "action" + (f" {_pattern(target.action)}" if target.action else "")
    if target.resource_type is not None:
        text += f" on {target.resource_type}"
        if target.resource is not None:
            text += f" {_pattern(target.resource)}"
    return text


def _limit(limit: ast.Limit) -> str:
    window = f"per {_expr(limit.window, _ATOM)} {ast.scope_text(limit.scope)}"
    if limit.kind == "count":
        return f"limit {_expr(limit.cap, _ATOM)} calls {window}"
    amount = format_expr(limit.amount) if limit.amount is not None else ""
    return f"limit sum({amount}) <= {_expr(limit.cap, _ATOM)} {window}"


def _clock(move: ast.ClockMove) -> str:
    if isinstance(move, ast.ClockAdvance):
        return f"after {move.by}"
    return f'at "{move.when.isoformat().replace("+00:00", "Z")}"'


def _expect(expect: ast.Expect) -> str:
    text = "expect " + ("allow" if expect.allow else "deny")
    if expect.by:
        text += " by " + ", ".join(expect.by)
    if expect.requiring:
        text += " requiring " + ", ".join(str(o) for o in expect.requiring)
    return text
