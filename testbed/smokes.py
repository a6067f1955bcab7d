"""Every benchmark's ``--smoke`` run, started early and collected late.

A smoke run mostly waits for the broker, servers, daemons and browser it starts. The
test suite therefore starts them all as its session begins and runs its offline tests
(pure computation on injected clocks) beside them; the test that checks the smoke runs
then only collects what they printed (``tests/conftest.py``, ``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(
    p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_")
)
SLOWEST_FIRST = (
    "scale_out", "web_voice", "voice_quality", "mouth_to_ear", "soak", "flood_fairness",
    "voice_quality_dsp", "footprint", "fanout", "server_load", "control_latency",
    "retained_junk", "audio_codec", "voice_crypto",
)  # fmt: skip
"""The smoke runs by their length here (a new benchmark goes last until placed)."""
PARALLEL = 3  # the smoke runs mostly wait (real-time audio, the network): 3 fit on 2 cores
RUN_TIMEOUT_S = 180.0
SMOKE_TEST = "tests/test_benchmarks.py::test_every_benchmark_runs_to_the_end_and_prints_its_tables"
BESIDE_SMOKES = (
    "tests/protocol/", "tests/audio/test_processing.py", "tests/audio/test_howl.py",
    "tests/audio/test_jitter.py", "tests/audio/test_opus.py", "tests/audio/test_mixer.py",
    "tests/audio/test_tone.py", "tests/audio/test_room.py", "tests/device/test_machine_",
    "tests/device/test_gestures.py", "tests/device/test_settings.py", "tests/test_layers.py",
    "tests/test_config_strict.py", "tests/device/test_service_files.py", "tests/test_admin.py",
    "tests/test_cli_help.py", "tests/server/test_rules.py", "tests/test_paho_internals.py",
)  # fmt: skip
"""Offline tests (computation on injected clocks, files, linters; no wall clock): run
beside the smokes."""


@dataclass(frozen=True, slots=True)
class SmokeRun:
    """One benchmark's ``--smoke`` run: its exit status (negative: killed by that
    signal; -1: never started, the session ended first), output and seconds."""

    name: str
    status: int
    output: str
    seconds: float


class SmokeRuns:
    """Every benchmark's smoke run, longest first, ``PARALLEL`` at a time."""

    def __init__(self, names: list[str] | None = None) -> None:
        rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
        self.names = sorted(names or BENCHMARKS, key=lambda name: rank.get(name, len(rank)))
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="smoke")
        self._futures: list[Future[SmokeRun]] = []
        self._procs: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> SmokeRuns:
        """Queue every run; returns at once."""
        self._futures = [self._pool.submit(self._run, name) for name in self.names]
        return self

    def results(self) -> list[SmokeRun]:
        """Wait for every run (in the order of :attr:`names`)."""
        return [future.result() for future in self._futures]

    def stop(self) -> None:
        """Start nothing more; kill the runs still going (a session cut short)."""
        with self._lock:
            self._stopped = True
            for proc in self._procs:
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, name: str) -> SmokeRun:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
        started = time.monotonic()
        with self._lock:
            if self._stopped:
                return SmokeRun(name, -1, "not started: the session ended", 0.0)
            proc = subprocess.Popen(
                [sys.executable, "-m", f"benchmarks.{name}", "--smoke"], cwd=REPO, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            self._procs.add(proc)
        try:
            output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            output = f"timed out after {RUN_TIMEOUT_S:.0f} s\n{output}"
        finally:
            with self._lock:
                self._procs.discard(proc)
        return SmokeRun(name, proc.returncode, output, time.monotonic() - started)


SMOKE_RUNS = pytest.StashKey[SmokeRuns]()
"""The session's smoke runs, when the session started them early."""


def schedule(items: list[pytest.Item]) -> bool:
    """Put the offline tests first and the smoke test right after them; True when the
    session should start the smoke runs early (the smoke test runs with others)."""
    smoke = [item for item in items if item.nodeid == SMOKE_TEST]
    if not smoke or len(items) == 1:
        return False
    first = [item.nodeid.startswith(BESIDE_SMOKES) for item in items]
    beside = [item for item, offline in zip(items, first, strict=True) if offline]
    rest = [
        item for item, offline in zip(items, first, strict=True)
        if not offline and item is not smoke[0]
    ]  # fmt: skip
    items[:] = [*beside, smoke[0], *rest]
    return True
