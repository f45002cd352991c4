"""The language server's listing of a bundle: the loader's files, within bounds, cached."""

from __future__ import annotations

from pathlib import Path

from pdp.loader import policy_files
from pdp.lsp.files import FileLists, Listing, list_bundle


def tree(root: Path) -> None:
    """A bundle with a subfolder, a nested bundle and a file that is no policy."""
    (root / "deep" / "er").mkdir(parents=True)
    (root / "nested").mkdir()
    for name in ("a.pol", "deep/b.pol", "deep/er/c.pol", "nested/d.pol", "notes.txt"):
        (root / name).write_text("permit x\n")
    (root / "nested" / "bundle.toml").write_text("")


def test_the_listing_is_the_loaders(tmp_path: Path) -> None:
    tree(tmp_path)
    listing = list_bundle(tmp_path)
    assert listing == Listing(tuple(policy_files(tmp_path)))
    assert [p.relative_to(tmp_path).as_posix() for p in listing.files] == [
        "a.pol",
        "deep/b.pol",
        "deep/er/c.pol",
    ]


def test_a_walk_past_a_bound_lists_nothing_and_says_so(tmp_path: Path) -> None:
    tree(tmp_path)
    assert list_bundle(tmp_path, max_files=2) == Listing((), too_large=True)
    assert list_bundle(tmp_path, max_directories=2) == Listing((), too_large=True)
    assert not list_bundle(tmp_path, max_files=3, max_directories=3).too_large


def test_a_listing_is_kept_until_a_file_below_its_root_changes(tmp_path: Path) -> None:
    tree(tmp_path)
    lists = FileLists()
    before = lists.get(tmp_path)
    added = tmp_path / "deep" / "e.pol"
    added.write_text("permit e\n")
    assert lists.get(tmp_path) == before
    lists.forget(tmp_path.parent / "elsewhere.pol")
    assert lists.get(tmp_path) == before
    lists.forget(added)
    assert added in lists.get(tmp_path).files


def test_a_bundle_marker_changing_lists_every_root_again(tmp_path: Path) -> None:
    tree(tmp_path)
    lists = FileLists()
    lists.get(tmp_path)
    (tmp_path / "nested" / "bundle.toml").unlink()
    lists.forget(tmp_path / "nested" / "bundle.toml")
    assert tmp_path / "nested" / "d.pol" in lists.get(tmp_path).files
