"""A sans-IO HTTP/1.x proxy codec: ``CONNECT host:port`` and absolute-URI requests (``GET http://host/path``).

The server reads until :func:`parse_request_head` returns the head, turns it into a :class:`ProxyRequest`
(target, and how long the request body is), checks ``Proxy-Authorization`` with :func:`check_proxy_auth`, and for
an absolute-URI request sends :func:`origin_request_head` upstream: the request line in origin-form, ``Host`` from
the URI, the proxy's hop-by-hop headers dropped and ``Connection: close`` (one request per upstream connection).
Responses are not parsed: the upstream's bytes are relayed until it closes. Errors carry the status to answer with.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Iterable, Union

from .errors import HttpHeaderTooLargeError, HttpMalformedError, HttpProxyError, HttpUnsupportedError

__all__ = [
    "MAX_HEAD_SIZE",
    "CONNECT_ESTABLISHED",
    "RequestHead",
    "ProxyRequest",
    "HttpProxyError",
    "HttpHeaderTooLargeError",
    "HttpMalformedError",
    "HttpUnsupportedError",
    "parse_request_head",
    "parse_proxy_request",
    "origin_request_head",
    "check_proxy_auth",
    "build_response",
    "error_response",
]

MAX_HEAD_SIZE = 64 * 1024
"""Default bound on the request line plus headers."""

CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

Buffer = Union[bytes, bytearray, memoryview]

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT = re.compile(r"\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_HOST_CHARS = re.compile(r"[\s/?#@\[\]\\:\x00-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]{1,5}")
_PARTIAL_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*(?: [^\x00-\x1f\x7f]*)?")
"""What the start of a request line may look like before the head is complete: fail fast on binary junk."""

_DROPPED = frozenset({"proxy-connection", "proxy-authorization", "connection", "keep-alive", "host"})
"""Headers never forwarded upstream (``Host`` and ``Connection`` are rewritten)."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and header fields (names keep their case; values are stripped)."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def get_all(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        key = name.lower()
        return [v for n, v in self.headers if n.lower() == key]

    def get(self, name: str) -> str | None:
        """The first value of the header ``name``, or None."""
        values = self.get_all(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    """What the proxy must do: open ``host:port``; for a non-CONNECT request also forward the rewritten head.

    ``body_length`` is the request body's size (0 without a body) or None when it is delimited by
    Transfer-Encoding, in which case the body is relayed as it comes until the response ends.
    """

    head: RequestHead
    host: str
    port: int
    authority: str
    origin_target: str | None
    body_length: int | None

    @property
    def is_connect(self) -> bool:
        """Whether this is a CONNECT tunnel."""
        return self.origin_target is None


# ---------------------------------------------------------------------------------------------------- head


def parse_request_head(buf: Buffer, max_size: int = MAX_HEAD_SIZE) -> tuple[RequestHead, int] | None:
    """Parse the request head at the start of ``buf``: (head, bytes consumed), or None until the blank line arrives.

    Leading empty lines are skipped (RFC 9112 section 2.2); bare LF line ends are accepted.
    """
    data = bytes(buf[: max_size + 4])
    start = 0
    while data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        start += 2 if data[start] == 0x0D else 1
    match = _HEAD_END.search(data, start)
    if match is None:
        line_end = data.find(b"\n", start)
        first_line = data[start : line_end if line_end >= 0 else len(data)].rstrip(b"\r")
        if not _PARTIAL_LINE.fullmatch(first_line):
            raise HttpMalformedError("not an HTTP request")
        if len(buf) > max_size:
            raise HttpHeaderTooLargeError(f"request head exceeds {max_size} bytes")
        return None
    if match.start() - start > max_size:
        raise HttpHeaderTooLargeError(f"request head exceeds {max_size} bytes")
    text = data[start : match.start()].decode("latin-1")
    lines = _LINE_SPLIT.split(text)
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpMalformedError("request line is not 'METHOD target HTTP/1.x'")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not target:
        raise HttpMalformedError("malformed request line")
    vmatch = _VERSION.fullmatch(version)
    if vmatch is None:
        raise HttpMalformedError("malformed HTTP version")
    if vmatch.group(1) != "1":
        raise HttpUnsupportedError(f"{version} is not supported")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            raise HttpMalformedError("obsolete header line folding")
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise HttpMalformedError("malformed header field")
        value = value.strip(" \t")
        if _BAD_VALUE_CHARS.search(value):
            raise HttpMalformedError(f"control character in header {name!r}")
        headers.append((name, value))
    return RequestHead(method, target, version, tuple(headers)), match.end()


# ---------------------------------------------------------------------------------------------------- targets


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]`` (IPv6 in brackets); the host comes back without brackets."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise HttpMalformedError("unclosed '[' in target")
        host, rest = authority[1:close], authority[close + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise HttpMalformedError("bad IPv6 address in target") from None
        if rest and not rest.startswith(":"):
            raise HttpMalformedError("junk after ']' in target")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_raw = authority.rpartition(":")
        if not sep:
            host, port_text = authority, None
        else:
            port_text = port_text_raw
        if not host or _BAD_HOST_CHARS.search(host) or len(host) > 255:
            raise HttpMalformedError("bad host in target")
    if port_text is None or port_text == "":
        if default_port is None:
            raise HttpMalformedError("target has no port")
        return host, default_port
    if not _DIGITS.fullmatch(port_text) or not 0 < int(port_text) <= 0xFFFF:
        raise HttpMalformedError("bad port in target")
    return host, int(port_text)


def _body_length(head: RequestHead) -> int | None:
    """The request body's length from Content-Length / Transfer-Encoding (RFC 9112 section 6.3)."""
    lengths = head.get_all("Content-Length")
    if head.get_all("Transfer-Encoding"):
        if lengths:
            raise HttpMalformedError("both Transfer-Encoding and Content-Length")
        return None
    if not lengths:
        return 0
    values = {v.strip() for item in lengths for v in item.split(",")}
    if len(values) != 1:
        raise HttpMalformedError("conflicting Content-Length values")
    (value,) = values
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise HttpMalformedError("bad Content-Length")
    return int(value)


def parse_proxy_request(head: RequestHead) -> ProxyRequest:
    """Validate the target: authority-form for CONNECT, ``http://`` absolute-form otherwise."""
    if head.method == "CONNECT":
        host, port = _split_authority(head.target, None)
        return ProxyRequest(head, host, port, head.target, None, 0)
    target = head.target
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise HttpMalformedError("not a proxy request: the target must be an absolute http:// URI")
    if scheme.lower() == "https":
        raise HttpUnsupportedError("https:// targets need CONNECT")
    if scheme.lower() != "http":
        raise HttpUnsupportedError(f"scheme {scheme!r} is not supported")
    cut = len(rest)
    for ch in "/?#":
        pos = rest.find(ch)
        if 0 <= pos < cut:
            cut = pos
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise HttpMalformedError("user info in the target URI")
    host, port = _split_authority(authority, 80)
    path = path.partition("#")[0]
    if not path.startswith("/"):
        path = "/" + path
    return ProxyRequest(head, host, port, authority, path, _body_length(head))


def origin_request_head(request: ProxyRequest) -> bytes:
    """The head to send upstream: origin-form request line, Host from the URI, hop-by-hop headers dropped,
    ``Connection: close``; every other header is kept in order."""
    if request.origin_target is None:
        raise ValueError("CONNECT requests are tunnelled, not rewritten")
    head = request.head
    listed = {
        token.strip().lower() for value in head.get_all("Connection") for token in value.split(",") if token.strip()
    }
    lines = [f"{head.method} {request.origin_target} {head.version}", f"Host: {request.authority}"]
    for name, value in head.headers:
        key = name.lower()
        if key in _DROPPED or key in listed:
            continue
        lines.append(f"{name}: {value}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------------------------------------------- auth


def check_proxy_auth(head: RequestHead, username: str, password: str) -> bool:
    """Whether ``Proxy-Authorization: Basic ...`` carries exactly these credentials (compared in constant time)."""
    expected = f"{username}:{password}".encode("utf-8")
    for value in head.get_all("Proxy-Authorization"):
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "basic":
            continue
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(given, expected):
            return True
    return False


# ---------------------------------------------------------------------------------------------------- responses


def build_response(status: int, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> bytes:
    """A complete ``HTTP/1.1`` response with Content-Length and ``Connection: close``."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines.extend(f"{n}: {v}" for n, v in headers)
    lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_response(status: int, message: str = "", *, realm: str = "vmess") -> bytes:
    """A short text/plain error page; 407 also asks for Basic credentials."""
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    if status == 407:
        headers.append(("Proxy-Authenticate", f'Basic realm="{realm}"'))
    try:
        text = message or HTTPStatus(status).phrase
    except ValueError:
        text = message or "error"
    return build_response(status, headers, (text + "\n").encode("utf-8"))
