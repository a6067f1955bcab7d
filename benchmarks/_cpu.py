"""CPU as a ratio to the codec floor, thread wake-ups, and CPU quotas for the benchmarks.

This machine's speed drifts from run to run, so a daemon's CPU is stated against a
**floor** measured in the same window: a child process (:class:`Floor`) that does only
the bare work of a seated device hearing three speakers, paced in real time every
20 ms: one Opus encode of the device's own voice (its profile's encoder), three 48 kHz
decodes, and with the hands-free chain on (3A) that chain on the same audio (two 10 ms
reference blocks rendered, one captured block processed). Run it directly::

    .venv/bin/python -m benchmarks._cpu --wav MIC.wav --heard SPEECH48K.wav --three-a

:class:`CpuQuota` puts processes under the kernel's CFS bandwidth control (cgroup v2
``cpu.max`` or v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, whichever this machine
mounts; needs root), P % of one core per ``period_us``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from appliance.hw_mocks.audio import read_wav_mono

from appliance.audio import opus
from appliance.audio.profile import PROFILES, ProfileName

PACKET_S = 0.020
SPEAKERS = 3
QUOTA_PERIOD_US = 20_000
"""20 ms: one packet's work (capture, 3A, encode) fits in one period, and a throttled
thread waits at most that long; 10 ms made a 10 % quota's 1 ms too small for one
block's burst (capture callbacks 60 ms late at p99 while using a third of the quota)."""
_CGROUP = Path("/sys/fs/cgroup")


# --- per-process and per-thread accounting ------------------------------------------


def process_cpu_ns(pid: int) -> int:
    """CPU time of all of ``pid``'s threads, in ns (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int((task / "schedstat").read_text().split()[0])
    return total


@dataclass(frozen=True, slots=True)
class ThreadSample:
    """One thread's name (``comm``), voluntary context switches and CPU time."""

    name: str
    wakeups: int
    cpu_ns: int


def thread_samples(pid: int) -> dict[int, ThreadSample]:
    """Every thread of ``pid``: its kernel name, voluntary switches (each one a sleep,
    so a wake-up) and CPU time; threads that vanish meanwhile are left out."""
    found: dict[int, ThreadSample] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = (task / "status").read_text()
                switches = next(
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith("voluntary_ctxt_switches:")
                )
                cpu = int((task / "schedstat").read_text().split()[0])
                name = (task / "comm").read_text().strip()
                found[int(task.name)] = ThreadSample(name, switches, cpu)
    return found


def per_thread_rates(
    before: dict[int, ThreadSample], after: dict[int, ThreadSample], seconds: float
) -> list[tuple[str, float, float]]:
    """(name, wake-ups/s, % of one core) per thread name over a window, busiest first;
    threads sharing a name are summed (``name xN``)."""
    rows: dict[str, list[float]] = {}
    for tid, end in after.items():
        start = before.get(tid, ThreadSample(end.name, 0, 0))
        row = rows.setdefault(end.name, [0.0, 0.0, 0.0])
        row[0] += (end.wakeups - start.wakeups) / seconds
        row[1] += (end.cpu_ns - start.cpu_ns) / 1e9 / seconds * 100
        row[2] += 1
    named = [
        (f"{name} x{int(n)}" if n > 1 else name, wakes, cpu)
        for name, (wakes, cpu, n) in rows.items()
    ]
    return sorted(named, key=lambda row: (-row[1], -row[2]))


# --- the floor -----------------------------------------------------------------------


