"""The console end to end: keys typed into it drive real appliances in a real room.

Three in-process daemons (mock GPIO) join a room on a real broker and server; a
:class:`~appliance.tools.console.Console` watches them over CoAP on its own thread and
draws on an 80x24 stand-in terminal (the only thing stood in: a curses window). Each
step types keys, then checks the devices' own ``/status`` and what the screen shows.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import queue
import select
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from appliance.tools.console import HELP_LINE, Console, DeviceView
from testbed.daemons import CoapClient, InProcessDaemon, free_udp_port, wait_until
from testbed.server import RunningServer

HEIGHT, WIDTH = 24, 80


class Terminal:
    """An 80x24 curses window: keys typed by the test, text drawn by the console."""

    def __init__(self) -> None:
        self._keys: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._rows = [" " * WIDTH] * HEIGHT
        self._shown = list(self._rows)
        self._lock = threading.Lock()

    def type(self, keys: str) -> None:
        for key in keys:
            self._keys.put(ord(key))

    @property
    def text(self) -> str:
        with self._lock:
            return "\n".join(row.rstrip() for row in self._shown)

    # the curses window's side, called by the console
    def getch(self) -> int:
        try:
            return self._keys.get_nowait()
        except queue.Empty:
            return -1

    def getmaxyx(self) -> tuple[int, int]:
        return HEIGHT, WIDTH

    def erase(self) -> None:
        self._rows = [" " * WIDTH] * HEIGHT

    def addstr(self, y: int, x: int, text: str, attr: int = 0) -> None:
        assert 0 <= y < HEIGHT and x + len(text) <= WIDTH - 1, (y, x, text)
        row = self._rows[y]
        self._rows[y] = row[:x] + text + row[x + len(text) :]

    def refresh(self) -> None:
        with self._lock:
            self._shown = list(self._rows)


@pytest.fixture
def room(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon]
) -> list[InProcessDaemon]:
    host = daemons("pi-host", mode="host", subject="Console room")
    return [host, daemons("pi-ann", mode="join"), daemons("pi-bob", mode="join")]


@pytest.fixture
def console(room: list[InProcessDaemon]) -> Iterator[tuple[Console, Terminal]]:
    """A console over the three devices, running on its own thread and loop."""
    shell = Console("127.0.0.1", [device.coap_port for device in room])
    terminal = Terminal()
    thread = threading.Thread(target=asyncio.run, args=(shell.run(terminal),), daemon=True)
    thread.start()
    wait_until(lambda: shell.views, _all_in_room, 10.0, "console sees all")
    yield shell, terminal
    terminal.type("q")
    thread.join(5.0)
    assert not thread.is_alive()


def _all_in_room(views: list[DeviceView]) -> bool:
    # in the room, and the refusal counter read once (what came before is history)
    return all(v.status and v.status["role"] and v.refusals is not None for v in views)


def screen_shows(terminal: Terminal, *texts: str) -> str:
    """Wait until every text is on the screen (the console redraws 25 times a second)."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: terminal.text, lambda t: all(x in t for x in texts), 5.0, f"screen {texts}"
    )


