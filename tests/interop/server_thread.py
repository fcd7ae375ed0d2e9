"""Our VMess server in a background thread with its own event loop, for tests that drive v2ray with blocking sockets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Optional

from vmess.aio_server import VmessServer, start_server


class ServerThread:
    """Our VMess server in a background thread with its own event loop."""

    def __init__(self, users: Any, **kwargs: Any) -> None:
        self.users = users
        self.kwargs = kwargs
        self.server: Optional[VmessServer] = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="vmess-server", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = await start_server(self.users, **self.kwargs)
        self._ready.set()
        await self.server.serve_forever()
        await self.server.wait_closed()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or self.server is None:
            raise RuntimeError(f"server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self.loop is not None and self.server is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.server.close)
        self._thread.join(10)
        assert not self._thread.is_alive(), "server thread did not stop"

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def stats(self) -> Any:
        assert self.server is not None
        return self.server.stats
