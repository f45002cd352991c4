"""Where ``tessera serve`` takes its policies from: a directory, or a git repository.

The ``policies`` setting names one of two sources:

* a directory of ``.pol`` files (``policies``, ``/etc/tessera/policies``), checked by a
  cheap fingerprint of its files;
* a git repository, ``git+<url>[?dir=<path>][#<ref>]``: any URL git understands after
  ``git+`` (``git+https://git.example.com/acme/policies.git``,
  ``git+ssh://git@git.example.com/acme/policies.git``, ``git+file:///srv/policies.git``),
  then optionally ``?dir=`` and a directory of the repository relative to its root (the
  whole tree by default), then optionally ``#`` and a branch, a tag or a commit id (the
  remote's HEAD by default). For example
  ``git+https://git.example.com/acme/policies.git?dir=tessera#v1.4``.

Each serving process keeps a private bare clone of the repository in a temporary
directory it removes when it closes the source (or, failing that, when it exits). A look
fetches the ref; when the ref names a commit not tried before, that commit's policy files
are written into a fresh directory and loaded exactly as a policy directory is. A commit's
tree never changes, so an unchanged commit is never loaded again, and a commit that does
not load is not tried again on every poll (a forced look, on SIGHUP, tries it once more).

Every ``git`` call is an argument list (never a shell) with a timeout
(:data:`GIT_TIMEOUT`), no terminal to prompt on (``GIT_TERMINAL_PROMPT=0``, standard input
closed, ssh in batch mode unless ``GIT_SSH_COMMAND`` says otherwise), and whatever it
prints is shown with the URL's password replaced by ``***``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import unquote

from pdp.catalog import RESOURCES_SUFFIX
from pdp.errors import PdpError
from pdp.loader import BUNDLE_MARKER, SUFFIX, Loaded, bundle_files, load_directory

GIT_PREFIX = "git+"
GIT_TIMEOUT = 60.0  # seconds one git command may take (a fetch over a slow link included)
KILLED_TIMEOUT = 5.0  # seconds a killed git may take to go
SHORT = 12  # hex digits of a commit id shown to people
FETCHED = "refs/tessera/policies"  # where the private clone keeps the fetched commit
# Characters git refuses in a ref name (git-check-ref-format(1)), and whitespace.
REF_FORBIDDEN = frozenset(" \t~^:?*[\\")
HEX = frozenset("0123456789abcdef")

Fingerprint = tuple[tuple[str, int, int], ...]


class SourceError(PdpError):
    """Policies that cannot be had: a malformed source, or a repository, ref or directory
    that cannot be fetched; the message says which, with no password in it."""


class PolicySource(Protocol):
    """What a reloader follows: where the policies are and how to load what changed."""

    @property
    def where(self) -> str:
        """The policies now loaded, for people: a path, or a URL with ref and commit."""
        ...

    @property
    def trying(self) -> str:
        """The policies the last load tried, for people (as ``where``)."""
        ...

    def labels(self) -> dict[str, str] | None:
        """The ``tessera_policy_source_info`` labels, or None for a source without
        revisions."""
        ...

    def load_first(self) -> Loaded:
        """Load the policies as they are now. Raises SourceError or PolicyError."""
        ...

    def load(self, force: bool = False) -> Loaded | None:
        """Load what changed since the last load (with ``force``, look harder), or None
        when nothing did. Blocks: call it off the event loop. Raises SourceError or
        PolicyError."""
        ...

    def close(self) -> None:
        """Let go of what the source keeps on disk (idempotent)."""
        ...


def open_source(policies: str | Path) -> PolicySource:
    """The source the ``policies`` setting names (nothing is fetched yet). Raises
    SourceError when it is a malformed ``git+`` source, OSError when no private directory
    can be made for a repository's clone."""
    if isinstance(policies, str) and is_git(policies):
        return GitSource(parse_git(policies))
    return DirectorySource(policies)


def is_git(policies: str) -> bool:
    """Whether ``policies`` names a git repository rather than a directory (a directory
    whose name starts with ``git+`` can be given as ``./git+...``)."""
    return policies.startswith(GIT_PREFIX)


# -- a directory


