"""Byte-checked exchanges shared by the sing-box and Xray interop tests.

Each helper moves real data and raises AssertionError unless every byte arrived intact (sha256), so a test built
from them fails on any corruption, truncation or hang (every wait is bounded).

* ``our_*``: our client (vmess.aio) through a peer's VMess server;
* ``socks_*``: a peer's client, driven through its SOCKS5 port, against our server;
* :func:`request_as_seen` reads how our server decoded a request (header kind, security code, option bits) from
  its DEBUG log, so a test can prove which protocol variant a peer really sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
from typing import Any, NamedTuple

import pytest

from vmess.aio import open_connection, open_udp

from .endpoints import Socks5UdpAssociation, TcpSink, exchange, recv_exactly, socks5_connect

LOOPBACK = "127.0.0.1"
MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------- our client -> peer server


async def our_echo(proxy: Any, echo_port: int, payload: bytes, *, eof: bool = True, timeout: float = 20.0) -> Any:
    """Send ``payload`` through ``proxy`` to a TcpEcho while reading it back; then a ping-pong and, if ``eof``, a
    clean EOF after our end-of-stream (end marker + half-close).  Returns the stream's ``ws_early_data`` (bytes of
    WebSocket early data the server took; None when not over WebSocket)."""
    reader, writer = await open_connection(LOOPBACK, echo_port, proxy=proxy)
    try:

        async def send() -> None:
            for i in range(0, len(payload), 256 * 1024):
                writer.write(payload[i : i + 256 * 1024])
                await writer.drain()

        task = asyncio.create_task(send())
        got = await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
        await asyncio.wait_for(task, timeout)
        assert sha(got) == sha(payload), "echoed bytes differ"
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"
        early = writer.get_extra_info("ws_early_data")
        if eof:
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), timeout) == b"", "no clean EOF after our end of stream"
        return early
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def our_upload(proxy: Any, sink: TcpSink, payload: bytes, *, timeout: float = 20.0) -> None:
    """Upload ``payload`` through ``proxy`` to a TcpSink, end the stream, and check what the sink received."""
    reader, writer = await open_connection(LOOPBACK, sink.port, proxy=proxy)
    try:
        for i in range(0, len(payload), MiB):
            writer.write(payload[i : i + MiB])
            await writer.drain()
        writer.write_eof()
        loop = asyncio.get_running_loop()
        count, digest = await loop.run_in_executor(None, sink.wait_result, timeout)
        assert (count, digest) == (len(payload), sha(payload)), f"sink got {count} of {len(payload)} bytes"
        assert await asyncio.wait_for(reader.read(), timeout) == b""
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def our_download(proxy: Any, source_port: int, expected: bytes, *, timeout: float = 20.0) -> None:
    """Read everything a TcpSource sends (it speaks first and closes) through ``proxy``; check it and the EOF."""
    reader, writer = await open_connection(LOOPBACK, source_port, proxy=proxy)
    try:
        got = await asyncio.wait_for(reader.read(), timeout)
        assert (len(got), sha(got)) == (len(expected), sha(expected))
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def our_udp(proxy: Any, udp_port: int, grams: list[bytes], *, timeout: float = 5.0) -> None:
    """Send each datagram through ``proxy`` to a UdpEcho and check the reply is that datagram."""
    stream = await open_udp(LOOPBACK, udp_port, proxy=proxy)
    async with stream:
        for gram in grams:
            stream.send(gram)
            await stream.drain()
            reply = await asyncio.wait_for(stream.recv(), timeout)
            assert (len(reply), sha(reply)) == (len(gram), sha(gram)), f"datagram of {len(gram)} bytes"


# --------------------------------------------------------------------------------- peer client -> our server


def socks_upload(socks_port: int, sink: TcpSink, payload: bytes, *, timeout: float = 20.0) -> None:
    """Upload through the peer's SOCKS5 port to a TcpSink; the sink checks length and sha256 on EOF, and our
    server must then end the client's connection too."""
    with socks5_connect(socks_port, sink.port, timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        count, digest = sink.wait_result(timeout=timeout)
        assert (count, digest) == (len(payload), sha(payload)), f"sink got {count} of {len(payload)} bytes"
        assert s.recv(1) == b""
    assert sink.results[-1].error is None, sink.results[-1].error


def socks_echo(socks_port: int, echo_port: int, payload: bytes, *, timeout: float = 20.0) -> None:
    """Small messages, then ``payload`` in both directions at once, through the peer's SOCKS5 port to a TcpEcho."""
    with socks5_connect(socks_port, echo_port, timeout=timeout) as s:
        for msg in (b"hello", b"x" * 3000):
            s.sendall(msg)
            assert recv_exactly(s, len(msg)) == msg
        got = exchange(s, payload, expect=len(payload), half_close=False, timeout=timeout)
        assert (len(got), sha(got)) == (len(payload), sha(payload))


def socks_download(socks_port: int, source_port: int, expected: bytes, *, timeout: float = 20.0) -> None:
    """Read what a TcpSource sends through the peer's SOCKS5 port, up to EOF."""
    with socks5_connect(socks_port, source_port, timeout=timeout) as s:
        got = bytearray()
        while chunk := s.recv(256 * 1024):
            got += chunk
        assert (len(got), sha(bytes(got))) == (len(expected), sha(expected))


def socks_udp(socks_port: int, udp_port: int, grams: list[bytes], *, timeout: float = 5.0) -> None:
    """UDP ASSOCIATE through the peer's SOCKS5 port; each datagram must come back whole from the UdpEcho."""
    with Socks5UdpAssociation(socks_port, timeout=timeout) as assoc:
        for gram in grams:
            assoc.sendto(gram, (LOOPBACK, udp_port))
            data, src = assoc.recvfrom()
            assert (len(data), sha(data)) == (len(gram), sha(gram)), f"datagram of {len(gram)} bytes"
            assert src == (LOOPBACK, udp_port)


class SeenRequest(NamedTuple):
    user: str
    header: str  # "AEAD" or "legacy"
    security: int
    options: int


_REQUEST_RE = re.compile(r"user=(\S+) .*: (\w+) header, security (\d+), options 0x([0-9a-f]{2})$")


def request_as_seen(caplog: pytest.LogCaptureFixture, destination: str) -> list[SeenRequest]:
    """Our server's DEBUG lines for requests to ``destination`` (e.g. "tcp:127.0.0.1:4242"), decoded.

    The test must have called ``caplog.set_level(logging.DEBUG, logger="vmess.server")`` first."""
    seen = []
    for record in caplog.records:
        message = record.getMessage()
        if record.levelno == logging.DEBUG and f" {destination}: " in message:
            match = _REQUEST_RE.search(message)
            assert match, message
            seen.append(SeenRequest(match[1], match[2], int(match[3]), int(match[4], 16)))
    return seen
