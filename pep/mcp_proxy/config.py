"""How ``tessera mcp-proxy`` is configured: the ``[mcp_proxy]`` table of ``tessera.toml``.

    [mcp_proxy]
    public_url = "https://mcp.example.com"   # this proxy as clients reach it (no path)
    issuer = "https://id.example.com"        # the token issuer whose tokens are accepted
    pdp = "127.0.0.1:50051"                  # the gRPC decision service
    pdp_token = "none"                       # client_credentials: send the PDP the proxy's
                                             # own tessera:decide token (client_id's)
    pdp_tls = false                          # call the PDP over TLS
    pdp_ca = ""                              # PEM roots the PDP's certificate is checked
                                             # against (empty: the system's)
    pdp_cert = ""                            # PEM client certificate and its key, for a
    pdp_key = ""                             # PDP with tls_client_ca (mutual TLS)
    host = "127.0.0.1"
    port = 8090
    algorithms = ["ES256", "RS256", "EdDSA"] # JWT signatures accepted; never none or HMAC
    allowed_origins = []                     # browser Origins allowed besides public_url
    max_body = 1048576                       # bytes per request body
    body_timeout = 10.0                      # seconds for a request body to arrive whole
    client_id = ""                           # the proxy's own client at the issuer (for
    client_secret_env = "TESSERA_MCP_PROXY_SECRET"  # introspection and upstream tokens)
    consent_client_id = ""                   # a public client whose consent page users see
    step_up_acrs = []                        # acr values the issuer can raise a user's
                                             # login to (what step_up obligations a user
                                             # can meet; see pep.mcp_proxy.consent)
    api_keys = false                         # accept Tessera API keys as bearer tokens
    decision_cache = 0.0                     # seconds an answer the PDP marks cacheable is
                                             # reused (0: every call decided and audited)
    token_cache = 60.0                       # seconds a verified JWT is kept (see below)
    decisions = "pdp"                        # pdp: ask the PDP over gRPC for each call;
                                             # local: decide in this process (below)
    policies = "policies"                    # local: the PDP's policy directory, followed
    store = "sqlite:///var/tessera.db"       # local: the PDP's store (directory, audit)
    reload_interval = 1.0                    # local: seconds between policy checks
    audit = "async"                          # local: async | sync | off, as [serve] audit
    metrics_port = -1                        # Prometheus /metrics on host:port (-1: off)
    client_cert_header = ""                  # behind a TLS-terminating proxy: the header
    client_cert_proxies = ["127.0.0.1", "::1"]  # with the client certificate (URL-encoded
                                             # PEM), believed from these addresses only;
                                             # what certificate-bound tokens are checked by

    [[mcp_proxy.upstream]]
    name = "payments"                        # resource.server in policies
    path = "/mcp/payments"                   # where clients reach it on this proxy
    url = "http://127.0.0.1:9000/mcp"        # a Streamable HTTP server, or
    # command = ["python", "server.py"]      # a local stdio server started by the proxy
    scopes = ["mcp:tools"]                   # needed for any call
    tool_scopes = { "payments.transfer" = ["payments:transfer"] }
    context = { amount = { argument = "amount", currency = "USD" }, note = "memo" }
    credential = "static"                    # static | client_credentials | token_exchange | none
    credential_env = "PAYMENTS_TOKEN"        # static: the upstream's own bearer token
    audience = "https://payments.internal/"  # client_credentials / token_exchange: its resource
    timeout = 30.0                           # seconds per upstream call

With ``decisions = "local"``, ``policies``, ``store`` and ``audit`` default to the
``[serve]`` table's.

A revoked JWT is refused on its next request with ``decisions = "local"`` (the proxy
follows the store's revocations). With ``decisions = "pdp"`` and a ``client_id``, the
proxy asks the issuer's introspection endpoint whether a JWT is still active each time it
verifies it, that is once per ``token_cache`` seconds; without a ``client_id``, a JWT is
good until it expires.

A PDP that asks its callers to authenticate (one listening beyond loopback, or with
``caller_auth = "required"``) is sent, with ``pdp_token = "client_credentials"``, a bearer
token the proxy gets from the issuer as ``client_id`` with the scope ``tessera:decide``,
on every call (``Authorize`` and ``ListAllowed``); and, with ``pdp_cert`` and ``pdp_key``,
a client certificate. Any of ``pdp_ca``, ``pdp_cert`` and ``pdp_key`` turns TLS on.

A configuration that cannot work is refused with a :class:`ConfigError` naming the setting.
What depends on the machine the proxy starts on, a stdio upstream's program, is checked by
:func:`check_programs` when the command starts, not when the table is read.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from issuer.netloc import url_host
from issuer.wire import READ_TIMEOUT
from pdp.serve.config import AUDIT_MODES, ServeConfig
from pep.errors import PepError

ALGORITHMS = ("ES256", "ES384", "RS256", "PS256", "EdDSA")
CREDENTIALS = ("static", "client_credentials", "token_exchange", "none")
DECISIONS = ("pdp", "local")
PDP_TOKENS = ("none", "client_credentials")
# what local decisions take from the [serve] table, with its defaults
SERVE_DEFAULTS = {
    "policies": ServeConfig.policies,
    "store": ServeConfig.store,
    "audit": ServeConfig.audit,
}
DEFAULT_MAX_BODY = 1 << 20
SETTINGS = {
    "public_url", "issuer", "pdp", "host", "port", "algorithms", "allowed_origins",
    "max_body", "body_timeout", "jwks_uri", "client_id", "client_secret_env", "consent_client_id",
    "step_up_acrs", "api_keys", "pdp_timeout", "decision_cache", "token_cache", "decisions",
    "policies", "store", "reload_interval", "metrics_port", "audit", "upstream", "pdp_token",
    "pdp_tls", "pdp_ca", "pdp_cert", "pdp_key", "client_cert_header", "client_cert_proxies",
}  # fmt: skip
"""The settings the ``[mcp_proxy]`` table may hold; any other is refused."""


class ConfigError(PepError, ValueError):
    """A setting that cannot be used; the message names it."""


@dataclass(frozen=True)
class ContextArgument:
    """A tool argument copied into the decision's context; with ``currency``, a number
    becomes money in that currency."""

    argument: str
    currency: str | None = None


@dataclass(frozen=True)
class Upstream:
    """One MCP server behind the proxy, reached at ``path``."""

    name: str
    path: str
    url: str | None = None
    command: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    tool_scopes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context: Mapping[str, ContextArgument] = field(default_factory=dict)
    credential: str = "none"
    token: str = ""  # the static credential
    audience: str = ""
    timeout: float = 30.0


@dataclass(frozen=True)
class ProxyConfig:
    public_url: str
    issuer: str
    upstreams: tuple[Upstream, ...]
    pdp: str = "127.0.0.1:50051"
    host: str = "127.0.0.1"
    port: int = 8090
    algorithms: tuple[str, ...] = ("ES256", "RS256", "EdDSA")
    allowed_origins: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY
    body_timeout: float = READ_TIMEOUT
    jwks_uri: str = ""
    client_id: str = ""
    client_secret: str = ""
    consent_client_id: str = ""
    step_up_acrs: tuple[str, ...] = ()
    api_keys: bool = False
    pdp_timeout: float = 0.5
    decision_cache: float = 0.0
    token_cache: float = 60.0
    decisions: str = "pdp"
    policies: str = ServeConfig.policies
    store: str = ServeConfig.store
    reload_interval: float = 1.0
    metrics_port: int = -1
    audit: str = ServeConfig.audit
    pdp_token: str = "none"
    pdp_tls: bool = False
    pdp_ca: str = ""
    pdp_cert: str = ""
    pdp_key: str = ""
    client_cert_header: str = ""
    client_cert_proxies: tuple[str, ...] = ("127.0.0.1", "::1")

    @property
    def jwks(self) -> str:
        return self.jwks_uri or f"{self.issuer}/oauth/jwks"

    def resource(self, upstream: Upstream) -> str:
        """The canonical resource URI of an upstream: the URL clients reach it at."""
        return f"{self.public_url}{upstream.path}"


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> ProxyConfig:
    """The ``[mcp_proxy]`` table of a TOML file, checked."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    table = data.get("mcp_proxy")
    if not isinstance(table, dict):
        raise ConfigError(f"{path} has no [mcp_proxy] table")
    serve = data.get("serve")
    serve = serve if isinstance(serve, dict) else {}
    defaults = {name: serve.get(name, value) for name, value in SERVE_DEFAULTS.items()}
    return config_from_table(table, os.environ if env is None else env, defaults)


