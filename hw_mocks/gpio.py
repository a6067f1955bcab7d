"""GPIO stand-ins over gpiozero's own ``MockFactory``: press buttons, read LED patterns.

Used by the tests and by the daemon's ``--mock-hw`` mode. A panel built with
``pin_factory=mock_factory()`` runs unchanged on these pins; this module only plays the
person (driving the button pins) and the observer (reading the LED pins' history).

Buttons are active-low with a pull-up: pressing drives the pin low.

Time is passed in: every helper that waits takes ``advance``, a callable that lets
``seconds`` pass — ``time.sleep`` for real time (the default), or a fake clock's
``advance`` in unit tests (which may also tick the gesture detector, so a long press
acts at its deadline).

LED history is read from ``MockPin.states``, which gpiozero records with
``time.monotonic()``; blinking itself runs on gpiozero's threads in real time, so the
pattern helpers work on real time only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from appliance.device.effects import LED_NAMES, LedName, LedPattern
from appliance.device.events import ButtonName
from appliance.device.panel import BLINK_TIMES, PanelPins

Advance = Callable[[float], None]
"""Lets ``seconds`` pass: ``time.sleep`` or a fake clock's ``advance``."""

SHORT_HOLD_S = 0.1
LONG_HOLD_S = 1.6
BOUNCE_SPACING_S = 0.0005

STEADY_S = 1.5 * max(on_s for on_s, _ in BLINK_TIMES.values())
"""Unchanged this long, an LED is steady: longer than any blink phase."""
TOLERANCE = 0.35
"""How far (relative) a measured blink phase may stray from the nominal one."""
RECENT_PHASES = 4


# ---------------------------------------------------------------- pins


def mock_factory() -> Any:
    """A fresh ``MockFactory`` (one per test, like gpiozero's own test suite)."""
    return MockFactory()


def button_pin(factory: Any, name: ButtonName, pins: PanelPins | None = None) -> Any:
    """The ``MockPin`` of button ``name``."""
    return factory.pin((pins or PanelPins()).button(name))


def led_pin(factory: Any, name: LedName, pins: PanelPins | None = None) -> Any:
    """The ``MockPin`` of LED ``name``."""
    return factory.pin((pins or PanelPins()).led(name))


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


def classify_changes(changes: Sequence[Change], now: float) -> LedPattern | None:
    """The DEVICE.md pattern a history shows at ``now``, or None if it cannot tell yet.

    Steady ("on"/"off") once unchanged for :data:`STEADY_S`; a blink once at least one
    whole recent phase was seen, named by its median phase length. None while the
    history is too short to decide, or for a rhythm that is no DEVICE.md pattern
    (such as a refusal flash).
    """
    if not changes:
        return None
    current = changes[-1]
    held = now - current.at
    if held >= STEADY_S:
        return "on" if current.on else "off"
    phases: list[float] = []
    for earlier, later in reversed(list(pairwise(changes))):
        phase = later.at - earlier.at
        if phase >= STEADY_S or len(phases) == RECENT_PHASES:
            break
        phases.append(phase)
    if not phases:
        return None
    return _blink_named(statistics.median(phases), held)


def _blink_named(phase: float, held: float) -> LedPattern | None:
    for name, (on_s, _) in BLINK_TIMES.items():
        if abs(phase - on_s) <= TOLERANCE * on_s:
            # Held well past this rhythm's phase: it stopped blinking; not steady yet.
            return name if held <= (1 + 2 * TOLERANCE) * on_s else None
    return None


def classify(pin: MockPin, now: float | None = None) -> LedPattern | None:
    """The pattern LED ``pin`` shows now (see :func:`classify_changes`)."""
    return classify_changes(timeline(pin), time.monotonic() if now is None else now)


def led_patterns(factory: Any, pins: PanelPins | None = None) -> dict[LedName, LedPattern | None]:
    """Every LED's pattern now, by name."""
    return {name: classify(led_pin(factory, name, pins)) for name in LED_NAMES}


def wait_for_pattern(
    pin: MockPin, pattern: LedPattern, timeout_s: float = 3.0, poll_s: float = 0.01
) -> bool:
    """Poll (real time) until ``pin`` shows ``pattern``; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if classify(pin) == pattern:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


# ---------------------------------------------------------------- long runs


def trim_history(factory: Any, pins: PanelPins | None = None, keep: int = 256) -> None:
    """Drop all but the latest ``keep`` states of every LED pin.

    gpiozero's ``MockPin`` records every change forever, so a blinking LED under a
    long-running ``--mock-hw`` daemon grows by ~10 entries a second. :func:`timeline`
    walks back from the latest change, so dropping the oldest ones loses nothing it
    needs. ``del`` of a slice is one operation under the GIL: a blink thread appending
    meanwhile loses nothing.
    """
    for name in LED_NAMES:
        states = led_pin(factory, name, pins).states
        if len(states) > 2 * keep:
            del states[:-keep]
