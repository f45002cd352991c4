"""Parse `.pol` text into the syntax tree of :mod:`pdp.lang.ast`.

The grammar (``grammar.lark``) is LALR(1); this module turns Lark's tree into frozen
dataclasses with spans and turns every Lark exception into a :class:`PolicyError` that
shows file:line:col, the line, a caret and a hint.
"""

from __future__ import annotations

import difflib
import math
import re
import threading
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NoReturn

from lark import Lark, Token, Tree
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from pdp.lang import ast
from pdp.lang.errors import Diagnostic, LanguageError, PolicyError, Span, source_lines
from pdp.lang.functions import FUNCTIONS
from pdp.lang.values import (
    Duration,
    Money,
    Risk,
    parse_amount,
    parse_date,
    parse_ip,
    parse_network,
    parse_time,
)

RECORD_KINDS = ("agent", "user", "delegation", "context", "resource", "subject")
ENTITY_KINDS = ("agent", "user", "context", "resource", "subject")
TYPED_KINDS = ("resource", "subject")  # the schema blocks that take a type name
OBLIGATIONS = ("consent", "step_up")
CONSTRUCTORS = ("ip", "time", "date")  # of a string literal, a literal
_CONSTRUCTOR_EXAMPLES = {"ip": "10.0.0.0/8", "time": "2026-01-31T09:00:00Z", "date": "2027-03-31"}

_comments = threading.local()


def _collect_comment(token: Token) -> Token:
    _comments.found.append(token)
    return token


def _load_grammar() -> Lark:
    text = resources.files("pdp.lang").joinpath("grammar.lark").read_text()
    return Lark(
        text,
        parser="lalr",
        lexer="contextual",
        # Spans come from tokens in _Builder, much faster than propagate_positions; it
        # needs every token, keywords included.
        keep_all_tokens=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _collect_comment},
    )


_PARSER = _load_grammar()


