"""Room-state coalescing on a fake scheduler: a throttle, not a delay."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.server.publisher import RoomStatePublisher


@dataclass
class FakeTimer:
    at: float
    callback: Callable[[str], None]
    arg: str
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    now: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[str], None], arg: str, /) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback, arg)
        self.timers.append(timer)
        return timer

    def run_until(self, t: float) -> None:
        while due := sorted(
            (x for x in self.timers if x.at <= t and not x.cancelled), key=lambda x: x.at
        ):
            timer = due[0]
            self.timers.remove(timer)
            self.now = timer.at
            timer.callback(timer.arg)
        self.now = t


Sent = list[tuple[float, str, int]]  # (time, room, version or -1 for a clear)


def make() -> tuple[FakeLoop, RoomStatePublisher, Sent, Callable[[], None]]:
    """A publisher on a fake loop, what it sent, and a function making one change."""
    loop = FakeLoop()
    versions = {"r": 0}
    sent: Sent = []
    publisher = RoomStatePublisher(
        lambda room, clear: sent.append((loop.now, room, -1 if clear else versions[room])), loop
    )

    def change() -> None:
        versions["r"] += 1
        publisher.changed("r")

    return loop, publisher, sent, change


def test_an_isolated_change_goes_out_at_once() -> None:
    loop, _publisher, sent, change = make()
    change()
    assert sent == [(0.0, "r", 1)]
    loop.run_until(1.0)
    change()
    assert sent[-1] == (1.0, "r", 2)


def test_a_burst_costs_one_publish_per_interval_and_ends_on_the_latest() -> None:
    loop, _publisher, sent, change = make()
    for step in range(100):  # a change every 2 ms for 200 ms
        loop.run_until(step * 0.002)
        change()
    loop.run_until(1.0)
    times = [t for t, _, _ in sent]
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(times))
    assert len(sent) <= 1 + 0.2 / 0.05 + 1
    assert sent[-1][2] == 100  # the last publish carries the newest version


def test_clear_cancels_a_pending_publish() -> None:
    loop, publisher, sent, change = make()
    change()
    change()  # scheduled for t=0.05
    publisher.clear("r")
    loop.run_until(1.0)
    assert sent == [(0.0, "r", 1), (0.0, "r", -1)]
