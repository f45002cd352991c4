from typing import Any

_Parts = tuple[
    str,
    dict[str, Any],
    tuple[str, dict[str, Any]] | None,
    tuple[str, ...] | None,
    str,
    str,
    str,
    dict[str, Any],
    dict[str, Any],
]

def plain_parts(raw: bytes) -> _Parts | None: ...
def batch_parts(raw: bytes) -> list[tuple[_Parts, int]] | None: ...
