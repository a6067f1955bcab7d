"""``make run`` (scripts/run-dev) is safe to run twice, as real processes: a second one
on the same state refuses at once and touches nothing; one with another
``GOCHAT_DEV_PORT`` runs a whole second room beside the first (own state, own CoAP
ports); the speakers' recordings stay bounded; the demo's watcher account watches a
room with ``mosquitto_sub`` exactly as README says.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.server import REPO_ROOT

RUN_DEV = REPO_ROOT / "scripts" / "run-dev"
README = REPO_ROOT / "README.md"
VENV = Path(sys.executable).parent.parent
READY = "run-dev: running;"


def free_block() -> int:
    """A port P with TCP P..P+5 (broker, page) and UDP P+3..P+5 (CoAP) free (what one
    demo binds)."""
    for _ in range(200):
        port = random.randrange(20_000, 60_000)
        if all(_free(socket.SOCK_STREAM, port + i) for i in range(6)) and all(
            _free(socket.SOCK_DGRAM, port + 3 + i) for i in range(3)
        ):
            return port
    raise RuntimeError("no free block of ports")


def _free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Demo:
    """One ``scripts/run-dev`` without a terminal (no console), its state under ``base``."""

    def __init__(self, base: Path, port: int, **env: str) -> None:
        self.port = port
        self.state = base / f"port-{port}"
        base.mkdir(parents=True, exist_ok=True)
        self.log = base / f"run-dev-{port}-{len(list(base.glob('run-dev-*')))}.log"
        env = {"GOCHAT_DEV_DIR": str(base), "GOCHAT_DEV_PORT": str(port),
               "GOCHAT_DEV_CONSOLE": "0", "VENV": str(VENV), **env}  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(RUN_DEV)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, **env}, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 90.0) -> Demo:
        deadline = time.monotonic() + timeout_s
        while READY not in self.output():
            assert self.proc.poll() is None, f"run-dev exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"run-dev not ready:\n{self.output()}"
            time.sleep(0.2)
        return self

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # it stops its processes, then exits
        return self.proc.wait(30)

    def status(self, coap_port: int) -> dict[str, object]:
        done = subprocess.run(
            [str(VENV / "bin" / "gochat-appliance"), "status", "--port", str(coap_port)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        status: dict[str, object] = json.loads(done.stdout)
        return status


@pytest.fixture
def demos(tmp_path: Path) -> Iterator[list[Demo]]:
    started: list[Demo] = []
    yield started
    for demo in reversed(started):
        demo.stop()


def snapshot(state: Path) -> dict[str, bytes]:
    """The files a demo keeps between runs (accounts, CA, certificates)."""
    kept = [*state.glob("broker/passwd"), *state.glob("broker/secrets/*"),
            *state.glob("broker/tls/*"), *state.glob("devices/*/*")]  # fmt: skip
    return {str(p.relative_to(state)): p.read_bytes() for p in kept if p.is_file()}


def test_a_second_run_refuses_at_once_and_another_port_runs_beside_it(
    tmp_path: Path, demos: list[Demo]
) -> None:
    base = tmp_path / "dev"
    port = free_block()
    first = Demo(base, port, GOCHAT_DEV_KEEP_S="1")
    demos.append(first)
    beside_port = free_block()
    while abs(beside_port - port) < 6:
        beside_port = free_block()
    beside = Demo(base, beside_port)  # started together: two demos side by side
    demos.append(beside)
    first.wait_ready()
    host = first.status(port + 3)  # CoAP ports derived from the broker port
    assert host["role"] == "host" and host["connection"] == "online"
    kept = snapshot(first.state)
    assert "broker/secrets/watcher.password" in kept and "broker/passwd" in kept
    assert {"broker/secrets/web-1.password", "broker/secrets/web-2.password"} <= set(kept)
    # The page's address: on a line of its own, in web.url, and it serves the page.
    url = (first.state / "web.url").read_text().strip()
    assert url == f"http://127.0.0.1:{port + 5}/" and url in first.output().splitlines()
    with urllib.request.urlopen(url, timeout=10) as page:
        assert b'data-testid="login-user"' in page.read()

    started = time.monotonic()
    again = Demo(base, port)
    assert again.proc.wait(30) == 1
    elapsed = time.monotonic() - started
    said = again.output().strip()
    assert re.fullmatch(
        rf"run-dev: a demo is already running on 127\.0\.0\.1:{port} \(CoAP {port + 3}-"
        rf"{port + 5}, state {re.escape(str(first.state))}\), pid {first.proc.pid}; .*"
        rf"GOCHAT_DEV_PORT=\d+ make run",
        said,
    ), said
    assert elapsed < 10  # at once: no process was started (a second server took ~15 s to fail)
    assert snapshot(first.state) == kept

    beside.wait_ready()
    other = beside.status(beside_port + 3)
    assert other["role"] == "host" and other["room_id"] != host["room_id"]
    assert (beside.state / "server.db").exists() and beside.state != first.state
    # The first room never noticed: same room, same role, its files as they were.
    for coap_port in (port + 3, port + 4, port + 5):
        status = first.status(coap_port)
        assert status["connection"] == "online" and status["room_id"] == host["room_id"]
    assert snapshot(first.state) == kept
    assert first.proc.poll() is None

    # README's watcher line, as printed (but for this demo's state and port), sees the
    # room; the appliances it watches stay online in it.
    line = next(x for x in README.read_text().splitlines() if x.startswith("mosquitto_sub "))
    line = line.replace("var/dev", str(first.state)).replace("18830", str(port))
    watched = subprocess.run(
        ["bash", "-c", f"{line} -C 1 -W 20"], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    topic, _, payload = watched.stdout.strip().partition(" ")
    assert topic == f"gochat/v1/room/{host['room_id']}/state"
    assert json.loads(payload)["host_id"] == "pi-host"
    assert all(first.status(p)["connection"] == "online" for p in (port + 3, port + 4))

    # Recordings are a bounded ring: GOCHAT_DEV_KEEP_S=1 keeps 1-2 s per device.
    audio = first.state / "audio"
    deadline = time.monotonic() + 20
    while not (audio / "pi-ann.1.wav").exists():
        assert time.monotonic() < deadline, sorted(p.name for p in audio.iterdir())
        time.sleep(0.2)
    for name in ("pi-ann.wav", "pi-ann.1.wav"):
        with wave.open(str(audio / name)) as recording:
            assert recording.getnframes() <= 1.1 * recording.getframerate()

    assert beside.stop() == 143 and first.stop() == 143  # SIGTERM, each stopped cleanly
    recorded = {name: (audio / name).read_bytes() for name in ("pi-ann.wav", "pi-ann.1.wav")}
    relaunched = Demo(base, port)
    demos.append(relaunched)
    relaunched.wait_ready()  # the lock went with its holder
    # The new run goes on with the recordings: nothing the first one kept is lost.
    before = len(recorded["pi-ann.wav"])
    deadline = time.monotonic() + 20
    while (audio / "pi-ann.wav").stat().st_size <= before:
        assert time.monotonic() < deadline, "the second run did not record"
        time.sleep(0.2)
    assert (audio / "pi-ann.1.wav").read_bytes() == recorded["pi-ann.1.wav"]
    assert (audio / "pi-ann.wav").read_bytes()[44:before] == recorded["pi-ann.wav"][44:]


def test_a_port_held_by_another_program_is_named_before_anything_starts(
    tmp_path: Path,
) -> None:
    port = free_block()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stray,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as coap,
    ):
        stray.bind(("127.0.0.1", port + 1))
        stray.listen()
        coap.bind(("127.0.0.1", port + 4))
        demo = Demo(tmp_path, port)
        assert demo.proc.wait(30) == 1
    said = demo.output().strip()
    assert said.startswith(f"run-dev: port in use: tcp {port + 1}, udp {port + 4} "), said
    assert not (demo.state / "broker").exists()  # nothing was made, nothing started