def test_a_host_picks_a_member_and_invites_mutes_and_removes_them_with_keys(
    room: list[InProcessDaemon], console: tuple[Console, Terminal], coap: CoapClient
) -> None:
    host, ann, _ = room
    _, terminal = console
    screen_shows(terminal, "▶[1] pi-host", HELP_LINE.strip())
    screen_shows(terminal, "room   Console room", f"id     {host.status['room_id']}")

    # Device 1 (the host) is selected; p picks the first other member: pi-ann.
    terminal.type("p")
    screen_shows(terminal, "▸pi-ann (listener)", "pi-bob (listener)")
    terminal.type("i")
    invited = wait_until(
        lambda: coap.get(ann.coap_port, "/status").body,
        lambda s: s["invitation"] is not None,
        10.0,
        "pi-ann invited",
    )
    assert invited["invitation"]["from_user_id"] == "pi-host"
    assert invited["leds"]["invite"] == "blink"
    screen_shows(terminal, "invite pi-ann: done", "invite from Pi-Host")

    # pi-ann accepts from the console (device 2, key a) and takes a seat.
    terminal.type("2a")
    ann.wait_status(lambda s: s["role"] == "speaker" and s["mic_on"] is True)

    # Back on the host, the pick is kept: x mutes pi-ann, k takes it off the stage.
    terminal.type("1")
    screen_shows(terminal, "▸pi-ann (speaker, mic on)")
    terminal.type("x")
    ann.wait_status(lambda s: s["mic_on"] is False)
    assert ann.status["role"] == "speaker"
    screen_shows(terminal, "mute pi-ann: done", "▸pi-ann (speaker, muted)")
    terminal.type("k")
    ann.wait_status(lambda s: s["role"] == "listener")
    screen_shows(terminal, "remove pi-ann: done", "▸pi-ann (listener)")
    assert host.status["role"] == "host"


def test_refusals_are_shown_whole_and_the_refused_press_flashes_on_screen(
    room: list[InProcessDaemon], console: tuple[Console, Terminal]
) -> None:
    _, ann, bob = room
    shell, terminal = console

    # A listener's long press of mute is refused by the device, which flashes its
    # status LED; the console says why and flashes its status light too.
    terminal.type("2M")
    wait_until(lambda: ann.daemon.counts["presses_refused"], lambda n: n == 1, 5.0, "refused")
    view = shell.views[1]
    said = "mute long: refused: this press does nothing"
    wait_until(lambda: view.last, lambda text: text == said, 5.0, "refusal on screen")
    assert view.last_bad and view.flash_at is not None
    screen_shows(terminal, said)

    # A finger on the box: the console learns of the refusal from /counters and
    # flashes too (its own refusal above was not taken for a second one).
    flashed = view.flash_at
    ann.press("mute")  # a listener's mute: refused on the box
    wait_until(lambda: view.flash_at, lambda t: t != flashed, 5.0, "the box's flash")
    assert ann.daemon.counts["presses_refused"] == 2
    screen_shows(terminal, "a press was refused on the device")
    assert view.refusals == 2
    assert ann.status["mic_on"] is False

    # A host action from a listener: the device refuses it and says why, in full.
    terminal.type("p")  # from pi-ann, the first other member is pi-host
    screen_shows(terminal, "▸pi-host (host, mic on)")
    terminal.type("i")
    screen_shows(terminal, "invite pi-host: 4.03 only the host can invite")
    assert bob.status["invitation"] is None and ann.status["role"] == "listener"


def test_the_console_command_draws_in_a_real_80x24_terminal_and_quits_on_q() -> None:
    """``gochat-appliance console`` under curses in a pseudo-terminal: the help line, the
    legend on ``?``, the devices that do not answer, and a clean exit on ``q``."""
    ports = f"{free_udp_port()},{free_udp_port()},{free_udp_port()}"
    pid, fd = pty.fork()
    if pid == 0:  # the child: the real command, in the terminal
        os.environ["TERM"] = "xterm-256color"
        os.execv(sys.executable, [sys.executable, "-m", "appliance", "console", "--ports", ports])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", HEIGHT, WIDTH, 0, 0))
    seen = bytearray()

    def read_until(text: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text.encode() not in seen:
            assert time.monotonic() < deadline, f"{text!r} not drawn: {bytes(seen)[-500:]!r}"
            if select.select([fd], [], [], 0.1)[0]:
                seen.extend(os.read(fd, 65536))

    status: int | None = None
    try:
        read_until("? help  q quit")
        read_until("waiting for the device")
        os.write(fd, b"?")
        read_until("show or hide this legend")
        os.write(fd, b"q")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if status is None:  # still running: it failed to draw or to quit
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
