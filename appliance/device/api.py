"""The daemon's side of the local CoAP API: what :class:`~appliance.device.coap.CoapApi`
calls (:class:`~appliance.device.coap.DeviceApi`).

A button press is fed to the machine at once and answered with what it did. A call
that needs the server (join, create, leave, room list, host actions) carries a
*ticket*: the machine answers it with exactly one
:class:`~appliance.device.effects.ApiReply`, which :class:`Tickets` hands to the
waiting request.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable

from appliance.device.effects import ApiReply, Effect, Refused, SendRequest
from appliance.device.events import ButtonName, Event, Gesture, PressKind
from appliance.device.status import Payload, StatusBoard

Dispatch = Callable[[Event], list[Effect]]


class Tickets:
    """Calls waiting for the machine's reply, by ticket (all on the loop's thread)."""

    def __init__(self) -> None:
        self._waiting: dict[int, asyncio.Future[ApiReply]] = {}
        self._ids = itertools.count(1)

    def open(self) -> tuple[int, asyncio.Future[ApiReply]]:
        """A fresh ticket and the future its reply will complete."""
        ticket = next(self._ids)
        future: asyncio.Future[ApiReply] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = future
        return ticket, future

    def resolve(self, reply: ApiReply) -> None:
        """The machine's reply: complete the call that waits for it (if it still does)."""
        future = self._waiting.pop(reply.ticket, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def drop(self, ticket: int) -> None:
        """The caller stopped waiting (timeout, cancelled)."""
        self._waiting.pop(ticket, None)

    def cancel_all(self) -> None:
        """Shutdown: nobody will be answered any more."""
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()


class ApiBackend:
    """:class:`~appliance.device.coap.DeviceApi` on the daemon's machine."""

    def __init__(
        self,
        dispatch: Dispatch,
        board: StatusBoard,
        counters: Callable[[], dict[str, int]],
        counts: Counter[str],
    ) -> None:
        self.tickets = Tickets()
        self._dispatch = dispatch
        self._board = board
        self._counters = counters
        self._counts = counts

    def status(self) -> Payload:
        """The ``/status`` payload, with the audio counters of this moment."""
        return self._board.refresh()

    def press(self, button: ButtonName, kind: PressKind) -> tuple[str, str | None]:
        """A gesture from the API: ``(outcome, reason)``, outcome one of ``sent``,
        ``refused``, ``ignored`` (the button's last request is in flight)."""
        effects = self._dispatch(Gesture(button, kind))
        self._counts["api_presses"] += 1
        for effect in effects:
            if isinstance(effect, Refused):
                return "refused", effect.reason
        if any(isinstance(e, SendRequest) for e in effects):
            return "sent", None
        return "ignored", None

    async def call(self, make_event: Callable[[int], Event], timeout_s: float | None) -> ApiReply:
        """Feed ``make_event(ticket)``; await the machine's :class:`ApiReply` for it."""
        ticket, future = self.tickets.open()
        try:
            self._dispatch(make_event(ticket))
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self.tickets.drop(ticket)

    def counters(self) -> dict[str, int]:
        """Every counter of the daemon."""
        return self._counters()
