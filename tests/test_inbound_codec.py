"""Unit tests of the inbound's sans-IO codecs: SOCKS5 (RFC 1928 / RFC 1929) and the HTTP proxy request parser."""

from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmess.errors import VmessError
from vmess.inbound import http as H
from vmess.inbound import socks5 as S
from vmess.inbound.errors import (
    HttpHeaderTooLargeError,
    HttpMalformedError,
    HttpProxyError,
    HttpUnsupportedError,
    InboundError,
    Socks5AddressTypeError,
    Socks5CommandError,
    Socks5Error,
    Socks5FormatError,
    Socks5VersionError,
)

# ------------------------------------------------------------------------------------------------ SOCKS5


def test_error_family() -> None:
    for cls in (Socks5VersionError, Socks5FormatError, Socks5CommandError, Socks5AddressTypeError):
        assert issubclass(cls, Socks5Error) and issubclass(cls, InboundError) and issubclass(cls, VmessError)
    for http_cls in (HttpHeaderTooLargeError, HttpMalformedError, HttpUnsupportedError):
        assert issubclass(http_cls, HttpProxyError) and issubclass(http_cls, InboundError)


def test_greeting() -> None:
    msg = b"\x05\x02\x00\x02"
    assert S.parse_greeting(msg) == (S.Greeting((0, 2)), 4)
    assert S.parse_greeting(msg + b"extra") == (S.Greeting((0, 2)), 4)
    for n in range(len(msg)):
        assert S.parse_greeting(msg[:n]) is None
    assert S.build_greeting((0, 2)) == msg


def test_greeting_malformed() -> None:
    with pytest.raises(Socks5VersionError) as info:
        S.parse_greeting(b"\x04\x01\x00")
    assert info.value.reply is None
    with pytest.raises(Socks5VersionError):
        S.parse_greeting(b"GET / HTTP/1.1\r\n")
    with pytest.raises(Socks5FormatError):
        S.parse_greeting(b"\x05\x00")


@pytest.mark.parametrize(
    ("methods", "auth", "expected"),
    [
        ((0,), False, S.Method.NO_AUTH),
        ((0, 2), False, S.Method.NO_AUTH),
        ((2,), False, S.Method.USERNAME_PASSWORD),
        ((1,), False, S.Method.NO_ACCEPTABLE),
        ((0, 2), True, S.Method.USERNAME_PASSWORD),
        ((0,), True, S.Method.NO_ACCEPTABLE),
        ((1, 0x80), True, S.Method.NO_ACCEPTABLE),
    ],
)
def test_select_method(methods: tuple[int, ...], auth: bool, expected: S.Method) -> None:
    assert S.select_method(S.Greeting(methods), auth_required=auth) == expected
    assert S.build_method_selection(expected) == bytes((5, expected))


def test_rfc1929_round_trip() -> None:
    msg = S.build_auth_request("user", "pässword")
    assert msg == b"\x01\x04user\x09p\xc3\xa4ssword"
    req, used = S.parse_auth_request(msg + b"\x05")  # type: ignore[misc]
    assert used == len(msg)
    assert req == S.AuthRequest(b"user", "pässword".encode())
    assert "pässword" not in repr(req) and "p\\xc3" not in repr(req)
    for n in range(len(msg)):
        assert S.parse_auth_request(msg[:n]) is None
    assert S.build_auth_reply(True) == b"\x01\x00"
    assert S.build_auth_reply(False) == b"\x01\x01"


def test_rfc1929_empty_fields_and_bad_version() -> None:
    assert S.parse_auth_request(b"\x01\x00\x00") == (S.AuthRequest(b"", b""), 3)
    with pytest.raises(Socks5VersionError):
        S.parse_auth_request(b"\x05\x04user\x04pass")
    with pytest.raises(Socks5FormatError):
        S.build_auth_request("u" * 256, "p")


