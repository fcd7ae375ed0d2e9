"""One timer for many sessions: idle timeouts, and giving back the cipher memory of sessions at rest.

A timer per session costs memory (a TimerHandle, and a libuv handle on uvloop) and a heap operation per re-arm;
a server with thousands of mostly idle sessions does better with one sweep over them now and then.

A session object registered here has a ``_last_activity`` attribute (a loop time, updated by its owner on every
read or write) and two methods: ``idle_expired()``, called once it has been quiet for ``idle_timeout`` seconds
(checked every ``idle_timeout / 4`` seconds, at most every 5 s: a session ends between 1 and 1.25 times the
timeout after its last byte, or at most 5 s later), and ``rest()``, called once it has been quiet for ``REST``
seconds after it woke (see :meth:`Sweeper.woke`): the place to free per-session memory that the next byte can
rebuild, such as cipher contexts. With ``park_after`` set, a session that stays at rest that long gets ``park()``
(checked every ``park_after / 2`` seconds): it may give up its transports (see :mod:`vmess._parking`) and
returns True if it did; it calls :meth:`Sweeper.woke` again when traffic resumes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional, Set

from ._parking import ParkingLot, parking_supported

__all__ = ["Sweeper", "REST", "PARK_AFTER"]

REST = 0.25
"""Seconds without traffic after which a session is told to rest."""

PARK_AFTER = 1.0
"""Default seconds without traffic after which a resting session is asked to park its connections."""


class Sweeper:
    """Idle timeouts and rest for the sessions of one server or proxy (one event loop)."""

    __slots__ = ("loop", "idle_timeout", "idle_tick", "rest_after", "park_after", "parking", "sessions", "awake", "resting",
                 "_idle_handle", "_rest_handle", "_park_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout: float, rest_after: float = REST,
                 park_after: Optional[float] = None) -> None:
        self.loop = loop
        self.idle_timeout = idle_timeout
        self.idle_tick = min(max(idle_timeout / 4, 0.05), 5.0)
        self.rest_after = rest_after
        self.park_after = park_after if park_after is not None and park_after > 0 and parking_supported() else None
        self.parking = ParkingLot(loop) if self.park_after is not None else None  # where parked sessions wait
        self.sessions: Set[Any] = set()  # watched for the idle timeout
        self.awake: Set[Any] = set()  # woke since they last rested
        self.resting: Set[Any] = set()  # rested and not parked yet (only with park_after)
        self._idle_handle: Optional[asyncio.TimerHandle] = None
        self._rest_handle: Optional[asyncio.TimerHandle] = None
        self._park_handle: Optional[asyncio.TimerHandle] = None

    def watch(self, session: Any) -> None:
        """Watch ``session`` for the idle timeout (and rest), from now on."""
        self.sessions.add(session)
        if self._idle_handle is None:
            self._idle_handle = self.loop.call_later(self.idle_tick, self._sweep_idle)
        self.woke(session)

    def woke(self, session: Any) -> None:
        """``session`` used what ``rest()`` frees: tell it to rest again once it is quiet."""
        self.awake.add(session)
        self.resting.discard(session)
        if self._rest_handle is None:
            self._rest_handle = self.loop.call_later(self.rest_after, self._sweep_rest)

    def forget(self, session: Any) -> None:
        """Stop watching ``session`` (it ended)."""
        self.sessions.discard(session)
        self.awake.discard(session)
        self.resting.discard(session)

    def close(self) -> None:
        """Stop the timers and forget every session."""
        for handle in (self._idle_handle, self._rest_handle, self._park_handle):
            if handle is not None:
                handle.cancel()
        self._idle_handle = self._rest_handle = self._park_handle = None
        self.sessions.clear()
        self.awake.clear()
        self.resting.clear()
        if self.parking is not None:
            self.parking.close()

    def _sweep_idle(self) -> None:
        self._idle_handle = None
        limit = self.loop.time() - self.idle_timeout
        expired = [s for s in self.sessions if s._last_activity <= limit]
        for session in expired:
            self.forget(session)
            session.idle_expired()
        if self.sessions and self._idle_handle is None:
            self._idle_handle = self.loop.call_later(self.idle_tick, self._sweep_idle)

    def _sweep_rest(self) -> None:
        self._rest_handle = None
        limit = self.loop.time() - self.rest_after
        resting = [s for s in self.awake if s._last_activity <= limit]
        for session in resting:
            self.awake.discard(session)
            session.rest()
        if self.park_after is not None and resting:
            self.resting.update(s for s in resting if s in self.sessions)
            if self._park_handle is None and self.resting:
                self._park_handle = self.loop.call_later(self.park_after / 2, self._sweep_park)
        if self.awake and self._rest_handle is None:
            self._rest_handle = self.loop.call_later(self.rest_after, self._sweep_rest)

    def _sweep_park(self) -> None:
        self._park_handle = None
        assert self.park_after is not None
        limit = self.loop.time() - self.park_after
        quiet = [s for s in self.resting if s._last_activity <= limit]
        for session in quiet:
            self.resting.discard(session)
            session.park()  # parked or not, it is not asked again until it wakes and rests again
        if self.resting and self._park_handle is None:
            self._park_handle = self.loop.call_later(self.park_after / 2, self._sweep_park)
