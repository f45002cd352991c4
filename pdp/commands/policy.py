"""The policy commands: ``check``, ``test`` and ``fmt`` a policy directory, ``lsp`` for
editors, ``eval`` and ``explain`` one request against it.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pdp.commands import FAILED, OK, USAGE, Command, Handler
from pdp.lang.errors import Diagnostic, PolicyError

if TYPE_CHECKING:
    from pdp.coverage import CoverageReport
    from pdp.policytest import TestResult

DEFAULT_POLICIES = "policies"


def print_diagnostics(diagnostics: Sequence[Diagnostic], err: TextIO) -> None:
    """Each policy error or warning as the compiler renders it, a blank line after each."""
    for diagnostic in diagnostics:
        print(diagnostic.render(), file=err)
        print(file=err)


def _directory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "directory",
        nargs="?",
        default=DEFAULT_POLICIES,
        metavar="DIR",
        help=f"policy directory (default: {DEFAULT_POLICIES})",
    )


def _check_options(parser: argparse.ArgumentParser) -> None:
    _directory_option(parser)
    parser.add_argument("--json", action="store_true", help="print diagnostics as JSON")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.loader import load_directory

    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"tessera check: {directory} is not a directory", file=err)
        return USAGE
    try:
        loaded = load_directory(directory)
    except PolicyError as exc:
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "diagnostics": [d.to_json() for d in exc.diagnostics]}, indent=2
                ),
                file=out,
            )
        else:
            print_diagnostics(exc.diagnostics, err)
            count = len(exc.diagnostics)
            follow = sum(len(d.follow_ons) for d in exc.diagnostics)
            caused = f" ({follow} more caused by {'it' if count == 1 else 'them'})"
            caused = caused if follow else ""
            print(f"{count} error{'s' if count != 1 else ''}{caused} in {directory}", file=err)
        return FAILED
    warnings = loaded.warnings
    failed = bool(warnings) and args.strict
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not failed,
                    "version": loaded.bundle.version,
                    "diagnostics": [d.to_json() for d in warnings],
                },
                indent=2,
            ),
            file=out,
        )
        return FAILED if failed else OK
    print_diagnostics(warnings, err)
    bundle = loaded.bundle
    print(
        f"{'FAILED' if failed else 'ok'}: {len(bundle.rules)} rules, {len(bundle.tests)} tests "
        f"in {len(loaded.modules)} files, {len(warnings)} warnings (version {bundle.version})",
        file=out,
    )
    _name_nested(directory, out)
    return FAILED if failed else OK


def _name_nested(directory: Path, out: TextIO) -> None:
    """Say which bundles below ``directory`` were left out: each is checked on its own."""
    from pdp.loader import BUNDLE_MARKER, nested_bundles

    for nested in nested_bundles(directory):
        print(f"  not included: {nested} (a bundle of its own: {BUNDLE_MARKER})", file=out)


CHECK = Command(
    "check",
    help="parse and type-check a policy directory",
    description="Parse and type-check every .pol file below DIR as one bundle (a "
    "directory below it holding a bundle.toml is a bundle of its own and is left out). "
    "Prints errors and warnings with file:line:col; exits 1 on any error.",
    options=_check_options,
    run=_check,
)


def _test_options(parser: argparse.ArgumentParser) -> None:
    _directory_option(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    parser.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NAME",
        help="run only the tests whose name contains NAME, ignoring case; repeat it to "
        "run the tests that match any of several; none matching is an error (exit 2)",
    )
    parser.add_argument(
        "--coverage",
        action="store_true",
        help="after the run, list every rule with the tests that hit it (its target and "
        "conditions held in some step) and the share of rules hit",
    )
    parser.add_argument(
        "--coverage-min",
        type=_percent,
        metavar="PERCENT",
        help="like --coverage, and exit 1 naming the rules never hit when fewer than "
        "PERCENT of the rules were hit (--coverage-min 100: every rule must be tested)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the results (and coverage) as JSON"
    )


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 100") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a number from 0 to 100")
    return value


def _test(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.coverage import Coverage, render_coverage
    from pdp.loader import load_directory
    from pdp.policytest import run_tests, select_tests

    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"tessera test: {directory} is not a directory", file=err)
        return USAGE
    try:
        loaded = load_directory(directory)
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics, err)
        print("the policies do not load, so no test ran", file=err)
        return FAILED
    bundle = loaded.bundle
    tests = select_tests(bundle.tests, args.filter)
    if args.filter and not tests:
        names = " or ".join(repr(name) for name in args.filter)
        message = (
            f"no test name contains {names} (ignoring case); "
            f"{len(bundle.tests)} tests in {directory}"
        )
        print(f"tessera test: {message}", file=err)
        if args.json:  # a caller reading JSON gets JSON, an empty run with the message
            data = {**_test_json([], len(bundle.tests), None, None), "ok": False}
            print(json.dumps({**data, "message": message}, indent=2), file=out)
        return USAGE
    wants_coverage = args.coverage or args.coverage_min is not None
    coverage = Coverage(bundle) if wants_coverage else None
    results = run_tests(bundle, tests, coverage.observe if coverage else None)
    report = coverage.report() if coverage else None
    under = report is not None and report.below(args.coverage_min or 0.0)
    if args.json:
        data = _test_json(results, len(bundle.tests), report, args.coverage_min)
        print(json.dumps(data, indent=2), file=out)
    else:
        if args.filter:
            print(f"selected {len(tests)} of {len(bundle.tests)} tests", file=out)
        _print_results(results, args.verbose, out)
        if report is not None:
            print(file=out)
            print("\n".join(render_coverage(report)), file=out)
    if report is not None and under:
        _print_missed(report, args.coverage_min, err)
    return FAILED if under or any(not r.passed for r in results) else OK


def _print_results(results: Sequence[TestResult], verbose: bool, out: TextIO) -> None:
    """PASS lines (when verbose), each failure with its trace, then the counts."""
    from pdp.explain import render_explanation

    failed = 0
    for result in results:
        if result.passed:
            if verbose:
                print(f"PASS {result.test.name}", file=out)
            continue
        failed += 1
        failure = result.failure
        assert failure is not None
        where = f"step {failure.step}" + (
            f", repetition {failure.repetition}" if failure.repetition > 1 else ""
        )
        if any(step.clock for step in result.test.steps):
            where += f", clock {failure.clock}"
        print(f"FAIL {result.test.name}  ({result.span}, {where})", file=out)
        print(f"  {failure.message}", file=out)
        if failure.explanation is not None:
            print(_indent(render_explanation(failure.explanation), "  | "), file=out)
        print(file=out)
    print(f"{len(results) - failed} passed, {failed} failed", file=out)


def _print_missed(report: CoverageReport, minimum: float, err: TextIO) -> None:
    from pdp.coverage import render_percent

    print(
        f"tessera test: coverage {render_percent(report)} is under the minimum of "
        f"{minimum:g}%; rules no test hits:",
        file=err,
    )
    for entry in report.missed:
        print(f"  {entry.rule.effect} {entry.rule.id}  ({entry.rule.span})", file=err)


def _test_json(
    results: Sequence[TestResult],
    total: int,
    report: CoverageReport | None,
    minimum: float | None,
) -> dict[str, Any]:
    """The run as JSON: counts, every selected test's outcome, and coverage if asked."""
    tests = []
    for result in results:
        entry: dict[str, Any] = {
            "name": result.test.name,
            "where": str(result.span),
            "passed": result.passed,
        }
        failure = result.failure
        if failure is not None:
            entry["failure"] = {
                "step": failure.step,
                "repetition": failure.repetition,
                "message": failure.message,
                "clock": failure.clock,
            }
        tests.append(entry)
    passed = sum(1 for r in results if r.passed)
    under = report is not None and report.below(minimum or 0.0)
    data: dict[str, Any] = {
        "ok": passed == len(results) and not under,
        "selected": len(results),
        "total": total,
        "passed": passed,
        "failed": len(results) - passed,
        "tests": tests,
    }
    if report is not None:
        data["coverage"] = {**report.to_json(), "minimum": minimum}
    return data


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.splitlines())


