"""Take the console's screenshots in docs/images/ (PNG, 1200×800).

Starts ``tessera serve`` on loopback with the shipped policies and a fresh SQLite store,
adds a few agents through SCIM, has them ask for decisions over gRPC (a burst of denials
makes the anomaly detector raise an alert), signs in to the console with the bootstrap
admin token in the system Chromium (Playwright) and photographs the main pages.

    .venv/bin/python docs/images/shoot.py
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from issuer.agents import AGENT_EXTENSION, AGENT_SCHEMA  # noqa: E402
from pdp.serve.proto import authorizer_pb2 as pb  # noqa: E402
from pdp.serve.proto import authorizer_pb2_grpc as pb_grpc  # noqa: E402

HERE = Path(__file__).resolve().parent
TOKEN = "screenshot-admin-token-0123456789"
SIZE = {"width": 1200, "height": 800}
AGENTS = [  # name, owner, purpose, risk
    ("ledger-bot", "finance", "month-end reconciliation", "low"),
    ("support-triage", "support", "answers customer tickets", "medium"),
    ("release-captain", "platform", "ships releases", "high"),
    ("probe-bot", "security", "probes for weak spots", "critical"),
]
TOOLS = ("search", "read_file", "send_email", "transfer_funds")


@contextmanager
def serving(tmp: Path) -> Iterator[tuple[str, int]]:
    """``tessera serve`` on a fresh store: its HTTP base and gRPC port."""
    command = [
        *(str(Path(sys.executable).parent / "tessera"), "serve"),
        *("--policies", "policies", "--store", f"sqlite:///{tmp}/tessera.db"),
        *("--port", "0", "--http-port", "0", "--metrics-port", "-1", "--grace", "1"),
        f"--admin-token={TOKEN}",
    ]
    out = tmp / "serve.out"
    with out.open("wb") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        for _ in range(600):  # 30 s at most
            text = out.read_text(errors="replace")
            grpc_port = re.search(r"Authorizer on 127\.0\.0\.1:(\d+)", text)
            http = re.search(r"SCIM 2\.0 at (http://127\.0\.0\.1:\d+)/scim/v2", text)
            if grpc_port and http:
                break
            if process.poll() is not None:
                raise SystemExit(f"tessera serve exited:\n{text}")
            time.sleep(0.05)
        else:
            raise SystemExit("tessera serve did not print its ports in 30 s")
        yield http.group(1), int(grpc_port.group(1))
    finally:
        process.terminate()
        process.wait(timeout=15)


def add_agents(http: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=f"{http}/scim/v2", timeout=10) as client:
        client.headers["Authorization"] = f"Bearer {TOKEN}"
        for name, owner, purpose, risk in AGENTS:
            extension = {"owner": owner, "purpose": purpose, "riskLevel": risk}
            body = {"schemas": [AGENT_SCHEMA, AGENT_EXTENSION], "name": name}
            created = client.post("/Agents", json={**body, AGENT_EXTENSION: extension})
            created.raise_for_status()
            ids.append(str(created.json()["id"]))
    return ids


def decide(grpc_port: int, ids: list[str]) -> None:
    """Some decisions per agent; the critical agent's burst of denials raises an alert."""
    time.sleep(1.5)  # the change feed brings the agents to the decision point
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = pb_grpc.AuthorizerStub(channel)
        for n in range(12):
            agent = ids[n % 3]
            tool = TOOLS[n % len(TOOLS)]
            stub.Authorize(
                pb.AuthorizeRequest(
                    agent=pb.Agent(id=agent),
                    action="tool.call",
                    resource=pb.Resource(type="tool", id=tool),
                )
            )
        for _ in range(12):
            stub.Authorize(
                pb.AuthorizeRequest(
                    agent=pb.Agent(id=ids[3]),
                    action="tool.call",
                    resource=pb.Resource(type="tool", id="search"),
                )
            )
    time.sleep(2)  # the audit writer and the anomaly detector catch up


def shoot(page: Page, http: str, ids: list[str]) -> None:
    page.goto(f"{http}/console/agents")
    page.click("details summary")
    page.fill("input[name=token]", TOKEN)
    page.click("#signin-token")
    page.wait_for_url(f"{http}/console/agents")
    page.screenshot(path=str(HERE / "console-agents.png"))
    page.goto(f"{http}/console/agents/{ids[0]}")
    page.screenshot(path=str(HERE / "console-agent.png"))
    page.goto(f"{http}/console/decisions?agent={ids[0]}")  # one agent's: a smaller PNG
    page.screenshot(path=str(HERE / "console-decisions.png"))
    page.goto(f"{http}/console/policies")
    page.fill("#whatif input[name=agent]", AGENTS[0][0])
    page.fill("#whatif input[name=tool]", "search")
    page.click("#decide")
    page.locator("#whatif-decision").scroll_into_view_if_needed()
    page.screenshot(path=str(HERE / "console-policies.png"))
    page.goto(f"{http}/console/audit")
    page.screenshot(path=str(HERE / "console-audit.png"))
    page.goto(f"{http}/console/alerts")
    page.screenshot(path=str(HERE / "console-alerts.png"))


def main() -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Chromium is not installed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as raw, serving(Path(raw)) as (http, grpc_port):
        ids = add_agents(http)
        decide(grpc_port, ids)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                shoot(browser.new_page(viewport=SIZE), http, ids)
            finally:
                browser.close()
    for png in sorted(HERE.glob("console-*.png")):
        print(f"{png.relative_to(ROOT)}: {png.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
