"""Voice frames as an outsider sees them on the broker, and keyrings built from what
the server handed out (PROTOCOL.md 7 and 7.1).

- :class:`AudioTap`: a :class:`~testbed.mqtt.RecordingClient` subscribed to a room's
  ``audio/+``, recording every frame with its arrival time on a chosen clock.
- :func:`keyring`: an :class:`~appliance.protocol.voice.Opener` holding the keys of
  ``media`` answers and ``media_key`` pushes; :func:`media_key_pushes` drains a
  :class:`~appliance.client.GoChatClient`'s inbox of them.
- :func:`opens`: whether an opener opens a frame (never raises a VoiceError).
"""

from __future__ import annotations

import base64
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

from appliance.client import GoChatClient
from appliance.protocol import models as m
from appliance.protocol import voice

from .mqtt import RecordingClient


@dataclass(frozen=True, slots=True)
class Captured:
    """One message received on an audio topic."""

    topic: str
    payload: bytes
    at: float  # arrival, on the tap's clock

    @property
    def epoch(self) -> int:
        return voice.parse_header(self.payload).epoch

    @property
    def speaker(self) -> str:
        return self.topic.rsplit("/", 1)[1]


class AudioTap:
    """Records every frame on ``gochat/v1/room/{room_id}/audio/+`` of each room given."""

    def __init__(
        self,
        client: RecordingClient,
        *room_ids: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.clock = clock
        self.frames: list[Captured] = []
        self._cond = threading.Condition()
        client.on_message = self._on_message
        filters = [(f"gochat/v1/room/{room_id}/audio/+", 0) for room_id in room_ids]
        codes = client.subscribe_wait(filters)
        assert not any(code.is_failure for code in codes), codes

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        frame = Captured(message.topic, bytes(message.payload), self.clock())
        with self._cond:
            self.frames.append(frame)
            self._cond.notify_all()

    def snapshot(self) -> list[Captured]:
        with self._cond:
            return list(self.frames)

    def wait(
        self, predicate: Callable[[list[Captured]], bool], timeout_s: float = 10.0
    ) -> list[Captured]:
        """Wait until ``predicate(all frames so far)`` holds; returns those frames."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.frames):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"tap: condition not met; {len(self.frames)} frames")
                self._cond.wait(min(left, 0.1))
            return list(self.frames)


def decode_key(key_b64: str) -> bytes:
    return base64.b64decode(key_b64, validate=True)


def keyring(
    keys: Iterable[Mapping[str, Any] | m.MediaKey | m.MediaKeyPush],
    *,
    clock: Callable[[], float] = time.monotonic,
) -> voice.Opener:
    """An Opener holding every key given (``media`` dicts or models), in order."""
    opener = voice.Opener(clock=clock)
    for key in keys:
        if isinstance(key, Mapping):
            opener.add_key(int(key["epoch"]), decode_key(str(key["key"])))
        else:
            opener.add_key(key.epoch, decode_key(key.key))
    return opener


def media_key_pushes(client: GoChatClient, room_id: str) -> list[m.MediaKeyPush]:
    """The ``media_key`` pushes for ``room_id`` waiting in ``client``'s inbox (drained
    without waiting; other inbox commands are dropped)."""
    pushes: list[m.MediaKeyPush] = []
    while True:
        try:
            command = client.inbox.get_nowait()
        except queue.Empty:
            return pushes
        if isinstance(command, m.MediaKeyPush) and command.room_id == room_id:
            pushes.append(command)


def opens(opener: voice.Opener, frame: Captured, topic: str | None = None) -> bool:
    """Whether ``opener`` opens ``frame`` (received on ``topic``, default its own)."""
    try:
        opener.open(frame.payload, topic or frame.topic)
    except voice.VoiceError:
        return False
    return True
