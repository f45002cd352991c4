"""The bundle an open `.pol` file belongs to, parsed and checked with the editor's text.

The root is the directory ``tessera check`` would be pointed at: the nearest one above the
file that holds a ``bundle.toml`` (:data:`pdp.loader.BUNDLE_MARKER`), else the workspace
folder holding the file, else the file's own directory. Its files are the loader's
(:func:`pdp.loader.policy_files`, listed within bounds by :mod:`pdp.lsp.files`), each read
from the editor when it is open there, so a file of another bundle is never checked with
this one. A root with too many files to list is checked with its open files alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pdp.lang import ast
from pdp.lang.checker import CheckResult, check
from pdp.lang.errors import Diagnostic, PolicyError, Sources, Span
from pdp.lang.parser import parse
from pdp.loader import BUNDLE_MARKER
from pdp.lsp.files import MAX_DIRECTORIES, MAX_FILES, Listing, list_bundle

MAX_DOCUMENT = 1 << 20
"""The largest file parsed, in bytes of UTF-8; a larger one gets one diagnostic instead."""

ELSEWHERE = ""
"""The key of diagnostics whose span names no file of the bundle."""


@dataclass(frozen=True)
class Analysis:
    """One bundle as the editor holds it: every file's text, the files that parse, what
    the checker learned of them (also when a file does not parse: hovers use it), and the
    diagnostics to show by file path (:data:`ELSEWHERE` for those of no file)."""

    root: Path | None
    texts: dict[str, str]
    modules: dict[str, ast.Module]
    result: CheckResult
    diagnostics: dict[str, list[Diagnostic]]
    broken: str | None = None
    """A file with an error that stops the bundle from being checked: until each file
    parses, only those errors are reported (as the loader does)."""


def bundle_root(path: Path, folders: Sequence[Path]) -> Path:
    """The directory ``tessera check`` would load ``path`` with (the module docstring)."""
    for folder in path.parents:
        if (folder / BUNDLE_MARKER).is_file():
            return folder
    holding = [f for f in folders if f in path.parents]
    if holding:
        return max(holding, key=lambda folder: len(folder.parts))
    return path.parent


def too_large(text: str) -> bool:
    """Whether ``text`` is over :data:`MAX_DOCUMENT` bytes."""
    return len(text) > MAX_DOCUMENT or len(text.encode("utf-8", "replace")) > MAX_DOCUMENT


def _too_large_diagnostic(path: str) -> Diagnostic:
    return Diagnostic(
        "error",
        f"this file is larger than {MAX_DOCUMENT // (1 << 20)} MiB, so it is not checked",
        Span(path, 1, 1, 1, 1),
        hint="split it into several .pol files of the same bundle",
    )


def _read(path: Path) -> str | Diagnostic:
    """The text of a file of the bundle that is not open, or why it cannot be used."""
    try:
        if path.stat().st_size > MAX_DOCUMENT:
            return _too_large_diagnostic(str(path))
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Diagnostic("error", f"cannot read {path}: {exc}", Span(str(path), 1, 1, 1, 1))


def _too_many_files(root: Path) -> Diagnostic:
    return Diagnostic(
        "warning",
        f"{root} holds more than {MAX_FILES:,} .pol files or {MAX_DIRECTORIES:,} "
        "directories, so the other files of this bundle are not read: only the open ones "
        "are checked, together",
        Span(str(root), 1, 1, 1, 1),
        hint="mark the policy directory as a bundle: create an empty bundle.toml in it",
    )


def bundle_texts(
    root: Path | None, open_texts: Mapping[str, str], listing: Listing
) -> tuple[dict[str, str], list[Diagnostic]]:
    """The text of every `.pol` file of the bundle at ``root`` as ``listing`` lists them
    (``open_texts``, those of its files open in the editor, first), and a diagnostic for
    each that cannot be read."""
    texts: dict[str, str] = {}
    problems: list[Diagnostic] = []
    for path in listing.files:
        name = str(path)
        if name in open_texts:
            continue
        read = _read(path)
        if isinstance(read, Diagnostic):
            problems.append(read)
        else:
            texts[name] = read
    texts.update(open_texts)
    return texts, problems


def analyze(
    root: Path | None, open_texts: Mapping[str, str], listing: Listing | None = None
) -> Analysis:
    """Parse and check the bundle at ``root`` (None: ``open_texts`` alone), whose files
    ``listing`` lists (when None, they are listed now)."""
    if listing is None:
        listing = list_bundle(root) if root is not None and root.is_dir() else Listing(())
    texts, problems = bundle_texts(root, open_texts, listing)
    files = set(texts) | {problem.span.file for problem in problems}
    sources = Sources()
    modules: dict[str, ast.Module] = {}
    for path in sorted(texts):
        text = texts[path]
        sources.add(path, text)
        if too_large(text):
            problems.append(_too_large_diagnostic(path))
            continue
        try:
            modules[path] = parse(text, path)
        except PolicyError as exc:
            problems.extend(exc.diagnostics)
    result = check(list(modules.values()), sources)
    diagnostics: dict[str, list[Diagnostic]] = {path: [] for path in files}
    # An editor shows each spot where it is: a root's folded follow-ons too.
    shown = [d for root in problems or result.diagnostics for d in (root, *root.follow_ons)]
    for diagnostic in shown:
        file = diagnostic.span.file
        diagnostics.setdefault(file if file in files else ELSEWHERE, []).append(diagnostic)
    if listing.too_large and root is not None:
        diagnostics.setdefault(ELSEWHERE, []).append(_too_many_files(root))
    broken = problems[0].span.file if problems else None
    return Analysis(root, texts, modules, result, diagnostics, broken)
