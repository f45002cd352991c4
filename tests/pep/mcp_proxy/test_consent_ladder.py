"""The consent flow compares step-ups by the ``acr`` ladder: a login the issuer can raise
to a level also meets every level below it, and a caller already at or above a level is
never shown stepping up to it (a downgrade). Values off the ladder compare exactly."""

from __future__ import annotations

from issuer.strength import ACR_KEY, ACR_KEY_MTLS, ACR_KEY_MTLS_HUMAN
from issuer.verify import Caller
from pep.mcp_proxy.config import ProxyConfig
from pep.mcp_proxy.consent import ConsentFlow


def flow(*step_up_acrs: str) -> ConsentFlow:
    config = ProxyConfig(
        public_url="http://127.0.0.1:1",
        issuer="http://127.0.0.1:2",
        upstreams=(),
        consent_client_id="consent-page",
        step_up_acrs=step_up_acrs,
    )
    return ConsentFlow(config)


def user_caller(acr: str) -> Caller:
    return Caller("agent", "user", ("agent",), frozenset(), None, {"acr": acr})


def test_a_caller_is_stepped_up_only_above_its_level() -> None:
    consent = flow(ACR_KEY, ACR_KEY_MTLS_HUMAN, "mfa")
    stepped = [acr for acr, _ in consent.stepped_up(user_caller(ACR_KEY_MTLS))]
    assert stepped == ["mfa", ACR_KEY_MTLS_HUMAN]
    assert [acr for acr, _ in consent.stepped_up(user_caller("mfa"))] == [
        ACR_KEY,
        ACR_KEY_MTLS_HUMAN,
    ]


def test_a_step_up_below_a_level_the_issuer_gives_can_be_met() -> None:
    consent = flow(ACR_KEY_MTLS_HUMAN, "mfa")
    weak = user_caller(ACR_KEY)
    obligations = [("consent", "payments"), ("step_up", ACR_KEY_MTLS)]
    assert consent.consents_to_ask(weak, obligations) == ["payments"]
    assert consent.can_step_up(ACR_KEY) and consent.can_step_up("mfa")
    assert not flow(ACR_KEY_MTLS).can_step_up(ACR_KEY_MTLS_HUMAN)
    assert not consent.can_step_up("hardware-key")
    assert consent.consents_to_ask(weak, [("consent", "x"), ("step_up", "otp")]) == []
