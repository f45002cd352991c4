"""``tessera lsp``: the language server for `.pol` files, over standard input and output.

It keeps the editor's text of each open file and, on every open, change, save and close,
parses and checks the bundle that file belongs to (:mod:`pdp.lsp.bundle`) and publishes
the diagnostics of each of its files; a change waits a moment for the next
(:mod:`pdp.lsp.debounce`), and the bundle's list of files is kept until a save, an open,
a close or the client's file watcher says files changed (:mod:`pdp.lsp.files`). Hover
(:mod:`pdp.lsp.hover`), go to definition (:mod:`pdp.lsp.navigate`) and formatting
(:func:`pdp.lang.formatter.format_source`) read the last analysis. The Language Server
Protocol 3.17 is pygls's; this module maps it.
"""

from __future__ import annotations

from functools import partial
from importlib import metadata
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace import TextDocument

from pdp.lang.errors import Diagnostic, PolicyError, source_lines
from pdp.lang.formatter import format_source
from pdp.loader import BUNDLE_MARKER, SUFFIX
from pdp.lsp.bundle import ELSEWHERE, Analysis, analyze, bundle_root, too_large
from pdp.lsp.debounce import Debouncer
from pdp.lsp.files import FileLists
from pdp.lsp.hover import hover_text
from pdp.lsp.navigate import definition, node_at
from pdp.lsp.positions import end_of, from_position, to_range

NAME = "tessera"
SOURCE = "tessera"  # what a diagnostic says produced it

Located = tuple[Path | None, str]
"""A document's bundle root (None for one that is no file) and its path in that bundle."""


class PolicyServer(LanguageServer):
    """The server, with the last analysis of each bundle an open file belongs to."""

    def __init__(self) -> None:
        super().__init__(NAME, _version())
        self.analyses: dict[str, Analysis] = {}
        self.shown: dict[str, set[str]] = {}  # bundle → the uris given diagnostics last
        self.files = FileLists()
        self.rechecks = Debouncer()

    def locate(self, uri: str) -> Located:
        fs_path = to_fs_path(uri)
        if fs_path is None:
            return None, uri
        folders = [Path(p) for p in self._folder_paths()]
        path = Path(fs_path)
        return bundle_root(path, folders), str(path)

    def _folder_paths(self) -> list[str]:
        uris = [folder.uri for folder in self.workspace.folders.values()]
        if self.workspace.root_uri:
            uris.append(self.workspace.root_uri)
        return [p for p in (to_fs_path(uri) for uri in uris) if p is not None]

    def open_documents(self, root: Path | None, path: str) -> dict[str, TextDocument]:
        """The open documents of the bundle at ``root``, by path."""
        if root is None:
            return {path: self.workspace.get_text_document(path)}
        found: dict[str, TextDocument] = {}
        for uri, document in self.workspace.text_documents.items():
            where, doc_path = self.locate(uri)
            if where == root:
                found[doc_path] = document
        return found

    def analysis(self, uri: str) -> tuple[Analysis, str]:
        """The analysis of the bundle ``uri`` belongs to (made now if there is none or a
        change is waiting) and the document's path in it."""
        root, path = self.locate(uri)
        self.rechecks.flush(_key(root, path))
        known = self.analyses.get(_key(root, path))
        if known is None or path not in known.texts:
            known = refresh(self, uri)
        return known, path


def _key(root: Path | None, path: str) -> str:
    """What names a bundle in the server's tables: its root, or the lone document."""
    return str(root) if root is not None else path


def _version() -> str:
    try:
        return metadata.version("tessera")
    except metadata.PackageNotFoundError:
        return "unknown"


