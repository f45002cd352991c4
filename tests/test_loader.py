"""Loading a policy directory: all or nothing, versioned by content."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.lang.errors import PolicyError
from pdp.loader import load_directory, nested_bundles, policy_files

GOOD = 'permit p call tool "search"\n'


def test_a_directory_becomes_one_bundle(tmp_path: Path) -> None:
    (tmp_path / "a.pol").write_text(GOOD)
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "b.pol").write_text('forbid f call tool "rm"\n')
    (tmp_path / "notes.txt").write_text("not a policy")
    loaded = load_directory(tmp_path)
    assert [r.id for r in loaded.bundle.rules] == ["p", "f"]
    assert len(loaded.modules) == 2


def test_the_version_follows_the_content(tmp_path: Path) -> None:
    (tmp_path / "a.pol").write_text(GOOD)
    first = load_directory(tmp_path).bundle.version
    assert load_directory(tmp_path).bundle.version == first
    (tmp_path / "a.pol").write_text(GOOD + "# a comment changes the version too\n")
    assert load_directory(tmp_path).bundle.version != first


def test_one_broken_file_rejects_the_whole_directory(tmp_path: Path) -> None:
    (tmp_path / "a.pol").write_text(GOOD)
    (tmp_path / "b.pol").write_text("permit broken when\n")
    (tmp_path / "c.pol").write_text("permit typed when agent.nothing == 1\n")
    with pytest.raises(PolicyError) as caught:
        load_directory(tmp_path)
    files = sorted({d.span.file for d in caught.value.diagnostics})
    assert files == [str(tmp_path / "b.pol")]  # syntax errors stop before the checker


def test_type_errors_reject_the_directory(tmp_path: Path) -> None:
    (tmp_path / "a.pol").write_text(GOOD)
    (tmp_path / "c.pol").write_text("permit typed when agent.nothing == 1\n")
    with pytest.raises(PolicyError, match="nothing"):
        load_directory(tmp_path)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no \.pol files"):
        load_directory(tmp_path)


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is not a directory"):
        load_directory(tmp_path / "missing")


def test_undecodable_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.pol").write_bytes(b"\xff\xfe permit")
    with pytest.raises(PolicyError, match="cannot read"):
        load_directory(tmp_path)


def test_a_directory_with_a_bundle_marker_is_left_out_of_its_parent(tmp_path: Path) -> None:
    (tmp_path / "a.pol").write_text('permit p call tool "search"\n')
    example = tmp_path / "examples" / "other"
    example.mkdir(parents=True)
    (example / "bundle.toml").write_text("# a bundle of its own\n")
    (example / "b.pol").write_text('forbid f call tool "search"\n')
    outer = load_directory(tmp_path)
    assert [rule.name for rule in outer.bundle.rules] == ["p"]
    inner = load_directory(example)
    assert [rule.name for rule in inner.bundle.rules] == ["f"]
    assert nested_bundles(tmp_path) == [example]
    assert policy_files(tmp_path, nested=True) == [tmp_path / "a.pol", example / "b.pol"]
