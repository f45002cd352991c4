"""Turn a directory of `.pol` files into one bundle: all or nothing, versioned by content.

Every file is parsed and the whole set is checked before anything is compiled; one error
anywhere rejects the directory, so a broken policy never replaces a good one. The
directory's ``*.resources.json`` files (the resource catalog's entries, :mod:`pdp.catalog`)
are part of the bundle: read and typed by its schema, all or nothing as well, and in its
version.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pdp.catalog import RESOURCES_SUFFIX, Catalogued, read_catalog
from pdp.engine import Bundle
from pdp.lang import ast
from pdp.lang.analysis.usage import unused_key
from pdp.lang.checker import check
from pdp.lang.errors import Diagnostic, PolicyError, Sources, Span
from pdp.lang.parser import parse

SUFFIX = ".pol"
BUNDLE_MARKER = "bundle.toml"
"""A directory below a bundle's root holding this file is a bundle of its own (served with
``--policies`` pointed at it): loading the outer bundle leaves its files out."""


@dataclass(frozen=True)
class Loaded:
    """A compiled bundle with the warnings found while checking it."""

    bundle: Bundle
    modules: tuple[ast.Module, ...]
    warnings: tuple[Diagnostic, ...]
    sources: Sources


def policy_files(directory: Path, nested: bool = False) -> list[Path]:
    """Every `.pol` file of the bundle rooted at ``directory``, in a stable order; with
    ``nested``, those of the bundles below it (:data:`BUNDLE_MARKER`) too."""
    return sorted(
        path
        for path in directory.rglob(f"*{SUFFIX}")
        if path.is_file() and (nested or not _in_nested_bundle(path, directory))
    )


def nested_bundles(directory: Path) -> list[Path]:
    """The directories below ``directory`` that are bundles of their own."""
    return sorted(
        marker.parent
        for marker in directory.rglob(BUNDLE_MARKER)
        if marker.is_file() and marker.parent != directory
    )


def _in_nested_bundle(path: Path, root: Path) -> bool:
    folder = path.parent
    while folder != root and root in folder.parents:
        if (folder / BUNDLE_MARKER).is_file():
            return True
        folder = folder.parent
    return False


def bundle_files(directory: Path) -> list[Path]:
    """Every file of the bundle rooted at ``directory``: its `.pol` files and its resource
    catalog's ``*.resources.json`` files (not those of the bundles below it), in a stable
    order."""
    found = (
        path
        for path in directory.rglob(f"*{RESOURCES_SUFFIX}")
        if path.is_file() and not _in_nested_bundle(path, directory)
    )
    return sorted([*policy_files(directory), *found])


def content_version(files: dict[str, str]) -> str:
    """A version that changes exactly when a file's name or content changes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def load_directory(directory: str | Path) -> Loaded:
    """Load, check and compile a policy directory. Raises :class:`PolicyError`."""
    root = Path(directory)
    if not root.is_dir():
        raise PolicyError(
            [Diagnostic("error", f"{root} is not a directory", Span(str(root), 0, 0, 0, 0))]
        )
    texts: dict[str, str] = {}
    for path in bundle_files(root):
        name = path.relative_to(root).as_posix()
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(
                [Diagnostic("error", f"cannot read {path}: {exc}", Span(str(path), 0, 0, 0, 0))]
            ) from None
    if not any(name.endswith(SUFFIX) for name in texts):
        raise PolicyError(
            [
                Diagnostic(
                    "error",
                    f"no {SUFFIX} files in {root}",
                    Span(str(root), 0, 0, 0, 0),
                    "policies live in files ending in .pol",
                )
            ]
        )
    return load_texts({str(root / name): text for name, text in texts.items()}, version_of=texts)


def load_texts(texts: dict[str, str], version_of: dict[str, str] | None = None) -> Loaded:
    """Load policies given as {path: text} (a path ending in ``.resources.json`` is a file
    of the resource catalog); used by the loader, tests and tools."""
    # Parsing allocates millions of short-lived objects and no cycles worth collecting:
    # pausing the cyclic collector halves the load time of large bundles.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _load(texts, version_of)
    finally:
        if paused:
            gc.enable()


def _load(texts: dict[str, str], version_of: dict[str, str] | None) -> Loaded:
    sources = Sources()
    modules: list[ast.Module] = []
    errors: list[Diagnostic] = []
    catalog = {path: text for path, text in texts.items() if path.endswith(RESOURCES_SUFFIX)}
    for path in sorted(texts.keys() - catalog.keys()):
        sources.add(path, texts[path])
        try:
            modules.append(parse(texts[path], path))
        except PolicyError as exc:
            errors.extend(exc.diagnostics)
    if errors:
        raise PolicyError(errors)
    result = check(modules, sources)
    if result.errors:
        raise PolicyError(list(result.errors))
    rules = [rule for module in modules for rule in module.rules]
    tests = [test for module in modules for test in module.tests]
    entries = read_catalog(catalog, result.schema, sources)
    bundle = Bundle.build(
        rules,
        result.lets,
        content_version(version_of if version_of is not None else texts),
        tests,
        result.schema,
        entries,
    )
    return Loaded(bundle, tuple(modules), _warnings(result.warnings, entries), sources)


def _warnings(warnings: tuple[Diagnostic, ...], entries: Catalogued) -> tuple[Diagnostic, ...]:
    """The checker's warnings but those of unused resource attributes the catalog sets:
    it must declare them, so they are used."""
    catalogued = {
        unused_key("resource", type_, name)
        for type_, by_id in entries.items()
        for properties in by_id.values()
        for name in properties
    }
    return tuple(w for w in warnings if not (w.key and w.key in catalogued))