@pytest.mark.parametrize(
    ("host", "wire", "atyp"),
    [
        ("127.0.0.1", b"\x01\x7f\x00\x00\x01", S.AddressType.IPV4),
        ("::1", b"\x04" + b"\x00" * 15 + b"\x01", S.AddressType.IPV6),
        ("2001:db8::5", b"\x04\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x05", S.AddressType.IPV6),
        ("example.com", b"\x03\x0bexample.com", S.AddressType.DOMAIN),
    ],
)
def test_request_address_types(host: str, wire: bytes, atyp: S.AddressType) -> None:
    msg = b"\x05\x01\x00" + wire + struct.pack("!H", 443)
    assert S.build_request(S.Command.CONNECT, host, 443) == msg
    req, used = S.parse_request(msg + b"early data")  # type: ignore[misc]
    assert used == len(msg)
    assert req == S.Request(S.Command.CONNECT, host, 443, atyp)
    for n in range(len(msg)):
        assert S.parse_request(msg[:n]) is None


def test_request_udp_associate_and_brackets() -> None:
    msg = S.build_request(S.Command.UDP_ASSOCIATE, "[::]", 0)
    req, _ = S.parse_request(msg)  # type: ignore[misc]
    assert req.command == S.Command.UDP_ASSOCIATE and req.host == "::" and req.port == 0


def test_request_non_ascii_domain_is_utf8() -> None:
    raw = "bücher.example".encode()
    msg = b"\x05\x01\x00\x03" + bytes((len(raw),)) + raw + b"\x00\x50"
    req, _ = S.parse_request(msg)  # type: ignore[misc]
    assert req.host == "bücher.example" and req.port == 80


