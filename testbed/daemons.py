"""Appliance daemons for tests: in-process on a thread, or as a real process.

- :class:`CoapClient`: a blocking CoAP client (aiocoap on its own thread and loop),
  with Observe.
- :class:`InProcessDaemon`: :class:`appliance.device.daemon.Daemon` with ``--mock-hw``
  on its own thread and event loop; tests press its mock button pins and read its mock
  LED pins (``hw_mocks.gpio``), and read ``/status`` over CoAP or from its snapshot.
- :class:`DaemonProcess`: ``python -m appliance run --mock-hw`` as a child process,
  with a stand-in systemd notification socket; driven over CoAP only.
- :func:`expect_leds`: wait until several devices' LED pins all show what is expected.

Nothing of ours is mocked: the daemons run the real session, machine, panel and CoAP
API against a real broker and the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from appliance.hw_mocks import gpio
from appliance.hw_mocks.audio import mock_pyaudio

from appliance.device.daemon import Daemon, Hardware
from appliance.device.effects import LedName, LedPattern
from appliance.device.events import ButtonName
from appliance.device.settings import ApplianceSettings
from appliance.tools import coap_client
from appliance.tools.coap_client import JSON_FORMAT, Reply

from . import leds
from .broker import Broker
from .server import REPO_ROOT, NotifySocket


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------- CoAP


class Observation:
    """Notifications of an Observe on ``/status``: decoded bodies, in order."""

    def __init__(self, client: CoapClient, observation: coap_client.Observation) -> None:
        self._client = client
        self._observation = observation
        self.bodies: queue.Queue[Any] = queue.Queue()
        self.latest: Any = None

    def wait_for(self, predicate: Callable[[Any], bool], timeout_s: float = 10.0) -> Any:
        """The first notification (or the latest seen) satisfying ``predicate``."""
        if self.latest is not None and predicate(self.latest):
            return self.latest
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching notification; latest: {self.latest}")
            try:
                body = self.bodies.get(timeout=left)
            except queue.Empty:
                continue
            self.latest = body
            if predicate(body):
                return body

    def cancel(self) -> None:
        self._client.run(self._cancel())

    async def _cancel(self) -> None:
        self._observation.cancel()


class CoapClient:
    """A blocking :class:`appliance.tools.coap_client.CoapClient` (own thread and loop)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client: coap_client.CoapClient = self.run(coap_client.CoapClient.create())

    def run(self, coro: Any, timeout_s: float = 30.0) -> Any:
        """Run ``coro`` on the client's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def request(
        self,
        port: int,
        method: str,
        path: str,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        content_format: int | None = JSON_FORMAT,
        timeout_s: float = 20.0,
    ) -> Reply:
        """One request; ``payload`` is JSON-encoded unless ``raw`` bytes are given."""
        call = self._client.request(
            self.host, port, method, path, payload, raw=raw, content_format=content_format
        )
        reply: Reply = self.run(call, timeout_s)
        return reply

    def get(self, port: int, path: str) -> Reply:
        return self.request(port, "GET", path)

    def post(self, port: int, path: str, payload: Any) -> Reply:
        return self.request(port, "POST", path, payload)

    def observe(self, port: int, path: str = "/status") -> Observation:
        """Start observing ``path``; notifications (and the first answer) queue up."""
        return self.run(self._observe(port, path))  # type: ignore[no-any-return]

    async def _observe(self, port: int, path: str) -> Observation:
        inner = self._client.observe(self.host, port, path)
        observation = Observation(self, inner)
        observation.bodies.put((await inner.first()).body)

        async def pump() -> None:
            with contextlib.suppress(Exception):
                async for note in inner.notifications():
                    observation.bodies.put(note.body)

        self._loop.create_task(pump())
        return observation

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self._client.close(), 5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# ---------------------------------------------------------------- configuration


def appliance_config(
    broker: Broker,
    user: str,
    *,
    coap_port: int,
    mode: str = "idle",
    subject: str = "",
    room_id: str = "",
    cert: bool = False,
    **sections: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """The sections of a config for ``user`` on ``broker`` (the account is created).

    TLS with a password; with ``cert``, a client certificate instead (issued if missing)
    on the broker's certificate port.
    """
    extra = dict(sections.pop("broker", {}))
    settings = broker.settings(user, cert=cert)
    config: dict[str, dict[str, Any]] = {
        "device": {"user_id": user, "name": user.title()},
        "broker": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in settings.model_dump(exclude_none=True, exclude_defaults=True).items()
        }
        | {"port": settings.port}
        | extra,
        "room": {"mode": mode, "subject": subject, "room_id": room_id},
        "coap": {"bind": "127.0.0.1", "port": coap_port},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


def to_toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    """A tiny TOML writer for flat sections of str/int/bool values."""
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                lines.append(f"{key} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f"{key} = {json.dumps(str(value))}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- in-process daemons


class InProcessDaemon:
    """A daemon with ``--mock-hw`` on its own thread and event loop."""

    def __init__(
        self,
        broker: Broker,
        user: str,
        *,
        mode: str = "idle",
        subject: str = "",
        room_id: str = "",
        cert: bool = False,
        edge_clock: Callable[[], float] | None = None,
        **sections: Mapping[str, Any],
    ) -> None:
        self.user = user
        self.coap_port = free_udp_port()
        config = appliance_config(
            broker,
            user,
            coap_port=self.coap_port,
            mode=mode,
            subject=subject,
            room_id=room_id,
            cert=cert,
            **sections,
        )
        self.settings = ApplianceSettings.model_validate(config)
        card = mock_pyaudio(
            self.settings.audio.mock_input,
            self.settings.audio.mock_output,
            self.settings.audio.mock_unplug_file,
            echo_spec=self.settings.audio.mock_echo,
            noise_spec=self.settings.audio.mock_noise,
            output_keep_s=self.settings.audio.mock_output_keep_s,
        )
        hardware = Hardware(pin_factory=gpio.mock_factory(), pyaudio=card, edge_clock=edge_clock)
        self.daemon = Daemon(self.settings, hardware=hardware, install_signals=False)
        self.factory = self.daemon.pin_factory
        self.pins = self.daemon.pins
        self._result: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, name=f"daemon-{user}", daemon=True)

    def _main(self) -> None:
        self._result.append(asyncio.run(self._run()))

    async def _run(self) -> int:
        self._loop = asyncio.get_running_loop()
        return await self.daemon.run()

    def on_loop(self, action: Callable[[], None], timeout_s: float = 5.0) -> None:
        """Run ``action`` on the daemon's event loop, in one go, and wait for it: no
        other callback or timer of the loop runs in between."""
        assert self._loop is not None, "not started"
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(timeout_s):
            raise TimeoutError(f"{self.user}: the loop did not run the action")

    def start(self, *, wait_ready: bool = True, timeout_s: float = 10.0) -> InProcessDaemon:
        self._thread.start()
        if wait_ready and not self.daemon.ready.wait(timeout_s):
            raise TimeoutError(f"{self.user}: not ready within {timeout_s} s: {self.status}")
        return self

    def stop(self, timeout_s: float = 5.0) -> int | None:
        self.daemon.stop_threadsafe()
        self._thread.join(timeout_s)
        return self._result[0] if self._result else None

    # ------------------------------------------------------------ reading

    @property
    def status(self) -> dict[str, Any]:
        """The latest ``/status`` payload (the daemon's snapshot)."""
        return self.daemon.status_snapshot

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """Poll the snapshot until ``predicate`` holds."""
        return wait_until(lambda: self.status, predicate, timeout_s, self.user)

    def led_patterns(self) -> dict[LedName, LedPattern | None]:
        """What the mock LED pins show now (None: cannot tell yet)."""
        return leds.led_patterns(self.factory, self.pins)

    def panel_patterns(self) -> dict[str, str]:
        """What the panel was last told to show (no waiting)."""
        panel = self.daemon.panel
        assert panel is not None
        return {name: panel.pattern(name) for name in ("status", "hand", "invite", "mic")}

    # ------------------------------------------------------------ pressing

    def pin(self, button: ButtonName) -> Any:
        return leds.button_pin(self.factory, button, self.pins)

    def press(self, button: ButtonName, kind: str = "short") -> None:
        """Press the mock button pin: a 0.1 s tap or a 1.6 s hold."""
        if kind == "short":
            gpio.short_press(self.pin(button))
        else:
            gpio.long_press(self.pin(button))


def wait_until(
    read: Callable[[], Any],
    predicate: Callable[[Any], bool],
    timeout_s: float = 10.0,
    what: str = "",
) -> Any:
    """Poll ``read()`` until ``predicate`` holds; returns the value that satisfied it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if predicate(value):
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: condition not met within {timeout_s} s; last: {value}")
        time.sleep(0.01)


def expect_leds(
    expectations: Iterable[tuple[InProcessDaemon, Mapping[str, str]]], timeout_s: float = 6.0
) -> None:
    """Wait until every device's mock LED pins show the expected patterns (all at once,
    so steady-state detection overlaps). Also checks ``/status`` ``leds`` agrees."""
    pairs = list(expectations)
    deadline = time.monotonic() + timeout_s
    while True:
        wrong: dict[str, Any] = {}
        for device, expected in pairs:
            pins = device.led_patterns()
            shown = device.status["leds"]
            for name, pattern in expected.items():
                if pins[name] != pattern or shown[name] != pattern:  # type: ignore[index]
                    wrong[f"{device.user}.{name}"] = (pattern, pins[name], shown[name])  # type: ignore[index]
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"LEDs (expected, pin, /status) not as expected: {wrong}")
        time.sleep(0.02)


# ---------------------------------------------------------------- daemon processes


class DaemonProcess:
    """``python -m appliance run --mock-hw --config FILE`` as a child process."""

    def __init__(
        self,
        broker: Broker,
        user: str,
        workdir: Path,
        *,
        mode: str = "idle",
        subject: str = "",
        room_id: str = "",
        env: Mapping[str, str] | None = None,
        cert: bool = False,
        **sections: Mapping[str, Any],
    ) -> None:
        self.user = user
        self.coap_port = free_udp_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{user}.toml"
        config = appliance_config(
            broker,
            user,
            coap_port=self.coap_port,
            mode=mode,
            subject=subject,
            room_id=room_id,
            cert=cert,
            **sections,
        )
        self.config_path.write_text(to_toml(config), encoding="utf-8")
        self.log_path = workdir / f"{user}.log"
        self.notify_path = workdir / f"{user}.notify"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("GOCHAT_", "NOTIFY_", "WATCHDOG_"))
        }
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifySocket | None = None
        self.started_at = 0.0

    def start(self, *, wait_ready: bool = True, timeout_s: float = 15.0) -> DaemonProcess:
        self.notify = NotifySocket(self.notify_path)
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "appliance",
                    "run",
                    "--mock-hw",
                    "--config",
                    str(self.config_path),
                ],
                env={**self.env, "NOTIFY_SOCKET": str(self.notify_path)},
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_ready:
            self.notify.wait_for("READY=1", timeout_s)
        return self

    def terminate(self, timeout_s: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds until it exited)."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        status = self.proc.wait(timeout_s)
        return status, time.monotonic() - began

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        self.kill()
        if self.notify is not None:
            self.notify.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
