"""Hosts in addresses and URLs: an IPv6 literal goes in brackets (RFC 3986 §3.2.2).

A host is configured bare (``::1``) or bracketed (``[::1]``); sockets take it bare, and
``host:port`` (gRPC targets, URLs) takes it bracketed, or ``::1:8080`` would read as
another address."""

from __future__ import annotations


def bare(host: str) -> str:
    """``host`` without the brackets of an IPv6 literal, as sockets take it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def url_host(host: str) -> str:
    """``host`` as it goes before ``:port`` or in a URL: an IPv6 literal in brackets."""
    host = bare(host)
    return f"[{host}]" if ":" in host else host


def hostport(host: str, port: int | str) -> str:
    """``host:port``, an IPv6 literal host in brackets (``[::1]:50051``)."""
    return f"{url_host(host)}:{port}"
