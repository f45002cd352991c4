"""Mutual-TLS client authentication and certificate-bound tokens (RFC 8705).

The client certificate comes from the TLS connection (the ASGI ``tls`` extension, which
Tessera's HTTP server fills in) or, behind a TLS-terminating proxy, from a request header
the configuration names (URL-encoded PEM, as nginx's ``$ssl_client_escaped_cert``). The
header is trusted only when configured: the proxy must strip it from client requests.

- ``tls_client_auth`` (§2.1): a certificate from a CA the server trusts, whose subject DN
  equals the registered ``tls_client_auth_subject_dn``. The TLS layer checked the chain.
- ``self_signed_tls_client_auth`` (§2.2): the certificate's public key equals one of the
  client's registered keys (``jwks``); nothing else about it is trusted.

Tokens issued to such clients carry ``cnf: {"x5t#S256": …}`` (§3.1), and
:func:`check_binding` refuses a bound token presented with another certificate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from issuer.keys import public_jwk, thumbprint
from issuer.oauth.tokens import InvalidToken

CONFIRMATION = "x5t#S256"


TRUSTED_PROXIES = frozenset({"127.0.0.1", "::1"})


def certificate_from(
    scope: Mapping[str, Any],
    headers: Mapping[str, str],
    header: str | None,
    proxies: frozenset[str] = TRUSTED_PROXIES,
) -> x509.Certificate | None:
    """The client certificate of a request: from the configured header when one is
    configured (behind a proxy) and the request comes from one of the trusted ``proxies``
    (anyone else could forge the header), else from the TLS connection; None without one."""
    if header:
        peer = (scope.get("client") or ("", 0))[0]
        if peer not in proxies:
            return None
        value = headers.get(header.lower())
        if not value:
            return None
        try:
            return x509.load_pem_x509_certificate(unquote(value).encode())
        except ValueError:
            return None
    chain = (scope.get("extensions") or {}).get("tls", {}).get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return x509.load_pem_x509_certificate(chain[0].encode())
    except ValueError:
        return None


def confirmation(certificate: x509.Certificate) -> str:
    """The certificate's SHA-256 thumbprint, base64url without padding (RFC 8705 §3.1)."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def subject_dn(certificate: x509.Certificate) -> str:
    """The subject distinguished name as an RFC 4514 string."""
    return certificate.subject.rfc4514_string()


def key_thumbprint(certificate: x509.Certificate) -> str | None:
    """The RFC 7638 thumbprint of the certificate's public key (None for unsupported keys)."""
    try:
        jwk = public_jwk(certificate.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, AttributeError):
        return None
    return thumbprint(jwk)


def check_binding(claims: Mapping[str, Any], certificate: x509.Certificate | None) -> None:
    """Refuse a certificate-bound token presented without its certificate (RFC 8705 §3)."""
    bound = (claims.get("cnf") or {}).get(CONFIRMATION)
    if bound is None:
        return
    if certificate is None or not hmac.compare_digest(bound, confirmation(certificate)):
        raise InvalidToken("the token is bound to another client certificate")
