"""The `.pol` files of a bundle as the language server lists them: bounded, and cached.

``tessera check`` walks its directory once; an editor asks on every keystroke. Without a
``bundle.toml`` the root is the workspace folder (:mod:`pdp.lsp.bundle`), which may be a
home directory or a monorepo, so the walk stops past :data:`MAX_FILES` `.pol` files or
:data:`MAX_DIRECTORIES` directories, and :class:`FileLists` keeps each root's listing
until the server learns that files changed (a save, an open, a close, or the client's
file watcher).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pdp.loader import BUNDLE_MARKER, SUFFIX

MAX_FILES = 2_000
"""The most `.pol` files a bundle the server checks may have."""

MAX_DIRECTORIES = 10_000
"""The most directories the server walks to list one bundle."""


@dataclass(frozen=True)
class Listing:
    """A bundle's `.pol` files in the loader's order, or none when the walk went past a
    bound (``too_large``)."""

    files: tuple[Path, ...]
    too_large: bool = False


def list_bundle(
    root: Path, max_files: int = MAX_FILES, max_directories: int = MAX_DIRECTORIES
) -> Listing:
    """The files :func:`pdp.loader.policy_files` gives for ``root``, walked no further
    than the bounds: a directory below ``root`` with a ``bundle.toml`` is another bundle
    and is not entered, a link to a directory is not followed (as the loader's walk)."""
    files: list[Path] = []
    folders = [root]
    walked = 0
    while folders:
        walked += 1
        if walked > max_directories:
            return Listing((), too_large=True)
        try:
            with os.scandir(folders.pop()) as entries:
                found = list(entries)
        except OSError:
            continue  # unreadable: the loader finds nothing there either
        for entry in found:
            if entry.is_dir(follow_symlinks=False):
                if not Path(entry.path, BUNDLE_MARKER).is_file():
                    folders.append(Path(entry.path))
            elif entry.name.endswith(SUFFIX) and entry.is_file():
                files.append(Path(entry.path))
                if len(files) > max_files:
                    return Listing((), too_large=True)
    return Listing(tuple(sorted(files)))


class FileLists:
    """Each bundle root's listing, walked once and kept until :meth:`forget`."""

    def __init__(self) -> None:
        self._listings: dict[Path, Listing] = {}

    def get(self, root: Path) -> Listing:
        listing = self._listings.get(root)
        if listing is None:
            listing = self._listings[root] = list_bundle(root)
        return listing

    def forget(self, changed: Path | None = None) -> None:
        """Walk again the roots that hold ``changed`` (every root when it is None or a
        ``bundle.toml``, which moves the bounds of bundles)."""
        if changed is None or changed.name == BUNDLE_MARKER:
            self._listings.clear()
            return
        for root in [r for r in self._listings if r == changed or r in changed.parents]:
            del self._listings[root]