def fingerprint(directory: Path) -> Fingerprint:
    """What changes when any file of the bundle (a policy, or a resource catalog's file)
    is added, removed or written."""
    out = []
    for path in bundle_files(directory):
        try:
            stat = path.stat()
        except OSError:
            continue  # removed between listing and stat: the next poll sees it
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


class DirectorySource:
    """A local policy directory, checked by the fingerprint of its files. A forced load
    reads it whether the fingerprint changed or not: a copy that keeps modification times
    and sizes (``rsync -t``, ``cp -p``) leaves the fingerprint as it was."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._seen: Fingerprint = fingerprint(self.directory)

    @property
    def where(self) -> str:
        return str(self.directory)

    @property
    def trying(self) -> str:
        return str(self.directory)

    def labels(self) -> dict[str, str] | None:
        return None

    def load_first(self) -> Loaded:
        self._seen = fingerprint(self.directory)
        return load_directory(self.directory)

    def load(self, force: bool = False) -> Loaded | None:
        current = fingerprint(self.directory)
        if current == self._seen and not force:
            return None
        self._seen = current
        return load_directory(self.directory)

    def close(self) -> None:
        pass


# -- a git repository


@dataclass(frozen=True)
class GitSpec:
    """A parsed ``git+<url>[?dir=<path>][#<ref>]``."""

    url: str
    ref: str = ""  # a branch, tag or commit id; "" for the remote's HEAD
    directory: str = ""  # relative to the repository's root; "" for the root

    @property
    def shown(self) -> str:
        """The source as configured, with the URL's password replaced by ``***``."""
        text = GIT_PREFIX + scrub(self.url)
        if self.directory:
            text += f"?dir={self.directory}"
        return text + (f"#{self.ref}" if self.ref else "")

    @property
    def fetched(self) -> str:
        """The ref as git fetches it."""
        return self.ref or "HEAD"


def parse_git(text: str) -> GitSpec:
    """The parts of a ``git+`` source; SourceError naming what is wrong."""
    rest = text.removeprefix(GIT_PREFIX)
    rest, hashed, ref = rest.partition("#")
    url, asked, query = rest.partition("?")
    where = f"{GIT_PREFIX}{scrub(url)}"
    if not url:
        raise SourceError(f"{where}: a URL after git+, e.g. git+https://host/policies.git")
    if url.startswith("-") or _unprintable(url):
        raise SourceError(f"{where}: not a URL git can fetch")
    if hashed and not _valid_ref(ref):
        raise SourceError(
            f"{where}#{ref}: after # comes a branch, a tag or a commit id (git-check-ref-format)"
        )
    directory = ""
    if asked:
        if not query.startswith("dir=") or "&" in query:
            raise SourceError(f"{where}?{query}: the one option after ? is dir=<path>")
        directory = _valid_directory(query.removeprefix("dir="), where)
    return GitSpec(url, ref, directory)


def _unprintable(text: str) -> bool:
    return any(ch.isspace() or not ch.isprintable() for ch in text)


def _valid_ref(ref: str) -> bool:
    """Whether git could take ``ref`` as a ref name or commit id (and never as an
    option)."""
    if not ref or ref.startswith(("-", "/", ".")) or ref.endswith(("/", ".", ".lock")):
        return False
    if ".." in ref or "@{" in ref or "//" in ref or ref == "@":
        return False
    return not (_unprintable(ref) or REF_FORBIDDEN.intersection(ref))


def _valid_directory(directory: str, where: str) -> str:
    """``directory`` as a path inside the repository, without a trailing slash."""
    path = PurePosixPath(directory)
    if not directory or path.is_absolute() or ".." in path.parts or _unprintable(directory):
        raise SourceError(
            f"{where}?dir={directory}: dir= is a directory inside the repository, relative "
            "to its root, e.g. ?dir=policies"
        )
    shown = path.as_posix()
    return "" if shown == "." else shown


def scrub(url: str) -> str:
    """``url`` fit to print: its password replaced by ``***``, and for HTTP(S) a user name
    with no password too (a token is often put there)."""
    if not _secret(url):
        return url
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, _, host = authority.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{host}{slash}{path}"


def _secret(url: str) -> str:
    """The part of ``url`` that must not be printed: its password, or the user name of an
    HTTP(S) URL that has no password; "" when there is none."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    if not sep or not at:
        return ""
    user, colon, password = userinfo.partition(":")
    if colon:
        return password
    return user if scheme.lower() in ("http", "https") else ""


class GitSource:
    """A branch, tag or commit of a git repository, followed through a private bare clone.

    ``commit`` is the commit of the bundle last loaded ("" before the first);
    ``tried`` the commit the last load tried, loaded or not."""

    def __init__(self, spec: GitSpec, timeout: float = GIT_TIMEOUT) -> None:
        self.spec = spec
        self.git = Git(spec.url, timeout)
        self.commit = ""
        self.tried = ""
        self.cache = Path(tempfile.mkdtemp(prefix="tessera-policies-"))
        self._remove = weakref.finalize(self, shutil.rmtree, self.cache, True)
        self.repository = self.cache / "repository.git"

    @property
    def where(self) -> str:
        return f"{self.spec.shown} at commit {self.commit[:SHORT]}"

    @property
    def trying(self) -> str:
        return f"{self.spec.shown} at commit {self.tried[:SHORT]}"

    def labels(self) -> dict[str, str] | None:
        if not self.commit:
            return None
        return {"source": self.spec.shown, "ref": self.spec.fetched, "commit": self.commit}

    def load_first(self) -> Loaded:
        loaded = self.load(force=True)
        assert loaded is not None  # nothing was loaded before: the first commit is new
        return loaded

    def load(self, force: bool = False) -> Loaded | None:
        commit = self.fetch()
        if commit == self.commit or (commit == self.tried and not force):
            return None
        self.tried = commit
        tree = self.checkout(commit)
        try:
            loaded = load_directory(tree)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        self.commit = commit
        return loaded

    def close(self) -> None:
        self.git.close()
        self._remove()

    def fetch(self) -> str:
        """Fetch the ref into the private clone (made on the first call): the commit it
        names now."""
        if not self.repository.exists():
            self._clone()
        ref = self.spec.ref
        is_id = 4 <= len(ref) <= 64 and HEX.issuperset(ref)
        if is_id and len(ref) >= 40 and (known := self._resolve(f"{ref}^{{commit}}")):
            return known  # a whole commit id, fetched before: it never moves
        refspec = f"+{self.spec.fetched}:{FETCHED}"
        try:
            self._git("fetch", "--quiet", "--no-tags", "--force", "origin", refspec)
        except SourceError as exc:
            if is_id:  # servers give out commits by name, not always by id
                return self._by_id(ref)
            raise self._unfetched(exc) from None
        commit = self._resolve(f"{FETCHED}^{{commit}}")
        if not commit:
            raise SourceError(f"{self.spec.fetched} of {self.spec.shown} is not a commit")
        return commit

    def _by_id(self, ref: str) -> str:
        """The commit a (possibly abbreviated) commit id names, looked for among every
        branch and tag."""
        try:
            self._git(
                *("fetch", "--quiet", "--force", "origin"),
                *("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"),
            )
        except SourceError as exc:
            raise self._unfetched(exc) from None
        commit = self._resolve(f"{ref}^{{commit}}")
        if not commit:
            raise SourceError(f"{ref} names no branch, tag or commit of {self.spec.shown}")
        return commit

    def _clone(self) -> None:
        """The private clone: empty, with the repository as its ``origin``."""
        try:
            self._git("init", "--quiet", "--bare", str(self.repository), git_dir=False)
            self._git("config", "remote.origin.url", self.spec.url)
        except SourceError:
            shutil.rmtree(self.repository, ignore_errors=True)  # made anew on the next look
            raise

    def _unfetched(self, exc: SourceError) -> SourceError:
        return SourceError(f"cannot fetch {self.spec.fetched} from {self.spec.shown}: {exc}")

    def _resolve(self, name: str) -> str:
        """The object id ``name`` names in the private clone, or ""."""
        try:
            return self._git("rev-parse", "--verify", "--quiet", name).decode().strip()
        except SourceError:
            return ""

    def checkout(self, commit: str) -> Path:
        """A fresh directory with the bundle's files of ``commit`` (below ``dir=``): its
        ``.pol`` files, its resource catalog's ``*.resources.json`` files, and the
        ``bundle.toml`` of each bundle below it."""
        directory = self.spec.directory
        tree = f"{commit}:{directory}" if directory else commit
        try:
            names = self._git("ls-tree", "-r", "-z", "--name-only", tree).split(b"\0")
        except SourceError:
            if not directory:
                raise
            raise SourceError(
                f"{directory!r} is not a directory of {self.spec.shown} at commit {commit[:SHORT]}"
            ) from None
        target = self.cache / commit[:SHORT]
        archive = b""
        if any(name.endswith(SUFFIX.encode()) for name in names):
            archive = self._git("archive", "--format=tar", tree, "--", *_wanted(names))
        try:
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            _extract(archive, target)
        except (OSError, tarfile.TarError) as exc:
            raise SourceError(
                f"cannot write the policies of commit {commit[:SHORT]}: {exc}"
            ) from None
        return target

    def _git(self, *args: str, git_dir: bool = True) -> bytes:
        where = ("--git-dir", str(self.repository)) if git_dir else ()
        return self.git.run(*where, *args)


def _wanted(names: Sequence[bytes]) -> list[str]:
    """The pathspecs of a bundle's files among a tree's ``names``: its policies, its
    resource catalog's files and the markers of the bundles below it (which the loader
    leaves out), each only when the tree has one: git refuses a pathspec that matches
    nothing."""
    wanted = [f":(glob)**/*{SUFFIX}"]
    if any(name.endswith(RESOURCES_SUFFIX.encode()) for name in names):
        wanted.append(f":(glob)**/*{RESOURCES_SUFFIX}")
    if any(PurePosixPath(name.decode(errors="replace")).name == BUNDLE_MARKER for name in names):
        wanted.append(f":(glob)**/{BUNDLE_MARKER}")
    return wanted


def _extract(archive: bytes, target: Path) -> None:
    """Write the regular files of a tar archive below ``target``; links and anything
    that would land outside it are left out."""
    if not archive:
        return
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if not member.isfile() or path.is_absolute() or ".." in path.parts:
                continue
            content = tar.extractfile(member)
            if content is None:
                continue
            destination = target.joinpath(*path.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(content.read())


# Variables that would point git at another repository than the one named.
REPOSITORY_VARIABLES = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
)


def git_environment() -> dict[str, str]:
    """The environment of every git call: no prompt for a password, messages in
    English (they are shown as they are), no repository but the one named."""
    env = {k: v for k, v in os.environ.items() if k not in REPOSITORY_VARIABLES}
    env.update(GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
    return env


class Git:
    """Runs the git commands of one source, one at a time: each an argument list (never
    a shell), bounded by ``timeout`` seconds, its messages shown with ``url``'s password
    scrubbed, and killed, with whatever it started (ssh, a remote helper), when it takes
    too long or the source closes."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False

    def run(self, *args: str) -> bytes:
        """What ``git ARGS`` prints; SourceError with git's message when it fails."""
        with self._lock:
            if self._closed:
                raise SourceError("the policy source is closed")
            process = self._process = _popen(["git", "-c", "protocol.ext.allow=never", *args])
        try:
            out, err = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            raise SourceError(
                f"git {_subcommand(args)} took longer than {self.timeout:g} s"
            ) from None
        finally:
            with self._lock:
                self._process = None
        if process.returncode != 0:
            lines = [line.strip() for line in err.decode(errors="replace").splitlines()]
            message = "; ".join(line for line in lines if line)
            raise SourceError(_scrubbed(message or f"exit status {process.returncode}", self.url))
        return out

    def close(self) -> None:
        """Kill the command running now, if any, and refuse any other."""
        with self._lock:
            self._closed = True
            process = self._process
        if process is not None:
            _kill_group(process)


def _popen(command: list[str]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=git_environment(),
            start_new_session=True,  # its own process group: killed as one
        )
    except OSError as exc:
        raise SourceError(f"cannot run git: {exc.strerror}") from None


def _subcommand(args: Sequence[str]) -> str:
    """The git command ``args`` run (``fetch``), past the options before it."""
    rest = list(args)
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] in ("--git-dir", "-c") else rest[1:]
    return rest[0] if rest else "git"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
        process.wait(timeout=KILLED_TIMEOUT)


def _scrubbed(message: str, url: str) -> str:
    """``message`` without ``url``'s secret, however git quoted the URL."""
    secret = _secret(url)
    if not secret:
        return message
    message = message.replace(url, scrub(url))
    for form in {secret, unquote(secret)}:
        message = message.replace(form, "***")
    return message
