"""The deployment PKI: certificates and CRLs, then a real Mosquitto TLS listener.

Findings on Mosquitto 2.0.11 (OpenSSL 3), which these tests pin down:

* ``cafile``, ``certfile``, ``keyfile`` and ``crlfile`` are read *after* the broker
  drops root (to ``user``, default ``mosquitto``): the files and every directory above
  them must be readable/traversable by that user. The production layout that works is
  the broker key ``root:mosquitto 0640`` (``save_private_key(..., group="mosquitto")``),
  certificates and the CRL 0644, in a directory the user can enter. The tests' tmp dirs
  are 0700 root, so most tests run the broker with ``user root`` (allowed: Mosquitto
  only warns "should not be run as root"); one test proves the production layout.
* A CRL is read at start; ``SIGHUP`` (``systemctl reload mosquitto``) re-reads it:
  a certificate revoked while the broker runs is refused from the next connection
  after the reload. Clients already connected stay connected.
* A CRL past its ``nextUpdate`` makes every client certificate fail verification.
"""

from __future__ import annotations

import datetime as dt
import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from appliance.deploy import pki
from appliance.deploy.brokerconf import SHIPPED_ACL
from appliance.deploy.pki import PkiError

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


# ---------------------------------------------------------------- certificates


def test_ca_is_a_self_signed_ca_that_signs_only_certificates_and_crls() -> None:
    key, ca = pki.create_ca(now=NOW)
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert ca.not_valid_after_utc - NOW == dt.timedelta(days=pki.CA_DAYS)
    assert NOW - ca.not_valid_before_utc == pki.BACKDATE


def test_server_certificate_names_its_hosts() -> None:
    ca_key, ca = pki.create_ca(now=NOW)
    _, cert = pki.issue_server_cert(ca_key, ca, ["127.0.0.1", "localhost", "broker.lan"], now=NOW)
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.lan"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=pki.SERVER_DAYS)
    with pytest.raises(PkiError):
        pki.issue_server_cert(ca_key, ca, [])


def test_a_device_csr_is_signed_keeping_only_its_cn() -> None:
    ca_key, ca = pki.create_ca()
    key = pki.generate_key()
    csr = pki.make_csr(key, "kitchen-pi.2")
    cert = pki.sign_csr(ca_key, ca, csr, days=30, now=NOW)
    cert.verify_directly_issued_by(ca)
    assert pki.device_name_of(cert) == "kitchen-pi.2"
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kitchen-pi.2")])
    assert cert.public_key() == key.public_key()
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - NOW == dt.timedelta(days=30)


