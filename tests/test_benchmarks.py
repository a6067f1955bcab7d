"""Every benchmark runs to the end: ``python -m benchmarks.NAME --smoke``, each step of it
in seconds against the real broker, server and daemons it measures, and prints its
tables with the machine and the date. The figures of a smoke run mean nothing; what
counts is that nothing on the way crashes (a too long user name, a missing optional
library, a script that cannot import the test bed).

The runs start with the session, beside the offline tests (``tests/conftest.py``);
run alone, this test starts them itself.
"""

from __future__ import annotations

import re

import pytest

from testbed.smokes import BENCHMARKS, REPO, SMOKE_RUNS, SmokeRuns


@pytest.mark.timeout(600)
def test_every_benchmark_runs_to_the_end_and_prints_its_tables(
    request: pytest.FixtureRequest,
) -> None:
    runs = request.config.stash.get(SMOKE_RUNS, None)
    if runs is None:
        runs = SmokeRuns().start()
        request.addfinalizer(runs.stop)
    failed = [
        f"--- benchmarks.{run.name} --smoke: exit {run.status} after {run.seconds:.0f} s\n"
        f"{run.output[-3000:]}"
        for run in runs.results()
        if run.status != 0 or "| Machine |" not in run.output or "Traceback" in run.output
    ]
    assert failed == [], "\n".join(failed)


def test_the_readme_names_only_benchmarks_that_exist_and_how_to_smoke_them() -> None:
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/])benchmarks\.([a-z_]+)\b(?!\.py)", readme))
    assert named and named <= set(BENCHMARKS), named - set(BENCHMARKS)
    assert "--smoke" in readme
