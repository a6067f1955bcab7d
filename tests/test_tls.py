"""TLS by default: the rendered broker, client settings, and clear failures.

Every test broker (testbed/broker.py) serves the shipped listeners on loopback: TLS
with passwords (``broker.port``), TLS with client certificates (``broker.cert_port``)
and plain MQTT (``broker.plain_port``). A client that cannot trust the broker, or a
broker that refuses the client's certificate, must produce one clear log line and a
retry with backoff, never a crash.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import queue
import ssl
import threading
from pathlib import Path

import pytest

from appliance.deploy import brokerconf, ca, pki
from appliance.device.events import Connected, Disconnected
from appliance.device.session import MqttSession
from appliance.mqtt import LoopDriver, explain_error, make_client
from appliance.settings import BrokerSettings, ConfigError, FileSettings
from testbed import Broker, MqttClientFactory, probe_login

# ---------------------------------------------------------------- configuration


def test_the_shipped_conf_serves_tls_on_every_interface_and_plain_on_loopback() -> None:
    lines = brokerconf.SHIPPED_CONF.read_text(encoding="utf-8").splitlines()
    settings = [line for line in lines if line and not line.startswith("#")]
    listeners = [line for line in settings if line.startswith("listener ")]
    assert listeners == ["listener 1883 127.0.0.1", "listener 8883", "listener 8884",
                         "listener 8080 127.0.0.1", "listener 8081"]  # fmt: skip
    cert_block = settings[settings.index("listener 8883") : settings.index("listener 8884")]
    for option in ("cafile", "certfile", "keyfile", "crlfile"):
        assert any(line.startswith(f"{option} ") for line in cert_block), option
    assert "require_certificate true" in cert_block
    assert "use_identity_as_username true" in cert_block
    password_block = settings[settings.index("listener 8884") : settings.index("listener 8080 127.0.0.1")]
    assert "require_certificate false" in password_block
    assert "use_identity_as_username true" not in password_block
    # Browsers: WebSockets, plain on loopback only, TLS with a password everywhere.
    ws_block = settings[settings.index("listener 8080 127.0.0.1") : settings.index("listener 8081")]
    assert "protocol websockets" in ws_block
    assert not any(line.startswith("certfile ") for line in ws_block)
    wss_block = settings[settings.index("listener 8081") :]
    assert "protocol websockets" in wss_block and "require_certificate false" in wss_block
    assert any(line.startswith("certfile ") for line in wss_block)


def test_a_rendered_conf_binds_every_listener_to_loopback(broker: Broker) -> None:
    text = broker.conf_path.read_text(encoding="utf-8")
    assert f"listener {broker.port} 127.0.0.1" in text
    assert f"listener {broker.cert_port} 127.0.0.1" in text
    assert f"listener {broker.plain_port} 127.0.0.1" in text
    assert f"listener {broker.ws_port} 127.0.0.1" in text
    assert f"listener {broker.wss_port} 127.0.0.1" in text
    assert text.count(f"cafile {broker.ca_file}") == 3
    assert f"crlfile {broker.tls.crl}" in text


def render_listeners(template: str, ports: dict[int, int]) -> str:
    """``template`` rendered with ``ports`` and placeholder files."""
    return brokerconf.render_conf(
        template,
        ports=ports,
        passwd_file=Path("p"),
        acl_file=Path("a"),
        data_dir=None,
        log_file=None,
        tls=brokerconf.TlsFiles(Path("a"), Path("b"), Path("c"), Path("d")),
        plugin=None,
    )


def test_rendering_refuses_a_listener_it_has_no_port_for() -> None:
    with pytest.raises(ValueError, match="no port for: listener 9999"):
        render_listeners("listener 9999\n", {})


def test_rendering_refuses_two_listeners_on_one_port() -> None:
    # Mosquitto starts with two WebSockets listeners on one port, then dies at its
    # first reload (SIGHUP): the renderer refuses the configuration up front.
    with pytest.raises(ValueError, match="8080 and 8081 both on port 5000"):
        render_listeners("listener 8080\nlistener 8081\n", {8080: 5000, 8081: 5000})


def test_a_test_broker_survives_reloads_with_every_listener_on_its_own_port(
    broker: Broker,
) -> None:
    assert len(set(broker.ports)) == len(broker.ports)
    for name in ("r1", "r2", "r3"):
        broker.add_user(name)
    assert broker.running


class _Broker(FileSettings):
    broker: BrokerSettings = BrokerSettings()


def test_the_port_follows_the_login(broker: Broker, tmp_path: Path) -> None:
    assert BrokerSettings().port == 1883
    assert BrokerSettings(tls_ca_file=broker.ca_file).port == 8884
    cert, key = broker.issue_device("dev-1")
    assert (
        BrokerSettings(tls_ca_file=broker.ca_file, tls_cert_file=cert, tls_key_file=key).port
        == 8883
    )
    assert BrokerSettings(tls_ca_file=broker.ca_file, port=1234).port == 1234


def test_unusable_tls_files_are_a_config_error(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, _ = broker.issue_device("dev-1")
    _, other_key = broker.issue_device("dev-2")
    monkeypatch.setenv("GOCHAT_BROKER__TLS_CA_FILE", str(broker.ca_file))
    monkeypatch.setenv("GOCHAT_BROKER__TLS_CERT_FILE", str(cert))
    monkeypatch.setenv("GOCHAT_BROKER__TLS_KEY_FILE", str(other_key))
    with pytest.raises(ConfigError, match=r"TLS files unusable: .*KEY_VALUES_MISMATCH"):
        _Broker.load(None)
    monkeypatch.delenv("GOCHAT_BROKER__TLS_KEY_FILE")
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        _Broker.load(None)
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate\n")
    monkeypatch.delenv("GOCHAT_BROKER__TLS_CERT_FILE")
    monkeypatch.setenv("GOCHAT_BROKER__TLS_CA_FILE", str(not_pem))
    with pytest.raises(ConfigError, match=r"broker .*TLS files unusable"):
        _Broker.load(None)


# ---------------------------------------------------------------- test clients


def test_recording_clients_use_tls_with_a_password_or_a_certificate(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    alice = mqtt_client(broker, "alice")
    assert isinstance(alice.socket(), ssl.SSLSocket)
    dev = mqtt_client(broker, "dev-1", cert=True)
    assert isinstance(dev.socket(), ssl.SSLSocket)
    # The certificate's CN is the username: the ACL lets it write its own topics only.
    assert not dev.publish_wait("gochat/v1/presence/dev-1", b"online", qos=1).is_failure
    assert dev.publish_wait("gochat/v1/presence/alice", b"online", qos=1).value == 0x87


def test_the_plain_listener_is_still_there_for_same_host_clients(broker: Broker) -> None:

    broker.add_user("local")
    assert probe_login(broker.host, broker.plain_port, "local", broker.password("local")) == 0
    # ...and the TLS port does not talk plain MQTT.
    assert probe_login(broker.host, broker.port, "local", broker.password("local")) == -1


# ---------------------------------------------------------------- failures, explained


def _other_ca(tmp_path: Path) -> Path:
    _, ca = pki.create_ca("Someone else's CA")
    path = tmp_path / "other-ca.crt"
    pki.save_pem(path, ca)
    return path


def _expire_broker_certificate(broker: Broker) -> None:
    """Replace the broker's certificate by one that expired yesterday, and restart."""
    ca_key = pki.load_private_key(broker.tls_dir / "ca.key")
    ca_cert = pki.load_certificate(broker.ca_file)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    key = pki.load_private_key(broker.tls.key)
    _, cert = pki.issue_server_cert(ca_key, ca_cert, key=key, days=2, now=past)
    pki.save_pem(broker.tls.cert, cert)
    broker.restart()


