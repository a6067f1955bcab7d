"""The daemon as systemd runs it, and the edges where the world misbehaves: READY and
WATCHDOG, SIGTERM (with and without a broker), contact bounce, a broker that refuses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from appliance.hw_mocks import gpio

from appliance.protocol import topics
from testbed import Broker, MqttClientFactory
from testbed.broker import SHIPPED_ACL, device_tls_env
from testbed.daemons import CoapClient, DaemonProcess, InProcessDaemon, expect_leds, wait_until
from testbed.server import REPO_ROOT, RunningServer

OBSERVER = "zz-presence-observer"
EXAMPLE = REPO_ROOT / "config" / "appliance.toml"


def test_ready_comes_once_in_the_room_and_the_watchdog_is_fed(
    gochat_server: RunningServer, processes: Callable[..., DaemonProcess], coap: CoapClient
) -> None:
    pi = processes("pi-sd", mode="host", subject="Service", env={"WATCHDOG_USEC": "300000"})
    assert pi.notify is not None
    # READY=1 means "in the room": the very next status already says so.
    status = coap.get(pi.coap_port, "/status").body
    assert (status["connection"], status["role"], status["leds"]["status"]) == (
        "online",
        "host",
        "on",
    )
    first = pi.notify.wait_for("WATCHDOG=1", 2)
    second = pi.notify.wait_for("WATCHDOG=1", 2)
    assert second - first < 0.5  # every WatchdogSec/2 = 0.15 s, from the main loop
    assert any(m.startswith("STATUS=online, room") for m in pi.notify.messages)


@pytest.fixture
def observed_broker(tmp_path: Path) -> Iterator[Broker]:
    """The shipped ACL plus one read-only account that may watch presence (clients may
    not read each other's presence, and a second ``gochat-server`` session would take
    over the real server's)."""
    acl = tmp_path / "acl-with-observer"
    acl.write_text(
        SHIPPED_ACL.read_text(encoding="utf-8")
        + f"\nuser {OBSERVER}\ntopic read {topics.ROOT}/presence/#\n",
        encoding="utf-8",
    )
    with Broker(tmp_path / "broker", acl_file=acl) as broker:
        yield broker


def test_sigterm_leaves_the_room_publishes_offline_and_exits_0_within_3_s(
    observed_broker: Broker, tmp_path: Path, mqtt_client: MqttClientFactory
) -> None:
    broker = observed_broker
    server = RunningServer(broker, tmp_path / "server.db").start()
    host = InProcessDaemon(broker, "pi-host", mode="host", subject="Bye").start()
    pi = DaemonProcess(broker, "pi-bye", tmp_path / "bye", mode="join").start()
    try:
        room_id = host.status["room_id"]
        server.wait_until(lambda s: "pi-bye" in s.rooms[room_id].members)
        watcher = mqtt_client(broker, OBSERVER)
        watcher.subscribe_wait(topics.presence("pi-bye"))
        assert watcher.expect(topics.presence("pi-bye")).payload == b"online"

        status, elapsed = pi.terminate()
        assert status == 0 and elapsed < 3.0, (status, elapsed, pi.log()[-1500:])
        assert watcher.expect(topics.presence("pi-bye")).payload == b"offline"
        server.wait_until(lambda s: "pi-bye" not in s.rooms[room_id].members)  # quit_room
        assert "Client pi-bye disconnected." in broker.log_text()  # clean: not the Will
        assert pi.notify is not None
        pi.notify.wait_for("STOPPING=1", 1)  # queued on the socket since the signal
        log = pi.log()
        assert "offline published" in log and "password" not in log.lower()
    finally:
        pi.close()
        host.stop()
        server.stop()


def test_sigterm_without_a_broker_still_exits_0_within_3_s(
    broker: Broker, gochat_server: RunningServer, processes: Callable[..., DaemonProcess]
) -> None:
    pi = processes("pi-alone", mode="host", subject="Soon alone")
    broker.kill()
    time.sleep(0.3)  # the daemon notices and is between reconnect attempts
    status, elapsed = pi.terminate()
    assert status == 0 and elapsed < 3.0, (status, elapsed, pi.log()[-1500:])


class ScriptedClock:
    """Button edges at scripted instants: the loop's clock, except while a script runs."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self) -> float:
        return time.monotonic() if self.at is None else self.at  # the loop's time()

    def advance(self, seconds: float) -> None:
        assert self.at is not None
        self.at += seconds


def test_a_bounce_storm_is_one_press(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon]
) -> None:
    daemons("pi-host", mode="host", subject="Bouncy")
    clock = ScriptedClock()
    pi = daemons("pi-bouncy", mode="join", edge_clock=clock)
    sent = pi.daemon.counters()["requests_sent"]

    def storm() -> None:
        # 31 edges 0.5 ms apart going down, a 0.1 s hold, 31 edges coming up, at exact
        # instants, all on the loop in one go: a busy machine cannot stretch a gap
        # past the 30 ms debounce and split the storm (it did once, with real sleeps).
        clock.at = time.monotonic()
        try:
            gpio.bouncy_press(pi.pin("raise_hand"), edges=31, advance=clock.advance)
        finally:
            clock.at = None

    pi.on_loop(storm)
    pi.wait_status(lambda s: s["hand_raised"])
    expect_leds([(pi, {"status": "on", "hand": "on", "invite": "off", "mic": "off"})])
    assert pi.daemon.counts["gestures_short"] == 1
    assert pi.daemon.counts["gestures_long"] == 0
    assert pi.daemon.counters()["requests_sent"] - sent in (1, 2)  # the press (+ a heartbeat?)


def test_a_broker_refusing_a_publish_shows_the_error(
    tmp_path: Path, daemons: Callable[..., InProcessDaemon]
) -> None:
    # A running host whose ACL is then revoked for requests: the broker answers its next
    # request with PUBACK 0x87, which the daemon sees and shows.
    acl = tmp_path / "acl"
    shipped = SHIPPED_ACL.read_text(encoding="utf-8")
    acl.write_text(shipped, encoding="utf-8")
    with Broker(tmp_path / "broker", acl_file=acl) as broker:
        server = RunningServer(broker, tmp_path / "server.db").start()
        try:
            host = InProcessDaemon(broker, "pi-host", mode="host", subject="ACL").start()
            expect_leds([(host, {"status": "on", "hand": "off", "invite": "off", "mic": "on"})])
            acl.write_text(
                shipped.replace("pattern write gochat/v1/req/%u/#\n", ""), encoding="utf-8"
            )
            broker.reload()
            host.press("mute")
            wait_until(lambda: host.daemon.counters().get("publishes_refused", 0), bool, 3)
            error = {"status": "blink-fast", "hand": "off", "invite": "off", "mic": "on"}
            expect_leds([(host, error)])
            assert host.status["mic_on"] is True  # the server never heard the press
            assert host.daemon.counts["presses_refused"] == 1  # failed at once, no timeout
            host.stop()
        finally:
            server.stop()


def test_a_coap_port_already_taken_is_one_line_and_exit_69(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")},
            "GOCHAT_DEVICE__USER_ID": "pi-port",
            **device_tls_env(tmp_path, "pi-port"),
            "GOCHAT_COAP__PORT": str(port),
        }
        done = subprocess.run(
            [sys.executable, "-m", "appliance", "run", "--mock-hw", "--config", str(EXAMPLE)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    assert done.returncode == 69
    [line] = done.stderr.strip().splitlines()
    assert line.endswith(f"coap: cannot bind 127.0.0.1:{port}: Address already in use")