def _csr(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    *names: x509.NameAttribute[str],
    ca: bool = False,
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(list(names)))
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _cn(value: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(NameOID.COMMON_NAME, value)


@pytest.mark.parametrize(
    "name", ["gochat-server", "gochat-server-2", "", "a/b", "x" * 65, "dev 1", "dév"]
)
def test_csrs_with_a_cn_that_is_no_device_user_id_are_refused(name: str) -> None:
    ca_key, ca = pki.create_ca()
    key = pki.generate_key()
    with pytest.raises(PkiError):
        pki.make_csr(key, name)
    if 0 < len(name) <= 64:  # cryptography itself refuses other CN lengths
        with pytest.raises(PkiError):
            pki.sign_csr(ca_key, ca, _csr(key, _cn(name)))


def test_csrs_with_other_subjects_keys_or_wishes() -> None:
    ca_key, ca = pki.create_ca()
    key = pki.generate_key()
    with pytest.raises(PkiError):  # two CNs: which one is the identity?
        pki.sign_csr(ca_key, ca, _csr(key, _cn("a"), _cn("b")))
    with pytest.raises(PkiError):
        pki.sign_csr(ca_key, ca, _csr(key, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")))
    with pytest.raises(PkiError):
        pki.sign_csr(ca_key, ca, _csr(ec.generate_private_key(ec.SECP384R1()), _cn("dev")))
    with pytest.raises(PkiError):
        pki.sign_csr(ca_key, ca, _csr(ed25519.Ed25519PrivateKey.generate(), _cn("dev")))
    # Extra subject fields and requested extensions are dropped, not honoured.
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil CA")
    cert = pki.sign_csr(ca_key, ca, _csr(key, _cn("dev"), org, ca=True))
    assert cert.subject == x509.Name([_cn("dev")])
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_revocation_accumulates_and_numbers_crls() -> None:
    ca_key, ca = pki.create_ca()
    certs = [pki.sign_csr(ca_key, ca, pki.make_csr(pki.generate_key(), f"d{i}")) for i in range(3)]
    empty = pki.revoke(ca_key, ca, now=NOW)
    assert len(empty) == 0 and empty.is_signature_valid(ca_key.public_key())
    assert empty.next_update_utc == NOW + dt.timedelta(days=pki.CRL_DAYS)
    first = pki.revoke(ca_key, ca, [certs[0].serial_number], previous=empty)
    second = pki.revoke(ca_key, ca, [certs[1].serial_number, certs[0].serial_number],
                        previous=first)  # fmt: skip
    assert [pki.is_revoked(second, c) for c in certs] == [True, True, False]
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
               for c in (empty, first, second)]  # fmt: skip
    assert numbers == [1, 2, 3]
    other_key, other = pki.create_ca("Other")
    with pytest.raises(PkiError):
        pki.revoke(ca_key, ca, previous=pki.revoke(other_key, other))


# ---------------------------------------------------------------- files


def test_keys_are_written_0600_and_public_files_0644(tmp_path: Path) -> None:
    ca_key, ca = pki.create_ca()
    pki.save_private_key(tmp_path / "keys" / "ca.key", ca_key)
    pki.save_pem(tmp_path / "ca.crt", ca)
    pki.save_pem(tmp_path / "crl.pem", pki.revoke(ca_key, ca))
    csr = pki.make_csr(ca_key, "dev")
    pki.save_pem(tmp_path / "dev.csr", csr)
    assert stat.S_IMODE((tmp_path / "keys" / "ca.key").stat().st_mode) == 0o600
    for public in ("ca.crt", "crl.pem", "dev.csr"):
        assert stat.S_IMODE((tmp_path / public).stat().st_mode) == 0o644
    assert pki.load_private_key(tmp_path / "keys" / "ca.key").private_numbers() == (
        ca_key.private_numbers()
    )
    assert pki.load_certificate(tmp_path / "ca.crt") == ca
    assert pki.load_csr(tmp_path / "dev.csr") == csr
    assert len(pki.load_crl(tmp_path / "crl.pem")) == 0
    # Overwriting keeps the mode; no temp file is left behind.
    pki.save_private_key(tmp_path / "keys" / "ca.key", pki.generate_key())
    assert stat.S_IMODE((tmp_path / "keys" / "ca.key").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "keys").iterdir()] == ["ca.key"]


def test_loading_a_wrong_key_file_says_so_without_its_contents(tmp_path: Path) -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    pem = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())  # fmt: skip
    (tmp_path / "ed.key").write_bytes(pem)
    (tmp_path / "junk.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n")
    for name in ("ed.key", "junk.key"):
        with pytest.raises(PkiError) as info:
            pki.load_private_key(tmp_path / name)
        assert "BEGIN" not in str(info.value) and "c2VjcmV0" not in str(info.value)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


ROOT_WITH_MOSQUITTO_USER = os.geteuid() == 0 and _has_user("mosquitto")


@pytest.mark.skipif(not ROOT_WITH_MOSQUITTO_USER, reason="needs root and a mosquitto user")
def test_a_group_readable_key_is_root_mosquitto_0640(tmp_path: Path) -> None:
    pki.save_private_key(tmp_path / "server.key", pki.generate_key(), group="mosquitto")
    st = (tmp_path / "server.key").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == grp.getgrnam("mosquitto").gr_gid and st.st_uid == 0


# ---------------------------------------------------------------- a real Mosquitto


@dataclass
class Deployment:
    """A CA, the broker's files and some devices' keys and certificates, on disk."""

    dir: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate

    def path(self, name: str) -> Path:
        return self.dir / name

    def device(self, name: str, *, ca_key: ec.EllipticCurvePrivateKey | None = None,
               ca: x509.Certificate | None = None) -> x509.Certificate:  # fmt: skip
        """A device's key and CSR made "on the device", signed by the CA."""
        key = pki.generate_key()
        pki.save_private_key(self.path(f"{name}.key"), key)
        csr = pki.make_csr(key, name)
        cert = pki.sign_csr(ca_key or self.ca_key, ca or self.ca, csr)
        pki.save_pem(self.path(f"{name}.crt"), cert)
        return cert

    def revoke(self, cert: x509.Certificate) -> None:
        previous = pki.load_crl(self.path("crl.pem"))
        crl = pki.revoke(self.ca_key, self.ca, [cert.serial_number], previous=previous)
        pki.save_pem(self.path("crl.pem"), crl)


