"""Policy sources: ``git+`` specs parsed or refused, and a repository followed through a
private clone: new commits loaded, unchanged ones not, broken ones never served."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from pdp.decide import DecisionPoint
from pdp.engine import Engine
from pdp.lang.errors import PolicyError
from pdp.loader import content_version
from pdp.serve.reload import Reloader
from pdp.serve.sources import (
    DirectorySource,
    GitSource,
    GitSpec,
    SourceError,
    open_source,
    parse_git,
    scrub,
)
from tests.serve.repositories import BROKEN, OPEN, SHUT, Repository
from tests.serve.test_reload import search


@pytest.fixture
def repository(tmp_path: Path) -> Repository:
    return Repository(tmp_path)


@pytest.fixture
def sources() -> Iterator[list[GitSource]]:
    """The sources a test opens, closed after it."""
    opened: list[GitSource] = []
    yield opened
    for source in opened:
        source.close()


def follow(sources: list[GitSource], spec: str) -> GitSource:
    source = open_source(spec)
    assert isinstance(source, GitSource)
    sources.append(source)
    return source


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("git+file:///srv/policies.git", GitSpec("file:///srv/policies.git")),
        ("git+https://h/p.git#v1.4", GitSpec("https://h/p.git", ref="v1.4")),
        ("git+ssh://git@h/p.git?dir=tessera", GitSpec("ssh://git@h/p.git", directory="tessera")),
        (
            "git+git@h:acme/p.git?dir=a/b/#release/2",
            GitSpec("git@h:acme/p.git", "release/2", "a/b"),
        ),
        ("git+file:///p.git?dir=.#0123abcd", GitSpec("file:///p.git", ref="0123abcd")),
    ],
)
def test_git_sources_name_url_ref_and_directory(text: str, spec: GitSpec) -> None:
    assert parse_git(text) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("git+", "a URL after git+"),
        ("git+#main", "a URL after git+"),
        ("git+-uhelper", "not a URL git can fetch"),
        ("git+file:///p .git", "not a URL git can fetch"),
        ("git+file:///p.git#", "after # comes a branch, a tag or a commit id"),
        ("git+file:///p.git#--upload-pack=x", "after # comes a branch"),
        ("git+file:///p.git#a..b", "after # comes a branch"),
        ("git+file:///p.git#a b", "after # comes a branch"),
        ("git+file:///p.git?ref=main", "the one option after ? is dir=<path>"),
        ("git+file:///p.git?dir=a&dir=b", "the one option after ? is dir=<path>"),
        ("git+file:///p.git?dir=", "dir= is a directory inside the repository"),
        ("git+file:///p.git?dir=/etc", "dir= is a directory inside the repository"),
        ("git+file:///p.git?dir=a/../..", "dir= is a directory inside the repository"),
    ],
)
def test_malformed_git_sources_are_refused(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=re.escape(message)):
        parse_git(text)


def test_a_plain_path_is_a_directory(tmp_path: Path) -> None:
    assert isinstance(open_source(str(tmp_path)), DirectorySource)


def test_passwords_are_never_shown() -> None:
    assert scrub("https://bot:s3cret@h/p.git") == "https://bot:***@h/p.git"
    assert scrub("https://ghp_token@h/p.git") == "https://***@h/p.git"
    assert scrub("ssh://git@h/p.git") == "ssh://git@h/p.git"  # a user name, no secret
    assert scrub("git@h:acme/p.git") == "git@h:acme/p.git"
    spec = parse_git("git+https://bot:s3cret@h/p.git#main")
    assert spec.shown == "git+https://bot:***@h/p.git#main"


def test_a_failed_fetch_names_the_url_without_its_password(sources: list[GitSource]) -> None:
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    source = follow(sources, f"git+http://bot:s3cret@127.0.0.1:{port}/p.git")
    with pytest.raises(SourceError) as raised:
        source.load_first()
    assert f"http://bot:***@127.0.0.1:{port}/p.git" in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_the_remote_head_is_loaded_and_followed(
    repository: Repository, sources: list[GitSource]
) -> None:
    first = repository.commit({"p.pol": OPEN})
    source = follow(sources, f"git+{repository.url}")
    loaded = source.load_first()
    assert loaded.bundle.version == content_version({"p.pol": OPEN})
    assert source.commit == first
    assert source.labels() == {"source": f"git+{repository.url}", "ref": "HEAD", "commit": first}
    assert source.load() is None  # nothing new
    assert source.load(force=True) is None  # the commit serving is never loaded again

    second = repository.commit({"p.pol": SHUT})
    loaded_again = source.load()
    assert loaded_again is not None
    assert loaded_again.bundle.version == content_version({"p.pol": SHUT})
    assert source.where == f"git+{repository.url} at commit {second[:12]}"


def test_a_broken_commit_is_tried_once_and_again_on_demand(
    repository: Repository, sources: list[GitSource]
) -> None:
    repository.commit({"p.pol": OPEN})
    source = follow(sources, f"git+{repository.url}#main")
    first = source.load_first()
    good = source.commit
    broken = repository.commit({"p.pol": BROKEN})
    with pytest.raises(PolicyError, match=r"p\.pol:1:19: error"):
        source.load()
    assert (source.commit, source.tried) == (good, broken)
    assert source.load() is None  # not tried again on every poll
    with pytest.raises(PolicyError):
        source.load(force=True)  # a poke tries it once more
    repository.commit({"p.pol": OPEN + "# fixed\n"})
    fixed = source.load()
    assert fixed is not None and fixed.bundle.version != first.bundle.version


def test_a_tag_and_a_directory_of_the_repository(
    repository: Repository, sources: list[GitSource]
) -> None:
    repository.commit({"tessera/p.pol": OPEN, "README.md": "not a policy\n", "other.pol": BROKEN})
    repository.tag("v1")
    repository.commit({"tessera/p.pol": SHUT})
    source = follow(sources, f"git+{repository.url}?dir=tessera#v1")
    assert source.load_first().bundle.version == content_version({"p.pol": OPEN})
    assert source.load() is None  # the tag did not move
    assert (source.labels() or {}).get("ref") == "v1"


def test_a_repositorys_resources_files_come_with_its_policies(
    repository: Repository, sources: list[GitSource]
) -> None:
    schema = "schema { resource record { owner: string } }\n"
    records = '[{"type": "record", "id": "1", "properties": {"owner": "alice"}}]'
    files = {"schema.pol": schema, "p.pol": OPEN, "data/records.resources.json": records}
    repository.commit(files)
    source = follow(sources, f"git+{repository.url}")
    loaded = source.load_first()
    assert loaded.bundle.version == content_version(files)
    assert loaded.bundle.catalog["record"]["1"]["owner"] == "alice"


def test_a_bundle_of_its_own_in_a_repository_stays_out_of_the_outer_one(
    repository: Repository, sources: list[GitSource]
) -> None:
    inner = {
        "examples/search/bundle.toml": "# a bundle of its own\n",
        "examples/search/p.pol": BROKEN,
        "examples/search/r.resources.json": "not even JSON",
    }
    repository.commit({"p.pol": OPEN, **inner})
    source = follow(sources, f"git+{repository.url}")
    assert source.load_first().bundle.version == content_version({"p.pol": OPEN})


def test_a_commit_id_whole_or_abbreviated(repository: Repository, sources: list[GitSource]) -> None:
    first = repository.commit({"p.pol": OPEN})
    repository.commit({"p.pol": SHUT})
    for ref in (first, first[:10]):
        source = follow(sources, f"git+{repository.url}#{ref}")
        assert source.load_first().bundle.version == content_version({"p.pol": OPEN})
        assert source.commit == first
        assert source.load() is None


@pytest.mark.parametrize(
    ("suffix", "message"),
    [
        ("#nope", r"cannot fetch nope from git\+file://.*: fatal: couldn't find remote ref nope"),
        ("#0badcafe", r"0badcafe names no branch, tag or commit of git\+file://"),
        ("?dir=missing", r"'missing' is not a directory of git\+file://.* at commit [0-9a-f]{12}"),
    ],
)
def test_what_cannot_be_had_is_named(
    repository: Repository, sources: list[GitSource], suffix: str, message: str
) -> None:
    repository.commit({"p.pol": OPEN})
    with pytest.raises(SourceError, match=message):
        follow(sources, f"git+{repository.url}{suffix}").load_first()


def test_a_repository_that_is_not_there(tmp_path: Path, sources: list[GitSource]) -> None:
    source = follow(sources, f"git+file://{tmp_path}/nothing.git")
    with pytest.raises(SourceError, match="does not appear to be a git repository"):
        source.load_first()


def test_a_fetch_that_hangs_is_cut_off(sources: list[GitSource]) -> None:
    """A server that accepts the connection and never answers: the fetch is killed once
    its timeout passes, and says so."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
        port = listener.getsockname()[1]
        source = GitSource(parse_git(f"git+http://127.0.0.1:{port}/p.git"), timeout=1.0)
        sources.append(source)
        with pytest.raises(SourceError, match="git fetch took longer than 1 s"):
            source.load_first()
        for connection in accepted:
            connection.close()


