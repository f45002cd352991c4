"""The webhook and decision-log settings: refused when they could not work."""

from __future__ import annotations

import pytest

from pdp.serve.config import ConfigError, load_config


def test_webhooks_without_a_secret_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="webhook_secret: at least 16"):
        load_config({"webhooks": "http://127.0.0.1:9/hook"}, environ={})


def test_a_decision_log_without_a_store_is_refused() -> None:
    with pytest.raises(ConfigError, match="set store"):
        load_config({"decision_log": "stdout", "store": ""}, environ={})


def test_webhook_urls_and_labels_are_read_from_the_environment() -> None:
    environ = {
        "TESSERA_WEBHOOKS": "http://127.0.0.1:9/a, https://siem.example.com/b",
        "TESSERA_WEBHOOK_SECRET": "0123456789abcdef",
        "TESSERA_DECISION_LOG_LABELS": "env=prod,region=eu",
    }
    config = load_config({}, environ=environ)
    assert config.webhook_targets == ("http://127.0.0.1:9/a", "https://siem.example.com/b")
    assert config.decision_log_label_map == {"env": "prod", "region": "eu"}
