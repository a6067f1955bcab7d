"""``gochat-appliance console``: watch appliances' LEDs and press their buttons, live.

A small curses UI (stdlib only) over each appliance's CoAP API: it Observes
``/status`` of every port given and draws, per device, who it is, its connection,
room (its subject, from ``/rooms``, and its id), role, microphone, hand and
invitation, and its four LEDs as coloured ●/○ that blink at their real rates. Keys
press the selected device's buttons through ``POST /buttons/{name}``, exactly as a
finger on the box would, and let a host pick
another member of its room and invite, mute or remove them (``POST /host/{action}``).
What each key did is shown below the devices, whole: a refusal's reason is wrapped,
never cut, and a refused press flashes the status LED on screen as on the box.

The pure parts — :func:`action_for_key`, :func:`led_lit`, :func:`room_members` and
:func:`render` — are plain functions of their inputs, tested without a terminal;
:class:`Console` is the asyncio side and :func:`run_console` the thin curses shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from appliance.device.effects import (
    BLINK_TIMES,
    LED_NAMES,
    REFUSAL_FLASH_S,
    REFUSAL_FLASHES,
    LedName,
)
from appliance.device.events import ButtonName, HostActionName, PressKind
from appliance.protocol.models import printable
from appliance.tools.coap_client import CoapClient, Reply

FRAME_S = 0.04
"""Redraw period: 25 frames/s, fine enough for the 5 Hz fast blink."""
RETRY_S = 1.0
"""Wait before observing a device again after it did not answer."""
POLL_S = 2.0
"""A plain GET this often notices a device that went away without a word."""
REQUEST_TIMEOUT_S = 5.0
REFUSALS_S = 0.3
"""How often ``/counters`` is read for refusals the console did not cause (a finger on
the box, a sent press the server refused): within a flash's length (0.6 s)."""
HOST_TIMEOUT_S = 20.0
"""A host action answers once the server did; the device gives up after 15 s."""
SUBJECTS_S = 1.0
"""How often the console looks for rooms whose subject it does not know yet."""
SUBJECT_RETRY_S = 10.0
"""A room missing from the list (closed meanwhile) is looked for again this much later."""
ROOM_PAGES = 10
"""At most this many pages of ``/rooms`` (100 rooms each) are read for a subject."""
STATUS_TIMEOUT_S = 2.0
"""How long ``status`` (without ``--wait-in-room``) waits for an answer."""
COLUMN_WIDTH = 40
"""Widest a device's column gets."""
MIN_COLUMN_WIDTH = 26
"""Narrowest: three devices side by side on an 80-column terminal."""
FLASH_S = 2 * REFUSAL_FLASHES * REFUSAL_FLASH_S
"""A refusal flash on screen lasts as long as on the box (0.6 s)."""

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
class Pick:
    """Pick the next (``step`` 1) or previous (-1) member of the selected device's room."""

    step: int


@dataclass(frozen=True, slots=True)
class Host:
    """Ask the selected device, as host, to ``action`` the picked member."""

    action: HostActionName


@dataclass(frozen=True, slots=True)
class Help:
    """Show or hide the full key legend."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave the console."""


Action = Select | Cycle | Press | Pick | Host | Help | Quit

KEYS: dict[str, Action] = {
    **{str(n): Select(n - 1) for n in range(1, 10)},
    "\t": Cycle(),
    "r": Press("raise_hand", "short"),
    "R": Press("raise_hand", "long"),
    "m": Press("mute", "short"),
    "M": Press("mute", "long"),
    "a": Press("accept", "short"),
    "A": Press("accept", "long"),
    "p": Pick(1),
    "P": Pick(-1),
    "i": Host("invite"),
    "x": Host("mute"),
    "k": Host("remove"),
    "?": Help(),
    "h": Help(),
    "q": Quit(),
    "Q": Quit(),
    "\x1b": Quit(),
}
"""Keys and what they do (see :data:`LEGEND`)."""

HELP_LINE = " 1-9 device  r m a press  p member  i invite x mute k remove  ? help  q quit"
"""The one line of help always shown at the bottom (fits 80 columns)."""

