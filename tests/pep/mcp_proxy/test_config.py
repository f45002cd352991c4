"""The ``[mcp_proxy]`` table and the ``tessera mcp-proxy`` command."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from pep.mcp_proxy.config import (
    ConfigError,
    ContextArgument,
    check_programs,
    config_from_table,
    load_config,
)

EXAMPLE = """
[mcp_proxy]
public_url = "https://mcp.example.com"
issuer = "https://id.example.com"
port = 0

[[mcp_proxy.upstream]]
name = "payments"
path = "/mcp/payments"
url = "http://127.0.0.1:9/mcp"
scopes = ["mcp:tools"]
tool_scopes = { "payments.transfer" = ["payments:transfer"] }
context = { amount = { argument = "amount", currency = "USD" }, note = "memo" }
credential = "static"
credential_env = "PAYMENTS_TOKEN"

[[mcp_proxy.upstream]]
name = "files"
path = "/mcp/files"
command = ["python", "-m", "files_server"]
"""


def table(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "public_url": "https://mcp.example.com",
        "issuer": "https://id.example.com",
        "upstream": [{"name": "a", "path": "/mcp", "url": "http://127.0.0.1:9/mcp"}],
    }
    return {**base, **changes}


def up(**fields: Any) -> dict[str, Any]:
    """An upstream table with these settings."""
    return {"name": "a", "path": "/a", "url": "http://h/", **fields}


def test_the_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "tessera.toml"
    path.write_text(EXAMPLE)
    config = load_config(path, env={"PAYMENTS_TOKEN": "secret"})
    payments, files = config.upstreams
    assert config.resource(payments) == "https://mcp.example.com/mcp/payments"
    assert payments.token == "secret"
    assert payments.context == {
        "amount": ContextArgument("amount", "USD"),
        "note": ContextArgument("memo"),
    }
    assert payments.tool_scopes == {"payments.transfer": ("payments:transfer",)}
    assert files.command == ("python", "-m", "files_server")
    assert config.jwks == "https://id.example.com/oauth/jwks"
    assert config.token_cache == 60.0
    assert config.body_timeout == 10.0


def test_the_body_timeout_is_a_setting() -> None:
    assert config_from_table(table(body_timeout=2.5), env={}).body_timeout == 2.5


def test_the_step_ups_the_issuer_can_do_are_a_setting_and_none_by_default() -> None:
    assert config_from_table(table(), env={}).step_up_acrs == ()
    config = config_from_table(table(step_up_acrs=["mfa", "hwk"]), env={})
    assert config.step_up_acrs == ("mfa", "hwk")


@pytest.mark.parametrize(
    "name",
    [
        "acr",
        "consents",
        "mcp_method",
        "mcp_server",
        "approved_amount",
        "approved_creditor",
        "approval_age",
    ],
)
def test_a_call_argument_cannot_supply_what_tessera_sets(name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_table(table(upstream=[up(context={name: "level"})]), env={})
    assert f"{name!r} is set by Tessera, not by a call's arguments" in str(raised.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"public_url": "https://mcp.example.com/base"}, "public_url must be an origin"),
        ({"issuer": "ftp://id"}, "mcp_proxy.issuer must be an http(s) URL"),
        ({"algorithms": ["HS256"]}, "'HS256' is not one of"),
        ({"algorithms": ["none"]}, "'none' is not one of"),
        ({"upstream": []}, "at least one [[mcp_proxy.upstream]]"),
        ({"colour": "blue"}, "unknown setting 'colour'"),
        ({"max_body": 0}, "max_body must be at least 1 byte"),
        ({"body_timeout": 0}, "mcp_proxy.body_timeout must be a positive number"),
        ({"body_timeout": "10s"}, "mcp_proxy.body_timeout must be a positive number"),
        ({"token_cache": -1}, "mcp_proxy.token_cache must be a number of seconds, 0 or more"),
        (
            {"upstream": [{"name": "a", "path": "/mcp"}]},
            "needs exactly one of url (Streamable HTTP) or command (stdio)",
        ),
        (
            {"upstream": [{"name": "a", "path": "mcp", "url": "http://h/"}]},
            "path must start with /",
        ),
        (
            {
                "upstream": [
                    {"name": "a", "path": "/a", "url": "http://h/"},
                    {"name": "a", "path": "/b", "url": "http://h/"},
                ]
            },
            "two upstreams have the name 'a'",
        ),
        (
            {"upstream": [{"name": "a", "path": "/a", "url": "http://h/", "credential": "x"}]},
            "credential must be one of",
        ),
        (
            {"upstream": [up(credential="static", credential_env="UNSET_VARIABLE")]},
            "UNSET_VARIABLE is not set",
        ),
        (
            {"upstream": [up(credential="client_credentials", audience="https://u/")]},
            "set mcp_proxy.client_id",
        ),
        (
            {"upstream": [up(context={"amount": {"argument": "amount", "currency": "usd"}})]},
            "currency must be an ISO 4217 code",
        ),
        ({"pdp_token": "static"}, "mcp_proxy.pdp_token must be one of none, client_credentials"),
        (
            {"pdp_token": "client_credentials"},
            'mcp_proxy.pdp_token = "client_credentials" gets the proxy\'s token from the issuer',
        ),
        ({"pdp_tls": "yes"}, "mcp_proxy.pdp_tls must be true or false"),
        ({"step_up_acrs": "mfa"}, "mcp_proxy.step_up_acrs must be a list of strings"),
        ({"step_up_acrs": [""]}, "mcp_proxy.step_up_acrs must be a list of strings"),
        ({"pdp_ca": "/nonexistent/ca.pem"}, "mcp_proxy.pdp_ca: cannot read /nonexistent/ca.pem"),
        (
            {"client_cert_header": "X-Client-Cert", "client_cert_proxies": []},
            "mcp_proxy.client_cert_proxies: name the proxies",
        ),
        ({"client_cert_proxies": "10.0.0.1"}, "client_cert_proxies must be a list of strings"),
    ],
)
def test_a_configuration_that_cannot_work_is_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_table(table(**changes), env={})
    assert message in str(raised.value)


def test_the_client_certificate_comes_from_a_header_of_believed_proxies() -> None:
    config = config_from_table(table(), env={})
    assert (config.client_cert_header, config.client_cert_proxies) == ("", ("127.0.0.1", "::1"))
    config = config_from_table(
        table(client_cert_header="X-Client-Cert", client_cert_proxies=["10.0.0.7"]), env={}
    )
    assert (config.client_cert_header, config.client_cert_proxies) == (
        "x-client-cert",
        ("10.0.0.7",),
    )


def test_the_pdp_credentials_are_settings_checked_when_read(tmp_path: Path) -> None:
    """A client certificate needs its key; a file that is not PEM is named; a complete
    set is kept as given."""
    pem = tmp_path / "a.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n")
    (tmp_path / "a.txt").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"pdp_cert and mcp_proxy\.pdp_key go together"):
        config_from_table(table(pdp_cert=str(pem)), env={})
    with pytest.raises(ConfigError, match=r"mcp_proxy.pdp_key: .*a.txt is not a PEM file"):
        config_from_table(table(pdp_cert=str(pem), pdp_key=str(tmp_path / "a.txt")), env={})
    env = {"TESSERA_MCP_PROXY_SECRET": "s3cret"}
    settings = {"pdp_ca": str(pem), "pdp_cert": str(pem), "pdp_key": str(pem)}
    config = config_from_table(
        table(pdp_token="client_credentials", client_id="proxy", pdp_tls=True, **settings), env
    )
    assert (config.pdp_token, config.pdp_tls, config.pdp_ca) == (
        "client_credentials",
        True,
        str(pem),
    )
    assert (config.pdp_cert, config.pdp_key) == (str(pem), str(pem))
    assert config_from_table(table(), env={}).pdp_token == "none"


POLICIES = Path(__file__).resolve().parents[3] / "policies"


def serve_table(tmp_path: Path, policies: Path = POLICIES) -> str:
    return f'\n[serve]\npolicies = "{policies}"\nstore = "sqlite:///{tmp_path}/t.db"\n'


def test_local_decisions_take_the_policies_and_store_of_the_serve_table(tmp_path: Path) -> None:
    path = tmp_path / "tessera.toml"
    path.write_text(EXAMPLE + serve_table(tmp_path))
    config = load_config(path, env={"PAYMENTS_TOKEN": "secret"})
    assert (config.decisions, config.policies) == ("pdp", str(POLICIES))
    assert config.store == f"sqlite:///{tmp_path}/t.db"
    assert config.audit == "async"
    path.write_text(EXAMPLE + serve_table(tmp_path) + 'audit = "sync"\n')
    assert load_config(path, env={"PAYMENTS_TOKEN": "secret"}).audit == "sync"
    own = EXAMPLE.replace("[mcp_proxy]\n", '[mcp_proxy]\ndecisions = "local"\nstore = "x://"\n')
    path.write_text(own + serve_table(tmp_path))
    config = load_config(path, env={"PAYMENTS_TOKEN": "secret"})
    assert (config.decisions, config.store) == ("local", "x://")
    with pytest.raises(ConfigError, match=r"mcp_proxy\.decisions must be one of pdp, local"):
        config_from_table(table(decisions="remote"), env={})
    with pytest.raises(ConfigError, match=r"mcp_proxy\.audit must be one of async, sync, off"):
        config_from_table(table(audit="later"), env={})


@pytest.mark.parametrize("decisions", ["pdp", "local"])
def test_the_command_serves_until_sigterm(tmp_path: Path, decisions: str) -> None:
    path = tmp_path / "tessera.toml"
    path.write_text(EXAMPLE + serve_table(tmp_path))
    exe = Path(sys.executable).parent / "tessera"
    flags = ["--port", "0", "--decisions", decisions, "--metrics-port", "0"]
    process = subprocess.Popen(
        [str(exe), "mcp-proxy", "--config", str(path), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PAYMENTS_TOKEN": "secret", "PATH": str(exe.parent)},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("tessera: MCP proxy on http://127.0.0.1:")
        assert "for https://mcp.example.com" in first
        second = process.stdout.readline()
        assert second.startswith("tessera: metrics on http://127.0.0.1:")
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines == [
            "tessera:   /mcp/payments -> http://127.0.0.1:9/mcp (payments)\n",
            "tessera:   /mcp/files -> python -m files_server (files)\n",
        ]
        port = first.split("http://127.0.0.1:")[1].split()[0]
        metadata = httpx.get(
            f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp/payments"
        )
        assert metadata.json()["resource"] == "https://mcp.example.com/mcp/payments"
        refused = httpx.post(f"http://127.0.0.1:{port}/mcp/payments", json={})
        assert refused.status_code == 401
        metrics = httpx.get(second.split(" on ")[1].strip()).text
        assert 'tessera_mcp_proxy_responses_total{status="401",upstream="payments"} 1.0' in metrics
        # deciding locally, it follows the PDP's store (here a file it creates)
        assert (tmp_path / "t.db").exists() == (decisions == "local")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_the_command_refuses_a_bad_configuration(tmp_path: Path) -> None:
    path = tmp_path / "tessera.toml"
    path.write_text("[mcp_proxy]\npublic_url = 'https://x'\n")
    exe = Path(sys.executable).parent / "tessera"
    done = subprocess.run(
        [str(exe), "mcp-proxy", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == "tessera mcp-proxy: mcp_proxy.issuer must be a non-empty string\n"


STDIO_ONLY = """
[mcp_proxy]
public_url = "https://mcp.example.com"
issuer = "https://id.example.com"
port = 0

