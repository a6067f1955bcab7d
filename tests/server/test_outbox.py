"""The outbox: pushes keep their order, leave a slice per event-loop pass and never more
than a window awaiting their PUBACK, so a rotation's thousands of ``media_key`` pushes
never hold up the answers behind them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from appliance.server.outbox import Outbox


class Client:
    """Records what is published; message ids count up, as paho's do."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.mids: list[int] = []
        self._next = itertools.count(1)

    def publish(self, topic: str, _payload: bytes) -> int:
        self.sent.append(topic)
        self.mids.append(next(self._next))
        return self.mids[-1]


def run(scenario: Callable[[asyncio.AbstractEventLoop], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario(asyncio.get_running_loop())

    asyncio.run(main())


async def passes(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_a_small_batch_goes_out_at_once() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = Client()
        outbox = Outbox(client.publish, loop, slice_size=4, window=8)
        outbox.connected()
        outbox.send([("a", b"1"), ("b", b"2")])
        assert client.sent == ["a", "b"]
        assert outbox.pending == 0

    run(scenario)


def test_a_big_batch_leaves_room_for_other_work_and_keeps_its_order() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = Client()
        events = client.sent
        outbox = Outbox(client.publish, loop, slice_size=4, window=100)
        outbox.connected()
        outbox.send([(f"push-{i}", b"") for i in range(10)])
        assert outbox.pending == 6  # the first slice went out at once
        loop.call_soon(events.append, "an answer")
        outbox.send([("later", b"")])  # queued behind the rest, never ahead
        await passes()
        pushes = [e for e in events if e != "an answer"]
        assert pushes == [f"push-{i}" for i in range(10)] + ["later"]
        assert 4 <= events.index("an answer") <= 8  # between slices, not after all

    run(scenario)


def test_no_more_than_the_window_awaits_a_puback() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = Client()
        outbox = Outbox(client.publish, loop, slice_size=100, window=3)
        outbox.connected()
        outbox.send([(str(i), b"") for i in range(7)])
        await passes()
        assert client.sent == ["0", "1", "2"]
        outbox.acknowledged(999)  # not one of ours: no room made
        outbox.acknowledged(client.mids[0])
        await passes()
        assert client.sent == ["0", "1", "2", "3"]
        for mid in client.mids[1:]:
            outbox.acknowledged(mid)
        await passes()
        assert client.sent == [str(i) for i in range(7)]

    run(scenario)


def test_nothing_is_handed_over_without_a_connection() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = Client()
        outbox = Outbox(client.publish, loop, slice_size=10, window=2)
        outbox.send([("before", b"")])  # e.g. what a restart produced, before connecting
        outbox.connected()
        await passes()
        outbox.disconnected()
        outbox.send([("a", b""), ("b", b"")])
        await passes()
        assert client.sent == ["before"]
        outbox.connected()  # the unacknowledged ids are forgotten: the window is free
        await passes()
        assert client.sent == ["before", "a", "b"]

    run(scenario)


def test_flush_hands_everything_over_at_shutdown() -> None:
    async def scenario(loop: asyncio.AbstractEventLoop) -> None:
        client = Client()
        outbox = Outbox(client.publish, loop, slice_size=2, window=2)
        outbox.send([(str(i), b"") for i in range(7)])
        outbox.flush()
        assert outbox.pending == 0
        assert len(client.sent) == 7

    run(scenario)
