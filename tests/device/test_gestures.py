"""Debounce, short and long presses from raw edges, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.device.events import Gesture
from appliance.device.gestures import ButtonGestures, GestureDetector, GestureTiming

T = 100.0
SHORT = [Gesture("mute", "short")]
LONG = [Gesture("mute", "long")]


def feed(button: ButtonGestures, edges: list[tuple[bool, float]], until: float) -> list[Gesture]:
    """Every edge in order, then time passes to ``until``."""
    out: list[Gesture] = []
    for pressed, at in edges:
        out += button.edge(pressed, at)
    return out + button.tick(until)


def test_short_press_is_reported_on_release() -> None:
    b = ButtonGestures("mute")
    assert b.edge(True, T) == []
    assert b.pressed
    assert b.tick(T + 0.5) == []
    assert b.edge(False, T + 0.2 + 0.5) == SHORT


def test_long_press_acts_at_the_hold_time_before_release() -> None:
    b = ButtonGestures("mute")
    b.edge(True, T)
    assert b.next_deadline() == pytest.approx(T + 1.5)
    assert b.tick(T + 1.499) == []
    assert b.tick(T + 1.5) == LONG
    assert b.next_deadline() is None
    assert b.tick(T + 5) == []
    assert b.edge(False, T + 6) == []  # the release of a long press does nothing


def test_a_late_tick_still_reports_the_long_press_once() -> None:
    b = ButtonGestures("mute")
    b.edge(True, T)
    assert b.edge(False, T + 2.0) == LONG  # no tick came in between: still long, not short


def test_a_storm_of_20_edges_in_10_ms_is_one_press() -> None:
    b = ButtonGestures("mute")
    edges = [(i % 2 == 0, T + i * 0.0005) for i in range(20)]  # ends released
    assert feed(b, edges, T + 1) == SHORT


def test_a_bouncy_press_and_a_bouncy_release_are_one_press() -> None:
    b = ButtonGestures("mute")
    down = [(i % 2 == 0, T + i * 0.0005) for i in range(21)]  # ends pressed
    up = [(i % 2 == 1, T + 0.3 + i * 0.0005) for i in range(21)]  # ends released
    assert feed(b, down + up, T + 1) == SHORT
    assert not b.pressed


def test_the_press_is_taken_on_the_first_edge() -> None:
    b = ButtonGestures("mute")
    b.edge(True, T)
    assert b.pressed  # no debounce delay on the press
    b.edge(False, T + 0.001)
    assert b.pressed  # bounce inside the window is ignored...
    assert b.next_deadline() == pytest.approx(T + 0.031)
    assert b.tick(T + 0.031) == SHORT  # ...until the contact settles released


def test_the_lockout_window_follows_the_last_edge() -> None:
    b = ButtonGestures("mute")
    edges = [(i % 2 == 0, T + i * 0.02) for i in range(10)]  # 20 ms apart: all one burst
    assert feed(b, edges, T + 1) == SHORT


def test_a_button_held_at_start_does_nothing_until_pressed_again() -> None:
    b = ButtonGestures("mute")
    assert b.edge(False, T) == []
    assert b.tick(T + 10) == []


def test_timings_are_configurable() -> None:
    b = ButtonGestures("mute", GestureTiming(debounce_s=0.005, long_press_s=0.5))
    b.edge(True, T)
    assert b.tick(T + 0.5) == LONG
    b.edge(False, T + 0.6)
    b.edge(True, T + 0.7)
    assert b.edge(False, T + 0.9) == SHORT  # 200 ms < 500 ms


def test_invalid_timings_are_rejected() -> None:
    with pytest.raises(ValueError, match="debounce"):
        GestureTiming(debounce_s=-1)
    with pytest.raises(ValueError, match="long_press_s"):
        GestureTiming(debounce_s=0.1, long_press_s=0.05)


def test_the_detector_keeps_buttons_apart_and_shares_one_deadline() -> None:
    d = GestureDetector()
    d.edge("mute", True, T)
    d.edge("accept", True, T + 0.2)
    assert d.next_deadline() == pytest.approx(T + 1.5)
    assert d.edge("accept", False, T + 0.4) == [Gesture("accept", "short")]
    assert d.tick(T + 1.5) == LONG
    assert d.pressed("mute") and not d.pressed("accept")


# ---------------------------------------------------------------- properties

gaps = st.lists(st.floats(min_value=0.0, max_value=0.0009), min_size=0, max_size=20)


def burst(start: float, spacing: list[float], first: bool) -> list[tuple[bool, float]]:
    """Alternating edges from ``first``, the i-th after ``spacing[:i]``."""
    edges, at, level = [], start, first
    for gap in [0.0, *spacing]:
        at += gap
        edges.append((level, at))
        level = not level
    return edges


def odd(spacing: list[float]) -> list[float]:
    """Make the burst's edge count odd, so it ends on the other level."""
    return spacing if len(spacing) % 2 == 0 else spacing[:-1]


@given(spacing=gaps)
def test_any_burst_within_the_window_is_exactly_one_press(spacing: list[float]) -> None:
    b = ButtonGestures("mute")
    edges = burst(T, spacing, first=True)
    if edges[-1][0]:  # it ended pressed: let go cleanly later
        edges.append((False, T + 0.5))
    assert feed(b, edges, T + 1) == SHORT
    assert not b.pressed


@given(
    down=gaps,
    up=gaps,
    hold=st.one_of(st.floats(0.1, 1.4), st.floats(1.6, 5.0)),
    ticks=st.booleans(),
)
def test_a_bouncy_press_of_any_length_is_exactly_one_gesture(
    down: list[float], up: list[float], hold: float, ticks: bool
) -> None:
    b = ButtonGestures("mute")
    out: list[Gesture] = []
    edges = burst(T, odd(down), first=True) + burst(T + hold, odd(up), first=False)
    for pressed, at in edges:
        if ticks:  # the shell's timer fires at every deadline before the edge
            while (deadline := b.next_deadline()) is not None and deadline <= at:
                out += b.tick(deadline)
        out += b.edge(pressed, at)
    out += b.tick(T + hold + 10)
    assert out == (LONG if hold >= 1.5 else SHORT)
    assert b.next_deadline() is None
