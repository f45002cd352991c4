"""Hot reload: a changed directory is swapped in; a broken one never replaces a good one."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from pdp.decide import DecisionPoint
from pdp.engine import Engine
from pdp.loader import load_directory
from pdp.model import Request
from pdp.serve.reload import Reloader

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def search(engine: Engine) -> bool:
    req = Request.build(
        agent={"id": "a", "status": "active"},
        action="tool.call",
        resource_type="tool",
        resource_id="search",
    )
    return engine.decide(req).allow


def test_changes_are_loaded_and_broken_bundles_rejected(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "p.pol").write_text('permit open call tool "search"\n')
    service = DecisionPoint(Engine(load_directory(directory).bundle))
    reloader = Reloader(directory, service.use, interval=60)
    first = service.engine.version

    async def scenario() -> None:
        assert await reloader.check() is None  # nothing changed
        (directory / "p.pol").write_text('forbid closed call tool "search"\n')
        assert await reloader.check() is True
        assert service.engine.version != first
        assert not search(service.engine)
        good = service.engine.version

        (directory / "p.pol").write_text("forbid broken when\n")
        assert await reloader.check() is False
        assert service.engine.version == good  # the previous bundle keeps serving
        assert reloader.stats.failures == 1
        assert "p.pol:1:19: error: unexpected end of file" in reloader.stats.last_error

        (directory / "p.pol").write_text('permit open call tool "search"\n')
        assert await reloader.check() is True
        assert search(service.engine)
        assert reloader.stats.successes == 2

    asyncio.run(scenario())


def test_the_watcher_notices_on_its_own(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    shutil.copytree(POLICIES, directory)
    service = DecisionPoint(Engine(load_directory(directory).bundle))
    before = service.engine.version

    async def scenario() -> None:
        reloader = Reloader(directory, service.use, interval=0.02)
        reloader.start()
        try:
            (directory / "extra.pol").write_text('permit extra call tool "extra"\n')
            for _ in range(250):  # at most 5 s
                if service.engine.version != before:
                    break
                await asyncio.sleep(0.02)
        finally:
            await reloader.stop()

    asyncio.run(scenario())
    assert service.engine.version != before
    assert "extra" in [r.id for r in service.engine.bundle.rules]


def test_limits_carry_over_a_reload(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "p.pol").write_text('permit once call tool "search" limit 1 calls per 1h\n')
    service = DecisionPoint(Engine(load_directory(directory).bundle, clock=lambda: 10.0))
    assert search(service.engine)
    reloader = Reloader(directory, service.use)
    (directory / "p.pol").write_text(
        'permit once call tool "search" limit 1 calls per 1h\n# a comment\n'
    )
    assert asyncio.run(reloader.check()) is True
    assert not search(service.engine)


def test_a_new_bundle_empties_the_decision_cache(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "p.pol").write_text('permit open call tool "search"\n')
    loaded = load_directory(directory)
    service = DecisionPoint(Engine(loaded.bundle))
    assert service.cache is not None
    service.cache[b"a request"] = service.engine.decide(
        Request.build(
            agent={"id": "a"}, action="tool.call", resource_type="tool", resource_id="search"
        )
    )
    service.use(loaded)
    assert len(service.cache) == 0


def rewrite_unseen(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` of the same size, keeping its modification time: a
    change the directory's fingerprint does not show (a copy that keeps times does this)."""
    stat = path.stat()
    assert len(text.encode()) == stat.st_size
    staged = path.parent.parent / path.name  # written outside, then renamed in
    staged.write_text(text)
    os.utime(staged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(staged, path)


def test_reload_now_loads_a_change_the_fingerprint_misses(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "p.pol").write_text('permit open call tool "search"\n')
    service = DecisionPoint(Engine(load_directory(directory).bundle))
    before = service.engine.version

    async def scenario() -> None:
        reloader = Reloader(directory, service.use, interval=3600)
        reloader.start()
        try:
            rewrite_unseen(directory / "p.pol", 'forbid shut call tool "search"\n')
            assert await reloader.check() is None  # the poll cannot tell
            reloader.reload_now()
            for _ in range(250):  # at most 5 s
                if service.engine.version != before:
                    break
                await asyncio.sleep(0.02)
        finally:
            await reloader.stop()

    asyncio.run(scenario())
    assert service.engine.version != before
    assert not search(service.engine)
