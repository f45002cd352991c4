"""Each plane's errors have one root, so a door can map them in one place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import issuer
import pdp
import pep
from issuer.errors import IssuerError
from pdp.errors import PdpError
from pdp.lang.errors import LanguageError
from pep.errors import PepError

GENERATED = ("pdp.serve.proto",)
PLANES = (pdp, issuer, pep)

ROOTS: dict[str, type[BaseException]] = {
    "pdp": PdpError,
    "pdp.lang": LanguageError,  # the language imports nothing else of Tessera
    "issuer": IssuerError,
    "pep": PepError,
}

EXEMPT = {
    "issuer.oauth.inline.WouldBlock": "a signal, not an error: it must pass every handler of "
    "the plane's errors to reach inline.run, which starts the work over in a worker thread",
    "issuer.scim._NotModified": "a signal, not an error: the answer 304 (RFC 9110 §15.4.5), "
    "which the SCIM service's guard gives with the ETag",
    "pdp.doors._wire._Declined": "a signal, not an error: bytes the compiled reader leaves "
    "to protobuf; it never leaves the reader, which answers None",
}


def modules(package: ModuleType) -> list[ModuleType]:
    found = [package]
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if not info.name.startswith(GENERATED):
            found.append(importlib.import_module(info.name))
    return found


def exceptions_defined_in(package: ModuleType) -> list[type[BaseException]]:
    return [
        value
        for module in modules(package)
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
    ]


def root_of(module: str) -> type[BaseException]:
    """The root of the innermost package in ROOTS that holds ``module``."""
    holders = [name for name in ROOTS if module == name or module.startswith(f"{name}.")]
    return ROOTS[max(holders, key=len)]


def name_of(error: type[BaseException]) -> str:
    return f"{error.__module__}.{error.__qualname__}"


@pytest.mark.parametrize("package", PLANES, ids=[p.__name__ for p in PLANES])
def test_every_error_of_a_plane_derives_from_its_root(package: ModuleType) -> None:
    found = exceptions_defined_in(package)
    assert found  # the scan reached the plane's modules
    strays = [
        name_of(e)
        for e in found
        if name_of(e) not in EXEMPT and not issubclass(e, root_of(e.__module__))
    ]
    assert strays == []


def test_every_root_has_errors_under_it() -> None:
    found = [e for plane in PLANES for e in exceptions_defined_in(plane)]
    assert {root_of(e.__module__) for e in found if issubclass(e, root_of(e.__module__))} == set(
        ROOTS.values()
    )


def test_the_exemptions_exist_and_stand_outside_their_roots() -> None:
    found = {name_of(e): e for plane in PLANES for e in exceptions_defined_in(plane)}
    for name in EXEMPT:
        assert name in found, f"{name} is exempt but no longer defined: drop it from EXEMPT"
        assert not issubclass(found[name], root_of(found[name].__module__))