LEGEND = [
    "1-9, Tab  select a device (▶): the keys below act on it",
    "r         raise or lower the hand (short press of raise_hand)",
    "R         leave the stage (long press of raise_hand)",
    "m         microphone off or on (short press of mute)",
    "M         long press of mute (refused: nothing is bound to it)",
    "a         accept the invitation; host: invite the oldest raised hand",
    "A         decline the invitation (long press of accept)",
    "p, P      pick the next or previous member of the device's room (▸)",
    "i         host: invite the picked member onto the stage",
    "x         host: mute the picked member",
    "k         host: remove the picked member from the stage",
    "?, h      show or hide this legend",
    "q, Esc    quit",
    "",
    "● lit, ○ dark, blinking at the device's own rates. A red status light",
    "flashing twice is a refused press (0.6 s, as on the box). Members are the",
    "other devices shown here that are in the same room.",
]
"""The full legend, shown instead of the devices while help is on."""


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
    """What the latest key did on this device (shown whole, wrapped)."""
    last_bad: bool = False
    """Whether that was a refusal or an error."""
    flash_at: float | None = None
    """Wall time of the latest refused press: its flash is drawn from then on."""
    refusals: int | None = None
    """The device's ``presses_refused`` counter at the latest reading."""
    own_refusal_at: float | None = None
    """A press of the console refused, not yet seen in the counter."""
    box_refusal_at: float | None = None
    """A rise of the counter not (yet) matched with a press of the console."""
    seen_at: float = field(default=0.0)
    subject: tuple[str, str] | None = None
    """The subject of a room it was seen in, as ``(room_id, subject)``."""

    @property
    def room_id(self) -> str | None:
        """The room it is in, once it answered (with one)."""
        room_id = self.status.get("room_id") if self.status else None
        return None if room_id is None else str(room_id)

    @property
    def user_id(self) -> str | None:
        """The device's user id, once it answered (with one)."""
        user_id = self.status.get("user_id") if self.status else None
        return None if user_id is None else str(user_id)


@dataclass(frozen=True, slots=True)
class MemberView:
    """A member a host can pick: another shown device in the same room."""

    user_id: str
    role: str
    mic_on: bool
    hand_raised: bool


def led_lit(pattern: str, now: float) -> bool:
    """Whether an LED showing ``pattern`` is lit at wall time ``now`` (seconds)."""
    if pattern == "on":
        return True
    for name, (on_s, off_s) in BLINK_TIMES.items():
        if name == pattern:  # any text may come from a device: look, don't index
            return now % (on_s + off_s) < on_s
    return False


def flash_lit(flash_at: float | None, now: float) -> bool | None:
    """During a refusal flash, whether the status LED is lit; None outside one."""
    if flash_at is None or not 0.0 <= now - flash_at < FLASH_S:
        return None
    return (now - flash_at) % (2 * REFUSAL_FLASH_S) < REFUSAL_FLASH_S


MATCH_S = 1.0
"""A refused press of the console and a rise of the counter this close are one refusal."""


def note_refusals(view: DeviceView, count: int, now: float) -> None:
    """The device's ``presses_refused`` counter read ``count``: a rise that is not the
    console's own refused press is a flash on the box, so it flashes on screen too."""
    known, view.refusals = view.refusals, count
    if known is None or count <= known:  # first reading, none new, or a restart
        return
    rise = count - known
    if view.own_refusal_at is not None and now - view.own_refusal_at < MATCH_S:
        rise -= 1  # shown already, with its reason
    view.own_refusal_at = None
    if rise > 0:
        view.flash_at = view.box_refusal_at = now
        view.last = "a press was refused on the device (status LED flashed; its log says why)"
        view.last_bad = True


def note_own_refusal(view: DeviceView, now: float) -> None:
    """A press of the console was refused: flash, unless the counter showed it first."""
    if view.box_refusal_at is not None and now - view.box_refusal_at < MATCH_S:
        view.box_refusal_at = None  # the same refusal: its flash is already on
    else:
        view.flash_at = view.own_refusal_at = now