[[mcp_proxy.upstream]]
name = "files"
path = "/mcp/files"
command = [{program}, "--root", "/srv"]
"""


@pytest.mark.parametrize(
    ("program", "why"),
    [
        ("no-such-mcp-server", "'no-such-mcp-server' is not found on PATH"),
        ("{tmp}/bin/server", "{tmp}/bin/server does not exist"),
        ("{tmp}/server.py", "{tmp}/server.py is not executable"),
    ],
    ids=["not on PATH", "no such file", "not executable"],
)
def test_the_command_refuses_a_stdio_upstream_it_cannot_start(
    tmp_path: Path, program: str, why: str
) -> None:
    """A mistyped command must stop the start, not fail every call to that upstream."""
    (tmp_path / "server.py").write_text("print('an MCP server')\n")  # mode 644
    program, why = program.format(tmp=tmp_path), why.format(tmp=tmp_path)
    path = tmp_path / "tessera.toml"
    path.write_text(STDIO_ONLY.format(program=json.dumps(program)))
    exe = Path(sys.executable).parent / "tessera"
    done = subprocess.run(
        [str(exe), "mcp-proxy", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": str(exe.parent)},
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"tessera mcp-proxy: upstream 'files': cannot start its command: {why}\n"


def test_a_stdio_upstream_named_by_its_path_or_on_path_passes_the_start_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # where python is
    server = tmp_path / "server"
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)
    for program in (str(server), "python"):
        config = config_from_table(
            table(upstream=[{"name": "a", "path": "/a", "command": [program]}]), env={}
        )
        check_programs(config)  # raises ConfigError when it would refuse


def test_the_command_refuses_policies_that_do_not_load(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "broken.pol").write_text("permit\n")
    path = tmp_path / "tessera.toml"
    path.write_text(EXAMPLE + serve_table(tmp_path, policies))
    exe = Path(sys.executable).parent / "tessera"
    done = subprocess.run(
        [str(exe), "mcp-proxy", "--config", str(path), "--decisions", "local"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PAYMENTS_TOKEN": "secret", "PATH": str(exe.parent)},
    )
    assert done.returncode == 2
    assert "broken.pol:" in done.stderr
    assert done.stderr.endswith("tessera mcp-proxy: the policies do not load; nothing is served\n")
    assert not (tmp_path / "t.db").exists()  # nothing was opened


def test_the_public_url_and_origins_are_kept_as_browsers_send_origins() -> None:
    """RFC 6454: lower-case scheme and host, no default port; ``aud`` is built on it."""
    config = config_from_table(
        table(
            public_url="HTTPS://MCP.Example.com:443/",
            allowed_origins=["http://App.Example:80", "vscode-webview://1a2B3c"],
        ),
        env={},
    )
    assert config.public_url == "https://mcp.example.com"
    # an editor's webview keeps its host as given: only http(s) origins have a canonical form
    assert config.allowed_origins == ("http://app.example", "vscode-webview://1a2B3c")
    with pytest.raises(ConfigError, match="is not an origin"):
        config_from_table(table(allowed_origins=["app.example"]), env={})
    kept = config_from_table(table(public_url="http://[::1]:8090"), env={})
    assert kept.public_url == "http://[::1]:8090"
