"""Park idle TCP connections: bare file descriptors in one epoll set instead of event-loop transports.

An event loop's transport costs about 1.2 KB per socket (uvloop's and asyncio's alike), and a relayed session
has two sockets. A session that has been quiet for a while gives both up: each socket is duplicated, its
transport aborted (which closes only the loop's descriptor, not the connection), and the duplicate joins one
``epoll`` set per server that the loop watches through a single reader. When a parked socket turns readable
(data, EOF or an error), its owner is told to wake and builds new transports over the same connections with
``loop.connect_accepted_socket``. Nothing is read or written while parked, so no byte can be lost or reordered:
what arrives waits in the kernel.

Only plain TCP transports of asyncio's selector loop or uvloop, with nothing buffered for writing, are parked.
On platforms without ``select.epoll`` parking is off (:func:`parking_supported`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = ["ParkingLot", "can_park", "drop_parked", "parking_supported", "reattach"]

log = logging.getLogger("vmess.parking")

_PARKABLE_TRANSPORTS = frozenset({
    ("asyncio.selector_events", "_SelectorSocketTransport"),
    ("uvloop.loop", "TCPTransport"),
})

_EPOLL_EVENTS = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLPRI", 0)


def parking_supported() -> bool:
    """True where connections can be parked (Linux: ``select.epoll``)."""
    return hasattr(select, "epoll")


def can_park(transport: Any) -> bool:
    """True for a plain, open, reading TCP transport of the loop (no TLS, no wrapper) with an empty write buffer."""
    if transport is None or (type(transport).__module__, type(transport).__name__) not in _PARKABLE_TRANSPORTS:
        return False
    try:
        return (
            not transport.is_closing()
            and transport.is_reading()
            and transport.get_write_buffer_size() == 0
            and transport.get_extra_info("sslcontext") is None
            and transport.get_extra_info("socket") is not None
        )
    except (AttributeError, OSError, RuntimeError):
        return False


class ParkingLot:
    """One epoll set of parked connections for one event loop; owners get ``wake()`` when theirs turn readable.

    An owner is any object with a ``wake()`` method. :meth:`park` takes its transports (all must pass
    :func:`can_park`) and returns the parked descriptors; :meth:`release` takes them back out of the set (the
    owner then reattaches them with :func:`reattach`, or closes them with :meth:`close_fds`).
    """

    __slots__ = ("loop", "_epoll", "_owners", "_closed", "parked_total", "woken_total")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll: Optional[Any] = None  # select.epoll, made at the first park
        self._owners: Dict[int, Any] = {}  # parked fd -> owner
        self._closed = False
        self.parked_total = 0  # connections parked so far (for stats and tests)
        self.woken_total = 0

    def __len__(self) -> int:
        """Descriptors parked now."""
        return len(self._owners)

    def park(self, owner: Any, transports: Sequence[Any]) -> Optional[Tuple[int, ...]]:
        """Park ``transports`` for ``owner``: returns their duplicated descriptors, or None (nothing changed).

        The transports are aborted: their protocols still get ``connection_lost(None)``, which the owner must
        expect and ignore.
        """
        if self._closed or not parking_supported() or not all(can_park(t) for t in transports):
            return None
        fds: list[int] = []
        try:
            if self._epoll is None:
                self._epoll = select.epoll()
                self.loop.add_reader(self._epoll.fileno(), self._on_ready)
            for t in transports:
                fds.append(os.dup(t.get_extra_info("socket").fileno()))
            for fd in fds:
                self._epoll.register(fd, _EPOLL_EVENTS)
        except OSError as exc:  # out of descriptors, say: the session just stays as it is
            log.debug("cannot park a session: %s", exc)
            self._forget(fds)
            self.close_fds(fds)
            return None
        for fd in fds:
            self._owners[fd] = owner
        for t in transports:
            t.abort()  # closes the loop's descriptor only: the duplicate keeps the connection open
        self.parked_total += 1
        return tuple(fds)

    def release(self, fds: Sequence[int]) -> None:
        """Take ``fds`` out of the set (they stay open: the caller owns them again)."""
        self._forget(fds)

    @staticmethod
    def close_fds(fds: Sequence[int]) -> None:
        """Close descriptors that are no longer parked (a parked session that ends)."""
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        """Stop watching (the server closes); parked owners must have been ended or woken first."""
        self._closed = True
        ep, self._epoll = self._epoll, None
        if ep is not None:
            self.loop.remove_reader(ep.fileno())
            ep.close()
        self._owners.clear()

    def owners(self) -> list[Any]:
        """The owners of the parked connections (each once)."""
        return list({id(o): o for o in self._owners.values()}.values())

    def _forget(self, fds: Sequence[int]) -> None:
        ep = self._epoll
        for fd in fds:
            if self._owners.pop(fd, None) is not None and ep is not None:
                try:
                    ep.unregister(fd)
                except OSError:
                    pass

    def _on_ready(self) -> None:
        ep = self._epoll
        if ep is None:
            return
        try:
            ready = ep.poll(0, 256)
        except OSError:  # EINTR: the loop calls again
            return
        woken: Dict[int, Tuple[Any, list[int]]] = {}
        for fd, _events in ready:
            owner = self._owners.get(fd)
            if owner is not None:
                woken.setdefault(id(owner), (owner, []))[1].append(fd)
        for owner, fds in woken.values():
            self.woken_total += 1
            try:
                owner.wake()
            except Exception:  # noqa: BLE001 - one owner's bug must not stop the others from waking
                log.exception("waking a parked session failed")
            left = [fd for fd in fds if fd in self._owners]
            if left:  # still registered: level-triggered epoll would call us again at once, forever
                log.error("a woken session did not take its connections back; they stay out of the set")
                self._forget(left)


def drop_parked(lot: Optional[ParkingLot], fds: Sequence[int], unpark_task: Optional["asyncio.Task[Any]"]) -> bool:
    """End parked connections that were not reattached: cancel the wake-up in progress (unless it is the caller),
    take ``fds`` out of ``lot`` and close them. True if ``unpark_task`` was cancelled (the owner forgets it)."""
    cancelled = False
    if unpark_task is not None and unpark_task is not asyncio.current_task():
        unpark_task.cancel()
        cancelled = True
    if lot is not None:
        lot.release(fds)
    ParkingLot.close_fds(fds)
    return cancelled


async def reattach(loop: asyncio.AbstractEventLoop, fd: int, protocol: asyncio.BaseProtocol) -> asyncio.BaseTransport:
    """A new loop transport for the parked descriptor ``fd``, delivering to ``protocol`` (connection_made again)."""
    sock = socket.socket(fileno=fd)
    try:
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
    except BaseException:
        sock.close()
        raise
    return transport
