"""A client's URL is reached at the address that was checked, not at the name resolved
again (DNS rebinding), for fetched documents and CIBA pings, with the certificate still
verified against the name.

The name ``docs.rebind.test`` resolves first to 127.0.0.1, the address this test takes
for the public one, then to 127.0.0.2, a private one, as a name whose owner rebinds it
between the check and the connection would. The resolver is the one thing that is not
real here: a test cannot own a DNS name. Both addresses serve HTTPS on loopback with a
certificate for the name, from a CA the process is told to trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import issuer.oauth.fetch
from issuer.oauth.errors import OAuthError
from issuer.oauth.fetch import Destination, check_destination, fetch_json
from issuer.oauth.ping import Notifier

NAME = "docs.rebind.test"
CHECKED, PRIVATE = "127.0.0.1", "127.0.0.2"


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_name, signer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        san = x509.SubjectAlternativeName([x509.DNSName(subject)])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signer_key, hashes.SHA256())


@dataclass
class Site:
    """An HTTPS server on one loopback address, and the requests it was sent."""

    server: ThreadingHTTPServer
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)


def _handler(site: Site, served_by: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            site.seen.append((self.command, self.path, dict(self.headers)))
            if self.path == "/drip":  # the answer's head, a byte every 0.2 s (at most 10 s)
                with contextlib.suppress(OSError):
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    for _ in range(50):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.2)
                return
            body = json.dumps({"served_by": served_by}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    return Handler


@dataclass
class Rebinding:
    """The two sites, on one port; the names looked up, in order; what the first lookup
    answers (later ones answer PRIVATE); the addresses taken for public ones."""

    port: int
    sites: dict[str, Site]
    lookups: list[str]
    first: list[str] = field(default_factory=lambda: [CHECKED])
    public: set[str] = field(default_factory=lambda: {CHECKED})


@pytest.fixture
def rebinding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rebinding]:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("rebind test CA", ca_key)
    leaf = _certificate(NAME, key, (ca.subject, ca_key))
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "key.pem")
    sites: dict[str, Site] = {}
    port = 0
    for address in (CHECKED, PRIVATE):
        server = ThreadingHTTPServer((address, port), BaseHTTPRequestHandler)
        port = server.server_address[1]
        site = sites[address] = Site(server)
        server.RequestHandlerClass = _handler(site, address)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()

    resolve = socket.getaddrinfo
    rebinding = Rebinding(port, sites, [])

    def rebound(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not str(host).endswith(NAME):
            return resolve(host, *args, **kwargs)
        rebinding.lookups.append(host)
        addresses = rebinding.first if len(rebinding.lookups) == 1 else [PRIVATE]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", rebound)
    monkeypatch.setattr(issuer.oauth.fetch, "public", lambda a: str(a) in rebinding.public)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    for variable in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    try:
        yield rebinding
    finally:
        for site in sites.values():
            site.server.shutdown()
            site.server.server_close()


@contextmanager
def connect_proxy() -> Iterator[tuple[str, list[str]]]:
    """An HTTP proxy on 127.0.0.1 that tunnels CONNECT to whatever it is asked for (its
    URL, and the targets it was asked for)."""
    asked: list[str] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with a, b:
            while chunk := a.recv(65536):
                b.sendall(chunk)

    def tunnel(client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 8192:
            head += client.recv(4096) or b"\r\n\r\n"
        target = head.split(b" ")[1].decode()
        asked.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=5)
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=pipe, args=(upstream, client.dup()), daemon=True).start()
        pipe(client, upstream.dup())

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                threading.Thread(target=tunnel, args=(client,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", asked
    finally:
        listener.close()


def refused(description: str) -> OAuthError:
    return OAuthError("invalid_client_metadata", description)


def test_the_destination_is_the_checked_address_naming_the_host(rebinding: Rebinding) -> None:
    url = f"https://{NAME}:{rebinding.port}/a/doc.json?v=1#part"
    assert check_destination(url, refused) == Destination(
        (f"https://{CHECKED}:{rebinding.port}/a/doc.json?v=1",),
        {"Host": f"{NAME}:{rebinding.port}"},
        {"sni_hostname": NAME},
    )


def test_an_internationalized_name_is_resolved_and_sent_in_idna(rebinding: Rebinding) -> None:
    ascii_name = "xn--bcher-kva." + NAME
    to = check_destination(f"https://bücher.{NAME}:{rebinding.port}/doc.json", refused)
    assert rebinding.lookups == [ascii_name]
    assert to.headers == {"Host": f"{ascii_name}:{rebinding.port}"}
    assert to.extensions == {"sni_hostname": ascii_name}


@contextmanager
def silent(address: str, port: int) -> Iterator[None]:
    """``address:port`` on loopback answering no new connection: its accept queue is
    full (one connection, never accepted, with a backlog of 0), so the kernel drops
    further SYNs and a connection attempt waits until it times out."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((address, port))
        listener.listen(0)
        with socket.create_connection((address, port), timeout=5):
            yield


