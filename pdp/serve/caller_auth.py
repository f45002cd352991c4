"""What ``tessera serve`` asks of the callers of its decision doors, from its settings.

:attr:`ServeConfig.caller_mode` says how callers of the gRPC port authenticate (from
``host``, ``tls_client_ca`` and ``caller_auth``); this module builds what the doors check
(:func:`callers_for`) and says it in the startup lines (:func:`callers_line`), so an
operator sees which mode is in force. Health checking and server reflection answer
every caller in every mode: they tell nothing about agents and decide nothing.
"""

from __future__ import annotations

from issuer.keys import KeyRing
from issuer.netloc import hostport
from pdp.directory import Directory
from pdp.doors.callers import DECIDE_SCOPE, OPEN, Callers, callers_of
from pdp.serve.config import CallerMode, ServeConfig, is_loopback


def callers_for(
    config: ServeConfig, keys: KeyRing | None, issuer: str, directory: Directory | None
) -> Callers:
    """The checks of the gRPC port's callers and of agent tokens: PEPs' bearer tokens of
    ``issuer`` where :attr:`ServeConfig.caller_mode` asks for them, agent tokens wherever
    the issuer's tokens can be verified (a store, and the issuer's URL)."""
    if keys is None or directory is None or not config.verifies_tokens:
        return OPEN  # load_config refused a mode that needs tokens without these
    return callers_of(
        keys,
        issuer,
        directory,
        peps=config.caller_mode is CallerMode.BEARER,
        agent_audiences=config.agent_token_audiences,
    )


def callers_line(config: ServeConfig, port: int, issuer: str) -> str:
    """The startup line that says how callers of the gRPC port on ``port`` authenticate."""
    mode = config.caller_mode
    if mode is CallerMode.MUTUAL_TLS:
        return (
            f"callers authenticate by mutual TLS: client certificates from "
            f"{config.tls_client_ca}; health and reflection answer them all"
        )
    if mode is CallerMode.BEARER:
        line = (
            f"callers authenticate with bearer tokens of {issuer} with the scope "
            f"{DECIDE_SCOPE}; health and reflection answer anyone"
        )
        if not config.tls_cert and not is_loopback(config.host):
            line += " (the port is plaintext: tokens cross the network readable; use TLS)"
        return line
    if mode is CallerMode.INSECURE:
        return (
            f"WARNING: callers are NOT authenticated on {hostport(config.host, port)}, which "
            'reaches beyond loopback (caller_auth = "insecure-none"): anyone who reaches the port '
            "may ask decisions for any agent and fill the audit trail"
        )
    return (
        "callers are not authenticated: the gRPC port listens on loopback only "
        '(caller_auth = "required" asks them for bearer tokens here too)'
    )
