"""Button gestures from raw pin edges: debounce, short press, long press (pure).

Fed ``edge(pressed, now)`` for every raw edge the pin reports and ``tick(now)`` when
:meth:`ButtonGestures.next_deadline` comes due; returns
:class:`~appliance.device.events.Gesture` values. No clock, timer or thread inside, so
tests drive it on a fake clock, and gpiozero's mock pins (which ignore ``bounce_time``)
work the same as real ones.

Debounce: act on the first edge, then lock out
-------------------------------------------------
A contact that changes while the lockout window is closed is taken at once — the press
starts, or the press ends and a short press is reported, on the very first edge, so the
debounce adds no latency. That edge opens a lockout window: every edge inside it is
bounce, and only moves the window's end to ``debounce_s`` after the latest edge (so a
burst of any length whose edges are closer than ``debounce_s`` is still one window).
When the window closes, the contact has been quiet for ``debounce_s`` and its level is
final; if it differs from what was taken (the burst ended the other way, e.g. a tap
shorter than the window), that change is taken then.

So any burst of bounce is exactly one press, and a press is reported as early as
physically possible. The price — a single noise spike on the wire counts as a tap — is
the same as every leading-edge debouncer's; the buttons sit on pull-ups on a short
cable, and a tap that does nothing the role allows merely flashes the status LED.

Long press: the hold deadline is measured from the first edge; when it passes with the
button still down, the long press is reported at once (before release), and the
release then reports nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from appliance.device.events import BUTTONS, ButtonName, Gesture

DEFAULT_DEBOUNCE_S = 0.030
DEFAULT_LONG_PRESS_S = 1.5


@dataclass(frozen=True, slots=True)
class GestureTiming:
    """Debounce window and hold time (docs/device.md: 1.5 s; ``gpio`` config section)."""

    debounce_s: float = DEFAULT_DEBOUNCE_S
    long_press_s: float = DEFAULT_LONG_PRESS_S

    def __post_init__(self) -> None:
        if self.debounce_s < 0:
            raise ValueError("debounce_s must not be negative")
        if self.long_press_s <= self.debounce_s:
            raise ValueError("long_press_s must be longer than debounce_s")


class ButtonGestures:
    """Gestures of one button. Mutable, but pure: no clock, no I/O.

    The button is assumed released at start: a button held down while the daemon
    starts does nothing until it is released and pressed again.
    """

    def __init__(self, button: ButtonName, timing: GestureTiming | None = None) -> None:
        self.button: ButtonName = button
        self.timing = timing if timing is not None else GestureTiming()
        self._level = False  # the debounced state: True while pressed
        self._raw = False  # the latest raw level reported
        self._quiet_at: float | None = None  # end of the lockout window, if open
        self._pressed_at = 0.0
        self._long_done = False

    @property
    def pressed(self) -> bool:
        """The debounced state of the button."""
        return self._level

    def edge(self, pressed: bool, now: float) -> list[Gesture]:
        """A raw edge: the contact is now ``pressed`` (True) or released, at ``now``."""
        out = self.tick(now)
        self._raw = pressed
        if self._quiet_at is not None:
            # Bounce: ignored, and the contact must be quiet for a full window again.
            self._quiet_at = now + self.timing.debounce_s
        elif pressed != self._level:
            out += self._take(pressed, now)
            self._quiet_at = now + self.timing.debounce_s
        return out

    def tick(self, now: float) -> list[Gesture]:
        """Let time pass to ``now``: close the lockout window, fire the long press."""
        out: list[Gesture] = []
        # Deadlines are processed in time order, so an edge or tick that arrives late
        # (the shell's timer fired late) still yields what happened, in order.
        while (due := self._first_due(now)) is not None:
            at, what = due
            if what == "hold":
                self._long_done = True
                out.append(Gesture(self.button, "long"))
            else:
                self._quiet_at = None
                if self._raw != self._level:
                    out += self._take(self._raw, at)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has something to do (None: nothing scheduled)."""
        times: list[float] = []
        if self._quiet_at is not None and self._raw != self._level:
            times.append(self._quiet_at)
        hold = self._hold_deadline()
        if hold is not None:
            times.append(hold)
        return min(times, default=None)

    def _first_due(self, now: float) -> tuple[float, str] | None:
        due: list[tuple[float, str]] = []
        hold = self._hold_deadline()
        if hold is not None and hold <= now:
            due.append((hold, "hold"))
        if self._quiet_at is not None and self._quiet_at <= now:
            due.append((self._quiet_at, "settle"))
        return min(due, default=None)

    def _hold_deadline(self) -> float | None:
        if not self._level or self._long_done:
            return None
        return self._pressed_at + self.timing.long_press_s

    def _take(self, pressed: bool, at: float) -> list[Gesture]:
        """The debounced level changes at ``at``."""
        self._level = pressed
        if pressed:
            self._pressed_at, self._long_done = at, False
            return []
        if self._long_done:
            return []  # the long press already acted; its release does nothing
        return [Gesture(self.button, "short")]


class GestureDetector:
    """Gestures of several buttons (by default docs/device.md's three) with one deadline."""

    def __init__(
        self, timing: GestureTiming | None = None, buttons: Iterable[ButtonName] = BUTTONS
    ) -> None:
        self.timing = timing if timing is not None else GestureTiming()
        self._buttons = {name: ButtonGestures(name, self.timing) for name in buttons}

    def edge(self, button: ButtonName, pressed: bool, now: float) -> list[Gesture]:
        """A raw edge of ``button`` at ``now``; time also passes for the other buttons."""
        out = self.tick(now)
        return out + self._buttons[button].edge(pressed, now)

    def tick(self, now: float) -> list[Gesture]:
        """Let time pass to ``now`` for every button."""
        return [g for b in self._buttons.values() for g in b.tick(now)]

    def next_deadline(self) -> float | None:
        """The earliest deadline of any button (None: nothing scheduled)."""
        times = [t for b in self._buttons.values() if (t := b.next_deadline()) is not None]
        return min(times, default=None)

    def pressed(self, button: ButtonName) -> bool:
        """The debounced state of ``button``."""
        return self._buttons[button].pressed