def room_members(views: Sequence[DeviceView], selected: int) -> list[MemberView]:
    """The other devices online in the selected device's room, as the host may pick
    them (``/status`` describes a device only, so the console's own devices are the
    members it knows)."""
    if not 0 <= selected < len(views) or views[selected].status is None:
        return []
    me = views[selected].status or {}
    room = me.get("room_id")
    if room is None or me.get("role") is None:
        return []
    members: list[MemberView] = []
    for view in views:
        status = view.status
        if status is None or view.user_id in (None, str(me.get("user_id"))):
            continue
        if status.get("room_id") != room or status.get("role") is None:
            continue
        if status.get("connection") != "online" or view.user_id in {m.user_id for m in members}:
            continue
        members.append(
            MemberView(
                str(view.user_id),
                str(status["role"]),
                bool(status.get("mic_on")),
                bool(status.get("hand_raised")),
            )
        )
    return members


def next_pick(members: Sequence[MemberView], picked: str | None, step: int) -> str | None:
    """The member picked after ``step`` from ``picked`` (the first when none was)."""
    if not members:
        return None
    ids = [m.user_id for m in members]
    if picked not in ids:
        return ids[0] if step > 0 else ids[-1]
    return ids[(ids.index(picked) + step) % len(ids)]


# ================================================================ rendering

Segment = tuple[str, Style]
Line = list[Segment]


@dataclass(frozen=True, slots=True)
class Screen:
    """The console's state that is not per device."""

    selected: int = 0
    picked: str | None = None
    help: bool = False


def render(
    views: Sequence[DeviceView], screen: Screen, now: float, width: int, height: int
) -> list[Line]:
    """The whole screen as at most ``height`` lines of at most ``width`` - 1 characters:
    devices side by side as far as they fit, then the members of the selected device's
    room, what the last key did (wrapped, whole), and the help line at the bottom."""
    inner = max(20, width - 1)
    count = f"  {len(views)} device(s) over CoAP"
    top: list[Line] = [[(" GoChat appliances ", "title"), (count[: max(0, inner - 19)], "dim")]]
    if screen.help:
        body: list[Line] = [[(f" {text}"[:inner], "label")] for text in LEGEND]
        return _fit([*top, [], *body], [], height, inner)
    message = _message_lines(views, screen, inner)
    tail = [*_members_lines(views, screen, inner), *([[], *message] if message else [])]
    devices = _device_rows(views, screen.selected, now, inner)
    room = height - 1 - len(top) - len(tail)
    return _fit([*top, *devices[: max(0, room)]], tail, height, inner)


def _fit(head: list[Line], tail: list[Line], height: int, inner: int) -> list[Line]:
    # The help line keeps the bottom row, whatever is above it.
    lines = [*head, *tail][: max(0, height - 1)]
    padding: list[Line] = [[] for _ in range(height - 1 - len(lines))]
    return [*lines, *padding, [(HELP_LINE[:inner], "title")]]


