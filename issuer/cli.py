"""``tessera keys``: list or rotate the issuer's signing keys in the store.

The identity plane imports nothing of the planes above it, so this module declares the
command and does its work on a store it is handed; the entry point (:mod:`pep.cli`) opens
that store, with the signing settings, as ``tessera serve`` would.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from issuer.store import Store

HELP = "list or rotate the issuer's signing keys"
DESCRIPTION = (
    "The issuer's signing keys live in the store. 'list' shows them; 'rotate' "
    "makes a new current key (running servers sign with it within a second); the old "
    "key stays published until the tokens it signed have expired."
)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``tessera keys``."""
    parser.add_argument("action", choices=["list", "rotate"])
    parser.add_argument(
        "--store",
        metavar="URL",
        help="the store (default: as tessera serve: TESSERA_STORE, "
        "tessera.toml, else sqlite:///var/tessera.db)",
    )
    parser.add_argument("--alg", choices=["ES256", "RS256", "EdDSA"], help="for rotate")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")


def keys(
    args: argparse.Namespace, store: Store, signing_alg: str, token_lifetime: int, out: TextIO
) -> None:
    """Rotate the signing key if asked, then list every key with its state; ``signing_alg``
    and ``token_lifetime`` are the configured ones."""
    from issuer.keys import KeyRing

    ring = KeyRing(store, args.alg or signing_alg, token_lifetime)
    if args.action == "rotate":
        key = ring.rotate(args.alg)
        print(f"new signing key {key.kid} ({key.alg})", file=out)
    published = {jwk["kid"] for jwk in ring.jwks()["keys"]}
    current = ring.signing_key().kid
    for key in ring.all():
        state = (
            "current"
            if key.kid == current
            else ("published" if key.kid in published else "expired")
        )
        print(f"{key.kid}  {key.alg:6}  {key.created:%Y-%m-%d %H:%M}  {state}", file=out)
