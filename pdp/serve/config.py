"""How ``tessera serve`` is configured: flags, then environment, then ``tessera.toml``.

Each setting comes from the first of these that sets it: a command-line flag, an
environment variable ``TESSERA_<NAME>`` (upper case), the ``[serve]`` table of the
configuration file (``--config``, or ``./tessera.toml`` when it exists), the default.

    [serve]
    policies = "policies"      # a directory of .pol files, or a git repository:
                               # git+<url>[?dir=<path>][#<ref>], e.g.
                               # "git+https://git.example.com/acme/policies.git?dir=tessera#main"
                               # (ref: a branch, tag or commit; default the remote's HEAD;
                               # dir: a directory of the repository; default its root)
    host = "127.0.0.1"
    port = 50051
    metrics_port = 9464        # -1 turns metrics off
    cache_size = 10000         # 0 turns the decision cache off
    reload_interval = 1.0      # seconds between checks of the policy directory
    policy_poll_interval = 30.0  # seconds between fetches of a git policy repository
    grace = 5.0                # seconds in-flight calls may finish on shutdown
    workers = 1                # serving processes on the same ports; "auto": one per usable CPU
    tls_cert = "server.pem"    # with tls_key: TLS on the gRPC port
    tls_key = "server.key"
    tls_client_ca = "ca.pem"   # also require client certificates signed by this CA (mTLS)
    caller_auth = "auto"       # who may ask for decisions on the gRPC port: "auto" (callers
                               # authenticate when host reaches beyond loopback), "required"
                               # (on loopback too), "insecure-none" (never: anyone who
                               # reaches the port may ask; see docs/deploy.md)
    agent_token_audience = ""  # audiences an agent token in a question may name (spaces or
                               # commas between); default: the issuer URL
    store = "sqlite:///var/tessera.db"   # or postgresql://host/db; "" for no directory
    counters = ""              # limit counters: "store" (the database of `store`; the default
                               # with a store), "memory" (this process only; the default
                               # without one), redis://host:6379/0 (for replicas), or a
                               # database URL of their own (sqlite:///c.db, postgresql://...)
    counters_timeout = 0.1     # seconds a counter check may take before the limit denies
    http_port = 8080           # SCIM 2.0 at http://host:http_port/scim/v2; -1 turns it off
    admin_token = ""           # bootstrap admin bearer token; generated and printed if unset
    issuer = ""                # the OAuth issuer URL; default http(s)://host:http_port
    signing_alg = "ES256"      # access token signatures: ES256, RS256 or EdDSA
    token_lifetime = 300       # seconds an access token is valid
    key_rotation_interval = 2592000  # seconds a signing key signs before a new one is made
                               # (30 days; one process per deployment rotates; 0 turns it off)
    client_cert_header = ""    # behind a TLS-terminating proxy: the header with the client
                               # certificate (URL-encoded PEM); the proxy must strip it
    client_cert_proxies = "127.0.0.1,::1"  # the proxies whose header is believed
    authorization_details_types = "payment_initiation"  # the RFC 9396 types the issuer
                               # accepts and advertises (spaces or commas between)
    audit = "async"            # record every decision: async, sync (answer once committed), off
    audit_queue = 10000        # records waiting to be written: at the bound, async drops a
                               # decision's record (counted and logged), sync waits for room
    audit_queue_bytes = 67108864  # ... and their weight: the size of the requests they tell of
    # how large a decision request may be (see docs/limits.md)
    max_message_bytes = 1048576   # one gRPC message (RESOURCE_EXHAUSTED beyond)
    max_request_bytes = 65536     # one request: ids, action, attribute names and values
    max_attributes = 64           # attributes in one map: context, resource, agent, user
    max_value_bytes = 16384       # one attribute's value
    max_undeclared_bytes = 1024   # one value of an attribute the schema does not declare
    audit_checkpoint_interval = 60.0  # seconds between checkpoints signed with the issuer key
    # anomaly alerts on the audited decisions (see docs/audit.md, "Anomaly alerts")
    anomaly_learning_decisions = 100   # decisions an agent makes before baseline alerts
    anomaly_learning_hours = 24.0      # and how long its history must span
    anomaly_window = 60.0              # seconds of the sliding window (rate, denials)
    anomaly_rate_factor = 5.0          # calls in the window above this × its active average
    anomaly_rate_min = 30              # fewer calls in the window never raise "rate"
    anomaly_denial_burst = 10          # denials in the window that make a burst
    anomaly_denial_ratio = 0.5         # share of the window's calls that must be denied
    anomaly_amount_factor = 3.0        # amounts above this × the largest allowed before
    anomaly_hour_share = 0.01          # an hour of the day with less of its calls is unusual
    anomaly_cooldown = 600.0           # seconds before an agent gets the same kind again
    # Envoy ext_authz route templates, METHOD PATH ACTION TYPE:ID, one per line; a request
    # none matches is action http.<METHOD> on the resource http:<path>
    ext_authz_routes = '''
      GET /orders/{id} db.read order:{id}
    '''
    ext_authz_audience = ""    # the aud ext_authz tokens must have; default: the issuer URL
    ext_authz_strip_headers = "authorization"  # removed before the upstream; "" keeps all
    # webhooks and the decision log (see docs/audit.md, "Delivery"; docs/deploy.md)
    webhooks = ""              # endpoints of signed CloudEvents (spaces or commas between)
    webhook_secret = ""        # the HMAC key of Tessera-Signature (16 characters or more)
    webhook_source = "/tessera"  # the events' source attribute
    webhook_max_attempts = 8   # attempts, and
    webhook_max_age = 3600.0   # seconds, before an event is a dead letter
    webhook_backoff = 1.0      # seconds before the first retry, doubled each time
    webhook_timeout = 5.0      # seconds one attempt may take
    webhook_queue = 10000      # events pending in the outbox before new ones are dropped
    decision_log = ""          # "stdout", a file path, or a collector's http(s):// URL
    decision_log_batch = 500   # entries per batch
    decision_log_interval = 5.0  # seconds an entry waits for its batch at most
    decision_log_attempts = 5  # tries of a batch before it is dropped (counted)
    decision_log_backoff = 1.0  # seconds before the first retry, doubled each time
    decision_log_encoding = ""  # "gzip" compresses batches sent to a collector
    decision_log_labels = ""   # key=value pairs added to each entry's labels

With a store, agents and users are resolved from the directory by id (the caller's
attributes for them are ignored) and an agent that is unknown or not active is denied.
Without one (``store = ""``), the PDP decides on the attributes the caller sends.

Callers of the gRPC port authenticate (:attr:`ServeConfig.caller_mode`) by mutual TLS when
``tls_client_ca`` is set, else by bearer tokens with the scope ``tessera:decide`` when
``host`` reaches beyond loopback or ``caller_auth = "required"``; a setting that would
leave no way to check them is refused at start.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pdp.audit.baselines import AnomalyThresholds
from pdp.audit.writer import QUEUE_BYTES
from pdp.bounds import DEFAULT_BOUNDS, Bounds
from pdp.errors import PdpError

DEFAULT_FILE = "tessera.toml"
MIN_TOKEN_LENGTH = 16
AUDIT_MODES = ("async", "sync", "off")  # durability of the audit record of a decision
CALLER_AUTH = ("auto", "required", "insecure-none")  # the settings of caller_auth


class CallerMode(enum.Enum):
    """How the gRPC port knows its callers are policy enforcement points."""

    OPEN = "open"  # on loopback, nothing asked: the embedded default
    MUTUAL_TLS = "mutual TLS"  # the TLS handshake asks for a certificate from tls_client_ca
    BEARER = "bearer token"  # each call carries a bearer token with tessera:decide
    INSECURE = "insecure"  # beyond loopback, nothing asked: caller_auth = "insecure-none"


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only: ``localhost``, or an
    address of 127.0.0.0/8 or ``::1``. Anything else reaches beyond: every interface
    (``0.0.0.0``, ``::``, ``""``), an interface's address, or a name other machines may
    resolve to this one."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ConfigError(PdpError, ValueError):
    """A setting that cannot be used; the message names it and where it came from."""


@dataclass(frozen=True)
class ServeConfig:
    policies: str = "policies"
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464
    cache_size: int = 10_000
    reload_interval: float = 1.0
    policy_poll_interval: float = 30.0
    grace: float = 5.0
    workers: int = 1
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    caller_auth: str = "auto"
    agent_token_audience: str = ""
    store: str = "sqlite:///var/tessera.db"
    counters: str = ""
    counters_timeout: float = 0.1
    http_port: int = 8080
    admin_token: str = ""
    issuer: str = ""
    signing_alg: str = "ES256"
    token_lifetime: int = 300
    key_rotation_interval: float = 30 * 24 * 3600.0
    client_cert_header: str = ""
    client_cert_proxies: str = "127.0.0.1,::1"
    authorization_details_types: str = "payment_initiation"
    audit: str = "async"
    audit_queue: int = 10_000
    audit_queue_bytes: int = QUEUE_BYTES
    audit_checkpoint_interval: float = 60.0
    max_message_bytes: int = DEFAULT_BOUNDS.message_bytes
    max_request_bytes: int = DEFAULT_BOUNDS.request_bytes
    max_attributes: int = DEFAULT_BOUNDS.attributes
    max_value_bytes: int = DEFAULT_BOUNDS.value_bytes
    max_undeclared_bytes: int = DEFAULT_BOUNDS.undeclared_bytes
    anomaly_learning_decisions: int = AnomalyThresholds.learning_decisions
    anomaly_learning_hours: float = AnomalyThresholds.learning_hours
    anomaly_window: float = AnomalyThresholds.window
    anomaly_rate_factor: float = AnomalyThresholds.rate_factor
    anomaly_rate_min: int = AnomalyThresholds.rate_min
    anomaly_denial_burst: int = AnomalyThresholds.denial_burst
    anomaly_denial_ratio: float = AnomalyThresholds.denial_ratio
    anomaly_amount_factor: float = AnomalyThresholds.amount_factor
    anomaly_hour_share: float = AnomalyThresholds.hour_share
    anomaly_cooldown: float = AnomalyThresholds.cooldown

    def anomaly_thresholds(self) -> AnomalyThresholds:
        """The ``anomaly_*`` settings; ConfigError naming the one that is out of range."""
        prefix = "anomaly_"
        values = {
            f.name.removeprefix(prefix): getattr(self, f.name)
            for f in fields(self)
            if f.name.startswith(prefix)
        }
        try:
            return AnomalyThresholds(**values)
        except ValueError as exc:
            raise ConfigError(f"{prefix}{exc}") from None

    ext_authz_routes: str = ""
    ext_authz_audience: str = ""
    ext_authz_strip_headers: str = "authorization"
    webhooks: str = ""
    webhook_secret: str = ""
    webhook_source: str = "/tessera"
    webhook_max_attempts: int = 8
    webhook_max_age: float = 3600.0
    webhook_backoff: float = 1.0
    webhook_timeout: float = 5.0
    webhook_queue: int = 10_000
    decision_log: str = ""
    decision_log_batch: int = 500
    decision_log_interval: float = 5.0
    decision_log_attempts: int = 5
    decision_log_backoff: float = 1.0
    decision_log_encoding: str = ""
    decision_log_labels: str = ""

    @property
    def webhook_targets(self) -> tuple[str, ...]:
        """The webhook endpoints' URLs (``webhooks``: spaces or commas between)."""
        return tuple(self.webhooks.replace(",", " ").split())

    @property
    def decision_log_label_map(self) -> dict[str, str]:
        """``decision_log_labels`` (``key=value`` pairs, spaces or commas between)."""
        pairs = (p.partition("=") for p in self.decision_log_labels.replace(",", " ").split())
        return {key: value for key, _, value in pairs}

    def bounds(self) -> Bounds:
        """The ``max_*`` settings: how large a message and a request may be."""
        return Bounds(
            message_bytes=self.max_message_bytes,
            attributes=self.max_attributes,
            value_bytes=self.max_value_bytes,
            undeclared_bytes=self.max_undeclared_bytes,
            request_bytes=self.max_request_bytes,
        )

    @property
    def policies_interval(self) -> float:
        """Seconds between looks at the policies: a git repository is fetched every
        ``policy_poll_interval`` (each look is a round trip to its server), a directory
        checked every ``reload_interval``."""
        from pdp.serve.sources import is_git

        return self.policy_poll_interval if is_git(self.policies) else self.reload_interval

    @property
    def metrics(self) -> bool:
        return self.metrics_port >= 0

    @property
    def caller_mode(self) -> CallerMode:
        """How callers of the gRPC port authenticate. With ``tls_client_ca`` the handshake
        already refuses a client without a certificate from that CA; else a port that
        reaches beyond loopback, or ``caller_auth = "required"``, asks each call for a
        bearer token, unless ``caller_auth = "insecure-none"`` says to ask nothing."""
        if self.tls_client_ca:
            return CallerMode.MUTUAL_TLS
        loopback = is_loopback(self.host)
        if self.caller_auth == "insecure-none":
            return CallerMode.OPEN if loopback else CallerMode.INSECURE
        if self.caller_auth == "required" or not loopback:
            return CallerMode.BEARER
        return CallerMode.OPEN

    @property
    def verifies_tokens(self) -> bool:
        """Whether this server can verify tokens of its issuer: it has the issuer's keys
        (a store) and knows the issuer's URL (its HTTP port, or ``issuer``)."""
        return bool(self.store) and (bool(self.issuer) or self.http_port >= 0)

    @property
    def agent_token_audiences(self) -> tuple[str, ...]:
        """The audiences an agent token may name (one of them); none: the issuer's URL."""
        return tuple(self.agent_token_audience.replace(",", " ").split())

    @property
    def authorization_details_type_list(self) -> tuple[str, ...]:
        """The RFC 9396 ``authorization_details`` types the issuer accepts, in order."""
        return tuple(dict.fromkeys(self.authorization_details_types.replace(",", " ").split()))

    @property
    def counter_store(self) -> str:
        """Where limits are counted: ``memory``, a database URL or a Redis URL."""
        if self.counters == "store" or (not self.counters and self.store):
            return self.store
        return self.counters or "memory"

    def credentials(self) -> tuple[bytes, bytes, bytes | None] | None:
        """(key, certificate chain, client CA or None) when TLS is on, else None."""
        if not self.tls_cert and not self.tls_key:
            if self.tls_client_ca:
                raise ConfigError("tls_client_ca needs tls_cert and tls_key (mTLS is TLS first)")
            return None
        if not (self.tls_cert and self.tls_key):
            raise ConfigError("TLS needs both tls_cert and tls_key")
        try:
            key = Path(self.tls_key).read_bytes()
            cert = Path(self.tls_cert).read_bytes()
            ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        except OSError as exc:
            raise ConfigError(f"cannot read a TLS file: {exc}") from None
        return key, cert, ca


