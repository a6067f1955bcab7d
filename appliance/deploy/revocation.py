"""Cutting a revoked device off now: ``gochat-admin revoke`` after the CRL.

A new CRL stops the *next* TLS handshake (after the broker reloads it); Mosquitto does
not re-check open sessions, so a revoked device that is connected stays connected
(tests/test_pki.py). This module ends that session and the device's server login with
the protocol's own means, run on the broker's host:

1. a temporary password account with the device's name is written (random password,
   hash in the broker's password file) and the broker reloads;
2. we connect as that name: the client id is the username, so the broker hands the
   session to us and disconnects the device (a session takeover; its Will says
   ``offline``). Its certificate is revoked, so it cannot come back;
3. we send the ``logout`` request on the device's own request topic, which the ACL
   lets only that user (and the server) write: the server logs the user out of its
   room exactly as if the device had left;
4. we disconnect and delete the temporary account (and reload again).

No server change and no extra account or ACL rule: revocation speaks as the device,
which the operator may, holding the broker's password file.
"""

from __future__ import annotations

import os
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from appliance.mqtt import explain_error, make_client, publish_properties
from appliance.protocol import topics
from appliance.protocol.models import Method
from appliance.settings import BrokerSettings

CONNECT_TIMEOUT_S = 5.0


class CutError(RuntimeError):
    """The session could not be cut; one line for the operator."""


class _Connack:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.accepted = False

    def record(
        self, _c: paho.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        self.accepted = not reason.is_failure
        self.event.set()


def take_over_and_log_out(broker: BrokerSettings, name: str) -> None:
    """Steps 2 and 3 of the module doc: log in as ``name`` (password ``broker`` names,
    retrying while the broker reloads), which disconnects the device, then log it out.
    Raises :class:`CutError`."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:  # the reload may take a moment
        client = make_client(broker, name)
        answer = _Connack()
        client.on_connect = answer.record
        try:
            client.connect(broker.host, broker.port, keepalive=30)
        except OSError as exc:
            where = f"{broker.host}:{broker.port}"
            raise CutError(f"cannot reach the broker at {where}: {explain_error(exc)}") from None
        client.loop_start()
        answer.event.wait(CONNECT_TIMEOUT_S)
        if answer.accepted:
            try:
                _log_out(client, name)
            finally:
                client.disconnect()
                client.loop_stop()
            return
        client.loop_stop()
        last = "refused" if answer.event.is_set() else "no CONNACK"
        time.sleep(0.1)
    raise CutError(f"could not log in as {name} to cut its session: {last}")


def _log_out(client: paho.Client, name: str) -> None:
    """Publish ``logout`` as ``name`` and wait for it to be delivered (PUBACK)."""
    props = publish_properties(response_topic=topics.response(name), correlation=os.urandom(8))
    info = client.publish(topics.request(name, Method.LOGOUT), b"{}", qos=1, properties=props)
    info.wait_for_publish(CONNECT_TIMEOUT_S)
