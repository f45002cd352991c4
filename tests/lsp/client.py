"""``tessera lsp`` as a subprocess, driven by pygls's own language client."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from lsprotocol import types
from pygls.lsp.client import LanguageClient
from pygls.uris import from_fs_path

TESSERA = str(Path(sys.executable).parent / "tessera")
WAIT = 30.0  # seconds: the longest a reply may take on a loaded machine


class Editor:
    """A client that collects what the server publishes, per document."""

    def __init__(self) -> None:
        self.client = LanguageClient("tessera-tests", "1")
        self.diagnostics: dict[str, asyncio.Queue[list[types.Diagnostic]]] = {}
        self.messages: asyncio.Queue[str] = asyncio.Queue()
        self.registrations: asyncio.Queue[types.Registration] = asyncio.Queue()
        self.versions: dict[str, int] = {}

        # pygls marks a handler with attributes, which a bound method cannot take.
        @self.client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def published(params: types.PublishDiagnosticsParams) -> None:
            self._queue(params.uri).put_nowait(list(params.diagnostics))

        @self.client.feature(types.WINDOW_SHOW_MESSAGE)
        def message(params: types.ShowMessageParams) -> None:
            self.messages.put_nowait(params.message)

        @self.client.feature(types.CLIENT_REGISTER_CAPABILITY)
        def register(params: types.RegistrationParams) -> None:
            for registration in params.registrations:
                self.registrations.put_nowait(registration)

    def _queue(self, uri: str) -> asyncio.Queue[list[types.Diagnostic]]:
        return self.diagnostics.setdefault(uri, asyncio.Queue())

    async def published(self, path: Path) -> list[types.Diagnostic]:
        """The next diagnostics published for ``path`` (waits at most :data:`WAIT`)."""
        return await asyncio.wait_for(self._queue(uri(path)).get(), WAIT)

    def unread(self, path: Path) -> int:
        """How many publications for ``path`` were not read."""
        return self._queue(uri(path)).qsize()

    def open(self, path: Path, text: str) -> None:
        self.versions[uri(path)] = 1
        item = types.TextDocumentItem(uri(path), "tessera", 1, text)
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(item))

    def change(self, path: Path, text: str) -> None:
        version = self.versions[uri(path)] = self.versions[uri(path)] + 1
        document = types.VersionedTextDocumentIdentifier(version, uri(path))
        whole = types.TextDocumentContentChangeWholeDocument(text)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(document, [whole]))

    def close(self, path: Path) -> None:
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(document(path)))

    def files_changed(self, *paths: Path) -> None:
        """Say, as a client's file watcher does, that files were created on disk."""
        created = types.FileChangeType.Created
        changes = [types.FileEvent(uri(path), created) for path in paths]
        params = types.DidChangeWatchedFilesParams(changes)
        self.client.workspace_did_change_watched_files(params)

    async def hover(self, path: Path, line: int, character: int) -> types.Hover | None:
        params = types.HoverParams(document(path), types.Position(line, character))
        return await asyncio.wait_for(self.client.text_document_hover_async(params), WAIT)

    async def definition(self, path: Path, line: int, character: int) -> types.Location:
        params = types.DefinitionParams(document(path), types.Position(line, character))
        found = await asyncio.wait_for(self.client.text_document_definition_async(params), WAIT)
        assert isinstance(found, types.Location), found
        return found

    async def format(self, path: Path) -> list[types.TextEdit] | None:
        options = types.FormattingOptions(tab_size=2, insert_spaces=True)
        params = types.DocumentFormattingParams(document(path), options)
        found = await asyncio.wait_for(self.client.text_document_formatting_async(params), WAIT)
        return None if found is None else list(found)


def uri(path: Path) -> str:
    found = from_fs_path(str(path))
    assert found is not None
    return found


def document(path: Path) -> types.TextDocumentIdentifier:
    return types.TextDocumentIdentifier(uri(path))


@asynccontextmanager
async def editing(
    workspace: Path, capabilities: types.ClientCapabilities | None = None
) -> AsyncIterator[Editor]:
    """``tessera lsp`` started, initialized on ``workspace``; shut down and exited after."""
    editor = Editor()
    await editor.client.start_io(TESSERA, "lsp")
    try:
        folder = types.WorkspaceFolder(uri(workspace), workspace.name)
        params = types.InitializeParams(
            capabilities=capabilities or types.ClientCapabilities(), workspace_folders=[folder]
        )
        await asyncio.wait_for(editor.client.initialize_async(params), WAIT)
        editor.client.initialized(types.InitializedParams())
        yield editor
    finally:
        try:
            await asyncio.wait_for(editor.client.shutdown_async(None), WAIT)
            editor.client.exit(None)
        finally:
            await asyncio.wait_for(editor.client.stop(), WAIT)