def refresh(ls: PolicyServer, uri: str) -> Analysis:
    """Analyse the bundle of ``uri`` again and publish the diagnostics of its files."""
    root, path = ls.locate(uri)
    key = _key(root, path)
    ls.rechecks.cancel(key)  # this check is newer than any waiting
    documents = ls.open_documents(root, path)
    listing = ls.files.get(root) if root is not None else None
    analysis = analyze(root, {p: d.source for p, d in documents.items()}, listing)
    ls.analyses[key] = analysis
    uris = {p: d.uri for p, d in documents.items()}
    shown: set[str] = set()
    for file, found in analysis.diagnostics.items():
        if file == ELSEWHERE:
            continue
        if file == path:
            found = [*found, *analysis.diagnostics.get(ELSEWHERE, [])]
        file_uri = uris.get(file) or from_fs_path(file) or file
        lines = source_lines(analysis.texts.get(file, ""))
        converted = [_diagnostic(d, lines, ls) for d in found]
        if analysis.broken not in (None, file) and file in uris and file in analysis.modules:
            converted.append(_unchecked(analysis.broken or ""))
        if converted or file_uri in ls.shown.get(key, set()) or file in uris:
            ls.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(file_uri, converted)
            )
        if converted:
            shown.add(file_uri)
    ls.shown[key] = shown
    return analysis


_SEVERITY = {"error": types.DiagnosticSeverity.Error, "warning": types.DiagnosticSeverity.Warning}


def _diagnostic(diagnostic: Diagnostic, lines: list[str], ls: PolicyServer) -> types.Diagnostic:
    message = diagnostic.message + (f"\nhint: {diagnostic.hint}" if diagnostic.hint else "")
    return types.Diagnostic(
        range=to_range(diagnostic.span, lines, ls.workspace.position_codec),
        message=message,
        severity=_SEVERITY.get(diagnostic.severity, types.DiagnosticSeverity.Error),
        source=SOURCE,
    )


def _unchecked(broken: str) -> types.Diagnostic:
    start = types.Position(0, 0)
    return types.Diagnostic(
        range=types.Range(start, start),
        message=f"not type-checked: {broken} of this bundle has an error",
        severity=types.DiagnosticSeverity.Information,
        source=SOURCE,
    )


def _forget_files(ls: PolicyServer, uri: str) -> None:
    """List the bundle of ``uri`` again at its next check: a file may have come or gone."""
    fs_path = to_fs_path(uri)
    if fs_path is not None:
        ls.files.forget(Path(fs_path))


def did_open(ls: PolicyServer, params: types.DidOpenTextDocumentParams) -> None:
    _forget_files(ls, params.text_document.uri)
    refresh(ls, params.text_document.uri)


def did_change(ls: PolicyServer, params: types.DidChangeTextDocumentParams) -> None:
    """Check the bundle once the changes pause, with the latest text only."""
    uri = params.text_document.uri
    ls.rechecks.schedule(_key(*ls.locate(uri)), partial(refresh, ls, uri))


def did_save(ls: PolicyServer, params: types.DidSaveTextDocumentParams) -> None:
    _forget_files(ls, params.text_document.uri)
    refresh(ls, params.text_document.uri)


def did_close(ls: PolicyServer, params: types.DidCloseTextDocumentParams) -> None:
    """Check the bundle again with the file as saved; a file that is no file on disk has
    nothing left to show."""
    uri = params.text_document.uri
    _forget_files(ls, uri)
    root, path = ls.locate(uri)
    if root is not None and path in refresh(ls, uri).texts:
        return
    ls.analyses.pop(path, None)
    ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri, []))


def did_change_watched_files(ls: PolicyServer, params: types.DidChangeWatchedFilesParams) -> None:
    """Files changed on disk: list again the bundles that hold them, and check again each
    bundle with an open file among them."""
    changed = [Path(p) for p in (to_fs_path(c.uri) for c in params.changes) if p is not None]
    for file in changed:
        ls.files.forget(file)
    every = any(file.name == BUNDLE_MARKER for file in changed)
    for uri in list(ls.workspace.text_documents):
        root, path = ls.locate(uri)
        if root is not None and (every or any(root in file.parents for file in changed)):
            ls.rechecks.schedule(_key(root, path), partial(refresh, ls, uri))