def make_deployment(directory: Path, *, server_hosts: tuple[str, ...] = pki.DEFAULT_HOSTS,
                    key_group: str | None = None) -> Deployment:  # fmt: skip
    ca_key, ca = pki.create_ca()
    pki.save_pem(directory / "ca.crt", ca)
    server_key, server_cert = pki.issue_server_cert(ca_key, ca, server_hosts)
    pki.save_private_key(directory / "server.key", server_key, group=key_group)
    pki.save_pem(directory / "server.crt", server_cert)
    pki.save_pem(directory / "crl.pem", pki.revoke(ca_key, ca))
    shutil.copy(SHIPPED_ACL, directory / "acl")
    return Deployment(directory, ca_key, ca)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tls_conf(d: Deployment, port: int, user: str) -> str:
    """A minimal TLS-only broker: client certificates are the identity."""
    return "\n".join([
        f"user {user}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {d.path('acl')}",
        "persistence false",
        "log_dest stderr",
        "log_type error", "log_type warning", "log_type notice", "log_type information",
        f"listener {port} 127.0.0.1",
        "use_username_as_clientid true",
        f"cafile {d.path('ca.crt')}",
        f"certfile {d.path('server.crt')}",
        f"keyfile {d.path('server.key')}",
        f"crlfile {d.path('crl.pem')}",
        "require_certificate true",
        "use_identity_as_username true",
        "",
    ])  # fmt: skip


class TlsBroker:
    """``mosquitto -c`` on a rendered configuration, as a subprocess."""

    def __init__(self, d: Deployment, user: str = "root") -> None:
        self.d = d
        self.port = _free_port()
        self.conf = d.path("mosquitto.conf")
        self.conf.write_text(tls_conf(d, self.port, user), encoding="utf-8")
        self.log_path = d.path("mosquitto.log")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> TlsBroker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        log.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited:\n{self.log()}")
            with socket.socket() as sock:
                listening = sock.connect_ex(("127.0.0.1", self.port)) == 0
            if listening:
                # Mosquitto binds its port before it loads the TLS files as its own
                # user: still alive a moment later means it loaded them.
                time.sleep(0.3)
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited:\n{self.log()}")
                return self
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen:\n{self.log()}")

    def reload(self) -> None:
        """SIGHUP, then wait until the broker says it reloaded."""
        assert self.proc is not None
        before = self.log().count("Reloading config")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while self.log().count("Reloading config") == before:
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.02)
        time.sleep(0.1)  # the reload itself follows the log line

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@dataclass
class Attempt:
    """How a connection attempt ended: CONNACK reason, or the error that stopped it."""

    connected: bool
    detail: str
    client: mqtt.Client | None = None


def try_connect(broker: TlsBroker, device: str | None, *, ca: Path | None = None,
                host: str = "127.0.0.1", keep: bool = False) -> Attempt:  # fmt: skip
    """Connect over TLS as ``device`` (its key and certificate in the deployment)."""
    d = broker.d
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                         client_id=device or "anon", protocol=mqtt.MQTTv5)  # fmt: skip
    certfile = str(d.path(f"{device}.crt")) if device else None
    keyfile = str(d.path(f"{device}.key")) if device else None
    client.tls_set(ca_certs=str(ca or d.path("ca.crt")), certfile=certfile, keyfile=keyfile)
    result: dict[str, str] = {}

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        result["connack"] = str(reason)

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        result.setdefault("closed", str(reason))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, broker.port, keepalive=30)
        deadline = time.monotonic() + 3
        while not result and time.monotonic() < deadline:
            client.loop(0.05)
    except OSError as exc:  # ssl.SSLError is one: the client refused the server
        return Attempt(False, f"{type(exc).__name__}: {exc}")
    connected = result.get("connack") == "Success"
    if connected and keep:
        return Attempt(True, "Success", client)
    client.disconnect()
    return Attempt(connected, result.get("connack") or result.get("closed") or "no answer")


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return make_deployment(tmp_path)


@pytest.fixture
def broker(deployment: Deployment) -> Iterator[TlsBroker]:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed")
    running = TlsBroker(deployment).start()
    yield running
    running.stop()


@pytest.mark.broker
def test_a_device_certificate_logs_in_as_its_cn(deployment: Deployment, broker: TlsBroker) -> None:
    deployment.device("dev1")
    attempt = try_connect(broker, "dev1", keep=True)
    assert attempt.connected, broker.log()
    client = attempt.client
    assert client is not None
    acks: dict[int, int] = {}

    def on_publish(_c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: object) -> None:
        acks[mid] = reason.value

    client.on_publish = on_publish
    try:
        # The shipped ACL binds the CN: dev1 may write its own presence, not another's.
        own = client.publish("gochat/v1/presence/dev1", b"online", qos=1)
        other = client.publish("gochat/v1/presence/dev2", b"online", qos=1)
        deadline = time.monotonic() + 3
        while len(acks) < 2:
            assert time.monotonic() < deadline
            client.loop(0.05)
    finally:
        client.disconnect()
    assert acks[own.mid] < 0x80  # 0x10: accepted, no matching subscribers
    assert acks[other.mid] == 0x87  # not authorized
    assert "as dev1 (p5" in broker.log() and "u'dev1'" in broker.log()


