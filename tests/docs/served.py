"""``tessera serve`` as a newcomer runs it, for the documentation's examples.

``make serve`` runs ``tessera serve --policies policies`` on the embedded defaults: a
SQLite store under ``./var/``, the shipped policies, the bootstrap admin token printed at
start. Here it runs so in a fresh directory holding a copy of ``policies/`` (an example
may edit them; the checkout's stay as they are), on ports the system picks on 127.0.0.1,
which the examples' ``127.0.0.1:8080``, ``:50051`` and ``:9464`` are turned into. One
server serves every document, its directory emptied before each (:meth:`Served.reset`),
so each finds the names it registers free.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0  # seconds for the startup lines, on two busy cores
STOP_TIMEOUT = 10.0

_LINES = {
    "grpc": re.compile(r"serving tessera\.v1\.Authorizer on 127\.0\.0\.1:(\d+)"),
    "metrics": re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/metrics"),
    "http": re.compile(r"SCIM 2\.0 at http://127\.0\.0\.1:(\d+)/scim/v2"),
    "token": re.compile(r"bootstrap admin token \(random[^)]*\): (\S+)"),
    "loaded": re.compile(r"(\d+) rules from policies"),  # the last startup line
}
DOCUMENTED_PORTS = {"http": 8080, "grpc": 50051, "metrics": 9464}
SCIM_TYPES = ("Groups", "Users", "Agents")  # agents last: the PDP is watched for them
MAX_RESOURCES = 1_000  # per type, far more than the examples register
PAGE = 200  # SCIM's largest page here


@dataclass(frozen=True)
class Served:
    """A running ``tessera serve``: its directory, ports, admin token and log."""

    directory: Path
    ports: dict[str, int]
    token: str
    log: Path

    def localized(self, script: str) -> str:
        """An example with the documented ports replaced by this server's."""
        for name, documented in DOCUMENTED_PORTS.items():
            script = script.replace(f"127.0.0.1:{documented}", f"127.0.0.1:{self.ports[name]}")
        return script

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def reset(self) -> None:
        """Delete every group, user and agent over SCIM, and wait (bounded) until the
        PDP's directory, which follows the store within a second, has seen it: a document
        starts with an empty directory. What the trails recorded stays, as it does for a
        deleted agent."""
        last = None
        for kind in SCIM_TYPES:
            for _ in range(MAX_RESOURCES // PAGE):
                page = self._call("GET", f"/scim/v2/{kind}?count={PAGE}&attributes=id")
                if not page.get("Resources"):
                    break
                for resource in page["Resources"]:
                    self._call("DELETE", f"/scim/v2/{kind}/{resource['id']}")
                    last = resource["id"]
        if last is not None:  # the feed applies changes in order: the last one seen, all are
            self._await_unknown(last)

    def _await_unknown(self, agent: str) -> None:
        question = {
            "subject": {"type": "agent", "id": agent},
            "action": {"name": "tool.call"},
            "resource": {"type": "tool", "id": "search"},
            "options": {"tessera_explain": True},
        }
        for _ in range(200):
            answer = self._call("POST", "/access/v1/evaluation", question)
            if any("not in the directory" in reason for reason in answer["context"]["reasons"]):
                return
            time.sleep(0.05)
        raise AssertionError(f"the PDP's directory still knows the deleted agent {agent}")

    def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One request to the HTTP port, as the administrator; its JSON answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['http']}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # loopback only
            data = answer.read()
        return json.loads(data) if data else {}


def clean_env(home: Path) -> dict[str, str]:
    """The environment of the server and the session: the project's virtualenv first on
    the caller's PATH, a home of their own (no ``~/.curlrc``), nothing else of the
    caller's: no ``TESSERA_*`` settings, no proxies."""
    return {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": str(home),
        "PYTHONUNBUFFERED": "1",
    }


@contextmanager
def tessera_serve(directory: Path, home: Path) -> Iterator[Served]:
    """``tessera serve --policies policies`` in ``directory`` until the block ends."""
    shutil.copytree(ROOT / "policies", directory / "policies")
    log = home / "tessera-serve.log"
    ports = ("--port", "0", "--http-port", "0", "--metrics-port", "0", "--grace", "1")
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "tessera"), "serve", "--policies", "policies", *ports],
            cwd=directory,
            env=clean_env(home),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        found = _startup(process, log)
        token = found.pop("token")
        yield Served(directory, {k: int(v) for k, v in found.items()}, token, log)
    finally:
        _stop(process)


def _startup(process: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    """What the startup lines say, once they are all printed."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        text = log.read_text(errors="replace")
        found = {name: m.group(1) for name, line in _LINES.items() if (m := line.search(text))}
        if len(found) == len(_LINES):
            found.pop("loaded")
            return found
        time.sleep(0.05)
    raise AssertionError(f"tessera serve did not start:\n{log.read_text(errors='replace')}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
