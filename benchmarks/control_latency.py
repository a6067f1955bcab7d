"""Button to LED across the room, and how fast an appliance is ready.

Run: ``.venv/bin/python -m benchmarks.control_latency [--presses 200] [--ready-runs 10]``
(``--smoke``: seconds).
Prints a Markdown table with the machine and the date; never asserts (the targets are
reported against, not enforced: speed depends on the machine).

1. **Control latency** — what a person feels: a listener appliance's ``raise_hand``
   button is pressed (mock GPIO pin; the clock starts at the release edge, where a
   short press acts) until the host appliance's ``hand`` LED pin lights up. The path is
   the whole system: gesture detector -> state machine -> MQTT request -> Mosquitto ->
   business server (its own process) -> room state -> Mosquitto -> host appliance's
   state machine -> gpiozero LED. Both times come from gpiozero's own pin history
   (``time.monotonic()`` at each change), so polling adds nothing. Lowering the hand
   is timed too, until the listener's own ``hand`` LED goes out (the host's LED is
   blinking then, so the moment it stops is not an edge). Presses are paced well
   under the server's 20 requests/s per user.
2. **Start-up** — ``python -m appliance run --mock-hw`` as a new process until
   ``READY=1`` reaches a stand-in systemd notification socket: idle (broker reached,
   logged in) and hosting (a room created and joined).

Both appliances of (1) run in this process, on their own threads and event loops: a
Pi runs one per box, so this is the pessimistic case for the GIL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.hw_mocks import gpio

from benchmarks._common import (
    add_smoke_flag,
    machine_header,
    markdown_table,
    percentile,
    verdict,
)
from testbed import leds
from testbed.broker import Broker
from testbed.daemons import DaemonProcess, InProcessDaemon
from testbed.server import ServerProcess

TARGET_P99_MS = 15.0
TARGET_READY_S = 1.0
HOLD_S = 0.03
"""How long each press is held (a short press acts at release)."""
GAP_S = 0.06
"""Pause after each measured change: ~8 requests/s, far below the 20/s limit."""
TIMEOUT_S = 5.0


def wait_pin(pin: Any, high: bool, since: float) -> float:
    """The monotonic time ``pin`` last changed to ``high``, once it has, after ``since``."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        changed_at = float(pin._last_change)
        if bool(pin.state) == high and changed_at >= since:
            return changed_at
        if time.monotonic() > deadline:
            raise TimeoutError(f"pin never went {'high' if high else 'low'}")
        time.sleep(0.0002)


def tap(button: Any) -> float:
    """Press and release; returns the release edge's time (where a short press acts)."""
    gpio.press(button)
    time.sleep(HOLD_S)
    gpio.release(button)
    return float(button._last_change)


def control_latency(broker: Broker, presses: int) -> tuple[list[float], list[float]]:
    """(raise -> host's hand LED on, lower -> listener's hand LED off), in seconds."""
    host = InProcessDaemon(broker, "bench-host", mode="host", subject="Benchmark").start()
    listener = InProcessDaemon(broker, "bench-listener", mode="join").start()
    try:
        button = listener.pin("raise_hand")
        host_hand = leds.led_pin(host.factory, "hand", host.pins)
        own_hand = leds.led_pin(listener.factory, "hand", listener.pins)
        raised: list[float] = []
        lowered: list[float] = []
        for _ in range(presses):
            pressed_at = tap(button)
            raised.append(wait_pin(host_hand, True, pressed_at) - pressed_at)
            time.sleep(GAP_S)
            pressed_at = tap(button)
            lowered.append(wait_pin(own_hand, False, pressed_at) - pressed_at)
            time.sleep(GAP_S)
        return raised, lowered
    finally:
        listener.stop()
        host.stop()


def ready_times(broker: Broker, workdir: Path, runs: int, mode: str) -> list[float]:
    """Process start until READY=1, ``runs`` times."""
    times: list[float] = []
    for i in range(runs):
        device = DaemonProcess(
            broker, f"bench-ready-{mode}", workdir / f"{mode}-{i}", mode=mode, subject="Ready"
        )
        try:
            device.start(wait_ready=False)
            assert device.notify is not None
            times.append(device.notify.wait_for("READY=1", 15.0) - device.started_at)
            status, _ = device.terminate()
            if status != 0:
                raise RuntimeError(f"exit status {status}: {device.log()[-800:]}")
        finally:
            device.close()
    return times


def summary(name: str, seconds: list[float], unit: str, target: str, met: bool) -> list[str]:
    """One table row: n, p50, p99 and max of ``seconds`` shown in ``unit`` (ms or s)."""
    scale = 1000.0 if unit == "ms" else 1.0
    ordered = sorted(seconds)
    cells = [percentile(ordered, 50), percentile(ordered, 99), ordered[-1]]
    return [
        name,
        str(len(ordered)),
        *(f"{v * scale:.2f} {unit}" for v in cells),
        target,
        verdict(met),
    ]


def latency_row(name: str, seconds: list[float]) -> list[str]:
    p99_ms = percentile(sorted(seconds), 99) * 1000.0
    target = f"p99 <= {TARGET_P99_MS:.0f} ms"
    return summary(name, seconds, "ms", target, p99_ms <= TARGET_P99_MS)


def ready_row(name: str, seconds: list[float]) -> list[str]:
    target = f"<= {TARGET_READY_S:.1f} s"
    return summary(name, seconds, "s", target, max(seconds) <= TARGET_READY_S)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presses", type=int, default=200, help="raise+lower pairs (default 200)")
    parser.add_argument(
        "--ready-runs", type=int, default=10, help="start-ups per mode (default 10)"
    )
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.presses, args.ready_runs = 2, 1
    with tempfile.TemporaryDirectory(prefix="gochat-bench-") as tmp:
        root = Path(tmp)
        with Broker(root / "broker") as broker:
            server = ServerProcess(broker, root / "server.db", root / "server.log").start()
            try:
                raised, lowered = control_latency(broker, args.presses)
                idle = ready_times(broker, root / "ready", args.ready_runs, "idle")
                hosting = ready_times(broker, root / "ready", args.ready_runs, "host")
            finally:
                server.stop()
    rows = [
        latency_row("raise_hand pin -> host's hand LED", raised),
        latency_row("raise_hand pin (lower) -> own hand LED", lowered),
        ready_row("process start -> READY=1 (idle)", idle),
        ready_row("process start -> READY=1 (hosting)", hosting),
    ]
    print(machine_header("Control latency and start-up of the appliance"))
    print(markdown_table(["measurement", "n", "p50", "p99", "max", "target", "met"], rows))
    print(
        "Latency: loopback; Mosquitto and the server each in their own process, both\n"
        "appliances in this one. READY: `python -m appliance run --mock-hw`, spawn to\n"
        "READY=1 on a stand-in notify socket, broker and server already running."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