@pytest.mark.parametrize("first", ["refuses", "drops"])
def test_the_next_checked_address_is_tried_when_one_cannot_be_reached(
    rebinding: Rebinding, first: str
) -> None:
    """As a connection to a name tries each address: first 127.0.0.3, where nothing
    listens (it refuses), or 127.0.0.4, which takes no connection and refuses none (it
    gets its share of the time); then the checked site, within the fetch's and the
    ping's budget."""
    address = "127.0.0.3" if first == "refuses" else "127.0.0.4"
    rebinding.first, rebinding.public = [address, CHECKED], {address, CHECKED}
    unreachable = silent(address, rebinding.port) if first == "drops" else contextlib.nullcontext()
    with unreachable:
        document = fetch_json(f"https://{NAME}:{rebinding.port}/doc.json", 1_000, refused)
        assert document == {"served_by": CHECKED}
        rebinding.lookups.clear()
        notifier = Notifier(timeout=4.0, attempts=1)
        assert asyncio.run(notifier.send(f"https://{NAME}:{rebinding.port}/ping", "t", "id"))
    assert [path for _, path, _ in rebinding.sites[CHECKED].seen] == ["/doc.json", "/ping"]
    assert rebinding.sites[PRIVATE].seen == []


def test_an_answer_that_drips_is_cut_off_at_the_fetchs_deadline(
    rebinding: Rebinding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte of the answer's head every 0.2 s never trips a read timeout: the deadline
    bounds the whole fetch, head included."""
    monkeypatch.setattr(issuer.oauth.fetch, "TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(OAuthError, match=r"/drip took longer than 1 s"):
        fetch_json(f"https://{NAME}:{rebinding.port}/drip", 1_000, refused)
    assert time.monotonic() - started < 5.0  # the drip alone would last 10 s


def test_through_a_proxy_the_name_goes_to_the_proxy(
    rebinding: Rebinding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment's proxy resolves the name itself: it is asked for the name, and
    the certificate is verified against the name at the end of its tunnel."""
    with connect_proxy() as (proxy, asked):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        url = f"https://{NAME}:{rebinding.port}/doc.json"
        assert check_destination(url, refused) == Destination((url,), proxy=proxy)
        rebinding.lookups.clear()
        assert fetch_json(url, 1_000, refused) == {"served_by": PRIVATE}  # the proxy's lookup
    assert asked == [f"{NAME}:{rebinding.port}"]


@pytest.mark.parametrize("bypass", [NAME, "rebind.test", ".rebind.test"])
def test_a_host_the_environment_keeps_from_the_proxy_is_pinned_and_reached_directly(
    rebinding: Rebinding, monkeypatch: pytest.MonkeyPatch, bypass: str
) -> None:
    """NO_PROXY naming the host or a domain of it: no proxy for the name, and none for the
    checked address the request then goes to either."""
    with connect_proxy() as (proxy, asked):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", bypass)
        document = fetch_json(f"https://{NAME}:{rebinding.port}/doc.json", 1_000, refused)
    assert document == {"served_by": CHECKED}
    assert asked == []


def test_a_port_out_of_range_is_refused_as_a_url(rebinding: Rebinding) -> None:
    with pytest.raises(OAuthError, match="not a valid URL"):
        check_destination(f"https://{NAME}:99999/doc.json", refused)


@pytest.mark.parametrize(
    ("address", "is_public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped
        ("::127.0.0.1", False),  # IPv4-compatible
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::1", False),  # local-use NAT64
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False),  # Teredo, client 10.0.0.1
        ("ff02::1", False),
        ("fec0::1", False),  # site-local
        ("::ffff:0:a00:1", False),  # IPv4-translated (RFC 2765) of 10.0.0.1
    ],
)
def test_an_address_is_public_only_when_the_ipv4_address_it_embeds_is(
    address: str, is_public: bool
) -> None:
    assert issuer.oauth.fetch.public(ipaddress.ip_address(address)) is is_public


def test_a_document_is_fetched_from_the_checked_address_when_the_name_rebinds(
    rebinding: Rebinding,
) -> None:
    document = fetch_json(f"https://{NAME}:{rebinding.port}/doc.json", 1_000, refused)
    assert document == {"served_by": CHECKED}
    assert rebinding.lookups == [NAME]  # resolved once, by the check
    (method, path, headers), *more = rebinding.sites[CHECKED].seen
    assert (method, path, headers["Host"], more) == (
        "GET",
        "/doc.json",
        f"{NAME}:{rebinding.port}",
        [],
    )
    assert rebinding.sites[PRIVATE].seen == []


def test_a_ping_goes_to_the_checked_address_when_the_name_rebinds(rebinding: Rebinding) -> None:
    notifier = Notifier(timeout=5.0, attempts=1)
    sent = asyncio.run(notifier.send(f"https://{NAME}:{rebinding.port}/notify", "tok", "req-1"))
    assert sent
    (method, path, headers), *more = rebinding.sites[CHECKED].seen
    assert (method, path, headers["Authorization"], more) == ("POST", "/notify", "Bearer tok", [])
    assert headers["Host"] == f"{NAME}:{rebinding.port}"
    assert rebinding.sites[PRIVATE].seen == []


def test_the_certificate_is_still_verified_against_the_name(rebinding: Rebinding) -> None:
    """The checked address serves a certificate for NAME only: another name is refused."""
    with pytest.raises(OAuthError, match="cannot be fetched"):
        fetch_json(f"https://wrong.{NAME}:{rebinding.port}/doc.json", 1_000, refused)
    assert rebinding.sites[CHECKED].seen == [] and rebinding.sites[PRIVATE].seen == []