def config_from_table(
    table: Mapping[str, Any], env: Mapping[str, str], defaults: Mapping[str, Any] | None = None
) -> ProxyConfig:
    """A configuration from the ``[mcp_proxy]`` table's values, checked; ``defaults`` for
    ``policies`` and ``store`` (the ``[serve]`` table's)."""
    defaults = {**SERVE_DEFAULTS, **(defaults or {})}
    audit = _str(table, "audit", str(defaults["audit"]), "mcp_proxy")
    if audit not in AUDIT_MODES:
        raise ConfigError(f"mcp_proxy.audit must be one of {', '.join(AUDIT_MODES)}")
    decisions = _str(table, "decisions", "pdp", "mcp_proxy")
    if decisions not in DECISIONS:
        raise ConfigError(f"mcp_proxy.decisions must be one of {', '.join(DECISIONS)}")
    _unknown(table, SETTINGS, "mcp_proxy")
    public_url = _url(_str(table, "public_url", None, "mcp_proxy"), "mcp_proxy.public_url")
    public_url = _origin(public_url, "mcp_proxy.public_url")
    origins = tuple(_allowed_origin(o) for o in _strs(table, "allowed_origins", [], "mcp_proxy"))
    issuer = _url(_str(table, "issuer", None, "mcp_proxy"), "mcp_proxy.issuer")
    algorithms = _algorithms(table)
    upstreams = _upstreams(table, env)
    secret_env = _str(table, "client_secret_env", "TESSERA_MCP_PROXY_SECRET", "mcp_proxy")
    client_id = _str(table, "client_id", "", "mcp_proxy")
    config = ProxyConfig(
        public_url=public_url,
        issuer=issuer.rstrip("/"),
        upstreams=upstreams,
        pdp=_str(table, "pdp", "127.0.0.1:50051", "mcp_proxy"),
        host=_str(table, "host", "127.0.0.1", "mcp_proxy"),
        port=_int(table, "port", 8090, "mcp_proxy"),
        algorithms=algorithms,
        allowed_origins=origins,
        max_body=_int(table, "max_body", DEFAULT_MAX_BODY, "mcp_proxy"),
        body_timeout=_float(table, "body_timeout", READ_TIMEOUT, "mcp_proxy"),
        jwks_uri=_str(table, "jwks_uri", "", "mcp_proxy"),
        client_id=client_id,
        client_secret=env.get(secret_env, "") if client_id else "",
        consent_client_id=_str(table, "consent_client_id", "", "mcp_proxy"),
        step_up_acrs=tuple(_strs(table, "step_up_acrs", [], "mcp_proxy")),
        api_keys=_bool(table, "api_keys", False, "mcp_proxy"),
        pdp_timeout=_float(table, "pdp_timeout", 0.5, "mcp_proxy"),
        decision_cache=_seconds(table, "decision_cache", "mcp_proxy"),
        token_cache=_seconds(table, "token_cache", "mcp_proxy", 60.0),
        decisions=decisions,
        policies=_str(table, "policies", str(defaults["policies"]), "mcp_proxy"),
        store=_str(table, "store", str(defaults["store"]), "mcp_proxy"),
        reload_interval=_float(table, "reload_interval", 1.0, "mcp_proxy"),
        metrics_port=_int(table, "metrics_port", -1, "mcp_proxy"),
        audit=audit,
        **_pdp_auth(table),
        **_client_certificates(table),
    )
    check(config)
    return config