def _session_reason(settings: BrokerSettings, user: str) -> str:
    """Start an appliance session; return the reason of its first Disconnected."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    events: queue.Queue[object] = queue.Queue()

    async def build() -> MqttSession:
        session = MqttSession(
            settings, user, loop=loop, on_event=events.put, on_frame=lambda *_: None
        )
        session.start()
        return session

    session = asyncio.run_coroutine_threadsafe(build(), loop).result(5)
    try:
        while True:
            event = events.get(timeout=5)
            assert not isinstance(event, Connected), "connected despite the TLS problem"
            if isinstance(event, Disconnected):
                return event.reason
    finally:
        asyncio.run_coroutine_threadsafe(session.close(1.0), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_the_appliance_explains_an_untrusted_broker_and_retries(
    broker: Broker, tmp_path: Path
) -> None:
    settings = broker.settings("dev-1", tls_ca_file=_other_ca(tmp_path))
    reason = _session_reason(settings, "dev-1")
    assert reason.startswith(f"cannot connect to 127.0.0.1:{broker.port}: TLS: the broker's")
    assert "certificate is not trusted" in reason and "broker.tls_ca_file" in reason


def test_the_appliance_explains_a_name_mismatch(broker: Broker) -> None:
    settings = broker.settings("dev-1")
    ca.init_ca(broker.tls_dir, ["broker.example"])  # re-issued for another name
    broker.restart()
    reason = _session_reason(settings, "dev-1")
    assert "not trusted (IP address mismatch" in reason


def test_the_appliance_explains_an_expired_broker_certificate(broker: Broker) -> None:
    settings = broker.settings("dev-1")
    _expire_broker_certificate(broker)
    reason = _session_reason(settings, "dev-1")
    assert "TLS: the broker's certificate is not trusted (certificate has expired)" in reason


def test_the_appliance_says_why_the_broker_refused_its_certificate(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = broker.settings("dev-1", cert=True)
    broker.revoke("dev-1")
    with caplog.at_level(logging.WARNING):
        _session_reason(settings, "dev-1")
    lines = [r.getMessage() for r in caplog.records if "broker link: TLS" in r.getMessage()]
    assert lines and "it is revoked" in lines[0]
    assert "\n" not in lines[0]


def test_the_server_logs_one_line_and_backs_off_on_an_untrusted_broker(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = broker.settings("gochat-server", tls_ca_file=_other_ca(tmp_path))
    loop = asyncio.new_event_loop()
    client = make_client(settings, "gochat-server")
    driver = LoopDriver(client, loop)
    with caplog.at_level(logging.WARNING, logger="gochat.mqtt"):
        loop.call_soon(driver.connect, settings.host, settings.port, 15)
        loop.run_until_complete(asyncio.sleep(0.1))
    driver.stop()
    loop.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # one attempt so far: the next waits 0.5-1 s
    assert lines[0].startswith(f"cannot connect to the broker at 127.0.0.1:{broker.port}: TLS:")
    assert "not trusted" in lines[0]


def test_explain_error_names_the_broker_alerts() -> None:
    alert = OSError("[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked")
    assert explain_error(alert).startswith("TLS: the broker refused our client certificate: it is")
    unknown = OSError("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca")
    assert "a CA it does not trust" in explain_error(unknown)
    required = OSError("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    assert "wants a client certificate" in explain_error(required)
    assert explain_error(ConnectionRefusedError(111, "Connection refused")) == (
        "[Errno 111] Connection refused"
    )


def test_the_appliance_says_its_certificate_has_expired(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    cert_path, key_path = broker.issue_device("dev-1")
    ca_key = pki.load_private_key(broker.tls_dir / "ca.key")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    csr = pki.make_csr(pki.load_private_key(key_path), "dev-1")
    pki.save_pem(
        cert_path, pki.sign_csr(ca_key, pki.load_certificate(broker.ca_file), csr, days=1, now=past)
    )
    with caplog.at_level(logging.WARNING):
        _session_reason(broker.settings("dev-1", cert=True), "dev-1")
    lines = [r.getMessage() for r in caplog.records if "broker link: TLS" in r.getMessage()]
    assert lines and "it has expired" in lines[0]


def test_plain_mqtt_is_for_the_loopback_only(broker: Broker) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert BrokerSettings(host=host).host == host
    for host in ("10.0.0.7", "broker.lan"):
        with pytest.raises(ValueError, match="without TLS: plain MQTT is for the loopback"):
            BrokerSettings(host=host)
        assert BrokerSettings(host=host, tls_ca_file=broker.ca_file).port == 8884


def test_the_appliance_says_its_certificate_is_from_another_ca(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    cert_path, key_path = broker.issue_device("dev-1")
    other_key, other_ca = pki.create_ca("Someone else's CA")
    csr = pki.make_csr(pki.load_private_key(key_path), "dev-1")
    pki.save_pem(cert_path, pki.sign_csr(other_key, other_ca, csr))
    with caplog.at_level(logging.WARNING):
        _session_reason(broker.settings("dev-1", cert=True), "dev-1")
    lines = [r.getMessage() for r in caplog.records if "broker link: TLS" in r.getMessage()]
    assert lines and "signed by a CA it does not trust" in lines[0]