def test_closing_removes_the_clone(repository: Repository) -> None:
    repository.commit({"p.pol": OPEN})
    source = GitSource(parse_git(f"git+{repository.url}"))
    source.load_first()
    assert source.repository.is_dir()
    source.close()
    source.close()  # twice is fine
    assert not source.cache.exists()
    with pytest.raises(SourceError, match="closed"):
        source.load()


def test_the_reloader_follows_a_repository_and_shows_its_commit(
    repository: Repository, sources: list[GitSource]
) -> None:
    first = repository.commit({"p.pol": OPEN})
    source = follow(sources, f"git+{repository.url}")
    service = DecisionPoint(Engine(source.load_first().bundle))
    registry = CollectorRegistry()
    reloader = Reloader(source, service.use, interval=3600, registry=registry)

    def commit_shown(commit: str) -> float | None:
        labels = {"source": f"git+{repository.url}", "ref": "HEAD", "commit": commit}
        return registry.get_sample_value("tessera_policy_source_info", labels)

    assert commit_shown(first) == 1.0
    second = repository.commit({"p.pol": SHUT})
    assert asyncio.run(reloader.check()) is True
    assert not search(service.engine)
    assert commit_shown(second) == 1.0 and commit_shown(first) is None

    repository.commit({"p.pol": BROKEN})
    assert asyncio.run(reloader.check()) is False
    assert reloader.stats.failures == 1
    assert commit_shown(second) == 1.0  # the previous bundle keeps serving
    assert asyncio.run(reloader.check()) is None
