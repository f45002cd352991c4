"""One bash session that runs the examples of one document in order.

The examples of a file share the session, so one may set ``AGENT=…`` and a later one use
it. Each runs with ``set -euo pipefail``: the first command that fails ends the session,
and its example fails. ``curl`` in the session fails on an HTTP error status (4xx, 5xx),
as ``curl --fail-with-body`` does, unless the example asks for the status itself
(``-w``/``--write-out``, ``-i``/``--include``) or chose with ``-f``/``--fail…``: an
example that shows an error prints its status that way. Setup markers may call
``await_agent ID``: it waits (bounded) until the PDP's directory, which follows the store
within a second, knows the agent. Every example has a deadline; the session is its own
process group, ended whole.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

READ_CHUNK = 65536

# Sourced once when the session starts; 127.0.0.1:8080 is the documented HTTP port.
PROLOGUE = r"""
set -euo pipefail
shopt -s inherit_errexit
curl() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      -w*|--write-out*|-i|--include|-f|--fail|--fail-with-body) command curl "$@"; return;;
      -[!-]*[iwf]*) command curl "$@"; return;;  # -si, -sw '…', -sf
    esac
  done
  command curl --fail-with-body "$@"
}
await_agent() {
  local attempt unknown='"decided_by":\["directory"\]'
  for attempt in $(seq 200); do
    command curl -s http://127.0.0.1:8080/access/v1/evaluation -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' -d @- <<EOF | grep -q "$unknown" || return 0
{"subject": {"type": "agent", "id": "$1"}, "action": {"name": "tool.call"},
 "resource": {"type": "tool", "id": "search"}, "options": {"tessera_explain": true}}
EOF
    sleep 0.05
  done
  echo "the PDP's directory never knew the agent $1" >&2
  return 1
}
"""


@dataclass(frozen=True)
class Ran:
    """What one example did: whether it succeeded, what it printed (standard output and
    error, interleaved), and why it failed."""

    ok: bool
    output: str
    why: str = ""


class Session:
    """``bash`` in ``cwd`` with exactly ``env``; :meth:`run` runs one example in it."""

    def __init__(
        self, cwd: Path, scripts: Path, env: dict[str, str], prologue: str = PROLOGUE
    ) -> None:
        self.scripts = scripts  # where each example is written to be sourced
        self._done = f"@@example-done-{uuid.uuid4().hex}@@"
        self._count = 0
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, to end it whole
        )
        path = scripts / "prologue.sh"
        path.write_text(prologue)
        self._send(f"source {path}\n")

    def run(self, script: str, timeout: float) -> Ran:
        """Source ``script`` in the session; wait at most ``timeout`` seconds for it."""
        self._count += 1
        path = self.scripts / f"example-{self._count}.sh"
        path.write_text(script)
        try:
            # Standard input is not the session's: an example cannot read the next one.
            self._send(f"source {path} </dev/null\nprintf '\\n%s\\n' '{self._done}'\n")
        except BrokenPipeError:
            return Ran(False, "", "the session had already ended")
        return self._collect(timeout)

    def _send(self, text: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(text.encode())
        self._process.stdin.flush()

    def _collect(self, timeout: float) -> Ran:
        """Read until the example's end mark, the session's end, or the deadline."""
        assert self._process.stdout is not None
        stream = self._process.stdout.fileno()
        received = b""
        mark = f"\n{self._done}\n".encode()
        deadline = time.monotonic() + timeout
        while mark not in received:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                return Ran(False, received.decode(errors="replace"), f"timed out after {timeout} s")
            ready, _, _ = select.select([stream], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(stream, READ_CHUNK)
            if not chunk:
                code = self._process.wait(timeout=5)
                return Ran(False, received.decode(errors="replace"), f"exited {code}")
            received += chunk
        return Ran(True, received.split(mark, 1)[0].decode(errors="replace"))

    def close(self) -> None:
        """End the session and whatever it started."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._process.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=5)
        if self._process.stdout is not None:
            self._process.stdout.close()