def _pdp_auth(table: Mapping[str, Any]) -> dict[str, Any]:
    """How the proxy authenticates to the PDP: its token, TLS, the PEM files (each
    readable now, so that a mistyped path stops the start, not every call)."""
    token = _str(table, "pdp_token", "none", "mcp_proxy")
    if token not in PDP_TOKENS:
        raise ConfigError(f"mcp_proxy.pdp_token must be one of {', '.join(PDP_TOKENS)}")
    files = {key: _pem(table, key) for key in ("pdp_ca", "pdp_cert", "pdp_key")}
    if bool(files["pdp_cert"]) != bool(files["pdp_key"]):
        raise ConfigError(
            "mcp_proxy.pdp_cert and mcp_proxy.pdp_key go together: a client certificate "
            "needs its private key"
        )
    return {"pdp_token": token, "pdp_tls": _bool(table, "pdp_tls", False, "mcp_proxy"), **files}


def _client_certificates(table: Mapping[str, Any]) -> dict[str, Any]:
    """Where a TLS-terminating proxy in front puts the client's certificate, and the
    addresses it is believed from: what a certificate-bound token (RFC 8705) is checked
    against."""
    header = _str(table, "client_cert_header", "", "mcp_proxy").strip().lower()
    proxies = tuple(_strs(table, "client_cert_proxies", ["127.0.0.1", "::1"], "mcp_proxy"))
    if header and not proxies:
        raise ConfigError(
            "mcp_proxy.client_cert_proxies: name the proxies whose client_cert_header is "
            "believed (an empty list would believe none)"
        )
    return {"client_cert_header": header, "client_cert_proxies": proxies}


