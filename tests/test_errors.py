"""Each plane's errors have one root, so a door can map them in one place."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import pdp
from pdp.errors import PdpError
from pdp.lang.errors import LanguageError

GENERATED = ("pdp.serve.proto",)


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


@pytest.mark.parametrize(
    ("package", "root"),
    [(pdp, PdpError)],
    ids=["pdp"],
)
def test_every_error_of_a_plane_derives_from_its_root(
    package: ModuleType, root: type[BaseException]
) -> None:
    language = [e for e in exceptions_defined_in(package) if e.__module__.startswith("pdp.lang")]
    others = [e for e in exceptions_defined_in(package) if e not in language]
    assert others and language  # the scan found both
    assert [e.__qualname__ for e in others if not issubclass(e, root)] == []
    assert [e.__qualname__ for e in language if not issubclass(e, LanguageError)] == []
