"""Shared by the benchmarks: the machine-and-date header, Markdown tables, percentiles
and per-process CPU/RSS read from ``/proc`` (no psutil needed). Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import resource
import socket
import threading
from collections.abc import Sequence
from pathlib import Path

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the machine ---------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from ``/proc/cpuinfo`` (x86 ``model name``; ARM ``Model``/``Hardware``)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or "unknown"


def ram_bytes() -> int:
    """Total RAM (``MemTotal`` of ``/proc/meminfo``), 0 if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def os_name() -> str:
    """``PRETTY_NAME`` of ``/etc/os-release`` plus the kernel release."""
    pretty = platform.system()
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return f"{pretty}, kernel {platform.release()} ({platform.machine()})"


def add_smoke_flag(parser: argparse.ArgumentParser) -> None:
    """``--smoke``: every step of the benchmark in seconds, as the test suite runs it
    (tests/test_benchmarks.py); its figures mean nothing."""
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every step in seconds, for the test suite: its figures mean nothing",
    )


def machine_header(title: str) -> str:
    """A Markdown heading and the machine and date a result was measured on."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("Date", now),
        ("CPU", cpu_model()),
        ("Cores", str(os.cpu_count() or "?")),
        ("RAM", f"{ram_bytes() / 2**30:.1f} GiB"),
        ("OS", os_name()),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
    ]
    return f"# {title}\n\n" + markdown_table(["Machine", ""], rows)


# --- tables and numbers --------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with padded columns (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])]) + "\n"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; NaN if empty."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * q // 100)))
    return sorted_values[int(rank) - 1]


def verdict(met: bool) -> str:
    """The "target met" cell."""
    return "yes" if met else "**no**"


# --- processes -----------------------------------------------------------------------


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (children inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (``/proc/<pid>/stat``); NaN if gone."""
    try:
        return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))
    except OSError:
        return float("nan")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each thread of ``pid`` (``/proc/<pid>/task``), by tid."""
    times: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                times[int(task.name)] = _stat_cpu_seconds(task / "stat")
    return times


def _stat_cpu_seconds(path: Path) -> float:
    text = path.read_text(encoding="ascii", errors="replace")
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def process_rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (``VmRSS`` of ``/proc/<pid>/status``); 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of all cores since boot, from ``/proc/stat``."""
    first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / _CLOCK_TICKS, sum(ticks) / _CLOCK_TICKS


def drain_datagrams(sock: socket.socket) -> threading.Thread:
    """Read and discard ``sock``'s datagrams on a thread until the socket is closed.

    For the stand-in systemd notification socket of a daemon under test
    (``tests.support.gochat.NotifySocket``): it is only read until ``READY=1``, and the
    daemon's ``sd_notify`` (``STATUS=`` on every status change) is a *blocking* send on
    its event loop, so once ``net.unix.max_dgram_qlen`` (10) datagrams are left unread
    the daemon hangs. systemd always reads its socket; a benchmark must too.
    """

    def drain() -> None:
        sock.settimeout(None)
        with contextlib.suppress(OSError):
            while True:
                sock.recv(4096)

    thread = threading.Thread(target=drain, name="notify-drain", daemon=True)
    thread.start()
    return thread
