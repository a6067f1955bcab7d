"""Test support: a real Mosquitto (:mod:`.broker`) and recording MQTT clients (:mod:`.mqtt`).

``tests/`` is not a package: ``tests/conftest.py`` puts ``tests/`` on ``sys.path``
(pytest's rootdir-relative import), so test modules import ``support``.
"""

from .broker import Broker, BrokerError, free_port, probe_login, render_conf
from .mqtt import MqttClientFactory, MqttWaitError, RecordingClient, connect_client

__all__ = [
    "Broker",
    "BrokerError",
    "MqttClientFactory",
    "MqttWaitError",
    "RecordingClient",
    "connect_client",
    "free_port",
    "probe_login",
    "render_conf",
]
