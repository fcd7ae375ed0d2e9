"""Fixtures for interop tests against real peers: v2ray (v2ray.py), sing-box (singbox.py), Xray (xray.py); endpoints.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from .endpoints import TcpEcho, TcpSink, TcpSource, UdpEcho
from .peer_process import PeerProcess
from .singbox import require_singbox
from .v2ray import V2RayProcess, require_v2ray
from .xray import require_xray

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees every collected item of the session: mark only ours.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def v2ray_bin() -> str:
    """Path of the v2ray binary; skips (or fails, VMESS_REQUIRE_V2RAY=1) if absent."""
    return require_v2ray()


@pytest.fixture(scope="session")
def singbox_bin() -> str:
    """Path of the sing-box binary; skips (or fails, VMESS_REQUIRE_PEERS=1) if absent."""
    return require_singbox()


@pytest.fixture(scope="session")
def xray_python() -> str:
    """The interpreter that runs Xray (``xray`` importable); skips (or fails, VMESS_REQUIRE_PEERS=1) if absent."""
    return require_xray()


# Module-scoped endpoints shared by the sing-box and Xray tests (one per module, reused by its cases).


@pytest.fixture(scope="module")
def echo() -> Iterator[TcpEcho]:
    with TcpEcho() as ep:
        yield ep


@pytest.fixture(scope="module")
def uecho() -> Iterator[UdpEcho]:
    with UdpEcho() as ep:
        yield ep


@pytest.fixture(scope="module")
def download() -> Iterator[TcpSource]:
    """A source that sends 2 MiB of random bytes to every connection."""
    with TcpSource(os.urandom(2 * 1024 * 1024)) as ep:
        yield ep


@pytest.fixture
def tcp_echo() -> Iterator[TcpEcho]:
    with TcpEcho() as ep:
        yield ep


@pytest.fixture
def tcp_sink() -> Iterator[TcpSink]:
    with TcpSink() as ep:
        yield ep


@pytest.fixture
def udp_echo() -> Iterator[UdpEcho]:
    with UdpEcho() as ep:
        yield ep


V2RayFactory = Callable[..., V2RayProcess]


@pytest.fixture
def v2ray_factory(v2ray_bin: str) -> Iterator[V2RayFactory]:
    """``v2ray_factory(config, **V2RayProcess kwargs) -> started V2RayProcess``.

    Every process started through it is stopped at teardown.  On a test
    failure the logs of all processes are attached to the report as a section."""
    procs: list[V2RayProcess] = []

    def start(config: Mapping[str, Any], **kwargs: Any) -> V2RayProcess:
        kwargs.setdefault("binary", v2ray_bin)
        kwargs.setdefault("name", f"v2ray{len(procs)}")
        proc = V2RayProcess(config, **kwargs)
        procs.append(proc)
        return proc.start()

    start.processes = procs  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        errors: list[BaseException] = []
        for proc in reversed(procs):
            try:
                proc.stop()
            except BaseException as e:  # keep stopping the others
                errors.append(e)
        if errors:
            raise errors[0]


def _processes_of(item: pytest.Item) -> list[PeerProcess]:
    """Peer processes (v2ray, sing-box, Xray) a test used: process fixtures, and fixtures
    exposing a ``processes`` list (v2ray_factory, or a test's own objects)."""
    found: list[PeerProcess] = []
    for value in getattr(item, "funcargs", {}).values():
        candidates = [value] if isinstance(value, PeerProcess) else getattr(value, "processes", [])
        for proc in candidates if isinstance(candidates, list) else []:
            if isinstance(proc, PeerProcess) and all(proc is not p for p in found):
                found.append(proc)
    return found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On failure, attach each involved peer's log tail (UUIDs masked) to the report."""
    report = yield
    if report.failed:
        for proc in _processes_of(item):
            report.sections.append((f"{proc.name} log (pid {proc.pid})", proc.log_tail(60)))
    return report
