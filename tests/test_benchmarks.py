"""Every benchmark runs to the end: ``python -m benchmarks.NAME --smoke``, each step of it
in seconds against the real broker, server and daemons it measures, and prints its
tables with the machine and the date. The figures of a smoke run mean nothing; what
counts is that nothing on the way crashes (a too long user name, a missing optional
library, a script that cannot import the test bed).

The runs go two at a time (most of their time is waiting for the parts they start),
longest first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(
    p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_")
)
SLOWEST_FIRST = (
    "scale_out", "web_voice", "voice_quality", "mouth_to_ear", "soak", "voice_quality_dsp",
    "control_latency",
    "server_load", "footprint", "fanout", "flood_fairness", "audio_codec", "voice_crypto",
)  # fmt: skip
"""The smoke runs by their length here (a new benchmark goes last until placed)."""
PARALLEL = 3  # the smoke runs mostly wait (real-time audio, the network): 3 fit on 2 cores
RUN_TIMEOUT_S = 180.0


def smoke(name: str) -> tuple[str, int, str, float]:
    """(name, exit status, output, seconds) of one smoke run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", "--smoke"], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        return name, -1, f"timed out after {RUN_TIMEOUT_S:.0f} s\n{exc.stdout}", RUN_TIMEOUT_S
    return name, done.returncode, done.stdout + done.stderr, time.monotonic() - started


@pytest.mark.timeout(600)
def test_every_benchmark_runs_to_the_end_and_prints_its_tables() -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    order = sorted(BENCHMARKS, key=lambda name: rank.get(name, len(rank)))
    with ThreadPoolExecutor(PARALLEL) as pool:
        runs = list(pool.map(smoke, order))
    failed = [
        f"--- benchmarks.{name} --smoke: exit {status} after {seconds:.0f} s\n{output[-3000:]}"
        for name, status, output, seconds in runs
        if status != 0 or "| Machine |" not in output or "Traceback" in output
    ]
    assert failed == [], "\n".join(failed)


def test_the_readme_names_only_benchmarks_that_exist_and_how_to_smoke_them() -> None:
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/])benchmarks\.([a-z_]+)\b(?!\.py)", readme))
    assert named and named <= set(BENCHMARKS), named - set(BENCHMARKS)
    assert "--smoke" in readme