def load_config(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> ServeConfig:
    """Merge flags (None means not given), environment and file over the defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = Path(config_file) if config_file else Path(DEFAULT_FILE)
    if config_file or path.exists():
        values.update(_from_file(path))
    types = {f.name: f.type for f in fields(ServeConfig)}
    for name in types:
        raw = environ.get(f"TESSERA_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, raw, f"TESSERA_{name.upper()}")
    for name, value in flags.items():
        if value is not None and name in types:
            values[name] = value
    config = dataclasses.replace(ServeConfig(), **values)
    if config.admin_token and len(config.admin_token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"admin_token: at least {MIN_TOKEN_LENGTH} characters; leave it unset to get a "
            "random one"
        )
    if config.signing_alg not in ("ES256", "RS256", "EdDSA"):
        raise ConfigError(f"signing_alg: {config.signing_alg!r} is not ES256, RS256 or EdDSA")
    if config.audit not in AUDIT_MODES:
        raise ConfigError(f"audit: {config.audit!r} is not async, sync or off")
    if config.workers < 1:
        raise ConfigError(f"workers: at least 1 process (or 'auto'), got {config.workers}")
    if config.workers > 1 and config.counter_store == "memory":
        raise ConfigError(
            f"workers: each of {config.workers} workers would count limits in its own memory "
            f"and a cap would let {config.workers} times its amount through; set --counters "
            "to a redis:// URL or a database (store, sqlite:///path.db, postgresql://host/db)"
        )
    if config.audit_queue <= 0:
        raise ConfigError("audit_queue: a positive number of records")
    if config.audit_queue_bytes < config.max_request_bytes:
        raise ConfigError("audit_queue_bytes: at least max_request_bytes (a record must fit)")
    problem = config.bounds().problem()
    if problem is not None:
        raise ConfigError(problem)
    if not config.audit_checkpoint_interval > 0:
        raise ConfigError("audit_checkpoint_interval: a positive number of seconds")
    config.anomaly_thresholds()
    if config.key_rotation_interval < 0:
        raise ConfigError("key_rotation_interval: seconds (0 turns scheduled rotation off)")
    if config.token_lifetime <= 0:
        raise ConfigError("token_lifetime: a positive number of seconds")
    if config.store and not config.store.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise ConfigError(
            f"store: {config.store!r} is neither sqlite:///path.db nor postgresql://host/db"
        )
    for check in (_check_policies, _check_counters, _check_gateway, _check_callers):
        check(config)
    _check_delivery(config)
    return config


def _check_delivery(config: ServeConfig) -> None:
    """Webhooks and the decision log: a store to keep their place, a secret to sign,
    bounds that are positive."""
    if (config.webhook_targets or config.decision_log) and not config.store:
        raise ConfigError(
            "webhooks and decision_log keep their place in the store: set store "
            "(sqlite:///path.db or postgresql://host/db)"
        )
    for url in config.webhook_targets:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"webhooks: {url!r} is not an http:// or https:// URL")
    if config.webhook_targets and len(config.webhook_secret) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"webhook_secret: at least {MIN_TOKEN_LENGTH} characters, shared with the "
            "receivers, which verify the Tessera-Signature header with it"
        )
    webhook = ("max_attempts", "max_age", "backoff", "timeout", "queue")
    log = ("batch", "interval", "attempts", "backoff")
    positive = [f"webhook_{n}" for n in webhook] + [f"decision_log_{n}" for n in log]
    for name in positive:
        if not getattr(config, name) > 0:
            raise ConfigError(f"{name}: a positive number, got {getattr(config, name)!r}")
    if config.decision_log_encoding not in ("", "gzip"):
        raise ConfigError(
            f'decision_log_encoding: {config.decision_log_encoding!r} is not "" or "gzip"'
        )


def _check_callers(config: ServeConfig) -> None:
    """Callers of the gRPC port can be checked as ``caller_mode`` says they must be."""
    if config.caller_auth not in CALLER_AUTH:
        raise ConfigError(
            f"caller_auth: {config.caller_auth!r} is not auto, required or insecure-none"
        )
    if config.caller_mode is not CallerMode.BEARER or config.verifies_tokens:
        return
    if config.caller_auth == "required":
        why = 'caller_auth = "required" asks every caller of the gRPC port for credentials'
    else:
        why = (
            f"host {config.host!r} reaches beyond loopback, so callers of the gRPC port must "
            "authenticate"
        )
    raise ConfigError(
        f"{why}, and nothing here could check them: set tls_client_ca (mutual TLS), or a "
        "store with the HTTP port or issuer (bearer tokens of Tessera's issuer with the "
        'scope tessera:decide); caller_auth = "insecure-none" serves anyone who reaches '
        "the port instead (see docs/deploy.md)"
    )


def _check_policies(config: ServeConfig) -> None:
    """The policy source: a ``git+`` source well formed, and the polls' intervals
    positive. The repository itself is first reached at start, when the policies load."""
    from pdp.serve.sources import SourceError, is_git, parse_git

    if is_git(config.policies):
        try:
            parse_git(config.policies)
        except SourceError as exc:
            raise ConfigError(f"policies: {exc}") from None
    if not config.policy_poll_interval > 0:
        raise ConfigError("policy_poll_interval: a positive number of seconds")
    if not config.reload_interval > 0:
        raise ConfigError("reload_interval: a positive number of seconds")


COUNTER_URLS = ("redis://", "rediss://", "sqlite:///", "postgresql://", "postgres://")


def _check_counters(config: ServeConfig) -> None:
    """Where limit usage is counted: known, and shared when it has to be."""
    named = config.counters in ("", "store", "memory")
    url = config.counters.startswith(COUNTER_URLS) and config.counters not in COUNTER_URLS
    if not (named or url):
        raise ConfigError(
            f"counters: {config.counters!r} is not store, memory, a redis://host:port/db URL "
            "or a database URL (sqlite:///path.db, postgresql://host/db)"
        )
    if config.counters == "store" and not config.store:
        raise ConfigError(
            "counters: 'store' counts limits in the database of store, and store is off; "
            'use counters = "memory" or a redis:// URL'
        )
    if not 0 < config.counters_timeout <= 10:
        raise ConfigError("counters_timeout: a number of seconds above 0 and at most 10")


def _check_gateway(config: ServeConfig) -> None:
    """The Envoy ext_authz settings, checked at start rather than on the first request."""
    from pdp.doors.ext_authz import RouteError, parse_routes

    try:
        parse_routes(config.ext_authz_routes)
    except RouteError as exc:
        raise ConfigError(f"ext_authz_routes: {exc}") from None
    for name in config.ext_authz_strip_headers.split(","):
        if name.strip().lower() in (":authority", ":path", ":method", "host"):
            raise ConfigError(f"ext_authz_strip_headers: {name.strip()!r} cannot be removed")


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    table = data.get("serve", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [serve] must be a table")
    known = {f.name: f for f in fields(ServeConfig)}
    out = {}
    for name, value in table.items():
        if name not in known:
            raise ConfigError(
                f"{path}: unknown setting serve.{name}; known: " + ", ".join(sorted(known))
            )
        out[name] = _coerce(name, value, f"{path}: serve.{name}")
    return out


def workers_count(value: Any, where: str = "workers") -> int:
    """The number of serving processes ``value`` asks for: a positive whole number, or
    ``auto`` for as many as the CPUs this process may run on (its affinity, which a
    container's CPU set narrows, rather than the machine's count)."""
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        if isinstance(value, bool | float):
            raise TypeError
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: expected a number of processes or 'auto', got {value!r}"
        ) from None
    if count < 1:
        raise ConfigError(f"{where}: at least 1 process (or 'auto'), got {count}")
    return count


def _coerce(name: str, value: Any, where: str) -> Any:
    if name == "workers":
        return workers_count(value, where)
    default = getattr(ServeConfig(), name)
    try:
        if isinstance(default, bool):
            raise TypeError
        if isinstance(default, int):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
