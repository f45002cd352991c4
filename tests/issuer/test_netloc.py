"""Hosts in addresses and URLs: IPv6 literals bracketed, sockets given them bare."""

from __future__ import annotations

import pytest

from issuer.netloc import bare, hostport, url_host


@pytest.mark.parametrize(
    ("host", "expected"),
    [("::1", "[::1]:50051"), ("[::1]", "[::1]:50051"), ("::", "[::]:50051"),
     ("127.0.0.1", "127.0.0.1:50051"), ("localhost", "localhost:50051")],
)  # fmt: skip
def test_hostport_brackets_ipv6_literals_once(host: str, expected: str) -> None:
    assert hostport(host, 50051) == expected


def test_sockets_take_hosts_bare_and_urls_bracketed() -> None:
    assert bare("[::1]") == "::1"
    assert bare("::1") == "::1"
    assert bare("example.com") == "example.com"
    assert url_host("[::1]") == url_host("::1") == "[::1]"
    assert url_host("10.0.0.1") == "10.0.0.1"
