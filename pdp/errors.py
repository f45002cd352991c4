"""The decision plane's errors: one root, mapped to each protocol's error at its door.

Every error the decision plane raises on purpose derives from :class:`PdpError`
(the policy language, which imports nothing else of Tessera, has its own root,
:class:`pdp.lang.errors.LanguageError`). A door maps them once: a malformed request
(:class:`pdp.model.RequestError`) is gRPC ``INVALID_ARGUMENT``, AuthZEN 400 and an
ext_authz 403; anything else is a fault of ours, logged and answered as an internal
error without its text.
"""

from __future__ import annotations


class PdpError(Exception):
    """The root of the decision plane's errors."""
