"""Device identity by certificate, against a real Mosquitto: enrol, sign, log in, revoke.

The flow of docs/security.md: ``gochat-appliance enroll`` makes the key on the device
and a CSR; ``gochat-admin sign-device`` signs it with the deployment CA; the broker's
certificate listener takes the CN as the username; ``gochat-admin revoke`` adds it to
the CRL, reloads the broker, disconnects the device and logs it out of the server.
"""

from __future__ import annotations

import grp
import shutil
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from appliance.deploy import accounts, admin, brokerconf, ca, pki
from appliance.deploy.files import broker_group
from appliance.device import main as appliance_cli
from appliance.device.settings import ApplianceSettings
from appliance.mqtt import make_client
from appliance.settings import EX_CONFIG, BrokerSettings, ConfigError
from testbed import Broker, MqttClientFactory, free_ports, probe_login
from testbed.broker import SHIPPED_ACL, guard_plugin
from testbed.daemons import InProcessDaemon, to_toml
from testbed.server import RunningServer


def _enrol(broker: Broker, tmp_path: Path, name: str) -> Path:
    """What an installer does on the device and at the CA; returns the device's dir."""
    directory = tmp_path / name / "tls"
    assert appliance_cli.main(["enroll", "--device", name, "--dir", str(directory)]) == 0
    csr = directory / "device.csr"
    assert admin.main(["sign-device", str(csr), "--ca", str(broker.tls_dir)]) == 0
    shutil.copy(broker.ca_file, directory / "ca.crt")
    return directory


def _settings(broker: Broker, directory: Path) -> BrokerSettings:
    return BrokerSettings(
        host=broker.host,
        port=broker.cert_port,
        tls_ca_file=directory / "ca.crt",
        tls_cert_file=directory / "device.crt",
        tls_key_file=directory / "device.key",
    )


def _connects(settings: BrokerSettings, name: str) -> bool:
    client = make_client(settings, name)
    answered = threading.Event()
    result: list[bool] = []

    def on_connect(*args: object) -> None:
        result.append(not getattr(args[3], "is_failure", True))
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: answered.set()
    try:
        client.connect(settings.host, settings.port)
    except OSError:
        return False
    client.loop_start()
    answered.wait(3)
    client.disconnect()
    client.loop_stop()
    return bool(result and result[0])


