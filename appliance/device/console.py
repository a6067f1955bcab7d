"""``gochat-appliance console``: watch appliances' LEDs and press their buttons, live.

A small curses UI (stdlib only) over each appliance's CoAP API: it Observes
``/status`` of every port given and draws, per device, who it is, its connection,
room, role, microphone, hand and invitation, and its four LEDs as coloured ●/○ that
blink at their real rates. Keys press the selected device's buttons through
``POST /buttons/{name}``, exactly as a finger on the box would.

The pure parts — :func:`action_for_key`, :func:`led_lit` and :func:`render` — are
plain functions of their inputs, tested without a terminal; :func:`run_console` is
the thin curses and asyncio shell around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.device.coap_client import CoapClient, Reply
from appliance.device.effects import BLINK_TIMES, LED_NAMES, LedName
from appliance.device.events import ButtonName, PressKind
from appliance.protocol.models import printable

FRAME_S = 0.04
"""Redraw period: 25 frames/s, fine enough for the 5 Hz fast blink."""
RETRY_S = 1.0
"""Wait before observing a device again after it did not answer."""
POLL_S = 2.0
"""A plain GET this often notices a device that went away without a word."""
REQUEST_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 2.0
"""How long ``status`` (without ``--wait-in-room``) waits for an answer."""
COLUMN_WIDTH = 40

Style = Literal[
    "plain",
    "title",
    "selected",
    "dim",
    "label",
    "good",
    "warn",
    "bad",
    "led-status",
    "led-hand",
    "led-invite",
    "led-mic",
]


# ================================================================ keys


@dataclass(frozen=True, slots=True)
class Select:
    """Make device ``index`` (0-based) the one the keys press."""

    index: int


@dataclass(frozen=True, slots=True)
class Cycle:
    """Select the next device."""


@dataclass(frozen=True, slots=True)
class Press:
    """Press ``button`` on the selected device."""

    button: ButtonName
    kind: PressKind


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave the console."""


Action = Select | Cycle | Press | Quit

KEYS: dict[str, Action] = {
    **{str(n): Select(n - 1) for n in range(1, 10)},
    "\t": Cycle(),
    "r": Press("raise_hand", "short"),
    "R": Press("raise_hand", "long"),
    "m": Press("mute", "short"),
    "M": Press("mute", "long"),
    "a": Press("accept", "short"),
    "A": Press("accept", "long"),
    "q": Quit(),
    "Q": Quit(),
    "\x1b": Quit(),
}
"""Keys and what they do (see :data:`LEGEND`)."""

LEGEND = [
    "1-9/Tab select device    r raise hand    m mute    a accept",
    "R M A  long press (as if held 1.5 s)    q quit",
]


def action_for_key(key: str | int) -> Action | None:
    """The action bound to a key (a character, or a curses key code), or None."""
    if isinstance(key, int):
        if key < 0 or key > 0x10FFFF:
            return None
        key = chr(key)
    return KEYS.get(key)


# ================================================================ devices


@dataclass(slots=True)
class DeviceView:
    """What the console knows about one appliance."""

    port: int
    status: dict[str, Any] | None = None
    error: str | None = "waiting for the device"
    last: str = ""
    seen_at: float = field(default=0.0)


def led_lit(pattern: str, now: float) -> bool:
    """Whether an LED showing ``pattern`` is lit at wall time ``now`` (seconds)."""
    if pattern == "on":
        return True
    for name, (on_s, off_s) in BLINK_TIMES.items():
        if name == pattern:  # any text may come from a device: look, don't index
            return now % (on_s + off_s) < on_s
    return False


# ================================================================ rendering

Segment = tuple[str, Style]
Line = list[Segment]