def _device_rows(views: Sequence[DeviceView], selected: int, now: float, inner: int) -> list[Line]:
    if not views:
        return [[]]
    per_row = max(1, min(len(views), inner // MIN_COLUMN_WIDTH))
    column = min(COLUMN_WIDTH, inner // per_row)
    blocks = [render_device(v, i, i == selected, now, column - 1) for i, v in enumerate(views)]
    lines: list[Line] = [[]]
    for start in range(0, len(blocks), per_row):
        lines += _side_by_side(blocks[start : start + per_row], column)
        lines.append([])
    return lines


def render_device(
    view: DeviceView, index: int, selected: bool, now: float, width: int = COLUMN_WIDTH - 2
) -> list[Line]:
    """One device's block, each line at most ``width`` characters. Everything shown may
    come from a peer (a name, a room id): escaped, then cut to the column."""
    marker = "▶" if selected else " "
    status = view.status
    prefix, port = f"{marker}[{index + 1}] ", f" :{view.port}"
    user = _cut(printable(view.user_id or "?"), width - len(prefix) - len(port))
    head: Line = [(f"{prefix}{user}{port}", "selected" if selected else "title")]
    if status is None:
        return [head, [(_cut(f"  {printable(view.error or 'no answer')}", width), "warn")]]
    connection = printable(str(status.get("connection")))
    role = printable(str(status.get("role") or "no role"))
    lines: list[Line] = [
        head,
        [(_cut(f"  {connection} · {role}", width), "good" if connection == "online" else "warn")],
        *_room_lines(view, width),
        _field("mic", "on" if status.get("mic_on") else "off", width),
        _field("hand", "raised" if status.get("hand_raised") else "down", width),
        _field("invite", _invitation(status.get("invitation")), width),
        *_leds_lines(status.get("leds"), view.flash_at, now),
    ]
    if view.error:
        lines.append([(_cut("  ! " + printable(view.error), width), "bad")])
    return lines


def _field(label: str, value: str, width: int) -> Line:
    return [(f"  {label:<7}", "label"), (_cut(printable(value), width - 9), "plain")]


def _cut(text: str, width: int) -> str:
    """``text`` in ``width`` columns, a cut shown by an ellipsis (names and ids only:
    what a key did is never cut, see :func:`_message_lines`)."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _room_lines(view: DeviceView, width: int) -> list[Line]:
    """The room by its subject, and its id below, once the subject is known."""
    room_id = view.room_id
    if room_id is None:
        return [_field("room", "—", width)]
    if view.subject is None or view.subject[0] != room_id:
        return [_field("room", room_id, width)]
    return [_field("room", view.subject[1], width), _field("id", room_id, width)]


def _invitation(invitation: object) -> str:
    if not isinstance(invitation, dict):
        return "—"
    return f"from {invitation.get('from_name') or invitation.get('from_user_id')}"


def _leds_lines(leds: object, flash_at: float | None, now: float) -> list[Line]:
    patterns = leds if isinstance(leds, dict) else {}
    cells: list[Line] = []
    for name in LED_NAMES:
        lit = led_lit(str(patterns.get(name, "off")), now)
        style: Style = _led_style(name)
        flash = flash_lit(flash_at, now) if name == "status" else None
        if flash is not None:  # the refusal flash outranks the pattern, as on the box
            lit, style = flash, "bad"
        label: Style = "bad" if flash is not None else "label"
        cells.append([("●" if lit else "○", style if lit else "dim"), (f" {name:<7}", label)])
    return [[("  ", "plain"), *cells[0], *cells[1]], [("  ", "plain"), *cells[2], *cells[3]]]


def _led_style(name: LedName) -> Style:
    styles: dict[LedName, Style] = {
        "status": "led-status",
        "hand": "led-hand",
        "invite": "led-invite",
        "mic": "led-mic",
    }
    return styles[name]


def _side_by_side(blocks: list[list[Line]], column: int) -> list[Line]:
    height = max(len(b) for b in blocks)
    rows: list[Line] = []
    for i in range(height):
        row: Line = []
        for block in blocks:
            line = block[i] if i < len(block) else []
            used = sum(len(text) for text, _ in line)
            row += [*line, (" " * max(0, column - used), "plain")]
        rows.append(row)
    return rows


def _members_lines(views: Sequence[DeviceView], screen: Screen, inner: int) -> list[Line]:
    members = room_members(views, screen.selected)
    if not members:
        return [[(" members  none to pick (no other device shown is in this room)"[:inner], "dim")]]
    lines: list[Line] = [[(" members  ", "label")]]
    for member in members:
        picked = member.user_id == screen.picked
        text = f"{'▸' if picked else ' '}{_cut(printable(member.user_id), 24)} ({_about(member)}) "
        if sum(len(t) for t, _ in lines[-1]) + len(text) > inner:
            lines.append([(" " * 10, "plain")])
        lines[-1].append((text[: inner - 10], "selected" if picked else "plain"))
    return lines


def _about(member: MemberView) -> str:
    parts = [member.role]
    if member.hand_raised:
        parts.append("hand up")
    if member.role != "listener":
        parts.append("mic on" if member.mic_on else "muted")
    return ", ".join(parts)


def _message_lines(views: Sequence[DeviceView], screen: Screen, inner: int) -> list[Line]:
    """What the last key did on the selected device, whole: wrapped, never cut."""
    if not 0 <= screen.selected < len(views) or not views[screen.selected].last:
        return []
    view = views[screen.selected]
    text = printable(f"{view.user_id or '?'}:{view.port}: {view.last}")
    wrapped = textwrap.wrap(text, inner - 1, break_on_hyphens=False) or [""]
    return [[(f" {part}", "bad" if view.last_bad else "plain")] for part in wrapped]


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
        self.screen = Screen()
        self.quit = False
        self._client: CoapClient | None = None
        self._presses: set[asyncio.Task[None]] = set()

    @property
    def selected(self) -> int:
        """The index of the device the keys act on."""
        return self.screen.selected

    async def run(self, screen: Any) -> None:
        """Observe every device and draw on ``screen`` (a curses window) until quit."""
        self._client = await CoapClient.create()
        tasks = [asyncio.create_task(self._watch(view)) for view in self.views]
        tasks += [asyncio.create_task(self._refusals(view)) for view in self.views]
        tasks.append(asyncio.create_task(self._subjects()))
        try:
            while not self.quit:
                self._keys(screen)
                height, width = screen.getmaxyx()
                _draw(screen, render(self.views, self.screen, time.time(), width, height))
                await asyncio.sleep(FRAME_S)
        finally:
            for task in [*tasks, *self._presses]:
                task.cancel()
            await self._client.close()

    def _keys(self, screen: Any) -> None:
        while (key := screen.getch()) != -1:
            action = action_for_key(key)
            if action is not None:
                self.handle(action)

    def handle(self, action: Action) -> None:
        """Do what a key asks (requests go out on tasks; their outcome is drawn)."""
        screen = self.screen
        match action:
            case Quit():
                self.quit = True
            case Help():
                self.screen = replace(screen, help=not screen.help)
            case Select(index) if index < len(self.views):
                self.screen = replace(screen, selected=index)
            case Cycle():
                self.screen = replace(screen, selected=(screen.selected + 1) % len(self.views))
            case Pick(step):
                self._pick(step)
            case Press(button, kind):
                self._spawn(self._press(self.views[screen.selected], button, kind))
            case Host(name):
                self._host_action(name)
            case _:
                pass

    def _pick(self, step: int) -> None:
        members = room_members(self.views, self.selected)
        picked = next_pick(members, self.screen.picked, step)
        self.screen = replace(self.screen, picked=picked)
        if picked is None:
            view = self.views[self.selected]
            view.last, view.last_bad = "no member to pick: no other device shown is here", True

    def _host_action(self, action: HostActionName) -> None:
        view = self.views[self.selected]
        members = {m.user_id for m in room_members(self.views, self.selected)}
        if self.screen.picked is None or self.screen.picked not in members:
            view.last, view.last_bad = f"{action}: pick a member first (p)", True
            return
        self._spawn(self._host(view, action, self.screen.picked))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._presses.add(task)  # keep a reference until it is done
        task.add_done_callback(self._presses.discard)

    async def _press(self, view: DeviceView, button: ButtonName, kind: PressKind) -> None:
        what = f"{button} {kind}"
        view.last, view.last_bad = f"{what}: …", False
        try:
            reply = await self._request(view.port, "POST", f"/buttons/{button}", {"press": kind})
        except Exception as exc:
            view.last, view.last_bad = f"{what}: no answer ({type(exc).__name__})", True
            return
        body = reply.body if isinstance(reply.body, dict) else {}
        if not reply.ok:
            view.last, view.last_bad = f"{what}: {reply.code} {body.get('message', '')}", True
            return
        outcome = str(body.get("outcome", "?"))
        reason = f": {body['reason']}" if body.get("reason") else ""
        view.last, view.last_bad = f"{what}: {outcome}{reason}", outcome == "refused"
        if outcome == "refused":  # the box flashed its status LED: so does the screen
            note_own_refusal(view, time.time())

    async def _host(self, view: DeviceView, action: HostActionName, user_id: str) -> None:
        what = f"{action} {user_id}"
        view.last, view.last_bad = f"{what}: …", False
        try:
            reply = await self._request(
                view.port, "POST", f"/host/{action}", {"user_id": user_id}, HOST_TIMEOUT_S
            )
        except Exception as exc:
            view.last, view.last_bad = f"{what}: no answer ({type(exc).__name__})", True
            return
        body = reply.body if isinstance(reply.body, dict) else {}
        if reply.ok:
            view.last, view.last_bad = f"{what}: done", False
        else:
            view.last, view.last_bad = f"{what}: {reply.code} {body.get('message', '')}", True

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

    async def _refusals(self, view: DeviceView) -> None:
        """Read ``/counters`` often enough to show every refusal flash of the box."""
        while True:
            with contextlib.suppress(Exception):  # a device away: _watch says so
                reply = await self._request(view.port, "GET", "/counters")
                if reply.ok and isinstance(reply.body, dict):
                    count = reply.body.get("presses_refused", 0)
                    if isinstance(count, int):
                        note_refusals(view, count, time.time())
            await asyncio.sleep(REFUSALS_S)

    async def _subjects(self) -> None:
        """Learn the subject of every room a device is in, from that device's ``/rooms``
        (``/status`` names a room by its id only)."""
        known: dict[str, str] = {}
        asked: dict[str, float] = {}  # room id -> when it was last looked for
        while True:
            for view in self.views:
                room_id = view.room_id
                if room_id is None or (view.subject and view.subject[0] == room_id):
                    continue
                due = asked.get(room_id, -SUBJECT_RETRY_S) + SUBJECT_RETRY_S
                if room_id not in known and time.monotonic() >= due:
                    asked[room_id] = time.monotonic()
                    with contextlib.suppress(Exception):  # a device away: _watch says so
                        known.update(await self._room_subjects(view.port, room_id))
                if room_id in known:
                    view.subject = (room_id, known[room_id])
            await asyncio.sleep(SUBJECTS_S)

    async def _room_subjects(self, port: int, wanted: str) -> dict[str, str]:
        """Subjects by room id from a device's ``/rooms``, page by page until ``wanted``."""
        found: dict[str, str] = {}
        cursor: str | None = ""
        for _ in range(ROOM_PAGES):
            query = f"?page_size=100&cursor={cursor}" if cursor else "?page_size=100"
            reply = await self._request(port, "GET", f"/rooms{query}")
            body = reply.body if reply.ok and isinstance(reply.body, dict) else {}
            for room in body.get("rooms") or []:
                if isinstance(room, dict) and "room_id" in room and "subject" in room:
                    found[str(room["room_id"])] = str(room["subject"])
            cursor = body.get("next_cursor")
            if wanted in found or not isinstance(cursor, str) or not cursor:
                break
        return found

    async def _poll(self, view: DeviceView) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                self._seen(view, await self._request(view.port, "GET", "/status"))
            except Exception:
                view.error = "no answer"

    async def _request(
        self,
        port: int,
        method: str,
        path: str,
        body: Any = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> Reply:
        assert self._client is not None
        return await self._client.request(self.host, port, method, path, body, timeout_s=timeout_s)

    @staticmethod
    def _seen(view: DeviceView, reply: Reply) -> None:
        if isinstance(reply.body, dict):
            view.status = reply.body
            view.error = None
            view.seen_at = time.time()
        else:
            view.error = "unreadable status"


def _draw(screen: Any, lines: list[Line]) -> None:
    import curses  # noqa: PLC0415

    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(lines[:height]):
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
    "HELP_LINE",
    "KEYS",
    "LEGEND",
    "Console",
    "DeviceView",
    "MemberView",
    "Screen",
    "action_for_key",
    "flash_lit",
    "led_lit",
    "line_text",
    "next_pick",
    "note_own_refusal",
    "note_refusals",
    "parse_ports",
    "render",
    "render_device",
    "room_members",
    "run_console",
    "status_command",
]
