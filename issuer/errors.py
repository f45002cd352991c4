"""The identity plane's errors: one root, so that a door can map them in one place.

Every error the identity plane raises on purpose derives from :class:`IssuerError`: the
store's (:class:`issuer.store.StoreError`: not found, a conflict, a stale version), a JWS
that does not verify (:class:`issuer.jws.BadSignature`), a token refused
(:class:`issuer.oauth.tokens.InvalidToken`), an OAuth refusal
(:class:`issuer.oauth.errors.OAuthError`) and the SCIM service's own refusals, which are
scim2-models' ``SCIMException`` as well, the type the service answers.

Where they become a protocol's error: the OAuth endpoints answer an OAuthError with its
RFC 6749 §5.2 body (the authorization endpoint, once the redirect URI is known, by
redirecting to it, RFC 6749 §4.1.2.1); the SCIM service answers a ``SCIMException`` with
the RFC 7644 §3.12 body; the resource-server verifier turns an InvalidToken into a typed
refusal that each door answers in its own protocol (an RFC 6750 §3.1 challenge, an Envoy
answer); the code that calls the store turns its errors into its own. Two exceptions are
signals, not errors, and stay outside the root: :class:`issuer.oauth.inline.WouldBlock`
and the SCIM service's 304 (Not Modified).
"""

from __future__ import annotations


class IssuerError(Exception):
    """The root of the identity plane's errors."""