WATCHED = "tessera-policy-files"
"""The id of the server's registration of file watchers with the client."""


def initialized(ls: PolicyServer, params: types.InitializedParams) -> None:
    """Ask the client to watch the files that make bundles, if it can be asked."""
    workspace = ls.client_capabilities.workspace
    watched = workspace.did_change_watched_files if workspace is not None else None
    if watched is None or not watched.dynamic_registration:
        return
    watchers = [
        types.FileSystemWatcher(f"**/*{SUFFIX}"),
        types.FileSystemWatcher(f"**/{BUNDLE_MARKER}"),
    ]
    options = types.DidChangeWatchedFilesRegistrationOptions(watchers)
    method = types.WORKSPACE_DID_CHANGE_WATCHED_FILES
    ls.client_register_capability(
        types.RegistrationParams([types.Registration(WATCHED, method, options)])
    )


def hover(ls: PolicyServer, params: types.HoverParams) -> types.Hover | None:
    """The type of an attribute, the value of a let, the summary of a rule."""
    analysis, path = ls.analysis(params.text_document.uri)
    module = analysis.modules.get(path)
    if module is None:
        return None
    lines = source_lines(analysis.texts[path])
    codec = ls.workspace.position_codec
    found = node_at(module, *from_position(params.position, lines, codec))
    if found is None:
        return None
    text = hover_text(found, analysis.modules.values(), analysis.result)
    if text is None:
        return None
    content = types.MarkupContent(types.MarkupKind.Markdown, text)
    return types.Hover(content, to_range(found.span, lines, codec))


def go_to_definition(ls: PolicyServer, params: types.DefinitionParams) -> types.Location | None:
    """Where the let or rule under the cursor is defined."""
    analysis, path = ls.analysis(params.text_document.uri)
    module = analysis.modules.get(path)
    if module is None:
        return None
    codec = ls.workspace.position_codec
    lines = source_lines(analysis.texts[path])
    found = node_at(module, *from_position(params.position, lines, codec))
    target = None if found is None else definition(found, analysis.modules.values())
    if target is None:
        return None
    span, _ = target
    _, uri_path = ls.locate(params.text_document.uri)
    uri = params.text_document.uri if span.file == uri_path else from_fs_path(span.file)
    target_lines = source_lines(analysis.texts.get(span.file, ""))
    return types.Location(uri or span.file, to_range(span, target_lines, codec))


def formatting(
    ls: PolicyServer, params: types.DocumentFormattingParams
) -> list[types.TextEdit] | None:
    """The document in canonical form, as one edit; none when it does not parse (the
    client is told why)."""
    document = ls.workspace.get_text_document(params.text_document.uri)
    text = document.source
    if too_large(text):
        _tell(ls, "not formatted: the file is larger than the server parses")
        return None
    try:
        formatted = format_source(text, document.path)
    except PolicyError as exc:
        first = exc.diagnostics[0]
        _tell(ls, f"not formatted: {first.span}: {first.message}")
        return None
    if formatted == text:
        return []
    lines = source_lines(text)
    whole = types.Range(types.Position(0, 0), end_of(lines, ls.workspace.position_codec))
    return [types.TextEdit(whole, formatted)]


def _tell(ls: PolicyServer, message: str) -> None:
    ls.window_show_message(types.ShowMessageParams(types.MessageType.Warning, message))


def build_server() -> PolicyServer:
    """A server with every feature registered."""
    server = PolicyServer()
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE)(did_save)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)(did_change_watched_files)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.TEXT_DOCUMENT_HOVER)(hover)
    server.feature(types.TEXT_DOCUMENT_DEFINITION)(go_to_definition)
    server.feature(types.TEXT_DOCUMENT_FORMATTING)(formatting)
    return server


def serve() -> None:
    """Serve one client on standard input and output until it says exit."""
    build_server().start_io()
