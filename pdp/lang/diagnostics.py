"""The order diagnostics are shown in: each root cause once and first, its follow-ons folded.

One mistake often breaks many spots: an attribute declared with an unknown type (or under
the wrong entity) makes every rule and test that reads it fail, an undefined let fails at
each use. A diagnostic about such a spot names what broke it (``cause``); the diagnostic
about the broken thing itself carries that name as its ``key``. :func:`root_first` keeps
one diagnostic per cause, the root (the keyed one, or else the first spot in reading
order), with the others as its ``follow_ons``, and lists the roots that have follow-ons
before the rest, so a follow-on never comes before its root, whatever the files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from pdp.lang.errors import Diagnostic


def position(d: Diagnostic) -> tuple[str, int, int]:
    """Reading order: file, line, column."""
    return (d.span.file, d.span.line, d.span.column)


def root_first(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Fold each follow-on into its root; roots that others follow from come first."""
    ordered = sorted(diagnostics, key=position)
    roots: dict[str, Diagnostic] = {d.key: d for d in ordered if d.key and not d.cause}
    follow_ons: dict[str, list[Diagnostic]] = {}
    kept: list[Diagnostic] = []
    for d in ordered:
        if not d.cause:
            kept.append(d)
        elif d.cause in follow_ons:
            follow_ons[d.cause].append(d)
        elif d.cause in roots:
            follow_ons[d.cause] = [d]
        else:
            # No diagnostic about the cause itself: the first spot stands for the rest.
            follow_ons[d.cause] = []
            roots[d.cause] = d
            kept.append(dataclasses.replace(d, key=d.cause, cause=""))
    folded = []
    for d in kept:
        # Two roots of one cause (a misspelled type declared in two files): the first in
        # reading order takes the follow-ons, so each is counted and shown once.
        folded.append(_fold(d, follow_ons.pop(d.key, [])))
    return sorted(folded, key=lambda d: (not d.follow_ons, *position(d)))


def _fold(root: Diagnostic, follow_ons: list[Diagnostic]) -> Diagnostic:
    if not follow_ons or not root.key:
        return root
    return dataclasses.replace(root, follow_ons=(*root.follow_ons, *follow_ons))
