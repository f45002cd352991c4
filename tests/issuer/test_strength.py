"""The acr ladder (issuer.strength): levels from factors, the order, the minimum."""

from __future__ import annotations

import pytest

from issuer import strength
from issuer.strength import (
    ACR_APIKEY,
    ACR_KEY,
    ACR_KEY_MTLS,
    ACR_KEY_MTLS_HUMAN,
    LADDER,
    BadAcrValues,
    acr_for,
    amr_for,
    at_least,
    minimum_for,
    requested,
)
from pdp.lang.runtime import ACR_LADDER


def test_the_language_keeps_the_issuers_ladder() -> None:
    assert ACR_LADDER == LADDER


@pytest.mark.parametrize(
    ("amr", "acr"),
    [
        ([], ACR_APIKEY),
        (["apikey"], ACR_APIKEY),
        (["secret"], ACR_KEY),
        (["pkjwt"], ACR_KEY),
        (["mtls"], ACR_KEY),  # a certificate alone is one key
        (["mtls", "pkjwt"], ACR_KEY_MTLS),
        (["mtls", "secret"], ACR_KEY_MTLS),
        (["human", "pkjwt"], ACR_KEY),  # a human without mTLS reaches only key
        (["human", "mtls", "pkjwt"], ACR_KEY_MTLS_HUMAN),
        (["apikey", "human"], ACR_APIKEY),
    ],
)
def test_the_level_is_the_highest_whose_factors_are_all_present(amr: list[str], acr: str) -> None:
    assert acr_for(amr) == acr


def test_each_client_authentication_method_has_its_factor() -> None:
    assert amr_for("private_key_jwt") == ["pkjwt"]
    assert amr_for("private_key_jwt", certificate_bound=True) == ["mtls", "pkjwt"]
    assert amr_for("client_secret_basic") == amr_for("client_secret_post") == ["secret"]
    assert amr_for("tls_client_auth", True) == amr_for("self_signed_tls_client_auth") == ["mtls"]
    assert amr_for("none") == []


def test_at_least_follows_the_ladder_and_other_values_only_match_themselves() -> None:
    assert at_least(ACR_KEY_MTLS, ACR_KEY)
    assert at_least(ACR_KEY, ACR_KEY)
    assert not at_least(ACR_KEY, ACR_KEY_MTLS)
    assert not at_least(ACR_APIKEY, ACR_KEY)
    assert at_least("mfa", "mfa")
    assert not at_least(ACR_KEY_MTLS_HUMAN, "mfa")
    assert not at_least("mfa", ACR_APIKEY)


def test_the_minimum_is_key_for_high_risk_and_external_agents_unless_declared_higher() -> None:
    assert minimum_for("low", "background", None) == ACR_APIKEY
    assert minimum_for("medium", "interactive", None) == ACR_APIKEY
    assert minimum_for("high", "background", None) == ACR_KEY
    assert minimum_for("critical", "background", None) == ACR_KEY
    assert minimum_for("low", "external", None) == ACR_KEY
    assert minimum_for("low", "background", ACR_KEY_MTLS) == ACR_KEY_MTLS
    assert minimum_for("high", "background", ACR_APIKEY) == ACR_KEY  # never lowered
    assert minimum_for("low", "background", "not a level") == ACR_APIKEY


def test_acr_values_are_levels_of_the_ladder_within_a_bound() -> None:
    assert requested(None) == ()
    assert requested("") == ()
    assert requested(f" {ACR_KEY}  {ACR_KEY_MTLS} ") == (ACR_KEY, ACR_KEY_MTLS)
    with pytest.raises(BadAcrValues, match="'mfa', not a level"):
        requested("mfa")
    with pytest.raises(BadAcrValues, match="longer than"):
        requested(" ".join([ACR_KEY] * (strength.MAX_ACR_VALUES // len(ACR_KEY) + 1)))