def _pem(table: Mapping[str, Any], key: str) -> str:
    """The path of a PEM file, checked to be readable and PEM; empty when not set."""
    path = _str(table, key, "", "mcp_proxy")
    if not path:
        return ""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"mcp_proxy.{key}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in text:
        raise ConfigError(f"mcp_proxy.{key}: {path} is not a PEM file")
    return path


def _algorithms(table: Mapping[str, Any]) -> tuple[str, ...]:
    """The JWT signature algorithms accepted: at least one, each of :data:`ALGORITHMS`."""
    algorithms = tuple(_strs(table, "algorithms", ["ES256", "RS256", "EdDSA"], "mcp_proxy"))
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad or not algorithms:
        raise ConfigError(
            f"mcp_proxy.algorithms: {bad[0] if bad else 'none given'!r} is not one of "
            f"{', '.join(ALGORITHMS)}"
        )
    return algorithms


def _upstreams(table: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Upstream, ...]:
    """The ``[[mcp_proxy.upstream]]`` tables: at least one, no two with the same name or
    path."""
    raw = table.get("upstream")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("mcp_proxy needs at least one [[mcp_proxy.upstream]]")
    upstreams = tuple(_upstream(item, i, env) for i, item in enumerate(raw))
    for kind in ("name", "path"):
        values = [getattr(u, kind) for u in upstreams]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ConfigError(f"two upstreams have the {kind} {dupes[0]!r}")
    return upstreams


def check(config: ProxyConfig) -> None:
    """Refuse a configuration that cannot work."""
    if config.max_body < 1:
        raise ConfigError("mcp_proxy.max_body must be at least 1 byte")
    needs_client = [u.name for u in config.upstreams if u.credential in CREDENTIALS[1:3]]
    if needs_client and not (config.client_id and config.client_secret):
        raise ConfigError(
            f"upstream {needs_client[0]!r} gets its credential from the issuer: set "
            "mcp_proxy.client_id and the secret's environment variable (client_secret_env)"
        )
    if config.pdp_token == "client_credentials" and not (config.client_id and config.client_secret):
        raise ConfigError(
            'mcp_proxy.pdp_token = "client_credentials" gets the proxy\'s token from the '
            "issuer: set mcp_proxy.client_id and the secret's environment variable "
            "(client_secret_env)"
        )


def check_programs(config: ProxyConfig) -> None:
    """Refuse a stdio upstream whose program cannot be started here: not found on
    ``PATH``, or (given with a path) missing or not executable. The proxy starts the
    program on the first call, as the process would find it now, so a mistyped command
    stops the start instead of failing every call made to that upstream."""
    for upstream in config.upstreams:
        if not upstream.command or shutil.which(upstream.command[0]) is not None:
            continue
        program = upstream.command[0]
        if os.sep not in program:
            why = f"{program!r} is not found on PATH"
        elif not Path(program).is_file():
            why = f"{program} does not exist"
        else:
            why = f"{program} is not executable"
        raise ConfigError(f"upstream {upstream.name!r}: cannot start its command: {why}")


def _upstream(item: Any, index: int, env: Mapping[str, str]) -> Upstream:
    where = f"mcp_proxy.upstream[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a table")
    known = {
        "name", "path", "url", "command", "scopes", "tool_scopes", "context", "credential",
        "credential_env", "audience", "timeout",
    }  # fmt: skip
    _unknown(item, known, where)
    name = _str(item, "name", None, where)
    path = _str(item, "path", None, where)
    if not path.startswith("/") or path.endswith("/") or "/.well-known" in path or "?" in path:
        raise ConfigError(f"{where}.path must start with / and not end with one, e.g. /mcp")
    url = item.get("url")
    command = item.get("command")
    if (url is None) == (command is None):
        raise ConfigError(f"{where} needs exactly one of url (Streamable HTTP) or command (stdio)")
    if url is not None:
        url = _url(_str(item, "url", None, where), f"{where}.url")
    commands: tuple[str, ...] = ()
    if command is not None:
        commands = tuple(_strs(item, "command", None, where))
        if not commands:
            raise ConfigError(f"{where}.command must name a program")
    credential = _str(item, "credential", "none", where)
    if credential not in CREDENTIALS:
        raise ConfigError(f"{where}.credential must be one of {', '.join(CREDENTIALS)}")
    token = ""
    if credential == "static":
        variable = _str(item, "credential_env", None, where)
        token = env.get(variable, "")
        if not token:
            raise ConfigError(f"{where}: the environment variable {variable} is not set")
    audience = _str(item, "audience", "", where)
    if credential in ("client_credentials", "token_exchange") and not audience:
        raise ConfigError(f"{where}.audience is needed with credential = {credential!r}")
    tool_scopes_raw = item.get("tool_scopes", {})
    if not isinstance(tool_scopes_raw, dict):
        raise ConfigError(f"{where}.tool_scopes must be a table of tool = [scopes]")
    tool_scopes = {
        str(tool): tuple(_strs(tool_scopes_raw, tool, None, f"{where}.tool_scopes"))
        for tool in tool_scopes_raw
    }
    return Upstream(
        name=name,
        path=path,
        url=url,
        command=commands,
        scopes=tuple(_strs(item, "scopes", [], where)),
        tool_scopes=tool_scopes,
        context=_context(item.get("context", {}), f"{where}.context"),
        credential=credential,
        token=token,
        audience=audience,
        timeout=_float(item, "timeout", 30.0, where),
    )


