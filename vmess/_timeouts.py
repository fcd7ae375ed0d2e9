"""``timed(aw, timeout)``: await with a timeout, without the extra task that ``asyncio.wait_for`` makes on 3.11."""

from __future__ import annotations

import asyncio
import sys
from typing import Awaitable, Optional, TypeVar

__all__ = ["timed", "END_LINGER"]

END_LINGER = 2.0
"""Seconds a session over a transport that cannot half-close (TLS, WebSocket) stays open after one direction ended
while the other is quiet; then it closes, so a peer that ignores VMess's end marker still sees the end."""

_T = TypeVar("_T")

if sys.version_info >= (3, 11):

    async def timed(aw: Awaitable[_T], timeout: Optional[float]) -> _T:
        """``await aw``, raising ``asyncio.TimeoutError`` after ``timeout`` seconds (None: no limit)."""
        async with asyncio.timeout(timeout):
            return await aw

else:  # pragma: no cover - Python 3.10

    async def timed(aw: Awaitable[_T], timeout: Optional[float]) -> _T:
        """``await aw``, raising ``asyncio.TimeoutError`` after ``timeout`` seconds (None: no limit)."""
        return await asyncio.wait_for(aw, timeout)
