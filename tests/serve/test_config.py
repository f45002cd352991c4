"""tessera serve settings: flags over environment over tessera.toml over defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdp.serve.config import CallerMode, ConfigError, ServeConfig, is_loopback, load_config


def test_defaults_when_nothing_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tessera.toml here
    assert load_config({}, environ={}) == ServeConfig()


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    file = tmp_path / "tessera.toml"
    file.write_text('[serve]\nport = 6000\nhost = "0.0.0.0"\ncache_size = 5\ngrace = 1.5\n')
    config = load_config(
        {"port": 7000, "host": None},
        environ={"TESSERA_PORT": "6500", "TESSERA_CACHE_SIZE": "7"},
        config_file=str(file),
    )
    assert (config.port, config.host, config.cache_size, config.grace) == (7000, "0.0.0.0", 7, 1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serve]\nprot = 1\n", "unknown setting serve.prot"),
        ('[serve]\nport = "x"\n', "serve.port: expected int, got 'x'"),
        ("[serve\n", "tessera.toml"),
    ],
)
def test_bad_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "tessera.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config({}, environ={}, config_file=str(file))


def test_bad_environment_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TESSERA_PORT: expected int"):
        load_config({}, environ={"TESSERA_PORT": "many"}, config_file=None)


def test_tls_settings_must_come_in_pairs() -> None:
    with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
        ServeConfig(tls_cert="a.pem").credentials()
    with pytest.raises(ConfigError, match="mTLS is TLS first"):
        ServeConfig(tls_client_ca="ca.pem").credentials()
    assert ServeConfig().credentials() is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"admin_token": "short"}, "admin_token: at least 16 characters"),
        ({"store": "mysql://db"}, "store: 'mysql://db' is neither"),
        ({"signing_alg": "HS256"}, "signing_alg: 'HS256' is not ES256, RS256 or EdDSA"),
        ({"token_lifetime": 0}, "token_lifetime: a positive number of seconds"),
    ],
)
def test_bad_directory_settings_are_named(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(flags, environ={}, config_file=None)


def test_the_directory_defaults_to_a_sqlite_file_under_var() -> None:
    config = ServeConfig()
    assert (config.store, config.http_port, config.admin_token) == (
        "sqlite:///var/tessera.db",
        8080,
        "",
    )


def test_workers_is_a_number_or_auto_the_cpus_this_process_may_use(tmp_path: Path) -> None:
    import os

    file = tmp_path / "tessera.toml"
    file.write_text('[serve]\nworkers = "auto"\n')
    cpus = len(os.sched_getaffinity(0))
    assert load_config({}, environ={}, config_file=str(file)).workers == cpus
    file.write_text("[serve]\nworkers = 3\n")
    assert load_config({}, environ={}, config_file=str(file)).workers == 3
    assert load_config({}, environ={"TESSERA_WORKERS": "auto"}, config_file=None).workers == cpus
    assert load_config({}, environ={"TESSERA_WORKERS": "4"}, config_file=None).workers == 4
    assert ServeConfig().workers == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[serve]\nworkers = 0\n", "serve.workers: at least 1 process"),
        ('[serve]\nworkers = "many"\n', "serve.workers: expected a number of processes or 'auto'"),
        ("[serve]\nworkers = 1.5\n", "serve.workers: expected a number of processes"),
        ("[serve]\nworkers = true\n", "serve.workers: expected a number of processes"),
    ],
)
def test_bad_workers_are_named(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "tessera.toml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config({}, environ={}, config_file=str(file))
    with pytest.raises(ConfigError, match="workers: at least 1 process"):
        load_config({"workers": 0}, environ={}, config_file=None)


@pytest.mark.parametrize(
    ("flags", "store"),
    [
        ({}, "sqlite:///var/tessera.db"),  # the directory's database, by default
        ({"store": ""}, "memory"),  # no database: this process
        ({"counters": "memory"}, "memory"),
        ({"counters": "redis://10.0.0.5:6379/1"}, "redis://10.0.0.5:6379/1"),
        ({"store": "postgresql://db/t", "counters": "store"}, "postgresql://db/t"),
        ({"store": "", "counters": "postgresql://db/c"}, "postgresql://db/c"),
    ],
)
def test_limits_are_counted_where_the_settings_say(flags: dict[str, str], store: str) -> None:
    assert load_config(flags, environ={}, config_file=None).counter_store == store


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"counters": "memcached://x"}, "is not store, memory, a redis://host:port/db URL"),
        ({"counters": "redis://"}, "is not store, memory, a redis://host:port/db URL"),
        ({"counters": "store", "store": ""}, "and store is off"),
        ({"counters_timeout": 0.0}, "counters_timeout: a number of seconds above 0"),
    ],
)
def test_bad_counter_settings_are_named(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(flags, environ={}, config_file=None)


def test_a_git_repository_is_polled_at_its_own_interval(tmp_path: Path) -> None:
    file = tmp_path / "tessera.toml"
    file.write_text('[serve]\npolicies = "git+file:///srv/policies.git?dir=tessera#main"\n')
    config = load_config({}, environ={"TESSERA_POLICY_POLL_INTERVAL": "5"}, config_file=str(file))
    assert (config.policy_poll_interval, config.policies_interval) == (5.0, 5.0)
    assert ServeConfig(policies="git+file:///p.git").policies_interval == 30.0
    assert ServeConfig(policies="policies", reload_interval=2.0).policies_interval == 2.0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"policies": "git+"}, "policies: git+: a URL after git+"),
        ({"policies": "git+file:///p.git#"}, "policies: git+file:///p.git#: after # comes"),
        ({"policies": "git+file:///p.git?ref=v1"}, "the one option after ? is dir=<path>"),
        ({"policy_poll_interval": 0.0}, "policy_poll_interval: a positive number of seconds"),
        ({"reload_interval": -1.0}, "reload_interval: a positive number of seconds"),
    ],
)
def test_bad_policy_sources_are_named(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(flags, environ={}, config_file=None)
    assert message in str(raised.value)


def test_the_request_bounds_and_the_audit_queue_bytes_are_settings(tmp_path: Path) -> None:
    file = tmp_path / "tessera.toml"
    file.write_text("[serve]\nmax_value_bytes = 4096\naudit_queue_bytes = 1048576\n")
    config = load_config({}, environ={"TESSERA_MAX_ATTRIBUTES": "16"}, config_file=str(file))
    bounds = config.bounds()
    assert (bounds.attributes, bounds.value_bytes) == (16, 4096)
    assert (bounds.undeclared_bytes, bounds.request_bytes) == (1024, 65536)
    assert bounds.message_bytes == 1 << 20
    assert config.audit_queue_bytes == 1 << 20


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TESSERA_MAX_ATTRIBUTES": "0"}, "max_attributes: a positive number"),
        ({"TESSERA_MAX_VALUE_BYTES": "512"}, "max_undeclared_bytes <= max_value_bytes"),
        ({"TESSERA_MAX_REQUEST_BYTES": "8192"}, "max_value_bytes <= max_request_bytes"),
        ({"TESSERA_MAX_MESSAGE_BYTES": "32768"}, "max_request_bytes: at most max_message_bytes"),
        ({"TESSERA_AUDIT_QUEUE_BYTES": "1000"}, "audit_queue_bytes: at least max_request_bytes"),
    ],
)
def test_bounds_that_cannot_be_used_together_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./tessera.toml here
    with pytest.raises(ConfigError, match=message):
        load_config({}, environ=environ)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST.", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.0.2.7", False),
        ("fd00::2", False),
        ("pdp.internal", False),
    ],
)
def test_a_host_is_loopback_only_when_it_reaches_this_machine_alone(
    host: str, loopback: bool
) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        ({}, CallerMode.OPEN),
        ({"host": "0.0.0.0"}, CallerMode.BEARER),
        ({"host": "192.0.2.7"}, CallerMode.BEARER),
        ({"caller_auth": "required"}, CallerMode.BEARER),
        ({"host": "0.0.0.0", "caller_auth": "insecure-none"}, CallerMode.INSECURE),
        ({"caller_auth": "insecure-none"}, CallerMode.OPEN),
        ({"host": "0.0.0.0", "tls_client_ca": "ca.pem"}, CallerMode.MUTUAL_TLS),
        ({"tls_client_ca": "ca.pem", "caller_auth": "insecure-none"}, CallerMode.MUTUAL_TLS),
    ],
)
def test_callers_authenticate_beyond_loopback_or_when_required(
    settings: dict[str, str], mode: CallerMode
) -> None:
    assert ServeConfig(**settings).caller_mode is mode  # type: ignore[arg-type]


def empty_file(directory: Path) -> str:
    """A configuration file that sets nothing (so that no ./tessera.toml is read)."""
    path = directory / "tessera.toml"
    path.write_text("[serve]\n")
    return str(path)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"host": "0.0.0.0", "store": ""}, "host '0.0.0.0' reaches beyond loopback, so callers"),
        ({"host": "0.0.0.0", "http_port": -1}, "nothing here could check them"),
        ({"caller_auth": "required", "store": ""}, 'caller_auth = "required" asks every'),
        ({"caller_auth": "sometimes"}, "caller_auth: 'sometimes' is not auto, required or"),
    ],
)
def test_a_setting_that_leaves_callers_unchecked_is_refused(
    tmp_path: Path, flags: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(flags, environ={}, config_file=empty_file(tmp_path))


def test_callers_beyond_loopback_may_be_checked_by_tokens_mtls_or_not_at_all(
    tmp_path: Path,
) -> None:
    for flags in (
        {"host": "0.0.0.0"},  # a store and the HTTP port: bearer tokens
        {"host": "0.0.0.0", "http_port": -1, "issuer": "https://tessera.example.com"},
        {"host": "0.0.0.0", "store": "", "tls_client_ca": "ca.pem"},
        {"host": "0.0.0.0", "store": "", "caller_auth": "insecure-none"},
    ):
        load_config(flags, environ={}, config_file=empty_file(tmp_path))
    assert load_config(
        {"agent_token_audience": "https://mcp.example.com, https://api.example.com"},
        environ={},
        config_file=empty_file(tmp_path),
    ).agent_token_audiences == ("https://mcp.example.com", "https://api.example.com")


def test_authorization_details_types_are_a_list_payment_initiation_by_default(
    tmp_path: Path,
) -> None:
    default = load_config({}, environ={}, config_file=empty_file(tmp_path))
    assert default.authorization_details_type_list == ("payment_initiation",)
    environ = {"TESSERA_AUTHORIZATION_DETAILS_TYPES": "payment_initiation, account_information"}
    configured = load_config({}, environ=environ, config_file=empty_file(tmp_path))
    assert configured.authorization_details_type_list == (
        "payment_initiation",
        "account_information",
    )
