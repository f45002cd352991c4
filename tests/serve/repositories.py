"""Policy repositories for tests: a bare repository in a temporary directory, and a
working clone that commits and pushes to it, reached over ``file://`` URLs only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

AUTHOR = {
    "GIT_AUTHOR_NAME": "Policy Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Policy Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
}
TIMEOUT = 30.0  # seconds one git command of a test may take

OPEN = 'permit open call tool "search"\n'  # search allowed
SHUT = 'forbid shut call tool "search"\n'  # search denied
BROKEN = "forbid broken when\n"  # does not parse


def git(*args: str, cwd: Path | None = None) -> str:
    """What ``git ARGS`` prints; fails the test when git fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_") or k == "GIT_EXEC_PATH"}
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env={**env, **AUTHOR, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


class Repository:
    """A bare repository whose HEAD is ``main``, and a working clone that pushes to it."""

    def __init__(self, place: Path) -> None:
        self.bare = place / "policies.git"
        self.work = place / "work"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git("init", "--quiet", "--initial-branch=main", str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def commit(self, files: dict[str, str], branch: str = "main") -> str:
        """Write ``files`` (path: text), commit every change on ``branch`` and push it: the
        commit's id."""
        for name, text in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", f"policies: {sorted(files)}", cwd=self.work)
        git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str) -> None:
        """An annotated tag on the last commit, pushed."""
        git("tag", "--annotate", "-m", name, name, cwd=self.work)
        git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=self.work)