def test_enroll_makes_a_private_key_and_a_csr_for_the_name(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    assert appliance_cli.main(["enroll", "--device", "pi-a", "--dir", str(directory)]) == 0
    key = directory / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    csr = pki.load_csr(directory / "device.csr")
    assert pki.device_name_of(csr) == "pi-a"
    before = key.read_bytes()
    assert appliance_cli.main(["enroll", "--device", "pi-a", "--dir", str(directory)]) == 0
    assert key.read_bytes() == before  # enrolling again keeps the key


def test_enroll_refuses_a_name_that_is_no_user_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert appliance_cli.main(["enroll", "--device", "gochat-server", "--dir", str(tmp_path)]) == 1
    assert "a server's account" in capsys.readouterr().err
    assert not (tmp_path / "device.key").exists()


def test_sign_device_says_what_is_left_to_do_where_it_signed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir, tls = tmp_path / "ca", tmp_path / "root/etc/gochat/tls"
    assert admin.main(["ca-init", "--ca", str(ca_dir), "--broker-dir", ""]) == 0
    assert appliance_cli.main(["enroll", "--device", "pi-a", "--dir", str(tls)]) == 0
    capsys.readouterr()
    # Signed in place, beside the device's key (a --root trial, a Pi holding its CA):
    # only the CA's certificate is missing, and it is named where it is.
    sign = ["sign-device", str(tls / "device.csr"), "--ca", str(ca_dir)]
    assert admin.main([*sign, "--out", str(tls / "device.crt")]) == 0
    out = capsys.readouterr().out
    assert f"install -m 0644 {ca_dir}/ca.crt {tls}/ca.crt" in out, out
    assert "/etc/gochat/tls/" not in out.replace(str(tls), "") and "systemctl" not in out
    shutil.copy(ca_dir / "ca.crt", tls / "ca.crt")
    assert admin.main([*sign, "--out", str(tls / "device.crt")]) == 0
    assert "it is in place" in capsys.readouterr().out
    # Signed at the CA, away from the device: the certificate travels to the Pi.
    assert admin.main([*sign, "--out", str(tmp_path / "pi-a.crt")]) == 0
    out = capsys.readouterr().out
    assert "/etc/gochat/tls/" in out and "systemctl restart gochat-appliance" in out


def test_a_signed_device_gets_in_as_its_cn(broker: Broker, tmp_path: Path) -> None:
    directory = _enrol(broker, tmp_path, "pi-a")
    assert pki.device_name_of(pki.load_certificate(directory / "device.crt")) == "pi-a"
    assert _connects(_settings(broker, directory), "pi-a")


def test_a_revoked_device_and_another_cas_device_do_not_get_in(
    broker: Broker, tmp_path: Path
) -> None:
    directory = _enrol(broker, tmp_path, "pi-a")
    broker.revoke("pi-a")
    assert not _connects(_settings(broker, directory), "pi-a")
    assert "certificate verify failed" in broker.log_text()

    stranger = tmp_path / "stranger"
    other_key, other_ca = pki.create_ca("Someone else's CA")
    key = pki.generate_key()
    pki.save_private_key(stranger / "device.key", key)
    pki.save_pem(
        stranger / "device.crt", pki.sign_csr(other_key, other_ca, pki.make_csr(key, "pi-b"))
    )
    shutil.copy(broker.ca_file, stranger / "ca.crt")
    assert not _connects(_settings(broker, stranger), "pi-b")


def test_a_password_gets_nobody_in_on_the_certificate_port(
    broker: Broker, mqtt_client: MqttClientFactory
) -> None:
    broker.add_user("pi-a")
    settings = broker.settings("pi-a", port=broker.cert_port)
    assert not _connects(settings, "pi-a")


def test_a_certificate_for_another_name_stops_the_daemon_at_config_load(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = _enrol(broker, tmp_path, "pi-a")
    config = tmp_path / "appliance.toml"
    config.write_text(
        to_toml(
            {
                "device": {"user_id": "pi-b"},
                "broker": {
                    "tls_ca_file": str(directory / "ca.crt"),
                    "tls_cert_file": str(directory / "device.crt"),
                    "tls_key_file": str(directory / "device.key"),
                },
            }
        )
    )
    with pytest.raises(ConfigError, match=r"the certificate is for 'pi-a', not device\.user_id"):
        ApplianceSettings.load(config)
    assert appliance_cli.main(["check-config", str(config)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "broker.tls_cert_file" in err


@pytest.fixture
def server(broker: Broker, tmp_path: Path) -> Iterator[RunningServer]:
    running = RunningServer(broker, tmp_path / "server.db").start()
    yield running
    running.stop()


def test_revoke_cuts_the_open_session_and_logs_the_device_out(
    broker: Broker, server: RunningServer, tmp_path: Path
) -> None:
    daemon = InProcessDaemon(broker, "pi-a", cert=True).start()
    try:
        server.wait_until(lambda s: "pi-a" in s.sessions)
        assert broker.pid is not None
        pid_file = tmp_path / "mosquitto.pid"
        pid_file.write_text(f"{broker.pid}\n")
        status = admin.main([
            "revoke", "pi-a", "--ca", str(broker.tls_dir), "--broker-dir", "",
            "--pid-file", str(pid_file), "--host", broker.host, "--port", str(broker.port),
            "--passwd-file", str(broker.passwd_path), "--secret-dir", str(broker.secret_dir),
        ])  # fmt: skip
        assert status == 0
        server.wait_until(lambda s: "pi-a" not in s.sessions)
        daemon.wait_status(lambda s: s["connection"] != "online")
        assert "pi-a" not in accounts.users(broker.passwd_path)  # no password left behind
        # It tries again 0.5-1 s later, with its revoked certificate: refused.
        deadline = time.monotonic() + 5
        while "certificate verify failed" not in broker.log_text():
            assert time.monotonic() < deadline, "the daemon did not try again"
            time.sleep(0.05)
    finally:
        daemon.stop()


def test_revoke_without_a_broker_to_reload_says_what_to_run(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker.issue_device("pi-a")
    status = admin.main([
        "revoke", "pi-a", "--ca", str(broker.tls_dir), "--broker-dir", "",
        "--pid-file", str(tmp_path / "none.pid"),
    ])  # fmt: skip
    assert status == 1
    assert "systemctl reload mosquitto" in capsys.readouterr().err
    assert pki.is_revoked(
        pki.load_crl(broker.tls.crl), pki.load_certificate(broker.device_files("pi-a")[0])
    )


def test_revoking_a_name_never_signed_is_an_error(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    assert admin.main(["revoke", "pi-zz", "--ca", str(broker.tls_dir), "--broker-dir", ""]) == 1
    assert "no certificate was issued to 'pi-zz'" in capsys.readouterr().err


def test_ca_init_writes_what_mosquitto_reads_with_its_permissions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir, broker_dir = tmp_path / "ca", tmp_path / "broker"
    argv = ["ca-init", "--ca", str(ca_dir), "--hosts", "broker.lan,10.0.0.2"]
    assert admin.main([*argv, "--broker-dir", str(broker_dir)]) == 0
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert not (broker_dir / "ca.key").exists()  # the CA's key stays with the CA
    key = broker_dir / "server.key"
    for name in ("ca.crt", "server.crt", "crl.pem"):
        assert stat.S_IMODE((broker_dir / name).stat().st_mode) == 0o644
    if broker_group() is not None:  # root, and the mosquitto group exists
        assert stat.S_IMODE(key.stat().st_mode) == 0o640
        assert grp.getgrgid(key.stat().st_gid).gr_name == "mosquitto"
    else:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cert = pki.load_certificate(broker_dir / "server.crt")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(str(n.value) for n in names) == [
        "10.0.0.2",
        "127.0.0.1",
        "broker.lan",
        "localhost",
    ]
    first_ca = (ca_dir / "ca.crt").read_bytes()
    out = capsys.readouterr().out
    assert f"broker file: {key}" in out and f"CA: {ca_dir}/ca.crt, made;" in out
    # Again, for another name: the CA is kept (issued certificates stay valid), only
    # the broker's certificate is new, and it says so.
    assert admin.main([*argv[:3], "--hosts", "broker.example", "--broker-dir", ""]) == 0
    assert (ca_dir / "ca.crt").read_bytes() == first_ca
    assert pki.load_certificate(ca_dir / "server.crt").serial_number != cert.serial_number
    out = capsys.readouterr().out
    assert "kept (the certificates it issued stay valid)" in out, out
    assert "broker certificate: re-issued for broker.example, 127.0.0.1, localhost" in out
    assert "(was broker.lan, 10.0.0.2, 127.0.0.1, localhost; same key)" in out
    # And for the same names: nothing is re-issued.
    assert admin.main([*argv[:3], "--hosts", "broker.example", "--broker-dir", ""]) == 0
    assert "broker certificate: kept, for broker.example" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no such file: {path}"),
        ("hello\n", "{path}: not a PEM certificate request (gochat-appliance enroll makes"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nxx\n", "{path}: not a PEM certificate request"),
    ],
)
def test_sign_device_on_something_else_than_a_request_says_what_it_wants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, said: str
) -> None:
    ca_dir, path = tmp_path / "ca", tmp_path / "device.csr"
    assert admin.main(["ca-init", "--ca", str(ca_dir), "--broker-dir", ""]) == 0
    if content is not None:
        path.write_text(content)
    capsys.readouterr()
    assert admin.main(["sign-device", str(path), "--ca", str(ca_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gochat-admin: sign-device: " + said.format(path=path)), err
    assert len(err.splitlines()) == 1 and "Unable to load" not in err


def test_crl_renew_keeps_the_revoked_and_moves_next_update(broker: Broker) -> None:
    broker.issue_device("pi-a")
    broker.revoke("pi-a")
    before = pki.load_crl(broker.tls.crl)
    assert admin.main(["crl-renew", "--ca", str(broker.tls_dir), "--broker-dir", ""]) == 0
    after = pki.load_crl(broker.tls.crl)
    cert = pki.load_certificate(broker.device_files("pi-a")[0])
    assert pki.is_revoked(after, cert)
    assert after.next_update_utc >= before.next_update_utc
    assert after.last_update_utc >= before.last_update_utc


@pytest.mark.skipif(broker_group() is None, reason="needs root and a mosquitto group")
def test_the_shipped_conf_runs_as_mosquitto_on_what_ca_init_installed() -> None:
    """What an operator gets: ``ca-init`` and ``add-device`` as root into the broker's
    directory, the shipped conf with ``user mosquitto``: the broker, having dropped
    root, reads every file and serves both TLS listeners."""
    with tempfile.TemporaryDirectory() as raw:
        root = Path(raw)
        root.chmod(0o755)
        ca_dir, broker_dir = root / "ca", root / "broker"
        broker_dir.mkdir(mode=0o750)
        shutil.chown(broker_dir, group="mosquitto")
        assert admin.main(["ca-init", "--ca", str(ca_dir), "--broker-dir", str(broker_dir)]) == 0
        acl = broker_dir / "acl"
        shutil.copy(SHIPPED_ACL, acl)
        acl.chmod(0o640)
        shutil.chown(acl, group="mosquitto")
        passwd, secrets_dir = broker_dir / "passwd", root / "secrets"
        accounts.add_user(passwd, secrets_dir, "pi-pw", broker_group=broker_group())
        shipped = (brokerconf.TLS_PORT, brokerconf.CERT_PORT, brokerconf.PLAIN_PORT)
        shipped += (brokerconf.WS_PORT, brokerconf.WSS_PORT)
        ports = dict(zip(shipped, free_ports(len(shipped)), strict=True))
        conf = root / "mosquitto.conf"
        conf.write_text(
            brokerconf.render_conf(
                brokerconf.SHIPPED_CONF.read_text(encoding="utf-8"),
                ports=ports,
                passwd_file=passwd,
                acl_file=acl,
                data_dir=None,
                log_file=None,
                tls=ca.tls_files(broker_dir),
                plugin=guard_plugin(),
                run_as="mosquitto",
            ),
            encoding="utf-8",
        )
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            password = (secrets_dir / "pi-pw.password").read_text().strip()
            tls = ssl.create_default_context(cafile=str(broker_dir / "ca.crt"))
            deadline = time.monotonic() + 5
            while probe_login("127.0.0.1", ports[brokerconf.TLS_PORT], "pi-pw", password, tls=tls):
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the broker never accepted the login"
                time.sleep(0.05)
            key = pki.generate_key()
            _, cert = ca.sign_device(ca_dir, pki.make_csr(key, "pi-a"))
            device = root / "pi-a"
            pki.save_private_key(device / "device.key", key)
            pki.save_pem(device / "device.crt", cert)
            shutil.copy(broker_dir / "ca.crt", device / "ca.crt")
            settings = BrokerSettings(
                host="127.0.0.1",
                port=ports[brokerconf.CERT_PORT],
                tls_ca_file=device / "ca.crt",
                tls_cert_file=device / "device.crt",
                tls_key_file=device / "device.key",
            )
            assert _connects(settings, "pi-a")
        finally:
            proc.terminate()
            proc.wait(10)