class _SyntaxProblem(LanguageError):
    """Raised inside the transformer; carries the span and the hint."""

    def __init__(self, message: str, span: Span, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint


def parse(text: str, path: str = "<string>") -> ast.Module:
    """Parse one file. Raises :class:`PolicyError` on any syntax error."""
    lines = source_lines(text)
    _comments.found = []
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as exc:
        raise PolicyError([_syntax_diagnostic(exc, text, lines, path)]) from None
    finally:
        found: list[Token] = _comments.found
        _comments.found = []
    try:
        module = _Builder(path).build(tree)
    except _SyntaxProblem as problem:
        raise PolicyError(
            [_diagnostic(problem.message, problem.span, lines, problem.hint)]
        ) from None
    comments = tuple(ast.Comment(str(t), _token_span(t, path)) for t in found)
    return ast.Module(path, module.package, module.items, comments, text)


def parse_expression(text: str, path: str = "<expression>") -> ast.Expr:
    """Parse a lone expression by wrapping it in a rule; used by tools and tests."""
    module = parse(f"permit __expr__ when {text}", path)
    rule = module.rules[0]
    assert rule.when is not None
    return rule.when


# ------------------------------------------------------------------ errors


def _diagnostic(message: str, span: Span, lines: list[str], hint: str = "") -> Diagnostic:
    line_text = lines[span.line - 1] if 1 <= span.line <= len(lines) else ""
    return Diagnostic("error", message, span, line_text, hint)


_FRIENDLY = {
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "MONEY": "an amount of money (200 USD)",
    "DURATION": "a duration (30s, 5m, 24h)",
    "$END": "the end of the file",
}


def _expected_words(expected: set[str]) -> list[str]:
    words = set()
    for name in expected:
        if name in _FRIENDLY:
            words.add(_FRIENDLY[name])
            continue
        try:
            pattern = _PARSER.get_terminal(name).pattern
        except KeyError:
            words.add(name.lower())
            continue
        words.add(f"'{pattern.value}'" if pattern.type == "str" else name.lower())
    return sorted(words)


def _syntax_diagnostic(exc: UnexpectedInput, text: str, lines: list[str], path: str) -> Diagnostic:
    line = exc.line if exc.line and exc.line > 0 else max(len(lines), 1)
    column = exc.column if exc.column and exc.column > 0 else 1
    hint = ""
    if isinstance(exc, UnexpectedCharacters):
        pos = exc.pos_in_stream or 0
        char = text[pos] if pos < len(text) else ""
        message = f"unexpected character {char!r}"
        hint = _character_hint(text, pos)
        span = Span(path, line, column, line, column + 1)
    elif isinstance(exc, UnexpectedToken) and (better := _common_mistake(exc, text, lines, path)):
        return better
    elif isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        token = exc.token
        message = f"unexpected {_describe_token(token)}"
        expected = _expected_words(set(exc.expected))
        hint = _token_hint(token, exc, expected)
        span = _token_span(token, path)
    else:
        message = "unexpected end of file"
        expected = _expected_words(set(getattr(exc, "expected", ()) or ()))
        hint = "expected " + ", ".join(expected) if expected else ""
        line = max(len(lines), 1)
        while line > 1 and not lines[line - 1].strip():
            line -= 1  # point after the last text, not at the empty line after it
        last = lines[line - 1] if lines else ""
        span = Span(path, line, len(last) + 1, line, len(last) + 2)
        if isinstance(exc, UnexpectedEOF | UnexpectedToken) and "'}'" in expected:
            hint = "a block is not closed: add '}'"
    return _diagnostic(message, span, lines, hint)


# The words a rule's clauses start with; none of them names a rule.
CLAUSE_KEYWORDS = ("call", "action", "when", "unless", "limit", "require")
# A rule without a name reads its first clause keyword as the name.
_NAMELESS_RULE = re.compile(rf"\b(permit|forbid)\s+({'|'.join(CLAUSE_KEYWORDS)})\s*$")
# Comments and strings, whose words are no code (a string is matched first: "#" in one).
_NOT_CODE = re.compile(r'"(?:\\["\\nrt]|[^"\\\n])*"|#[^\n]*')


def _code_only(text: str) -> str:
    """``text`` with comments and strings blanked out, every position kept."""
    return _NOT_CODE.sub(lambda m: " " * len(m.group()), text)


def _nameless(effect: str, keyword: str) -> tuple[str, str]:
    """The message and hint for a rule whose name is missing before ``keyword``."""
    return (
        f"a rule needs a name: {effect} NAME …",
        f"name the rule before its {keyword} clause: {effect} read_tools {keyword} …",
    )


_CONDITION_STARTS = frozenset((*ast.ROOTS, "not", "delegated", "autonomous"))


def _common_mistake(
    exc: UnexpectedToken, text: str, lines: list[str], path: str
) -> Diagnostic | None:
    """A message of its own for mistakes people make often: a rule without a name, a
    condition without ``when``."""
    token = exc.token
    before = _code_only(text[: token.start_pos] if token.start_pos is not None else "")
    nameless = _NAMELESS_RULE.search(before)
    if nameless is not None:
        effect, keyword = nameless.group(1), nameless.group(2)
        line = before.count("\n", 0, nameless.start(2)) + 1
        column = nameless.start(2) - (before.rfind("\n", 0, nameless.start(2)) + 1) + 1
        span = Span(path, line, column, line, column + len(keyword))
        message, hint = _nameless(effect, keyword)
        return _diagnostic(message, span, lines, hint)
    expected = {str(e) for e in exc.expected}
    if str(token) in _CONDITION_STARTS and "WHEN" in expected:
        span = _token_span(token, path)
        condition = lines[span.line - 1][span.column - 1 :].strip()
        return _diagnostic(
            "a condition starts with when (or unless)",
            span,
            lines,
            f"write: when {condition}",
        )
    return None


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"name '{token}'"
    if token.type in ("STRING", "NUMBER", "MONEY", "DURATION"):
        return f"{_FRIENDLY[token.type].split(' (')[0]} {token}"
    return f"'{token}'"


def _character_hint(text: str, pos: int) -> str:
    rest = text[pos : pos + 2]
    if rest.startswith('"'):
        return 'this string is not closed: end it with " on the same line'
    if rest in ("&&", "||"):
        return "write 'and' and 'or' instead of && and ||"
    if rest.startswith("!"):
        return "write 'not' for negation; != compares"
    if rest.startswith("'"):
        return 'strings use double quotes: "like this"'
    return "remove this character or put it inside a string"


def _token_hint(token: Token, exc: UnexpectedToken, expected: list[str]) -> str:
    previous = getattr(exc, "token_history", None) or []
    prev = previous[-1] if previous else None
    if token == "=":
        return "compare with '==' ('=' only appears in let)"
    if token.type == "NAME" and prev is not None and prev.type == "NUMBER":
        return "money is an amount and a three-letter code in capitals: 200 USD"
    if token.type == "NAME" and token.lower() in ("when", "unless", "limit", "require"):
        return "a rule's clauses go in this order: target, when, unless, limit, require"
    if token in ("when", "unless", "limit", "require", "call", "action"):
        return (
            "a rule's clauses go in this order: target, when, unless, limit, require; "
            "each at most once except limit and require"
        )
    if prev is not None and prev.type == "AFTER":
        return "after takes a positive duration with its unit: after 24h, after 30m"
    if token.type == "NAME" and token in RECORD_KINDS and "'at'" in expected:
        return f"a test's {token} block goes before its steps and its at/after lines"
    effects = ("PERMIT", "FORBID")
    if token.type in effects and prev is not None and prev.type in effects:
        return "a rule needs a name: permit read_only ..."
    if expected:
        shown = expected if len(expected) <= 8 else [*expected[:8], "…"]
        return "expected " + ", ".join(shown)
    return ""


def _token_span(token: Token, path: str) -> Span:
    line = token.line or 1
    column = token.column or 1
    end_line = token.end_line or line
    end_column = token.end_column or column + max(len(token), 1)
    return Span(path, line, column, end_line, end_column)


# ------------------------------------------------------------------ tree → AST


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else ""


def _scope_hint(word: str) -> str:
    """Did-you-mean for a limit scope, and every scope there is."""
    names = (*ast.PER_SCOPES, ast.GLOBAL_SCOPE)
    written = [ast.scope_text(name) for name in names]
    listing = "a limit counts " + ", ".join(written[:-1]) + " or " + written[-1]
    close = difflib.get_close_matches(word, names, n=1)
    return f"did you mean '{ast.scope_text(close[0])}'? {listing}" if close else listing


def _unquote(token: Token) -> str:
    body = str(token)[1:-1]
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


# Deeper syntax trees are refused: no policy needs them, and generated Python code has a
# nesting limit of its own.
MAX_DEPTH = 150

# Tokens that carry a value; the rest are keywords and punctuation.
_VALUE_TOKENS = frozenset({"NAME", "STRING", "NUMBER", "MONEY", "DURATION"})
# Grammar rules marked `!`: they read their keyword tokens.
_KEYWORD_RULES = frozenset({"effect", "compare_op"})


class _Builder:
    """Turns Lark's tree into AST nodes, bottom-up; one method per grammar rule.

    A small recursive walk instead of Lark's Transformer: it skips a wrapper per node,
    which matters for bundles of thousands of rules.
    """

    def __init__(self, path: str) -> None:
        self.file = path
        self._methods: dict[str, Any] = {}

    def build(self, tree: Tree[Token]) -> Any:
        return self._build(tree, 0)[0]

    def _build(self, tree: Tree[Token], depth: int) -> tuple[Any, Token | None, Token | None]:
        """The node for ``tree`` and the first and last tokens it spans (for its span)."""
        if depth > MAX_DEPTH:
            token = next(iter(tree.scan_values(lambda v: isinstance(v, Token))), None)
            span = (
                _token_span(token, self.file) if token is not None else Span(self.file, 1, 1, 1, 2)
            )
            self._fail(
                f"this nests more than {MAX_DEPTH} levels deep",
                span,
                "split the condition with lets or flatten it: a and b and c needs no nesting",
            )
        children = []
        first: Token | None = None
        last: Token | None = None
        name = tree.data
        keep_keywords = name in _KEYWORD_RULES
        for child in tree.children:
            if isinstance(child, Tree):
                value, start, end = self._build(child, depth + 1)
                children.append(value)
                if start is None:
                    continue
            else:
                # Every token counts for the span; keywords are passed on only to the
                # rules that read them (the grammar's `!` rules).
                if keep_keywords or child.type in _VALUE_TOKENS:
                    children.append(child)
                start = end = child
            if first is None:
                first = start
            last = end
        method = self._methods.get(name)
        if method is None:
            method = self._methods[name] = getattr(self, name, None) or self._default(name)
        if first is None or last is None:
            span = Span(self.file, 0, 0, 0, 0)
        else:
            span = Span(
                self.file,
                first.line or 0,
                first.column or 0,
                last.end_line or 0,
                last.end_column or 0,
            )
        return method(span, children), first, last

    def _default(self, name: str) -> Any:
        def keep(meta: Any, children: list[Any]) -> Tree[Any]:
            return Tree(name, children, meta)

        return keep

    # spans ---------------------------------------------------------------
    def _span(self, meta: Span) -> Span:
        """Each rule method receives its match's span as ``meta``."""
        return meta

    def _tspan(self, token: Token) -> Span:
        return _token_span(token, self.file)

    def _fail(self, message: str, span: Span, hint: str = "") -> NoReturn:
        raise _SyntaxProblem(message, span, hint)

    # file ----------------------------------------------------------------
    def start(self, meta: Any, children: list[Any]) -> ast.Module:
        package = ""
        items = []
        for child in children:
            if isinstance(child, str):
                package = child
            elif child is not None:
                items.append(child)
        items = [_with_package(item, package) for item in items]
        return ast.Module(self.file, package, tuple(items))

    def package_decl(self, meta: Any, children: list[Any]) -> str:
        return str(children[0])

    def dotted(self, meta: Any, children: list[Token]) -> str:
        return ".".join(str(c) for c in children)

    def let_decl(self, meta: Any, children: list[Any]) -> ast.Let:
        name, expr = children
        return ast.Let(str(name), expr, self._span(meta))

    # rules ---------------------------------------------------------------
    def rule(self, meta: Any, children: list[Any]) -> ast.Rule:
        effect, name, *clauses = children
        if name in CLAUSE_KEYWORDS:  # `permit when` alone parses, the keyword as its name
            message, hint = _nameless(str(effect), str(name))
            self._fail(message, self._tspan(name), hint)
        target = when = unless = None
        limits: list[ast.Limit] = []
        requires: list[ast.Require] = []
        for clause in clauses:
            if isinstance(clause, ast.Target):
                target = clause
            elif isinstance(clause, tuple) and clause[0] == "when":
                when = clause[1]
            elif isinstance(clause, tuple) and clause[0] == "unless":
                unless = clause[1]
            elif isinstance(clause, ast.Limit):
                limits.append(clause)
            elif isinstance(clause, ast.Require):
                requires.append(clause)
        if effect == "forbid" and (limits or requires):
            what = "limit" if limits else "require"
            span = (limits[0] if limits else requires[0]).span
            self._fail(
                f"a forbid cannot carry '{what}'",
                span,
                "caps and obligations belong to permits: they narrow what a permit allows",
            )
        return ast.Rule(
            str(effect),  # type: ignore[arg-type]
            str(name),
            target,
            when,
            unless,
            tuple(limits),
            tuple(requires),
            self._span(meta),
            self._tspan(name),
        )

    def effect(self, meta: Any, children: list[Token]) -> str:
        return str(children[0])

    def call_target(self, meta: Any, children: list[Any]) -> ast.Target:
        return ast.Target("call", None, ast.TOOL_TYPE, children[0], self._span(meta))

    def action_target(self, meta: Any, children: list[Any]) -> ast.Target:
        action, rtype, resource = (*children, None, None)[:3]
        if rtype is None:
            return ast.Target("action", action, None, None, self._span(meta))
        return ast.Target("action", action, str(rtype), resource, self._span(meta))

    def pat_string(self, meta: Any, children: list[Any]) -> ast.Pattern:
        token = children[0]
        lit = ast.Literal_(_unquote(token), self._tspan(token))
        return ast.Pattern("string", lit, self._span(meta))

    def pat_like(self, meta: Any, children: list[Any]) -> ast.Pattern:
        token = children[0]
        lit = ast.Literal_(_unquote(token), self._tspan(token))
        return ast.Pattern("like", lit, self._span(meta))

    def pat_in(self, meta: Any, children: list[Any]) -> ast.Pattern:
        value = children[0]
        if isinstance(value, Token):
            value = ast.Name(str(value), self._tspan(value))
        return ast.Pattern("in", value, self._span(meta))

    def pat_list(self, meta: Any, children: list[Any]) -> ast.Pattern:
        return ast.Pattern("list", children[0], self._span(meta))

    def pat_name(self, meta: Any, children: list[Any]) -> ast.Pattern:
        token = children[0]
        return ast.Pattern("name", ast.Name(str(token), self._tspan(token)), self._span(meta))

    def when(self, meta: Any, children: list[Any]) -> tuple[str, ast.Expr]:
        return ("when", children[0])

    def unless(self, meta: Any, children: list[Any]) -> tuple[str, ast.Expr]:
        return ("unless", children[0])

    def limit_sum(self, meta: Any, children: list[Any]) -> ast.Limit:
        amount, cap, window, scope = (*children, None)[:4]
        if not isinstance(cap, ast.Literal_):
            self._fail("a limit's cap is a constant", cap.span, "write: 5000 USD, or 5000")
        return ast.Limit(
            "sum", amount, cap, self._duration(window), scope or "agent", self._span(meta)
        )

    def limit_count(self, meta: Any, children: list[Any]) -> ast.Limit:
        count, window, scope = (*children, None)[:3]
        if "." in str(count) or self._int(count) <= 0:
            self._fail(
                f"a call count must be a positive whole number, not {count}",
                self._tspan(count),
            )
        cap = ast.Literal_(int(count), self._tspan(count))
        return ast.Limit(
            "count", None, cap, self._duration(window), scope or "agent", self._span(meta)
        )

    def scope(self, meta: Any, children: list[Any]) -> str:
        scope = "+".join(str(c) for c in children if c is not None)
        if scope == ast.GLOBAL_SCOPE:
            self._fail(
                "global takes no per: it is one count for every request",
                self._span(meta),
                "write the scope alone: limit 10000 calls per 1h global",
            )
        if scope not in ast.PER_SCOPES:
            self._fail(f"unknown limit scope '{scope}'", self._span(meta), _scope_hint(scope))
        return scope

    def scope_bare(self, meta: Any, children: list[Any]) -> str:
        word = str(children[0])
        if word == ast.GLOBAL_SCOPE:
            return word
        if word in ast.PER_SCOPES:
            self._fail(
                f"a limit's scope is written with per: per {word}",
                self._span(meta),
                f"write: per {word} (only global stands alone)",
            )
        self._fail(f"unknown limit scope '{word}'", self._span(meta), _scope_hint(word))

    def require(self, meta: Any, children: list[Any]) -> ast.Require:
        obligation, condition = (*children, None)[:2]
        return ast.Require(obligation, condition, self._span(meta))

    def obligation(self, meta: Any, children: list[Any]) -> ast.Obligation:
        kind, value = children
        if kind not in OBLIGATIONS:
            self._fail(
                f"unknown obligation '{kind}'",
                self._tspan(kind),
                _suggest(str(kind), OBLIGATIONS) or "obligations are consent(...) and step_up(...)",
            )
        return ast.Obligation(str(kind), _unquote(value), self._span(meta))  # type: ignore[arg-type]

    # expressions -------------------------------------------------------------
    def or_expr(self, meta: Any, children: list[Any]) -> ast.BoolOp:
        return ast.BoolOp("or", tuple(children), self._span(meta))

    def and_expr(self, meta: Any, children: list[Any]) -> ast.BoolOp:
        return ast.BoolOp("and", tuple(children), self._span(meta))

    def atom(self, meta: Any, children: list[Any]) -> ast.Expr:
        """``( expr )``: the parentheses only group."""
        inner: ast.Expr = children[0]
        return inner

    def not_(self, meta: Any, children: list[Any]) -> ast.Not:
        return ast.Not(children[0], self._span(meta))

    def compare(self, meta: Any, children: list[Any]) -> ast.Compare:
        left, op, right = children
        return ast.Compare(op, left, right, self._span(meta))

    def compare_op(self, meta: Any, children: list[Token]) -> str:
        return " ".join(str(c) for c in children)  # "subset of" is two words

    def has(self, meta: Any, children: list[Any]) -> ast.Has:
        base, name = children
        text = _unquote(name) if name.type == "STRING" else str(name)
        return ast.Has(base, text, self._span(meta))

    def path(self, meta: Any, children: list[Any]) -> ast.Expr:
        head, *parts = children
        accessors = [_unquote(t) if t.type == "STRING" else str(t) for t in parts]
        name = str(head)
        span = self._span(meta)
        if not accessors:
            if name in Risk.__members__:
                return ast.Literal_(Risk[name], span)
            if name in ("true", "false"):
                return ast.Literal_(name == "true", span)
            if name in ("delegated", "autonomous"):
                return ast.Flag(name, span)  # type: ignore[arg-type]
            if name in ast.ROOTS:
                return ast.Path(name, (), span)
            return ast.Name(name, span)
        if name not in ast.ROOTS:
            hint = _suggest(name, ast.ROOTS) or ("attributes start from " + ", ".join(ast.ROOTS))
            self._fail(f"unknown name '{name}' before '.'", self._tspan(head), hint)
        return ast.Path(name, tuple(accessors), span)

    def list_expr(self, meta: Any, children: list[Any]) -> ast.ListExpr:
        return ast.ListExpr(tuple(c for c in children if c is not None), self._span(meta))

    def map_expr(self, meta: Any, children: list[Any]) -> ast.MapExpr:
        entries = tuple(c for c in children if c is not None)
        keys = [k for k, _ in entries]
        for key in keys:
            if keys.count(key) > 1:
                self._fail(f"key '{key}' appears twice in this map", self._span(meta))
        return ast.MapExpr(entries, self._span(meta))

    def map_entry(self, meta: Any, children: list[Any]) -> tuple[str, ast.Expr]:
        key, value = children
        return (_unquote(key) if key.type == "STRING" else str(key), value)

    def string(self, meta: Any, children: list[Token]) -> ast.Literal_:
        return ast.Literal_(_unquote(children[0]), self._span(meta))

    def number(self, meta: Any, children: list[Token]) -> ast.Literal_:
        token = children[0]
        value: int | float = float(token) if "." in token else self._int(token)
        if not math.isfinite(value):
            self._fail(f"the number {token[:20]}… is too large", self._tspan(token))
        return ast.Literal_(value, self._span(meta))

    def _int(self, token: Token) -> int:
        """A whole number; Python refuses to convert very long digit strings."""
        try:
            return int(token)
        except ValueError:
            self._fail(f"the number {token[:20]}… is too large", self._tspan(token))

    def money(self, meta: Any, children: list[Token]) -> ast.Literal_:
        token = children[0]
        amount, currency = str(token).split()
        try:
            value = parse_amount(amount)  # the grammar every door reads amounts with
        except ValueError as exc:
            self._fail(str(exc), self._tspan(token), "write an amount such as 1000 USD")
        return ast.Literal_(Money(value, currency), self._span(meta))

    def duration(self, meta: Any, children: list[Token]) -> ast.Literal_:
        return ast.Literal_(Duration.parse(str(children[0])), self._span(meta))

    def call(self, meta: Any, children: list[Any]) -> ast.Expr:
        name, *args = children
        span = self._span(meta)
        arg = args[0] if len(args) == 1 else None
        if name in CONSTRUCTORS and isinstance(arg, ast.Literal_) and isinstance(arg.value, str):
            return self._constructed(str(name), arg, span)
        if name in FUNCTIONS:
            return ast.Call(str(name), tuple(a for a in args if a is not None), span)
        if name in CONSTRUCTORS:
            self._fail(
                f"{name}(…) takes one string",
                span,
                f'write the value in quotes: {name}("{_CONSTRUCTOR_EXAMPLES[str(name)]}")',
            )
        known = (*CONSTRUCTORS, *FUNCTIONS)
        self._fail(
            f"unknown function '{name}'",
            self._tspan(name),
            _suggest(str(name), known) or "the functions are " + ", ".join(known),
        )

    def _constructed(self, name: str, arg: ast.Literal_, span: Span) -> ast.Literal_:
        """``ip("…")``, ``time("…")`` or ``date("…")``: a literal, checked here."""
        text = arg.value
        try:
            if name == "time":
                return ast.Literal_(parse_time(text), span)
            if name == "date":
                return ast.Literal_(parse_date(text), span)
            if "/" in text:
                return ast.Literal_(parse_network(text), span)
            return ast.Literal_(parse_ip(text), span)
        except ValueError as exc:
            self._fail(str(exc), arg.span)

    def _duration(self, token: Token) -> ast.Literal_:
        return ast.Literal_(Duration.parse(str(token)), self._tspan(token))

    # schema --------------------------------------------------------------
    def schema(self, meta: Any, children: list[Any]) -> ast.Schema:
        return ast.Schema(tuple(children), self._span(meta))

    def entity_decl(self, meta: Any, children: list[Any]) -> ast.EntityDecl:
        kind, *attrs = children
        rtype = attrs.pop(0) if attrs and isinstance(attrs[0], Token) else None
        span = self._span(meta)
        if kind not in ENTITY_KINDS:
            self._fail(
                f"unknown entity '{kind}' in schema",
                self._tspan(kind),
                _suggest(str(kind), ENTITY_KINDS)
                or "a schema declares agent, user, context, resource TYPE and subject TYPE blocks",
            )
        if kind in TYPED_KINDS and rtype is None:
            example = "resource tool { server: string }"
            if kind == "subject":
                example = "subject service { team: string }"
            self._fail(f"a {kind} block needs a type name", self._tspan(kind), f"write: {example}")
        if kind not in TYPED_KINDS and rtype is not None:
            self._fail(
                f"only resource and subject blocks take a type name, not {kind}",
                self._tspan(rtype),
            )
        return ast.EntityDecl(
            str(kind),  # type: ignore[arg-type]
            str(rtype) if rtype is not None else None,
            tuple(a for a in attrs if a is not None),
            span,
        )

    def attr_decl(self, meta: Any, children: list[Any]) -> ast.AttrDecl:
        name, type_ref = children
        return ast.AttrDecl(str(name), type_ref, self._span(meta))

    def type_ref(self, meta: Any, children: list[Any]) -> ast.TypeRef:
        name, arg = (*children, None)[:2]
        return ast.TypeRef(str(name), arg, self._span(meta))

    # tests ---------------------------------------------------------------
    def test(self, meta: Any, children: list[Any]) -> ast.Test:
        name, *body = children
        records = tuple(b for b in body if isinstance(b, ast.Record))
        steps = self._steps_with_clock([b for b in body if not isinstance(b, ast.Record)])
        if not steps:
            self._fail(
                f"test {name} has no step",
                self._span(meta),
                'add a request and what to expect: call tool "x" expect allow',
            )
        return ast.Test(_unquote(name), records, steps, self._span(meta))

    def _steps_with_clock(self, statements: list[ast.Step | ast.ClockMove]) -> tuple[ast.Step, ...]:
        """The steps, each holding the ``at``/``after`` written before it. The clock starts at
        :data:`ast.TEST_START`; once a step has run it never goes back, since the counters
        of limits only forget usage as time moves forward."""
        steps: list[ast.Step] = []
        moves: list[ast.ClockMove] = []
        now = ast.TEST_START
        for statement in statements:
            if isinstance(statement, ast.Step):
                steps.append(_replace(statement, clock=tuple(moves)))
                moves = []
                continue
            if isinstance(statement, ast.ClockAdvance):
                now += statement.by.seconds
            else:
                when = statement.when.timestamp()
                if steps and when < now:
                    self._fail(
                        f"the clock cannot go back: it already reads {_instant(now)}",
                        statement.span,
                        "once a step has run, a test's clock only moves forward: write a "
                        "time at or after it, or test the earlier time in a test of its own",
                    )
                now = when
            if now >= _END_OF_TIME:
                self._fail("this moves the clock past the year 9999", statement.span)
            moves.append(statement)
        if moves and steps:  # without steps, the test says it has none
            self._fail(
                f"'{_clock_word(moves[0])}' after the last step changes nothing",
                moves[0].span,
                "remove it, or add the step it should come before",
            )
        return tuple(steps)

    def clock_at(self, meta: Any, children: list[Token]) -> ast.ClockSet:
        token = children[0]
        try:
            when = parse_time(_unquote(token))
        except ValueError as exc:
            self._fail(str(exc), self._tspan(token), 'write at "2026-12-01T09:00:00Z"')
        return ast.ClockSet(when, self._span(meta))

    def clock_after(self, meta: Any, children: list[Token]) -> ast.ClockAdvance:
        by = Duration.parse(str(children[0]))
        if by.seconds <= 0:
            self._fail(
                f"after {by} does not move the clock",
                self._tspan(children[0]),
                "write a positive duration: after 24h",
            )
        return ast.ClockAdvance(by, self._span(meta))

    def record(self, meta: Any, children: list[Any]) -> ast.Record:
        kind, *fields = children
        if kind not in RECORD_KINDS:
            self._fail(
                f"unknown block '{kind}' in a test",
                self._tspan(kind),
                _suggest(str(kind), RECORD_KINDS)
                or "a test sets agent, user, delegation, context, resource and subject",
            )
        return ast.Record(
            str(kind),  # type: ignore[arg-type]
            tuple(f for f in fields if f is not None),
            self._span(meta),
        )

    def field(self, meta: Any, children: list[Any]) -> ast.Field:
        name, value = children
        return ast.Field(str(name), value, self._span(meta))

    def step(self, meta: Any, children: list[Any]) -> ast.Step:
        target, *rest = children
        expect = rest[-1]
        times_token = rest[-2] if len(rest) > 1 and isinstance(rest[-2], Token) else None
        fields = tuple(f for f in rest[:-1] if isinstance(f, ast.Field))
        times = 1
        if times_token is not None:
            if "." in str(times_token) or self._int(times_token) <= 0:
                self._fail("times takes a positive whole number", self._tspan(times_token))
            times = int(times_token)
        form, action, rtype, rid = target
        return ast.Step(action, rtype, rid, form, fields, times, expect, self._span(meta))

    def step_call(self, meta: Any, children: list[Token]) -> tuple[str, str, str, str]:
        return ("call", ast.CALL_ACTION, ast.TOOL_TYPE, _unquote(children[0]))

    def step_action(self, meta: Any, children: list[Token]) -> tuple[str, str, str, str]:
        action, rtype, rid = children
        return ("action", _unquote(action), str(rtype), _unquote(rid))

    def expect(self, meta: Any, children: list[Any]) -> ast.Expect:
        verdict, *rest = children
        if verdict not in ("allow", "deny"):
            self._fail(
                f"expect '{verdict}'?",
                self._tspan(verdict),
                "a test expects allow or deny",
            )
        by = tuple(str(r) for r in rest if isinstance(r, str))
        requiring = tuple(r for r in rest if isinstance(r, ast.Obligation))
        if verdict == "allow" and requiring:
            self._fail(
                "an allow carries no obligation",
                requiring[0].span,
                "obligations come with a deny: expect deny requiring consent(...)",
            )
        return ast.Expect(verdict == "allow", by, requiring, self._span(meta))


# The first instant past the year 9999, where time() values end: 9999-12-31T23:59:59.5Z
# is still in it. A whole number of seconds, so the float clock compares it exactly.
_END_OF_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() + 1


def _instant(seconds: float) -> str:
    """An instant of a test's clock as an ``at`` would write it."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _clock_word(move: ast.ClockMove) -> str:
    return "at" if isinstance(move, ast.ClockSet) else "after"


def _with_package(item: Any, package: str) -> Any:
    if isinstance(item, ast.Rule | ast.Let | ast.Test):
        return _replace(item, package=package)
    return item


def _replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)
