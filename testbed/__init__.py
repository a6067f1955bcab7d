"""The test bed: the system's real parts, started for tests and benchmarks.

* :mod:`.broker`: a real Mosquitto on free loopback ports, with the shipped config,
  TLS with a test CA, and the certificate helpers.
* :mod:`.mqtt`: recording MQTT clients.
* :mod:`.server`: the business server, in-process on an offset clock or as a process.
* :mod:`.daemons`: appliance daemons, in-process on a thread or as processes, driven
  over CoAP (:mod:`appliance.tools.coap_client`) and their stand-in pins.
* :mod:`.leds`: buttons and LEDs by name, LED patterns read from pin history.

Importable from the repository root (pytest's ``pythonpath``; benchmarks run as
``python -m benchmarks.NAME``); not part of the installed package.
"""

from .broker import Broker, BrokerError, free_port, free_ports, probe_login, render_conf
from .mqtt import MqttClientFactory, MqttWaitError, RecordingClient, connect_client

__all__ = [
    "Broker",
    "BrokerError",
    "MqttClientFactory",
    "MqttWaitError",
    "RecordingClient",
    "connect_client",
    "free_port",
    "free_ports",
    "probe_login",
    "render_conf",
]