@pytest.mark.broker
def test_no_certificate_or_another_cas_certificate_is_refused(
    deployment: Deployment, broker: TlsBroker
) -> None:
    other_key, other_ca = pki.create_ca("Someone else's CA")
    deployment.device("stranger", ca_key=other_key, ca=other_ca)
    assert not try_connect(broker, "stranger").connected
    assert not try_connect(broker, None).connected
    assert "certificate verify failed" in broker.log() or "peer did not return" in broker.log()


@pytest.mark.broker
def test_the_client_verifies_the_broker_certificate(
    deployment: Deployment, broker: TlsBroker, tmp_path: Path
) -> None:
    deployment.device("dev1")
    assert try_connect(broker, "dev1", host="127.0.0.1").connected
    # A client trusting another CA refuses this broker.
    _, other_ca = pki.create_ca("Someone else's CA")
    pki.save_pem(tmp_path / "other-ca.crt", other_ca)
    refused = try_connect(broker, "dev1", ca=tmp_path / "other-ca.crt")
    assert not refused.connected and "CERTIFICATE_VERIFY_FAILED" in refused.detail


@pytest.mark.broker
def test_the_client_checks_the_name_it_dialled(tmp_path: Path) -> None:
    d = make_deployment(tmp_path, server_hosts=("broker.example",))
    d.device("dev1")
    running = TlsBroker(d).start()
    try:
        refused = try_connect(running, "dev1", host="127.0.0.1")
        assert not refused.connected
        assert "IP address mismatch" in refused.detail or "mismatch" in refused.detail
    finally:
        running.stop()


@pytest.mark.broker
def test_a_revoked_certificate_is_refused_after_sighup(
    deployment: Deployment, broker: TlsBroker
) -> None:
    victim = deployment.device("victim")
    early = deployment.device("early")
    deployment.device("keeper")
    held = try_connect(broker, "early", keep=True)
    assert held.connected and held.client is not None
    deployment.revoke(victim)
    deployment.revoke(early)
    # The broker read the CRL at start: without a reload the revoked one still gets in.
    assert try_connect(broker, "victim").connected
    broker.reload()
    assert not try_connect(broker, "victim").connected, broker.log()
    assert try_connect(broker, "keeper").connected
    # A session opened before the revocation survives the reload: revocation is
    # enforced at connect only (disconnect the device, or restart the broker).
    info = held.client.publish("gochat/v1/presence/early", b"online", qos=1)
    deadline = time.monotonic() + 3
    while not info.is_published():  # a PUBACK: the session is alive
        assert time.monotonic() < deadline and held.client.is_connected()
        held.client.loop(0.05)
    held.client.disconnect()
    assert not try_connect(broker, "early").connected


@pytest.mark.broker
def test_a_revoked_certificate_is_refused_after_a_restart(
    deployment: Deployment, broker: TlsBroker
) -> None:
    victim = deployment.device("victim")
    deployment.revoke(victim)
    broker.stop()
    broker.start()
    assert not try_connect(broker, "victim").connected
    deployment.device("keeper")
    assert try_connect(broker, "keeper").connected


@pytest.mark.broker
def test_an_expired_crl_locks_every_device_out(deployment: Deployment, broker: TlsBroker) -> None:
    deployment.device("dev1")
    stale = pki.revoke(deployment.ca_key, deployment.ca,
                       now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2), days=1)  # fmt: skip
    pki.save_pem(deployment.path("crl.pem"), stale)
    broker.reload()
    assert not try_connect(broker, "dev1").connected
    pki.save_pem(deployment.path("crl.pem"), pki.revoke(deployment.ca_key, deployment.ca,
                                                          previous=stale))  # fmt: skip
    broker.reload()
    assert try_connect(broker, "dev1").connected


@pytest.mark.broker
@pytest.mark.skipif(not ROOT_WITH_MOSQUITTO_USER, reason="needs root and a mosquitto user")
def test_the_production_layout_works_for_a_broker_that_drops_to_mosquitto() -> None:
    """``user mosquitto``: the broker key root:mosquitto 0640, public files 0644, in a
    directory the mosquitto user can enter. A root-only key is not readable."""
    with tempfile.TemporaryDirectory() as raw:
        directory = Path(raw)
        directory.chmod(0o755)
        d = make_deployment(directory, key_group="mosquitto")
        d.device("dev1")
        running = TlsBroker(d, user="mosquitto").start()
        try:
            assert try_connect(running, "dev1").connected, running.log()
            d.revoke(pki.load_certificate(d.path("dev1.crt")))
            running.reload()  # re-read as the mosquitto user
            assert not try_connect(running, "dev1").connected
        finally:
            running.stop()
        pki.save_private_key(d.path("server.key"), pki.load_private_key(d.path("server.key")))
        running = TlsBroker(d, user="mosquitto")
        with pytest.raises(RuntimeError, match="Unable to load server key file"):
            running.start()
        running.stop()
