"""Every shell example of README.md and docs/*.md runs, as written, against a live server.

Each document is read as a newcomer follows it: ``make serve`` running (here
``tessera serve --policies policies`` on loopback, one for all documents, its directory
emptied for each, see :mod:`tests.docs.served`), and one shell in its directory with the
project's virtualenv first on the PATH and ``TOKEN`` set to the bootstrap admin token it
printed (the README says ``export TOKEN=…``). The document's ``sh`` blocks run in that
shell in order (:mod:`tests.docs.shell`: ``set -euo pipefail``, curl failing on an HTTP
error, a deadline per block); a block that fails names the document, the block's line
and what it printed. ``json`` and ``text`` blocks marked as output are compared with what
the block before printed. How to mark a block that cannot run here, and why, is in
:mod:`tests.docs.examples`; every such block is listed at the end of the run.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.docs.examples import Block, blocks, fits
from tests.docs.served import ROOT, Served, clean_env, tessera_serve
from tests.docs.shell import PROLOGUE, Ran, Session

DOCUMENTS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
PROGRAMS = ("bash", "curl", "jq", "openssl")  # what the examples use besides Tessera
BLOCK_TIMEOUT = 30.0  # seconds; an example is a few requests

NOT_RUN = pytest.StashKey[list[str]]()  # "file:line: reason" of every block not run


def why_not_run(block: Block) -> str | None:
    """Why a runnable block is not run here, or None."""
    if block.marker.not_run is not None:
        return block.marker.not_run
    if block.marker.needs is not None and shutil.which(block.marker.needs) is None:
        return f"needs {block.marker.needs}, which is not installed here"
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One ``tessera serve`` for every document (each starts in an empty directory)."""
    home = tmp_path_factory.mktemp("home")
    with tessera_serve(tmp_path_factory.mktemp("work"), home) as running:
        yield running


@pytest.mark.parametrize("document", DOCUMENTS)
def test_examples_run(document: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    found = blocks(ROOT / document, document)
    skipped = request.config.stash.setdefault(NOT_RUN, [])
    for block in found:
        reason = why_not_run(block) if block.runs else None
        if reason is not None:
            skipped.append(f"{block.where}: {reason}")
    if not any(b.runs and why_not_run(b) is None for b in found):
        return
    missing = [program for program in PROGRAMS if shutil.which(program) is None]
    if missing:
        pytest.skip(f"the examples need {', '.join(missing)}, which this machine lacks")
    served: Served = request.getfixturevalue("served")  # started for the first document
    served.reset()
    (tmp_path / "scripts").mkdir()
    env = {**clean_env(tmp_path), "TOKEN": served.token}
    session = Session(served.directory, tmp_path / "scripts", env, served.localized(PROLOGUE))
    try:
        run_document(found, session, served)
    finally:
        session.close()


def run_document(found: list[Block], session: Session, served: Served) -> None:
    """Run the blocks in order, failing at the first that fails or prints otherwise than
    documented."""
    last: tuple[Block, Ran | None] | None = None  # the latest runnable block, run or not
    for block in found:
        if block.marker.output:
            assert last is not None, f"{block.where}: an output with no example before it"
            check_output(replace(block, text=served.localized(block.text)), *last)
        if not block.runs:
            continue
        if why_not_run(block) is not None:
            last = (block, None)
            continue
        if block.marker.setup:
            ran = session.run(served.localized(block.marker.setup), BLOCK_TIMEOUT)
            if not ran.ok:
                fail(block, ran, served, "its setup (in the marker before it)")
        ran = session.run(served.localized(block.text), BLOCK_TIMEOUT)
        if not ran.ok:
            fail(block, ran, served, "the example")
        last = (block, ran)


def check_output(output: Block, example: Block, ran: Ran | None) -> None:
    """The documented output matches what the example printed (when it was run)."""
    if ran is None:
        return
    if not fits(output, ran.output):
        pytest.fail(
            f"{output.where}: the output documented for {example.where} is not what it "
            f"printed:\n{output.text}--- it printed:\n{ran.output}",
            pytrace=False,
        )


def fail(block: Block, ran: Ran, served: Served, what: str) -> None:
    pytest.fail(
        f"{block.where}: {what} failed ({ran.why}):\n{block.marker.setup}{block.text}"
        f"--- its output:\n{ran.output}\n--- tessera serve's log, last lines:\n"
        f"{served.log_tail()}",
        pytrace=False,
    )
