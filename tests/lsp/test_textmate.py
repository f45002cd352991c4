"""The TextMate grammar of editors/vscode highlights every word of the language.

The grammar's regexes are Oniguruma's; the ones it uses (classes, alternations, fixed
lookbehinds, word boundaries) mean the same to Python's ``re``, so they are compiled and
applied here the way a TextMate engine applies ``match`` rules to a line: at each
position, the rule whose match starts first, the earlier rule on a tie.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pdp.lang import ast, parser
from pdp.lang.functions import FUNCTIONS
from pdp.lang.values import Risk

# The words of limit scopes (`per agent+resource`, `global`), one by one.
SCOPE_WORDS = {w for s in (*ast.PER_SCOPES, ast.GLOBAL_SCOPE) for w in s.split("+")}

ROOT = Path(__file__).resolve().parents[2]
EXTENSION = ROOT / "editors" / "vscode"
GRAMMAR = EXTENSION / "syntaxes" / "tessera.tmLanguage.json"
PLAIN = "variable.other.tessera"  # a name with no meaning of its own: a let, a record key


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    name: str | None
    captures: dict[int, str]


def _rules(grammar: dict[str, Any], patterns: list[dict[str, Any]]) -> list[Rule]:
    found: list[Rule] = []
    for pattern in patterns:
        if "include" in pattern:
            found += _rules(grammar, [grammar["repository"][pattern["include"].lstrip("#")]])
        elif "patterns" in pattern:
            found += _rules(grammar, pattern["patterns"])
        else:
            captures = {int(k): v["name"] for k, v in pattern.get("captures", {}).items()}
            found.append(Rule(re.compile(pattern["match"]), pattern.get("name"), captures))
    return found


GRAMMAR_JSON = json.loads(GRAMMAR.read_text())
RULES = _rules(GRAMMAR_JSON, GRAMMAR_JSON["patterns"])


def tokens(line: str) -> list[tuple[str, str]]:
    """(text, scope) of each highlighted piece of ``line``."""
    out: list[tuple[str, str]] = []
    position = 0
    while position < len(line):
        best: tuple[re.Match[str], Rule] | None = None
        for rule in RULES:
            match = rule.regex.search(line, position)
            if match is None or match.end() == match.start():
                continue
            if best is None or match.start() < best[0].start():
                best = (match, rule)
        if best is None:
            break
        match, rule = best
        if rule.name is not None:
            out.append((match.group(), rule.name))
        out += [(match.group(group), name) for group, name in sorted(rule.captures.items())]
        position = match.end()
    return out


def _keywords() -> list[str]:
    """Every keyword of the Lark grammar (its quoted words)."""
    text = (ROOT / "pdp" / "lang" / "grammar.lark").read_text()
    return sorted(set(re.findall(r'"([a-z_]+)"', text)))


def _words() -> list[str]:
    """The names the parser gives a meaning: risk levels, roots, functions, verdicts."""
    named = (*Risk.__members__, "true", "false", "delegated", "autonomous", "allow", "deny")
    known = (*ast.ROOTS, *parser.CONSTRUCTORS, *parser.OBLIGATIONS, *FUNCTIONS, *SCOPE_WORDS)
    return sorted({*named, *known})


def test_every_regex_of_the_grammar_compiles() -> None:
    def regexes(node: object) -> list[str]:
        if isinstance(node, dict):
            own = [v for k, v in node.items() if k in ("match", "begin", "end")]
            return own + [r for v in node.values() for r in regexes(v)]
        if isinstance(node, list):
            return [r for v in node for r in regexes(v)]
        return []

    found = regexes(GRAMMAR_JSON)
    assert len(found) > 10
    for regex in found:
        re.compile(regex)


@pytest.mark.parametrize("word", _keywords() + _words())
def test_every_word_of_the_language_is_highlighted(word: str) -> None:
    [(text, scope)] = tokens(f" {word} ")
    assert text == word
    assert scope != PLAIN


def test_the_keywords_are_read_from_the_lark_grammar() -> None:
    assert {"permit", "forbid", "when", "subset", "requiring"} <= set(_keywords())


def test_a_rule_is_highlighted_by_its_parts() -> None:
    line = 'permit pay_small call tool "a\\"b" when context.time < 5 # why'
    assert tokens(line) == [
        ("permit", "keyword.control.effect.tessera"),
        ("pay_small", "entity.name.function.rule.tessera"),
        ("call", "keyword.other.tessera"),
        ("tool", "variable.language.root.tessera"),
        ('"a\\"b"', "string.quoted.double.tessera"),
        ("when", "keyword.control.tessera"),
        ("context", "variable.language.root.tessera"),
        (".", "punctuation.separator.tessera"),
        ("time", "variable.other.property.tessera"),
        ("<", "keyword.operator.comparison.tessera"),
        ("5", "constant.numeric.tessera"),
        ("# why", "comment.line.number-sign.tessera"),
    ]


def test_money_durations_and_numbers_are_told_apart() -> None:
    line = "limit sum(context.amount) <= 5000.50 USD per 24h per agent and x > -1.5"
    scopes = dict(tokens(line))
    assert scopes["5000.50 USD"] == "constant.numeric.money.tessera"
    assert scopes["24h"] == "constant.numeric.duration.tessera"
    assert scopes["-1.5"] == "constant.numeric.tessera"
    assert scopes["sum"] == "keyword.other.tessera"


def test_the_extension_names_the_grammar_for_pol_files() -> None:
    manifest = json.loads((EXTENSION / "package.json").read_text())
    [language] = manifest["contributes"]["languages"]
    [grammar] = manifest["contributes"]["grammars"]
    assert language["extensions"] == [".pol"]
    assert grammar["scopeName"] == GRAMMAR_JSON["scopeName"]
    assert (EXTENSION / grammar["path"]).resolve() == GRAMMAR
    assert (EXTENSION / language["configuration"]).is_file()
