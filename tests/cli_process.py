"""Run the ``vmess`` CLI as a subprocess for tests: wait for ``listening on``, stop it, collect output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence, Tuple


class CliProcess:
    """``python -m vmess ARGS`` in the background; ``address`` is parsed from its ``listening on`` line."""

    def __init__(self, args: Sequence[str], *, timeout: float = 20.0, env: Optional[dict] = None) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmess", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.stdout_lines: List[str] = []
        self.stderr_lines: List[str] = []
        self._ready = threading.Event()
        self.address: Optional[Tuple[str, int]] = None
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout_lines, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr_lines, False), daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"vmess {' '.join(self.args)} did not start: {self.output()}")
        if self.address is None:
            self.stop()
            raise RuntimeError(f"vmess {' '.join(self.args)} exited early: {self.output()}")

    def _pump(self, stream, sink: List[str], watch: bool) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.append(line.rstrip("\n"))
            if watch and line.startswith("listening on "):
                hostport = line.split("listening on ", 1)[1].strip()
                host, _, port = hostport.rpartition(":")
                self.address = (host.strip("[]"), int(port))
                self._ready.set()
        self._ready.set()

    @property
    def port(self) -> int:
        assert self.address is not None
        return self.address[1]

    def output(self) -> str:
        return "\n".join(self.stdout_lines + self.stderr_lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait; kill if it does not exit in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        deadline = time.time() + 2
        while time.time() < deadline and not self.stdout_lines[-1:]:
            time.sleep(0.01)
        return self.proc.returncode

    def __enter__(self) -> "CliProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(args: Sequence[str], *, input: Optional[str] = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``python -m vmess ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "vmess", *args], input=input, capture_output=True, text=True, timeout=timeout
    )
