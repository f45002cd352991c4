"""The policy commands: ``check``, ``test`` and ``fmt`` a policy directory, ``eval`` and
``explain`` one request against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from pdp.commands import FAILED, OK, USAGE, Command, Handler
from pdp.lang.errors import Diagnostic, PolicyError

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


def _test(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from pdp.explain import render_explanation
    from pdp.interpreter import Interpreter
    from pdp.loader import load_directory
    from pdp.policytest import TEST_CLOCK, run_tests

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
    results = run_tests(loaded.bundle)
    failed = [r for r in results if not r.passed]
    for result in results:
        if result.passed:
            if args.verbose:
                print(f"PASS {result.test.name}", file=out)
            continue
        failure = result.failure
        assert failure is not None
        where = f"step {failure.step}" + (
            f", repetition {failure.repetition}" if failure.repetition > 1 else ""
        )
        print(f"FAIL {result.test.name}  ({result.span}, {where})", file=out)
        print(f"  {failure.message}", file=out)
        if failure.request is not None:
            bundle = loaded.bundle
            interpreter = Interpreter(
                bundle.rules, bundle.lets, bundle.version, clock=lambda: TEST_CLOCK
            )
            explanation = interpreter.explain(failure.request, commit=False)
            print(_indent(render_explanation(explanation), "  | "), file=out)
        print(file=out)
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed", file=out)
    return FAILED if failed else OK


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else prefix.rstrip() for line in text.splitlines())


TEST = Command(
    "test",
    help="run the policy tests of a directory",
    description="Run every test block of the bundle in DIR; print each failure with "
    "its decision trace; exit 1 if any test fails.",
    options=_test_options,
    run=_test,
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
            text = path.read_text(encoding="utf-8")
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
            if not args.check:
                path.write_text(formatted, encoding="utf-8")
    verb = "would reformat" if args.check else "reformatted"
    for path in changed:
        print(f"{verb} {path}", file=out)
    print(f"{len(changed)} of {len(files)} files {verb}", file=out)
    if broken:
        return USAGE
    return FAILED if (args.check and changed) else OK


FMT = Command(
    "fmt",
    help="rewrite .pol files in canonical form",
    description="Rewrite .pol files in canonical form, in place. Directories are "
    "searched for .pol files. Formatting twice changes nothing.",
    options=_fmt_options,
    run=_fmt,
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
