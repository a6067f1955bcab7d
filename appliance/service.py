"""systemd glue: ``sd_notify`` without a dependency, and the watchdog interval.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket
import threading

_ABSTRACT = "@"


def notify(*states: str) -> bool:
    """Send ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...`` to systemd.

    Returns whether a notification socket was there to send to.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith(_ABSTRACT):
        address = "\0" + address[1:]
    # Non-blocking: a notify socket nobody reads (a full datagram queue) must drop a
    # STATUS= line, never freeze the caller's event loop.
    flags = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
    with socket.socket(socket.AF_UNIX, flags) as sock:
        try:
            sock.sendto("\n".join(states).encode(), address)
        except OSError:  # BlockingIOError included
            return False
    return True


def watchdog_interval_s() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec=``), or None if unset."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


_named: dict[int, str] = {}


def name_threads() -> int:
    """Give every Python thread's OS thread its Python name (``/proc/self/task/*/comm``,
    15 bytes), so ``top -H``, ``ps -L`` and the footprint benchmark tell them apart
    (Python 3.11 leaves them all ``python``). Cheap to repeat: a thread is written
    once. Returns how many were named now."""
    count = 0
    alive: dict[int, str] = {}
    for thread in threading.enumerate():
        tid, name = thread.native_id, thread.name[:15]
        if tid is None:
            continue
        alive[tid] = name
        if _named.get(tid) == name:
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm", "w", encoding="ascii", errors="replace") as f:
                f.write(name)
        except OSError:
            continue  # not Linux, or the thread ended meanwhile
        count += 1
    _named.clear()
    _named.update(alive)
    return count
