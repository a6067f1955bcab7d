"""A small blocking GoChat client: for scripts, tests, benchmarks and the shell.

It speaks docs/protocol.md exactly as a device does (MQTT 5 request/response with
correlation data, a Will and presence, inbox and retained room state), but waits on
threads instead of an event loop, which suits a test or a one-off command.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from pydantic import BaseModel, ValidationError

from appliance.mqtt import new_client, publish_properties, routing_of
from appliance.protocol import models as m
from appliance.protocol import topics


class GoChatError(Exception):
    """A non-zero response code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class GoChatClient:
    """One user's connection to the broker, blocking API."""

    def __init__(
        self,
        host: str,
        port: int,
        user_id: str,
        password: str,
        *,
        timeout_s: float = 5.0,
        tls_ca_file: Path | None = None,
    ) -> None:
        """``tls_ca_file``: connect over TLS, verifying the broker against that CA."""
        self.user_id = user_id
        self.timeout_s = timeout_s
        self._host, self._port = host, port
        self._mqtt = new_client(user_id)
        self._mqtt.username_pw_set(user_id, password)
        if tls_ca_file is not None:
            self._mqtt.tls_set_context(ssl.create_default_context(cafile=str(tls_ca_file)))
        self._mqtt.will_set(topics.presence(user_id), b"offline", qos=1, retain=True)
        self._mqtt.on_message = self._on_message
        self._mqtt.on_connect = self._on_connect
        self._prefix = os.urandom(4)
        self._counter = itertools.count()
        self._waiting: dict[bytes, queue.SimpleQueue[m.Response]] = {}
        self._lock = threading.Condition()
        self._connected = threading.Event()
        self.inbox: queue.Queue[BaseModel] = queue.Queue()
        self.rooms: dict[str, m.RoomState | None] = {}  # None: watched, no state yet
        self.room_clears: list[str] = []
        self.raw: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.refusals: list[int] = []

    # ------------------------------------------------------------ connection

    def connect(self) -> GoChatClient:
        """Connect, subscribe to our topics and announce presence."""
        self._mqtt.connect(self._host, self._port, keepalive=30)
        self._mqtt.loop_start()
        if not self._connected.wait(self.timeout_s):
            raise TimeoutError(f"{self.user_id}: no CONNACK")
        return self

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            return
        client.subscribe([(topics.response(self.user_id), 1), (topics.inbox(self.user_id), 1)])
        for room_id in list(self.rooms):
            client.subscribe(topics.room_state(room_id), 1)
        client.publish(topics.presence(self.user_id), b"online", qos=1, retain=True)
        self._connected.set()

    def close(self, *, offline: bool = True) -> None:
        """Publish ``offline`` (unless told not to) and disconnect."""
        if offline and self._mqtt.is_connected():
            info = self._mqtt.publish(topics.presence(self.user_id), b"offline", 1, True)
            info.wait_for_publish(self.timeout_s)
        self._mqtt.disconnect()
        self._mqtt.loop_stop()

    def kill(self) -> None:
        """Drop the connection without DISCONNECT, so the broker sends our Will."""
        sock = self._mqtt.socket()
        self._mqtt.loop_stop()
        if sock is not None:
            sock.close()

    # ------------------------------------------------------------ requests

    def request(
        self,
        method: m.Method | str,
        payload: dict[str, Any] | bytes,
        *,
        timeout_s: float | None = None,
        correlation: bytes | None = None,
    ) -> m.Response:
        """Send one request and wait for its response. ``correlation``: that of an
        earlier try, to retry it (the server applies a request once)."""
        if correlation is None:
            correlation = self._prefix + next(self._counter).to_bytes(8, "big")
        box: queue.SimpleQueue[m.Response] = queue.SimpleQueue()
        with self._lock:
            self._waiting[correlation] = box
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        props = publish_properties(
            response_topic=topics.response(self.user_id), correlation=correlation
        )
        self._mqtt.publish(topics.request(self.user_id, method), raw, qos=1, properties=props)
        try:
            return box.get(timeout=timeout_s or self.timeout_s)
        except queue.Empty:
            raise TimeoutError(f"{self.user_id}: no response to {method}") from None
        finally:
            with self._lock:
                self._waiting.pop(correlation, None)

    def call(self, method: m.Method | str, **payload: Any) -> dict[str, Any]:
        """Send a request; return its ``data`` or raise :class:`GoChatError`."""
        response = self.request(method, payload)
        if response.code != 0:
            raise GoChatError(response.code, response.message)
        return response.data or {}

    def login(self, name: str | None = None) -> dict[str, Any]:
        """``login`` with ``name`` (default: the user id)."""
        return self.call(m.Method.LOGIN, name=name or self.user_id[: m.NAME_MAX])

    def publish_raw(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        retain: bool = False,
    ) -> int:
        """Publish anything (hostile-input tests); returns the PUBACK reason code value."""
        props = publish_properties(response_topic=response_topic, correlation=correlation)
        info = self._mqtt.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(self.timeout_s)
        return info.rc

    # ------------------------------------------------------------ pushes

    def watch_room(self, room_id: str) -> None:
        """Follow ``room_id``'s retained state."""
        with self._lock:
            self.rooms.setdefault(room_id, None)
        self._mqtt.subscribe(topics.room_state(room_id), 1)

    def wait_room(
        self, room_id: str, predicate: Callable[[m.RoomState], bool], timeout_s: float | None = None
    ) -> m.RoomState:
        """Wait until ``room_id``'s latest state satisfies ``predicate``."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        with self._lock:
            while True:
                state = self.rooms.get(room_id)
                if state is not None and predicate(state):
                    return state
                left = deadline - time.monotonic()
                if left <= 0 or not self._lock.wait(left):
                    raise TimeoutError(f"{self.user_id}: room {room_id} state {state}")

    def next_inbox(self, kind: str | None = None, timeout_s: float | None = None) -> BaseModel:
        """The next inbox command (of type ``kind``, skipping others)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            left = deadline - time.monotonic()
            try:
                command = self.inbox.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise TimeoutError(f"{self.user_id}: no inbox {kind or ''}") from None
            if kind is None or getattr(command, "type", None) == kind:
                return command

    def _on_message(self, _c: paho.Client, _u: object, message: paho.MQTTMessage) -> None:
        topic = message.topic
        if topic == topics.response(self.user_id):
            self._on_response(message)
        elif topic == topics.inbox(self.user_id):
            try:
                self.inbox.put(m.parse_inbox(bytes(message.payload)))
            except ValidationError:
                self.raw.put(message)
        elif (room_id := topics.parse_room_state(topic)) is not None:
            self._on_room_state(room_id, bytes(message.payload))
        else:
            self.raw.put(message)

    def _on_response(self, message: paho.MQTTMessage) -> None:
        _, correlation = routing_of(message)
        response = m.Response.model_validate_json(message.payload)
        with self._lock:
            box = self._waiting.get(correlation or b"")
        if box is None:
            self.raw.put(message)
        else:
            box.put(response)

    def _on_room_state(self, room_id: str, payload: bytes) -> None:
        with self._lock:
            if not payload:
                self.room_clears.append(room_id)
            else:
                state = m.RoomState.model_validate_json(payload)
                old = self.rooms.get(room_id)
                if old is None or state.version > old.version:
                    self.rooms[room_id] = state
            self._lock.notify_all()
