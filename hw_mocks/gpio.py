"""GPIO stand-ins over gpiozero's own ``MockFactory``: press buttons, read LED history.

Used by the tests and by the daemon's ``--mock-hw`` mode. A panel built with
``pin_factory=mock_factory()`` runs unchanged on these pins; this module only plays the
person (driving button pins) and records what the LED pins did. It knows gpiozero's
pin layer and nothing of the appliance: pins are passed as ``MockPin`` objects.

Buttons are active-low with a pull-up: pressing drives the pin low.

Time is passed in: every helper that waits takes ``advance``, a callable that lets
``seconds`` pass — ``time.sleep`` for real time (the default), or a fake clock's
``advance`` in unit tests (which may also tick the gesture detector, so a long press
acts at its deadline).

LED history is read from ``MockPin.states``, which gpiozero records with
``time.monotonic()`` (:func:`timeline`). A long-running ``--mock-hw`` daemon blinks for
hours, so :func:`mock_factory`'s pins keep a bounded history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

Advance = Callable[[float], None]
"""Lets ``seconds`` pass: ``time.sleep`` or a fake clock's ``advance``."""

SHORT_HOLD_S = 0.1
LONG_HOLD_S = 1.6
BOUNCE_SPACING_S = 0.0005

HISTORY_KEEP = 256
"""States a pin keeps at least; the oldest go once it holds twice as many."""


# ---------------------------------------------------------------- pins


class BoundedMockPin(MockPin):  # type: ignore[misc]  # gpiozero is untyped
    """A ``MockPin`` whose history (``states``) stays bounded.

    gpiozero's ``MockPin`` records every change forever: a blinking LED grows it by ~10
    entries a second. :func:`timeline` walks back from the latest change, so dropping
    the oldest entries loses nothing it needs; ``del`` of a slice is one operation
    under the GIL, so a blink thread appending meanwhile loses nothing either.
    """

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if len(self.states) > 2 * HISTORY_KEEP:
            del self.states[:-HISTORY_KEEP]
        return changed


def mock_factory() -> Any:
    """A fresh ``MockFactory`` of bounded pins (one per test, like gpiozero's own tests)."""
    return MockFactory(pin_class=BoundedMockPin)


# ---------------------------------------------------------------- buttons


def press(pin: MockPin) -> None:
    """Close the contact: the active-low input goes low."""
    pin.drive_low()


def release(pin: MockPin) -> None:
    """Open the contact: the pull-up takes the input high."""
    pin.drive_high()


def toggle(pin: MockPin) -> None:
    """Flip the contact (one edge)."""
    if pin.state:
        pin.drive_low()
    else:
        pin.drive_high()


def short_press(
    pin: MockPin, *, hold_s: float = SHORT_HOLD_S, advance: Advance = time.sleep
) -> None:
    """Press, hold ``hold_s`` (well under the 1.5 s hold time), release."""
    press(pin)
    advance(hold_s)
    release(pin)


def long_press(pin: MockPin, *, hold_s: float = LONG_HOLD_S, advance: Advance = time.sleep) -> None:
    """Press, hold ``hold_s`` (past the 1.5 s hold time), release."""
    press(pin)
    advance(hold_s)
    release(pin)


def bounce_burst(
    pin: MockPin,
    edges: int,
    spacing_s: float = BOUNCE_SPACING_S,
    *,
    advance: Advance = time.sleep,
) -> None:
    """``edges`` edges, ``spacing_s`` apart, starting from the current level.

    From released, an odd count ends pressed (a bouncy press) and an even count ends
    released (a tap shorter than the bounce).
    """
    for i in range(edges):
        if i:
            advance(spacing_s)
        toggle(pin)


def bouncy_press(
    pin: MockPin,
    *,
    hold_s: float = SHORT_HOLD_S,
    edges: int = 7,
    spacing_s: float = BOUNCE_SPACING_S,
    advance: Advance = time.sleep,
) -> None:
    """A realistic press: a bounce burst down, a hold, a bounce burst up.

    ``edges`` must be odd (each burst ends on the other level).
    """
    if edges % 2 == 0:
        raise ValueError("a bouncy press needs an odd number of edges per burst")
    bounce_burst(pin, edges, spacing_s, advance=advance)
    advance(hold_s)
    bounce_burst(pin, edges, spacing_s, advance=advance)


# ---------------------------------------------------------------- LEDs


@dataclass(frozen=True, slots=True)
class Change:
    """The pin became ``on`` at monotonic time ``at``."""

    at: float
    on: bool


def timeline(pin: MockPin) -> list[Change]:
    """The pin's history with absolute ``time.monotonic()`` times, oldest first.

    gpiozero stores each state with the time spent in the *previous* one; this walks
    back from the last change. The first entry is the state when the history began
    (pin creation or ``pin.clear_states()``).
    """
    for _ in range(10):  # a blink thread may append while we read: retry for a snapshot
        last = pin._last_change
        states = list(pin.states)
        if pin._last_change == last and len(pin.states) == len(states):
            break
    changes: list[Change] = []
    at = float(last)
    for state in reversed(states):
        changes.append(Change(at, bool(state.state)))
        at -= state.timestamp
    changes.reverse()
    return changes