TEST = Command(
    "test",
    help="run the policy tests of a directory",
    description="Run every test block of the bundle in DIR (or those --filter selects); "
    "print each failure with its decision trace. Exit 1 if the policies do not load, a "
    "test fails or coverage is under --coverage-min; 2 if --filter selects no test.",
    options=_test_options,
    run=_test,
    epilog='Each test starts at 2027-01-15T08:00:00Z; in a test, at "2026-12-01T09:00:00Z" '
    "sets the clock its engine decides with and after 24h moves it forward, so the "
    "windows of limits can be tested (docs/language.md, Policy tests).",
)


def _fmt_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        default=[DEFAULT_POLICIES],
        metavar="FILE",
        help=f"files or directories (default: {DEFAULT_POLICIES})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; list files that are not formatted and exit 1",
    )
    parser.add_argument(
        "--diff",
        action="store_true",
        help="change nothing (implies --check); also print a unified diff (a/FILE, b/FILE) "
        "of each file formatting would change",
    )


def _fmt(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.lang.formatter import format_source
    from pdp.loader import SUFFIX, policy_files

    files: list[Path] = []
    for raw in args.paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(policy_files(path, nested=True))
        elif path.is_file():
            files.append(path)
        else:
            print(f"tessera fmt: {path}: no such file or directory", file=err)
            return USAGE
    if not files:
        print(f"tessera fmt: no {SUFFIX} files in {', '.join(args.paths)}", file=err)
        return USAGE
    changed: list[Path] = []
    broken = False
    for path in files:
        try:
            # The bytes as they are (no newline translation): a CRLF file is not formatted.
            text = path.read_bytes().decode("utf-8")
            formatted = format_source(text, str(path))
        except PolicyError as exc:
            print_diagnostics(exc.diagnostics, err)
            broken = True
            continue
        except (OSError, UnicodeDecodeError) as exc:
            print(f"tessera fmt: {path}: {exc}", file=err)
            broken = True
            continue
        if formatted != text:
            changed.append(path)
            if args.diff:
                out.write(_unified_diff(path, text, formatted))
            elif not args.check:
                path.write_text(formatted, encoding="utf-8", newline="")
    check = args.check or args.diff
    verb = "would reformat" if check else "reformatted"
    listing = err if args.diff else out  # with --diff, standard output is the patch alone
    for path in changed:
        print(f"{verb} {path}", file=listing)
    print(f"{len(changed)} of {len(files)} files {verb}", file=listing)
    if broken:
        return USAGE
    return FAILED if (check and changed) else OK


def _unified_diff(path: Path, before: str, after: str) -> str:
    """What formatting changes in ``path``, as a unified diff with ``a/`` and ``b/``
    headers (the path as given, without a leading ``/``), as ``git diff`` writes them."""
    name = path.as_posix().lstrip("/")
    lines = difflib.unified_diff(
        _lines(before),
        _lines(after),
        fromfile=f"a/{name}",
        tofile=f"b/{name}",
    )
    # A last line without a newline is marked as diff(1) marks it, so lines never run on.
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def _lines(text: str) -> list[str]:
    """The lines of ``text`` with their ends, split at "\n" only, as diff(1) and git split
    them (``str.splitlines`` also splits at U+2028, form feeds and others that a comment
    or string may hold)."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


FMT = Command(
    "fmt",
    help="rewrite .pol files in canonical form",
    description="Rewrite .pol files in canonical form, in place. Directories are "
    "searched for .pol files. Formatting twice changes nothing. With --check (or "
    "--diff) nothing is written, and the exit status is 1 if any file would change.",
    options=_fmt_options,
    run=_fmt,
)


def _lsp_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stdio",
        action="store_true",
        help="talk over standard input and output (the only transport; accepted because "
        "editors' clients pass it)",
    )


def _lsp(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.lsp.server import serve

    serve()
    return OK


LSP = Command(
    "lsp",
    help="serve the language server protocol for .pol files to an editor",
    description="Run a language server on standard input and output for an editor: "
    "diagnostics of each open file's bundle as you type, hover, go to definition and "
    "formatting. Set-up for VS Code and Neovim is in docs/editor.md.",
    options=_lsp_options,
    run=_lsp,
)


def _decides(
    name: str, what: str, options: Callable[[argparse.ArgumentParser], None], run: Handler
) -> Command:
    """``eval`` or ``explain``: decide one request and do ``what`` with the decision."""
    return Command(
        name,
        help=f"decide one request and {what}",
        description=f"Decide the request in REQUEST.json ('-' for standard input) and "
        f"{what}. Exit 0 on allow, 1 on deny. The request format is in README.md.",
        options=options,
        run=run,
    )


def _request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("request", metavar="REQUEST.json", help="request file, or - for stdin")
    parser.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        metavar="DIR",
        help=f"policy directory (default: {DEFAULT_POLICIES})",
    )


def _explain_options(parser: argparse.ArgumentParser) -> None:
    _request_options(parser)
    parser.add_argument(
        "--all",
        action="store_true",
        help="also list the rules whose target does not cover the request",
    )


def _decide(args: argparse.Namespace, err: TextIO) -> tuple[Any, Any] | int:
    """(the bundle in --policies, the request in REQUEST.json) for ``eval`` and ``explain``;
    the exit code, after printing why, when either is unusable."""
    from pdp.catalog import catalogued
    from pdp.loader import load_directory
    from pdp.model import RequestError
    from pdp.request import request_from_json

    try:
        loaded = load_directory(args.policies)
    except PolicyError as exc:
        print_diagnostics(exc.diagnostics, err)
        return USAGE
    try:
        if args.request == "-":
            raw = sys.stdin.read()
        else:
            raw = Path(args.request).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"tessera {args.command}: cannot read {args.request}: {exc}", file=err)
        return USAGE
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        print(
            f"tessera {args.command}: {args.request}:{exc.lineno}:{exc.colno}: "
            f"invalid JSON: {exc.msg}",
            file=err,
        )
        return USAGE
    try:
        request = request_from_json(data, loaded.bundle.schema)
    except RequestError as exc:
        print(f"tessera {args.command}: {args.request}: invalid request: {exc}", file=err)
        return USAGE
    return loaded.bundle, catalogued(loaded.bundle, request)


def _eval(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.engine import Engine

    prepared = _decide(args, err)
    if isinstance(prepared, int):
        return prepared
    bundle, request = prepared
    decision = Engine(bundle).decide(request)
    print(json.dumps(decision.to_json(), indent=2), file=out)
    return OK if decision.allow else FAILED


def _explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.explain import render_explanation
    from pdp.interpreter import Interpreter

    prepared = _decide(args, err)
    if isinstance(prepared, int):
        return prepared
    bundle, request = prepared
    explanation = Interpreter(bundle.rules, bundle.lets, bundle.version).explain(request)
    print(render_explanation(explanation, show_untargeted=args.all), file=out)
    return OK if explanation.decision.allow else FAILED


EVAL = _decides("eval", "print the decision as JSON", _request_options, _eval)
EXPLAIN = _decides(
    "explain", "print why each candidate rule did what it did", _explain_options, _explain
)