def render(views: Sequence[DeviceView], selected: int, now: float, width: int) -> list[Line]:
    """The whole screen as lines of styled segments: devices side by side when the
    terminal is wide enough, else one under the other; the key legend below."""
    lines: list[Line] = [
        [(" GoChat appliances ", "title"), (f"  {len(views)} device(s) over CoAP", "dim")],
        [],
    ]
    blocks = [render_device(v, i, i == selected, now) for i, v in enumerate(views)]
    per_row = max(1, min(len(blocks), width // COLUMN_WIDTH)) if blocks else 1
    for start in range(0, len(blocks), per_row):
        lines += _side_by_side(blocks[start : start + per_row])
        lines.append([])
    lines.append([(" keys ", "title")])
    for text in LEGEND:
        lines.append([(f" {text}", "label")])
    return lines


def render_device(view: DeviceView, index: int, selected: bool, now: float) -> list[Line]:
    """One device's block (each line at most :data:`COLUMN_WIDTH` - 2 characters)."""
    marker = "▶" if selected else " "
    status = view.status
    user = printable(str(status["user_id"])) if status else "?"
    head: Line = [
        (f"{marker}[{index + 1}] {user} :{view.port}", "selected" if selected else "title")
    ]
    if status is None:
        return [head, [(f"  {printable(view.error or 'no answer')}", "warn")]]
    lines: list[Line] = [head]
    connection = str(status["connection"])
    conn_style: Style = "good" if connection == "online" else "warn"
    lines.append(_field("connection", connection, conn_style))
    if view.error:
        lines.append([("  ! " + printable(view.error)[: COLUMN_WIDTH - 6], "bad")])
    lines.append(_field("room", _short(status.get("room_id")), "plain"))
    lines.append(_field("role", str(status.get("role") or "—"), "plain"))
    lines.append(_field("mic", "on" if status.get("mic_on") else "off", "plain"))
    lines.append(_field("hand", "raised" if status.get("hand_raised") else "down", "plain"))
    lines.append(_field("invitation", _invitation(status.get("invitation")), "plain"))
    lines.append(_leds_line(status.get("leds") or {}, now))
    lines.append([(f"  {printable(view.last)[: COLUMN_WIDTH - 4]}", "dim")])
    return lines


def _field(label: str, value: str, style: Style) -> Line:
    # Everything shown may come from a peer (a name, a subject): escaped, then cut.
    return [(f"  {label:<11}", "label"), (printable(value)[: COLUMN_WIDTH - 15], style)]


def _short(room_id: object) -> str:
    return "—" if room_id is None else str(room_id)


def _invitation(invitation: object) -> str:
    if not isinstance(invitation, dict):
        return "—"
    return f"from {invitation.get('from_name') or invitation.get('from_user_id')}"


def _leds_line(leds: dict[str, Any], now: float) -> Line:
    line: Line = [("  ", "plain")]
    for name in LED_NAMES:
        pattern = str(leds.get(name, "off"))
        lit = led_lit(pattern, now)
        line.append(("●" if lit else "○", _led_style(name) if lit else "dim"))
        line.append((f" {name}  ", "label"))
    return line


def _led_style(name: LedName) -> Style:
    styles: dict[LedName, Style] = {
        "status": "led-status",
        "hand": "led-hand",
        "invite": "led-invite",
        "mic": "led-mic",
    }
    return styles[name]


def _side_by_side(blocks: list[list[Line]]) -> list[Line]:
    height = max(len(b) for b in blocks)
    rows: list[Line] = []
    for i in range(height):
        row: Line = []
        for block in blocks:
            line = block[i] if i < len(block) else []
            used = sum(len(text) for text, _ in line)
            row += [*line, (" " * max(0, COLUMN_WIDTH - used), "plain")]
        rows.append(row)
    return rows


def line_text(line: Line) -> str:
    """A rendered line as plain text (for tests and logs)."""
    return "".join(text for text, _ in line).rstrip()


def parse_ports(text: str) -> list[int]:
    """``"5683,5684"`` -> ``[5683, 5684]``; ValueError naming the bad item otherwise."""
    example = "e.g. --ports 5683,5684,5685"
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"--ports: no port given ({example})")
    for item in items:
        if not (item.isascii() and item.isdigit() and 0 < int(item) < 65536):
            raise ValueError(f"--ports: {item[:16]!r} is not a port number 1-65535 ({example})")
    return [int(item) for item in items]


# ================================================================ the shell


class Console:
    """The curses console's state and its CoAP side (one asyncio loop)."""

    def __init__(self, host: str, ports: list[int]) -> None:
        self.host = host
        self.views = [DeviceView(port) for port in ports]
        self.selected = 0
        self.quit = False
        self._client: CoapClient | None = None
        self._presses: set[asyncio.Task[None]] = set()

    async def run(self, screen: Any) -> None:
        self._client = await CoapClient.create()
        tasks = [asyncio.create_task(self._watch(view)) for view in self.views]
        try:
            while not self.quit:
                self._keys(screen)
                _draw(screen, render(self.views, self.selected, time.time(), _width(screen)))
                await asyncio.sleep(FRAME_S)
        finally:
            for task in tasks:
                task.cancel()
            await self._client.close()

    def _keys(self, screen: Any) -> None:
        while (key := screen.getch()) != -1:
            action = action_for_key(key)
            match action:
                case Quit():
                    self.quit = True
                case Select(index) if index < len(self.views):
                    self.selected = index
                case Cycle():
                    self.selected = (self.selected + 1) % len(self.views)
                case Press(button, kind):
                    view = self.views[self.selected]
                    task = asyncio.create_task(self._press(view, button, kind))
                    self._presses.add(task)  # keep a reference until it is done
                    task.add_done_callback(self._presses.discard)
                case _:
                    pass

    async def _press(self, view: DeviceView, button: ButtonName, kind: PressKind) -> None:
        view.last = f"{button} {kind}: …"
        try:
            reply = await self._request(view.port, "POST", f"/buttons/{button}", {"press": kind})
        except Exception as exc:
            view.last = f"{button} {kind}: {exc or type(exc).__name__}"
            return
        body = reply.body if isinstance(reply.body, dict) else {}
        outcome = body.get("outcome") or body.get("message") or "?"
        reason = f" ({body['reason']})" if body.get("reason") else ""
        view.last = f"{button} {kind}: {outcome}{reason}"

    async def _watch(self, view: DeviceView) -> None:
        """Observe ``/status`` for ever, starting over when the device goes away."""
        while True:
            try:
                await self._observe(view)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                view.error = f"no answer ({type(exc).__name__})"
            await asyncio.sleep(RETRY_S)

    async def _observe(self, view: DeviceView) -> None:
        assert self._client is not None
        observation = self._client.observe(self.host, view.port, "/status")
        self._seen(view, await observation.first(REQUEST_TIMEOUT_S))
        poll = asyncio.create_task(self._poll(view))
        try:
            async for note in observation.notifications():
                self._seen(view, note)
        finally:
            poll.cancel()
            observation.cancel()

    async def _poll(self, view: DeviceView) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                self._seen(view, await self._request(view.port, "GET", "/status"))
            except Exception:
                view.error = "no answer"

    async def _request(self, port: int, method: str, path: str, body: Any = None) -> Reply:
        assert self._client is not None
        return await self._client.request(
            self.host, port, method, path, body, timeout_s=REQUEST_TIMEOUT_S
        )

    @staticmethod
    def _seen(view: DeviceView, reply: Reply) -> None:
        if isinstance(reply.body, dict):
            view.status = reply.body
            view.error = None
            view.seen_at = time.time()
        else:
            view.error = "unreadable status"


def _width(screen: Any) -> int:
    return int(screen.getmaxyx()[1])


def _draw(screen: Any, lines: list[Line]) -> None:
    import curses  # noqa: PLC0415

    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(lines[: height - 1]):
        x = 0
        for text, style in line:
            if x >= width - 1:
                break
            chunk = text[: width - 1 - x]
            with contextlib.suppress(curses.error):
                screen.addstr(y, x, chunk, _ATTRS.get(style, 0))
            x += len(chunk)
    screen.refresh()


_ATTRS: dict[str, int] = {}


def _init_colours() -> None:
    import curses  # noqa: PLC0415

    curses.curs_set(0)
    bold, dim, reverse = curses.A_BOLD, curses.A_DIM, curses.A_REVERSE
    _ATTRS.update({"title": bold, "selected": bold | reverse, "dim": dim, "label": 0})
    if not curses.has_colors():
        _ATTRS.update({f"led-{n}": bold for n in LED_NAMES})
        return
    curses.start_color()
    with contextlib.suppress(curses.error):
        curses.use_default_colors()
    pairs = {
        "led-status": curses.COLOR_GREEN,
        "led-hand": curses.COLOR_YELLOW,
        "led-invite": curses.COLOR_CYAN,
        "led-mic": curses.COLOR_RED,
        "good": curses.COLOR_GREEN,
        "warn": curses.COLOR_YELLOW,
        "bad": curses.COLOR_RED,
    }
    for number, (style, colour) in enumerate(pairs.items(), start=1):
        curses.init_pair(number, colour, -1)
        _ATTRS[style] = curses.color_pair(number) | (bold if style.startswith("led") else 0)


async def _fetch_status(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    async with await CoapClient.create() as client:
        reply = await client.request(host, port, "GET", "/status", timeout_s=timeout_s)
    if not isinstance(reply.body, dict):
        raise ValueError(f"unreadable status ({reply.code})")
    return reply.body


def status_command(host: str, port: int, *, wait_in_room: bool, timeout_s: float) -> int:
    """The ``status`` command: print ``/status`` as JSON; with ``wait_in_room``, first
    wait (up to ``timeout_s``) until the device is online and in a room. Exit 0, or 1
    when the device did not answer (or never got into a room). Without
    ``wait_in_room`` it asks once and gives up within :data:`STATUS_TIMEOUT_S`."""
    if not wait_in_room:
        timeout_s = min(timeout_s, STATUS_TIMEOUT_S)
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] | None = None
    while True:
        left = max(0.1, min(deadline - time.monotonic(), REQUEST_TIMEOUT_S))
        try:
            status = asyncio.run(_fetch_status(host, port, left))
        except Exception as exc:
            error = _no_answer(host, port, exc)
        else:
            in_room = status.get("role") is not None and status.get("connection") == "online"
            if in_room or not wait_in_room:
                print(json.dumps(status, indent=2))
                return 0
            error = f"not in a room yet: {status.get('connection')}"
        if not wait_in_room or time.monotonic() >= deadline:
            print(f"gochat-appliance status: {error}", file=sys.stderr)
            return 1
        time.sleep(0.2)


def _no_answer(host: str, port: int, exc: Exception) -> str:
    """Why ``status`` got nothing, and where to look."""
    where = f"coap://{host}:{port}/status"
    detail = " ".join(str(arg) for arg in exc.args)  # aiocoap's str() drops the errno
    if "ECONNREFUSED" in detail or isinstance(exc, ConnectionRefusedError):
        why = "nothing listens on that port"
    elif isinstance(exc, TimeoutError):
        why = "no answer in time"
    else:
        why = f"{type(exc).__name__}: {detail[:80]}"
    return (
        f"no answer from {where} ({why}); is the appliance running, and is its "
        "[coap] port this one? (systemctl status gochat-appliance; make run uses 5683-5685)"
    )


def run_console(host: str, ports_text: str) -> int:
    """The ``console`` command: returns the exit status."""
    try:
        ports = parse_ports(ports_text)
    except ValueError as exc:
        print(f"gochat-appliance console: {exc}", file=sys.stderr)
        return 2
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print("gochat-appliance console: needs a terminal", file=sys.stderr)
        return 2
    import curses  # noqa: PLC0415

    console = Console(host, ports)

    def main(screen: Any) -> None:
        _init_colours()
        screen.nodelay(True)
        screen.keypad(True)
        asyncio.run(console.run(screen))

    with contextlib.suppress(KeyboardInterrupt):
        curses.wrapper(main)
    return 0


__all__ = [
    "KEYS",
    "LEGEND",
    "Console",
    "DeviceView",
    "action_for_key",
    "led_lit",
    "line_text",
    "parse_ports",
    "render",
    "render_device",
    "run_console",
    "status_command",
]
