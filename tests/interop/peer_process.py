"""What every real VMess peer (v2ray, sing-box, Xray) needs to run on 127.0.0.1 during a test.

One process per configuration: the config is written as JSON to a private temp directory, the peer runs in its
own session (its own process group, so no terminal signals reach it and :meth:`PeerProcess.stop` can kill the
whole group), stdout and stderr go to one log file there, and :meth:`PeerProcess.start` returns once every TCP
listen port of the config accepts connections.  :meth:`PeerProcess.stop` is idempotent and bounded: SIGTERM to
the group, then SIGKILL, then the temp directory (config + log) is removed while the log text stays readable.
An atexit hook stops whatever a test run left behind.

Subclasses say how to run the peer (:meth:`PeerProcess.command`) and which ports its config listens on
(:meth:`PeerProcess.listen_ports`); v2ray.py, singbox.py and xray.py are the three.

Public API::

    LOOPBACK                         "127.0.0.1"
    free_port(kind="tcp") -> int
    port_accepts(port) -> bool
    require_peer(available, message, *, env_vars) -> None   skip, or fail when one of env_vars is "1"
    mask_uuids(text) -> str          UUID-shaped strings replaced by "<uuid>"
    PeerError, PeerProcess
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass, field
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from typing import IO, Any, ClassVar

__all__ = [
    "LOOPBACK",
    "PeerError",
    "PeerProcess",
    "RunningPeer",
    "free_port",
    "mask_uuids",
    "port_accepts",
    "require_peer",
]

LOOPBACK = "127.0.0.1"

#: Seconds :meth:`PeerProcess.stop` waits after SIGTERM, and again after SIGKILL.
STOP_TIMEOUT = 5.0

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def free_port(kind: str = "tcp") -> int:
    """An OS-chosen free port on 127.0.0.1 (bind to port 0, then close)."""
    if kind == "tcp":
        stype = socket.SOCK_STREAM
    elif kind == "udp":
        stype = socket.SOCK_DGRAM
    else:
        raise ValueError(f"kind must be 'tcp' or 'udp', not {kind!r}")
    with socket.socket(socket.AF_INET, stype) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port right now."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


def require_peer(available: bool, message: str, *, env_vars: Iterable[str]) -> None:
    """Return if ``available``; else fail the test when any of ``env_vars`` is "1" (CI), skip it otherwise."""
    if available:
        return
    import pytest

    required = [name for name in env_vars if os.environ.get(name) == "1"]
    if required:
        pytest.fail(f"{message} ({', '.join(name + '=1' for name in required)})", pytrace=False)
    pytest.skip(message)


def mask_uuids(text: str) -> str:
    """``text`` with every UUID-shaped string replaced by ``<uuid>`` (peer logs may name user IDs)."""
    return _UUID_RE.sub("<uuid>", text)


class PeerError(RuntimeError):
    """A peer failed to start (it exited, or its ports never opened) or to stop."""


_live: set["PeerProcess"] = set()
_live_lock = threading.Lock()


def _stop_all() -> None:
    with _live_lock:
        procs = list(_live)
    for proc in procs:
        try:
            proc.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            pass


atexit.register(_stop_all)


class PeerProcess:
    """One peer process running ``config`` (a JSON-able mapping).

    Use as a context manager (``with SomePeer(cfg) as p: ...``) or call :meth:`start` / :meth:`stop`.
    :meth:`start` returns once every port of :meth:`listen_ports` accepts connections, or raises
    :attr:`error_class` with the log tail.  The log stays readable via :meth:`log_tail` / :attr:`log_text`
    after :meth:`stop`.
    """

    #: Raised by :meth:`start`; subclasses narrow it so callers can catch one peer's errors.
    error_class: ClassVar[type[PeerError]] = PeerError
    #: File name of the log inside the temp directory.
    log_name: ClassVar[str] = "peer.log"
    #: Whether the child gets a pipe on stdin (closed by :meth:`stop`) instead of /dev/null.
    stdin_pipe: ClassVar[bool] = False

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        startup_timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
        name: str = "peer",
    ) -> None:
        self.config: dict[str, Any] = json.loads(json.dumps(config))  # deep copy
        self.startup_timeout = startup_timeout
        self.extra_env = dict(env or {})
        self.name = name
        self.tcp_ports: list[int] = self.listen_ports(self.config)
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._log_path: str | None = None
        self._log_file: IO[bytes] | None = None
        self._final_log: str | None = None
        self.returncode: int | None = None  # set by stop()

    # -- what subclasses provide -------------------------------------------------------------------------------

    def command(self, config_path: str) -> list[str]:
        """The argv that runs the peer on ``config_path``."""
        raise NotImplementedError

    def listen_ports(self, config: Mapping[str, Any]) -> list[int]:
        """The TCP ports ``config`` listens on; :meth:`start` waits until each accepts."""
        raise NotImplementedError

    def base_env(self) -> dict[str, str]:
        """Environment added for every process of this kind (before ``env=``)."""
        return {}

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> "PeerProcess":
        """Write the config, start the process and wait until its TCP ports accept."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        # Readiness is "the port accepts": a port someone else already
        # listens on would look ready at once, so refuse it up front.
        busy = [p for p in self.tcp_ports if port_accepts(p)]
        if busy:
            raise self.error_class(f"{self.name}: TCP port(s) {busy} on {LOOPBACK} already in use")
        self._final_log = None
        self._tmpdir = tempfile.mkdtemp(prefix=f"vmess-{self.name}-")
        config_path = os.path.join(self._tmpdir, "config.json")
        self._log_path = os.path.join(self._tmpdir, self.log_name)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(self.config, f, indent=2)
        self._log_file = open(self._log_path, "wb")
        env = dict(os.environ)
        env.update(self.base_env())
        env.update(self.extra_env)
        try:
            self.proc = subprocess.Popen(
                self.command(config_path),
                stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmpdir,
                start_new_session=True,  # its own process group: no terminal signals, killpg on stop
            )
        except BaseException:
            self._cleanup_files()
            raise
        with _live_lock:
            _live.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.tcp_ports)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise self.error_class(
                    f"{self.name} exited with status {rc} during startup "
                    f"(config ports {self.tcp_ports});\n--- log tail ---\n{self.log_tail()}"
                )
            pending = [p for p in pending if not port_accepts(p)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise self.error_class(
                    f"{self.name} did not open TCP port(s) {pending} within "
                    f"{self.startup_timeout:.1f}s;\n--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _signal_group(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        """Send ``sig`` to the process group the child leads (it was started in a new session)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - the group is gone and its id reused
            proc.send_signal(sig)

    def stop(self) -> None:
        """Stop the whole process group (SIGTERM, then SIGKILL; bounded waits), reap it, remove the temp files."""
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:  # a peer that watches its stdin exits on EOF
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass
                    try:
                        proc.wait(timeout=STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        pass
                if proc.poll() is None:
                    self._signal_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(timeout=STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        self._signal_group(proc, signal.SIGKILL)
                        try:
                            proc.wait(timeout=STOP_TIMEOUT)
                        except subprocess.TimeoutExpired:
                            raise self.error_class(f"{self.name} (pid {proc.pid}) survived SIGKILL") from None
            finally:
                self.returncode = proc.returncode
                with _live_lock:
                    _live.discard(self)
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if self._log_file is not None:
            try:
                self._log_file.close()
            finally:
                self._log_file = None
        if self._log_path is not None:
            self._final_log = self._read_log()
            self._log_path = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "PeerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; the atexit hook covers the rest
        try:
            if self.proc is not None:
                self.stop()
        except Exception:
            pass

    # -- inspection --------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def port(self) -> int:
        """The first listen port."""
        return self.tcp_ports[0]

    def _read_log(self) -> str:
        if self._log_path is None:
            return self._final_log or ""
        if self._log_file is not None:
            try:
                self._log_file.flush()
            except (OSError, ValueError):
                pass
        try:
            with open(self._log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    @property
    def log_text(self) -> str:
        """The whole log (stdout + stderr) so far."""
        return self._read_log()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log, UUIDs masked (this is what goes into failure reports)."""
        return mask_uuids("\n".join(self._read_log().splitlines()[-lines:]))

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.name} pid={self.pid} ports={self.tcp_ports} {state}>"


@dataclass
class RunningPeer:
    """A peer server a module's tests share: its port, and its processes (their logs go into failure reports)."""

    port: int
    processes: list[PeerProcess] = field(default_factory=list)