def test_request_errors_carry_reply_codes() -> None:
    with pytest.raises(Socks5CommandError) as info:
        S.parse_request(b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50")  # BIND
    assert info.value.reply == S.Reply.COMMAND_NOT_SUPPORTED and info.value.command == 2
    with pytest.raises(Socks5CommandError):
        S.parse_request(b"\x05\x09\x00\x01")
    with pytest.raises(Socks5AddressTypeError) as ainfo:
        S.parse_request(b"\x05\x01\x00\x02\x00\x00")
    assert ainfo.value.reply == S.Reply.ADDRESS_TYPE_NOT_SUPPORTED
    with pytest.raises(Socks5VersionError):
        S.parse_request(b"\x04\x01\x00\x01")
    with pytest.raises(Socks5FormatError):
        S.parse_request(b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50")  # RSV != 0
    with pytest.raises(Socks5FormatError):
        S.parse_request(b"\x05\x01\x00\x03\x00\x00\x50")  # empty domain
    with pytest.raises(Socks5FormatError):
        S.parse_request(b"\x05\x01\x00\x03\x03a\x00b\x00\x50")  # NUL in domain
    with pytest.raises(Socks5FormatError):
        S.parse_request(b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50")  # not UTF-8


def test_reply() -> None:
    assert S.build_reply(S.Reply.SUCCEEDED, "127.0.0.1", 1080) == b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"
    assert S.build_reply(S.Reply.CONNECTION_REFUSED) == b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00"
    assert S.build_reply(S.Reply.HOST_UNREACHABLE, "::1", 1)[:4] == b"\x05\x04\x00\x04"
    with pytest.raises(Socks5FormatError):
        S.build_reply(0, "127.0.0.1", 70000)


@pytest.mark.parametrize("host", ["10.1.2.3", "fe80::1", "dns.example"])
def test_udp_datagram_round_trip(host: str) -> None:
    packet = S.build_udp_datagram(host, 53, b"\x12\x34payload")
    dg = S.parse_udp_datagram(packet)
    assert (dg.frag, dg.host, dg.port, dg.data) == (0, host, 53, b"\x12\x34payload")
    empty = S.parse_udp_datagram(S.build_udp_datagram(host, 53, b""))
    assert empty.data == b""


def test_udp_datagram_fragment_is_reported() -> None:
    packet = b"\x00\x00\x01\x01\x7f\x00\x00\x01\x00\x35data"
    assert S.parse_udp_datagram(packet).frag == 1


@pytest.mark.parametrize(
    ("packet", "error"),
    [
        (b"\x00\x00", Socks5FormatError),
        (b"\x00\x01\x00\x01\x7f\x00\x00\x01\x00\x35", Socks5FormatError),  # RSV
        (b"\x00\x00\x00\x01\x7f\x00", Socks5FormatError),  # truncated IPv4
        (b"\x00\x00\x00\x04" + b"\x00" * 10, Socks5FormatError),  # truncated IPv6
        (b"\x00\x00\x00\x03\x05ab", Socks5FormatError),  # truncated domain
        (b"\x00\x00\x00\x07\x00\x00", Socks5AddressTypeError),
    ],
)
def test_udp_datagram_malformed(packet: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        S.parse_udp_datagram(packet)


@given(st.binary(max_size=64))
def test_socks5_parsers_never_crash(data: bytes) -> None:
    """Any input gives a message, None (need more) or a Socks5Error: never another exception."""
    for parse in (S.parse_greeting, S.parse_auth_request, S.parse_request):
        try:
            result = parse(data)
        except Socks5Error:
            continue
        if result is not None:
            assert 0 < result[1] <= len(data)
    try:
        S.parse_udp_datagram(data)
    except Socks5Error:
        pass


# ------------------------------------------------------------------------------------------------ HTTP


def head_of(data: bytes) -> H.RequestHead:
    parsed = H.parse_request_head(data)
    assert parsed is not None
    return parsed[0]


def test_connect_request() -> None:
    data = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nUser-Agent: t\r\n\r\nTLS..."
    head, used = H.parse_request_head(data)  # type: ignore[misc]
    assert data[used:] == b"TLS..."
    req = H.parse_proxy_request(head)
    assert req.is_connect and (req.host, req.port) == ("example.com", 443)
    assert head.get("user-agent") == "t" and head.get("missing") is None
    assert H.CONNECT_ESTABLISHED == b"HTTP/1.1 200 Connection established\r\n\r\n"
    with pytest.raises(ValueError):
        H.origin_request_head(req)


@pytest.mark.parametrize(
    ("target", "host", "port"),
    [("[2001:db8::1]:8443", "2001:db8::1", 8443), ("10.0.0.1:22", "10.0.0.1", 22), ("a.b:1", "a.b", 1)],
)
def test_connect_targets(target: str, host: str, port: int) -> None:
    req = H.parse_proxy_request(head_of(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode()))
    assert (req.host, req.port) == (host, port)


@pytest.mark.parametrize(
    "target", ["example.com", "example.com:", "example.com:0", "example.com:65536", "[::1", "[zz::1]:80", "::1:80",
               "a b:80", "[::1]x:80", "user@h:80", "h:8o"],
)
def test_connect_bad_targets(target: str) -> None:
    with pytest.raises(HttpMalformedError):
        H.parse_proxy_request(head_of(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode()))


def test_absolute_uri_rewrite() -> None:
    data = (
        b"GET http://example.com:8080/a/b?q=1#frag HTTP/1.1\r\n"
        b"Host: wrong.example\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic dTpw\r\n"
        b"Connection: keep-alive, X-Hop\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"X-Hop: 1\r\n"
        b"Accept: */*\r\n"
        b"Cookie: a=b\r\n\r\n"
    )
    req = H.parse_proxy_request(head_of(data))
    assert (req.host, req.port, req.origin_target, req.body_length) == ("example.com", 8080, "/a/b?q=1", 0)
    assert H.origin_request_head(req) == (
        b"GET /a/b?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nCookie: a=b\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("target", "host", "port", "path"),
    [
        ("http://example.com", "example.com", 80, "/"),
        ("HTTP://example.com?x=1", "example.com", 80, "/?x=1"),
        ("http://127.0.0.1:8000/", "127.0.0.1", 8000, "/"),
        ("http://[::1]:81/p", "::1", 81, "/p"),
        ("http://[::1]/p", "::1", 80, "/p"),
    ],
)
def test_absolute_uri_targets(target: str, host: str, port: int, path: str) -> None:
    req = H.parse_proxy_request(head_of(f"GET {target} HTTP/1.0\r\n\r\n".encode()))
    assert (req.host, req.port, req.origin_target) == (host, port, path)
    assert H.origin_request_head(req).startswith(f"GET {path} HTTP/1.0\r\nHost: ".encode())


def test_body_length() -> None:
    post = b"POST http://h/ HTTP/1.1\r\nContent-Length: 12\r\n\r\n"
    assert H.parse_proxy_request(head_of(post)).body_length == 12
    chunked = b"POST http://h/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert H.parse_proxy_request(head_of(chunked)).body_length is None
    same = b"POST http://h/ HTTP/1.1\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n"
    assert H.parse_proxy_request(head_of(same)).body_length == 5
    for bad in (
        b"POST http://h/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST http://h/ HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
    ):
        with pytest.raises(HttpMalformedError):
            H.parse_proxy_request(head_of(bad))


def test_head_incomplete_and_lenient_forms() -> None:
    data = b"GET http://h/ HTTP/1.1\r\nA: b\r\n\r\n"
    for n in range(len(data)):
        assert H.parse_request_head(data[:n]) is None
    head, used = H.parse_request_head(b"\r\n" + data)  # type: ignore[misc]
    assert used == len(data) + 2 and head.method == "GET"
    head, used = H.parse_request_head(b"GET http://h/ HTTP/1.1\nA:  b \n\nbody")  # type: ignore[misc]
    assert head.headers == (("A", "b"),) and used == len(b"GET http://h/ HTTP/1.1\nA:  b \n\n")


@pytest.mark.parametrize(
    "data",
    [
        b"GET http://h/ HTTP/1.1 extra\r\n\r\n",
        b"GET  http://h/ HTTP/1.1\r\n\r\n",
        b"GET http://h/\r\n\r\n",
        b"G(T http://h/ HTTP/1.1\r\n\r\n",
        b"GET http://h/ HTTX/1.1\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nBad Name: v\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET http://h/ HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"GET /relative HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET http://user@h/ HTTP/1.1\r\n\r\n",
        b"GET http:///nohost HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_requests(data: bytes) -> None:
    with pytest.raises(HttpMalformedError) as info:
        H.parse_proxy_request(head_of(data))
    assert info.value.status == 400


def test_binary_junk_fails_fast() -> None:
    with pytest.raises(HttpMalformedError):
        H.parse_request_head(b"\x16\x03\x01\x02\x00\x01\x00")  # a TLS ClientHello sent to the proxy port


@pytest.mark.parametrize(
    "data",
    [
        b"GET https://h/ HTTP/1.1\r\n\r\n",
        b"GET ftp://h/ HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\n",
    ],
)
def test_unsupported_requests(data: bytes) -> None:
    with pytest.raises(HttpUnsupportedError) as info:
        H.parse_proxy_request(head_of(data))
    assert info.value.status == 501


def test_header_size_limit() -> None:
    big = b"GET http://h/ HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70_000
    with pytest.raises(HttpHeaderTooLargeError) as info:
        H.parse_request_head(big)
    assert info.value.status == 431
    with pytest.raises(HttpHeaderTooLargeError):
        H.parse_request_head(big + b"\r\n\r\n")
    small = b"GET http://h/ HTTP/1.1\r\nX-Pad: " + b"a" * 100 + b"\r\n\r\n"
    assert H.parse_request_head(small, max_size=200) is not None
    with pytest.raises(HttpHeaderTooLargeError):
        H.parse_request_head(small, max_size=100)


def test_proxy_auth() -> None:
    def with_auth(value: str) -> H.RequestHead:
        return head_of(f"GET http://h/ HTTP/1.1\r\nProxy-Authorization: {value}\r\n\r\n".encode())

    token = base64.b64encode(b"user:pa:ss").decode()
    assert H.check_proxy_auth(with_auth(f"Basic {token}"), "user", "pa:ss")
    assert H.check_proxy_auth(with_auth(f"basic  {token}"), "user", "pa:ss")
    assert not H.check_proxy_auth(with_auth(f"Basic {token}"), "user", "other")
    assert not H.check_proxy_auth(with_auth(f"Bearer {token}"), "user", "pa:ss")
    assert not H.check_proxy_auth(with_auth("Basic !!notbase64"), "user", "pa:ss")
    assert not H.check_proxy_auth(head_of(b"GET http://h/ HTTP/1.1\r\n\r\n"), "user", "pa:ss")


def test_responses() -> None:
    resp = H.error_response(407)
    assert resp.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b'\r\nProxy-Authenticate: Basic realm="vmess"\r\n' in resp
    assert b"\r\nConnection: close\r\n" in resp
    head, body = resp.split(b"\r\n\r\n", 1)
    assert f"Content-Length: {len(body)}".encode() in head
    assert H.error_response(431).startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert H.build_response(599).startswith(b"HTTP/1.1 599 Unknown\r\n")


@given(st.binary(max_size=200))
def test_http_parser_never_crashes(data: bytes) -> None:
    """Any input gives a head, None (need more) or an HttpProxyError."""
    try:
        parsed = H.parse_request_head(data, max_size=128)
        if parsed is not None:
            H.parse_proxy_request(parsed[0])
    except HttpProxyError:
        pass