class Floor:
    """The bare codec (and 3A) work in a child process, paced in real time."""

    def __init__(self, wav: Path, heard: Path, profile: str, *, three_a: bool) -> None:
        self.three_a = three_a
        command = [sys.executable, "-m", "benchmarks._cpu", "--wav", str(wav)]
        command += ["--heard", str(heard)]
        command += ["--profile", profile] + (["--three-a"] if three_a else [])
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            self.close()
            raise RuntimeError("the floor process did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        """Stop the worker (it exits when its stdin closes)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _floor_main(wav: Path, heard_wav: Path, profile_name: str, three_a: bool) -> None:
    """The worker: prepare everything, say ``ready``, then work every 20 ms until stdin
    closes (watched on a thread, so the work loop itself only sleeps)."""
    import threading  # noqa: PLC0415 - the worker's own

    profile = PROFILES[cast(ProfileName, profile_name)]
    pcm, rate = read_wav_mono(wav)
    if rate != profile.capture_rate:
        raise SystemExit(f"{wav} is {rate} Hz, the profile captures at {profile.capture_rate}")
    n = profile.frame_samples
    blocks = [np.ascontiguousarray(b) for b in pcm[: len(pcm) // n * n].reshape(-1, n)]
    encoder = opus.Encoder(
        rate, frame_ms=profile.frame_ms, bitrate=profile.bitrate,
        complexity=profile.complexity, fec=True,
    )  # fmt: skip
    speaker = opus.Encoder(48_000, frame_ms=20, bitrate=24_000, complexity=5, fec=True)
    loud, _ = read_wav_mono(heard_wav)
    heard = [
        speaker.encode(np.ascontiguousarray(b))
        for b in loud[: len(loud) // 960 * 960].reshape(-1, 960)
    ]
    decoders = [opus.Decoder(48_000, 1) for _ in range(SPEAKERS)]
    chain = None
    if three_a:
        from appliance.audio.processing import CaptureChain  # noqa: PLC0415 - optional

        chain = CaptureChain(rate)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    packets_per_block = profile.frame_ms // 20
    t0, k = time.monotonic(), 0
    while not stop.is_set():
        for _ in range(packets_per_block):
            played = [d.decode(heard[(k + i * 97) % len(heard)]) for i, d in enumerate(decoders)]
            if chain is not None:
                for half in (played[0][:480], played[0][480:]):
                    chain.render(half)
            k += 1
        block = blocks[(k // packets_per_block) % len(blocks)]
        encoder.encode(chain.process(block) if chain is not None else block)
        delay = t0 + k * PACKET_S - time.monotonic()
        if delay > 0:
            stop.wait(delay)


# --- CPU quota -----------------------------------------------------------------------


class CpuQuota:
    """A cgroup with ``percent`` % of one core per ``period_us``; :meth:`add` moves a
    process (all its threads) in. Removed again by :meth:`close`."""

    def __init__(self, name: str, percent: float, period_us: int = QUOTA_PERIOD_US) -> None:
        if not 0 < percent <= 100 * (os.cpu_count() or 1):
            raise ValueError(f"quota {percent} % out of range")
        self.percent = percent
        quota_us = round(period_us * percent / 100)
        if quota_us < 1000:  # the kernel's minimum quota is 1 ms: lengthen the period
            quota_us, period_us = 1000, round(1000 * 100 / percent)
        self.period_us, self.quota_us = period_us, quota_us
        v2 = _v2_root()
        if v2 is not None:
            self.path = v2 / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota_us} {period_us}\n")
        else:
            self.path = _CGROUP / "cpu" / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(f"{period_us}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
        self._pids: list[int] = []

    def add(self, pid: int) -> None:
        """Move ``pid`` (every thread) into the group."""
        (self.path / "cgroup.procs").write_text(f"{pid}\n")
        self._pids.append(pid)

    def throttled(self) -> tuple[int, float]:
        """(periods throttled, seconds throttled) so far (``cpu.stat``)."""
        stat: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                stat[key] = int(value)
        ns = stat.get("throttled_time", stat.get("throttled_usec", 0) * 1000)
        return stat.get("nr_throttled", 0), ns / 1e9

    def close(self) -> None:
        """Move what is left back to the parent group and remove the group."""
        parent = self.path.parent / "cgroup.procs"
        with contextlib.suppress(OSError):
            for pid in (self.path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    parent.write_text(f"{pid}\n")
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _v2_root() -> Path | None:
    """The cgroup v2 hierarchy if it has the cpu controller (else v1 is used)."""
    for root in (_CGROUP, _CGROUP / "unified"):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            subtree = root / "cgroup.subtree_control"
            with contextlib.suppress(OSError):
                if "cpu" not in subtree.read_text().split():
                    subtree.write_text("+cpu\n")
            return root
    return None


def quota_available() -> str | None:
    """Why a CPU quota cannot be set here, or None if it can."""
    if os.geteuid() != 0:
        return "CPU quotas need root (cgroups)"
    if _v2_root() is None and not (_CGROUP / "cpu" / "cpu.cfs_quota_us").exists():
        return "no cgroup with the cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us)"
    return None


def parse_quotas(text: str) -> list[float]:
    """``"20,10,5"`` -> [20.0, 10.0, 5.0] (largest first), for ``--cpu-quota``."""
    values = sorted({float(v) for v in text.split(",") if v.strip()}, reverse=True)
    if not values or any(v <= 0 or v > 100 for v in values):
        raise argparse.ArgumentTypeError("percentages of one core, 0 < P <= 100")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the floor worker (see the module doc)")
    parser.add_argument("--wav", type=Path, required=True, help="speech at the capture rate")
    parser.add_argument("--heard", type=Path, required=True, help="speech at 48 kHz")
    parser.add_argument("--profile", default="default", choices=sorted(PROFILES))
    parser.add_argument("--three-a", action="store_true", help="with the hands-free chain")
    args = parser.parse_args(argv)
    _floor_main(args.wav, args.heard, args.profile, args.three_a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