# Context attributes a call's arguments may never supply: the token's authentication
# strength, the user's consents, what a person approved (the token's payment), and what
# the proxy itself says of the call. A caller who could set ``acr`` through an argument
# would meet any step-up, and one who could set ``approved_amount`` would widen the
# approval to any amount.
RESERVED_CONTEXT = (
    "acr",
    "consents",
    "mcp_method",
    "mcp_server",
    "approved_amount",
    "approved_creditor",
    "approval_age",
)


def _context(raw: Any, where: str) -> dict[str, ContextArgument]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table of attribute = argument")
    mapped = {}
    for attribute, spec in raw.items():
        if attribute in RESERVED_CONTEXT:
            raise ConfigError(
                f"{where}.{attribute}: {attribute!r} is set by Tessera, not by a call's "
                f"arguments (reserved: {', '.join(RESERVED_CONTEXT)})"
            )
        if isinstance(spec, str):
            mapped[str(attribute)] = ContextArgument(spec)
        elif isinstance(spec, dict):
            _unknown(spec, {"argument", "currency"}, f"{where}.{attribute}")
            currency = spec.get("currency")
            if currency is not None and not (
                isinstance(currency, str) and len(currency) == 3 and currency.isupper()
            ):
                raise ConfigError(f"{where}.{attribute}.currency must be an ISO 4217 code")
            mapped[str(attribute)] = ContextArgument(
                _str(spec, "argument", None, f"{where}.{attribute}"), currency
            )
        else:
            raise ConfigError(f"{where}.{attribute} must name an argument")
    return mapped


def _unknown(table: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(f"{where}: unknown setting {extra[0]!r}")


def _str(table: Mapping[str, Any], key: str, default: str | None, where: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ConfigError(f"{where}.{key} must be a non-empty string")
    return value


def _strs(table: Mapping[str, Any], key: str, default: list[str] | None, where: str) -> list[str]:
    value = table.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key} must be a list of strings")
    return value


def _int(table: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be an integer")
    return value


def _float(table: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = table.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a positive number")
    return float(value)


def _seconds(table: Mapping[str, Any], key: str, where: str, default: float = 0.0) -> float:
    value = table.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where}.{key} must be a number of seconds, 0 or more")
    return float(value)


def _bool(table: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false")
    return value


def _origin(url: str, where: str) -> str:
    """An origin as browsers send it (RFC 6454 §6.2): scheme and host in lower case, no
    default port, no path. Resource URIs are built on it, so ``aud`` is canonical too."""
    parts = urlsplit(url)
    if parts.username is not None or parts.query:
        raise ConfigError(f"{where} must be an origin, not {url!r}")
    if parts.path not in ("", "/"):
        raise ConfigError(f"{where} must be an origin without a path, not {url!r}")
    host = url_host(parts.hostname or "")
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{where} has an invalid port: {url!r}") from None
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


def _allowed_origin(value: str) -> str:
    """A browser origin to allow: http(s) in canonical form; another scheme (an editor's
    webview, a browser extension: ``vscode-webview://…``) as given, without a path."""
    where = "mcp_proxy.allowed_origins"
    parts = urlsplit(value)
    if parts.scheme.lower() in ("http", "https"):
        return _origin(_url(value, where), where)
    if not parts.scheme or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{where}: {value!r} is not an origin (scheme://host)")
    return f"{parts.scheme.lower()}://{parts.netloc}"


def _url(value: str, where: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ConfigError(f"{where} must be an http(s) URL without a fragment, not {value!r}")
    return value
