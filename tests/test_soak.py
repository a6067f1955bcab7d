"""The chaos soak's machinery (benchmarks/soak.py), briefly: a small world of one
daemon and three clients takes one fault of each kind and every invariant holds, and
the checker does see a device that stopped answering."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from benchmarks.soak import KINDS, Checker, World, inflict, now


def test_one_fault_of_each_kind_breaks_no_invariant(tmp_path: Path) -> None:
    world = World(tmp_path, seed=7, devices=1, clients_per_room=3, freeze_s=2.0)
    started = now()
    checker = Checker(world, started)
    lines: list[str] = []
    try:
        deadline = started + 20
        while (checker.strays() or checker.problems()) and now() < deadline:
            time.sleep(0.2)
        assert not checker.strays(), "the clients never got into the daemon's room"
        records = [inflict(world, checker, kind, started, lines.append) for kind in KINDS]
        checker.tick()
        # The checker is not blind: a daemon frozen behind its back is a problem.
        device = world.devices[0]
        assert device.proc.proc is not None
        device.proc.proc.send_signal(signal.SIGSTOP)
        try:
            unseen = checker.problems()
        finally:
            device.proc.proc.send_signal(signal.SIGCONT)
    finally:
        world.close()
    assert checker.violations == [], "\n".join(lines)
    assert [r.kind for r in records] == list(KINDS)
    assert all(r.recovered_s is not None for r in records), "\n".join(lines)
    broker_fault = records[KINDS.index("broker")]
    assert set(broker_fault.audio_s) == {device.name}
    assert f"device {device.name}" in unseen
    assert world.tally.answered > 0
