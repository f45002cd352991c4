"""Client authentication at the token, introspection and revocation endpoints.

- ``client_secret_basic`` and ``client_secret_post`` (RFC 6749 §2.3.1);
- ``private_key_jwt`` (RFC 7523 §2.2 and §3, as OpenID Connect Core §9 profiles it):
  a JWT signed by a key the client registered, ``iss`` = ``sub`` = the client id, ``aud``
  the issuer or the token endpoint, ``exp`` required and at most
  :data:`MAX_ASSERTION_LIFETIME` ahead, and a ``jti`` never accepted twice.

A client uses exactly one method (RFC 6749 §2.3), the one it registered. A
private_key_jwt client may present a certificate besides, on the TLS connection or through
the proxy's header: when its public key is one the client registered, the client's tokens
are bound to it (RFC 8705 §3). Their ``amr`` has ``mtls`` (:mod:`issuer.strength`) only
when that key is not the one that signed the request's assertion: one key proven twice,
by the assertion and by the TLS handshake, is one factor, not two.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from cachetools import TTLCache
from cryptography import x509

from issuer import jws
from issuer.keys import public_jwk, thumbprint
from issuer.oauth.clients import ASSERTION_ALGORITHMS, TLS_METHODS, Client, ClientRegistry
from issuer.oauth.errors import OAuthError, invalid_client
from issuer.oauth.mtls import key_thumbprint, subject_dn
from issuer.oauth.remote_keys import RemoteKeys

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300  # seconds from now (or from iat) to exp
LEEWAY = 30  # seconds of clock skew tolerated on exp, nbf and iat


class SeenAssertions:
    """The jtis of accepted assertions, kept until they expire (RFC 7523 §3 item 7)."""

    def __init__(self, size: int = 1_000_000) -> None:
        self._seen: TTLCache[tuple[str, str], bool] = TTLCache(
            maxsize=size, ttl=MAX_ASSERTION_LIFETIME + 2 * LEEWAY
        )
        self._lock = threading.Lock()

    def first_use(self, client_id: str, jti: str) -> bool:
        """Record the jti; False when it was seen before."""
        with self._lock:
            if (client_id, jti) in self._seen:
                return False
            self._seen[(client_id, jti)] = True
            return True


class ClientAuthenticator:
    """Finds out which registered client is calling, or raises ``invalid_client``."""

    def __init__(self, clients: ClientRegistry, audiences: list[str], seen: SeenAssertions) -> None:
        self.clients = clients
        self.audiences = audiences  # the issuer and the endpoints that authenticate clients
        self.seen = seen
        self.remote_keys = RemoteKeys(clients.reach)

    def authenticate(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        certificate: x509.Certificate | None = None,
    ) -> Client:
        basic = authorization is not None and authorization[:6].lower() == "basic "
        methods = [
            name
            for name, used in (
                ("client_secret_basic", basic),
                ("client_secret_post", "client_secret" in form),
                ("private_key_jwt", "client_assertion" in form),
            )
            if used
        ]
        if len(methods) > 1:
            raise OAuthError("invalid_request", "use exactly one client authentication method")
        if not methods:
            if certificate is not None:
                return self._mutual_tls(form.get("client_id", ""), certificate)
            return self._public(form.get("client_id", ""))
        method = methods[0]
        if method == "client_secret_basic":
            assert authorization is not None
            return self._basic(authorization)
        if method == "client_secret_post":
            return self._secret(form.get("client_id", ""), form["client_secret"], method)
        return self._assertion(form)

    def certificate_bound(self, client: Client, certificate: x509.Certificate | None) -> bool:
        """Whether the certificate on the request is bound to the authenticated client
        (RFC 8705 §3: certificate-bound tokens go with any client authentication): a
        mutual-TLS client's, which authenticated it; a private_key_jwt client's whose
        public key is one of the client's registered keys."""
        if certificate is None:
            return False
        if client.auth_method in TLS_METHODS:
            return True
        if client.auth_method != "private_key_jwt":
            return False
        registered = self.remote_keys.resolve(client).jwks
        return key_thumbprint(certificate) in {thumbprint(jwk) for jwk in registered}

    def certificate_factor(
        self, client: Client, certificate: x509.Certificate | None, form: Mapping[str, str]
    ) -> bool:
        """Whether the certificate on the request counts as the ``mtls`` factor: it is
        bound to the client (:meth:`certificate_bound`) and proves a key the request's
        private_key_jwt assertion does not. A mutual-TLS client's certificate is its
        authentication itself (``tls_client_auth`` verified against the trusted client CA,
        ``self_signed_tls_client_auth`` by its registered key)."""
        if not self.certificate_bound(client, certificate):
            return False
        if client.auth_method != "private_key_jwt":
            return True
        assert certificate is not None
        signer = self._assertion_key(client, form)
        return signer is not None and key_thumbprint(certificate) != signer

    def _assertion_key(self, client: Client, form: Mapping[str, str]) -> str | None:
        """The RFC 7638 thumbprint of the registered key that verified the request's
        (already accepted) assertion; None when it cannot be told."""
        try:
            header = jws.parse(form.get("client_assertion", ""))[0]
        except ValueError:
            return None
        kid, alg = header.get("kid"), str(header.get("alg"))
        key = self.remote_keys.resolve(client).key_for(kid if isinstance(kid, str) else None, alg)
        return thumbprint(public_jwk(key)) if key is not None else None

    def _mutual_tls(self, client_id: str, certificate: x509.Certificate) -> Client:
        """RFC 8705 §2: the certificate must be the one the client registered."""
        client = self.clients.get(client_id) if client_id else None
        if client is not None and client.auth_method == "none":
            return client  # a public client over a TLS connection that has a certificate
        if client is None or client.auth_method not in TLS_METHODS:
            raise invalid_client("unknown client, or not a mutual-TLS client")
        if client.auth_method == "tls_client_auth":
            if subject_dn(certificate) != client.tls_subject_dn:
                raise invalid_client("the certificate's subject is not the registered one")
        elif key_thumbprint(certificate) not in {
            thumbprint(jwk) for jwk in self.remote_keys.resolve(client).jwks
        }:
            raise invalid_client("the certificate's key is not one the client registered")
        return client

    def _public(self, client_id: str) -> Client:
        """A public client (auth method ``none``) only names itself (RFC 6749 §3.2.1)."""
        client = self.clients.get(client_id) if client_id else None
        if client is None or client.auth_method != "none":
            raise invalid_client("the client did not authenticate")
        return client

    def _basic(self, authorization: str) -> Client:
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_client("the Basic credentials are not base64", basic=True) from None
        client_id, colon, secret = decoded.partition(":")
        if not colon:
            raise invalid_client("the Basic credentials have no ':'", basic=True)
        # RFC 6749 §2.3.1: both parts are form-urlencoded before base64
        return self._secret(
            unquote_plus(client_id), unquote_plus(secret), "client_secret_basic", basic=True
        )

    def _secret(self, client_id: str, secret: str, method: str, basic: bool = False) -> Client:
        client = self.clients.get(client_id) if client_id else None
        if client is None or client.auth_method != method or not client.secret_matches(secret):
            raise invalid_client("unknown client or wrong secret", basic=basic)
        return client

    def _assertion(self, form: Mapping[str, str]) -> Client:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise invalid_client(f"client_assertion_type must be {JWT_BEARER}")
        try:
            header, claims, signing_input, signature = jws.parse(form["client_assertion"])
        except ValueError:
            raise invalid_client("the client assertion is not a JWT") from None
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:  # refuses "none" and every HMAC
            raise invalid_client(f"assertion alg {alg!r} is not accepted")
        client_id = claims.get("iss")
        if not isinstance(client_id, str) or claims.get("sub") != client_id:
            raise invalid_client("the assertion's iss and sub must both be the client id")
        if form.get("client_id", client_id) != client_id:
            raise invalid_client("client_id differs from the assertion's issuer")
        client = self.clients.get(client_id)
        if client is None or client.auth_method != "private_key_jwt":
            raise invalid_client("unknown client, or not a private_key_jwt client")
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        key = self.remote_keys.resolve(client, kid).key_for(kid, alg)
        if key is None:
            raise invalid_client(f"no registered key with kid {kid!r} fits alg {alg}")
        try:
            jws.verify_signature(alg, key, signing_input, signature)
        except jws.BadSignature as exc:
            raise invalid_client(f"the client assertion is not valid: {exc}") from None
        self._check_claims(claims)
        if not self.seen.first_use(client_id, str(claims["jti"])):
            raise invalid_client("this assertion's jti was already used")
        return client

    def _check_claims(self, claims: dict[str, Any]) -> None:
        """RFC 7523 §3: aud names this server, exp bounds the assertion, nbf and iat are
        not in the future, and there is a jti."""
        for name in ("aud", "exp", "jti"):
            if name not in claims:
                raise invalid_client(f"the client assertion has no {name}")
        aud = claims["aud"]
        audiences = aud if isinstance(aud, list) else [aud]
        if not any(a in self.audiences for a in audiences if isinstance(a, str)):
            raise invalid_client(f"the assertion's aud {aud!r} does not name this server")
        now = time.time()
        times = [claims["exp"], claims.get("nbf", now), claims.get("iat", now)]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in times):
            raise invalid_client("exp, nbf and iat must be numbers")
        exp, nbf, iat = times
        if exp <= now - LEEWAY:
            raise invalid_client("the client assertion has expired")
        if nbf > now + LEEWAY or iat > now + LEEWAY:
            raise invalid_client("the client assertion is not valid yet")
        if exp - claims.get("iat", now) > MAX_ASSERTION_LIFETIME:
            raise invalid_client(
                f"the assertion may live at most {MAX_ASSERTION_LIFETIME} s (exp - iat)"
            )
