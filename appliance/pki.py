"""The deployment's private PKI: a CA, the broker's certificate, device certificates, a CRL.

PROTOCOL.md section 1: every link to the broker is TLS, the broker's certificate is
verified against the deployment's CA, and a device may log in with a client certificate
whose subject CN is its user id (Mosquitto ``require_certificate true`` +
``use_identity_as_username true``); a revoked certificate is refused at connect
(Mosquitto ``crlfile``).

Keys are ECDSA P-256: every OpenSSL that Mosquitto and paho run on handles it, and it
is cheap on a Raspberry Pi. Certificates are signed with SHA-256.

* The CA's key signs device certificates and the CRL: keep it off the broker (an
  operator's machine), mode 0600.
* The broker's key and certificate, the CA certificate and the CRL must be readable
  by the user Mosquitto runs as (see :func:`save_private_key`'s ``group``).
* A device makes its own key (never leaves it, mode 0600) and a CSR; the CA signs it
  with :func:`sign_csr`, which keeps only the CN and sets every extension itself.

Revocation: :func:`revoke` writes a new CRL. Mosquitto (2.0.11 measured) reads
``crlfile`` when it starts and again on ``SIGHUP`` (``systemctl reload mosquitto``);
either makes the next connection with a revoked certificate fail. Revocation is
checked at connect only: a session already open survives the reload, so also
disconnect the device (or restart the broker). A CRL past its ``nextUpdate`` makes
OpenSSL refuse *every* client certificate, so re-issue it (``revoke`` with no new
serials) well before :data:`CRL_DAYS` run out. ``tests/test_pki.py`` shows all of it.

Files: Mosquitto reads ``cafile``, ``certfile``, ``keyfile`` and ``crlfile`` after
dropping root to its ``user`` (default ``mosquitto``), on start and on reload, so they
and their directories must be readable by that user: the broker key root:mosquitto
0640 (``save_private_key(path, key, group="mosquitto")``), the rest 0644.

No private key is ever put into an exception message or a log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.protocol.topics import is_server_account, is_user_id

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
CA_COMMON_NAME = "GoChat deployment CA"
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest a TLS server certificate may live for many clients
DEVICE_DAYS = 825
CRL_DAYS = 365
BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind the CA's
CURVE = ec.SECP256R1()
_HASH = hashes.SHA256()

PrivateKey = ec.EllipticCurvePrivateKey
Signable = x509.Certificate | x509.CertificateSigningRequest | x509.CertificateRevocationList


class PkiError(ValueError):
    """A refused request (a bad CSR, a wrong key type, ...); one line for the operator."""


# ---------------------------------------------------------------- keys


def generate_key() -> PrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(CURVE)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def _validity(
    builder: x509.CertificateBuilder, now: dt.datetime | None, days: int
) -> x509.CertificateBuilder:
    start = _now(now)
    return builder.not_valid_before(start - BACKDATE).not_valid_after(
        start + dt.timedelta(days=days)
    )


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


# ---------------------------------------------------------------- certificates


def create_ca(
    common_name: str = CA_COMMON_NAME,
    *,
    key: PrivateKey | None = None,
    days: int = CA_DAYS,
    now: dt.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates and CRLs only."""
    key = key or generate_key()
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_cn(common_name))
        .issuer_name(_cn(common_name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    return key, _validity(builder, now, days).sign(key, _HASH)


def issue_server_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    key: PrivateKey | None = None,
    days: int = SERVER_DAYS,
    now: dt.datetime | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """The broker's key and certificate, valid for ``hosts`` (IP addresses and DNS
    names, as subjectAltName entries; clients check the name they dialled)."""
    if not hosts:
        raise PkiError("a server certificate needs at least one host")
    key = key or generate_key()
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = (
        _leaf(ca_key, ca_cert, _cn(hosts[0]), key.public_key())
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return key, _validity(builder, now, days).sign(ca_key, _HASH)


def make_csr(key: PrivateKey, device_name: str) -> x509.CertificateSigningRequest:
    """A certificate signing request for ``device_name`` (its user id) as the CN."""
    _check_device_name(device_name)
    return x509.CertificateSigningRequestBuilder().subject_name(_cn(device_name)).sign(key, _HASH)


def device_name_of(csr_or_cert: x509.CertificateSigningRequest | x509.Certificate) -> str:
    """The single CN of a CSR or certificate; :class:`PkiError` if not exactly one."""
    values = csr_or_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise PkiError("the subject must have exactly one common name")
    return values[0].value


def sign_csr(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    *,
    days: int = DEVICE_DAYS,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A client certificate for the device that made ``csr``.

    Kept from the CSR: its public key (P-256 only) and its CN, which must be a valid
    user id other than the server's. Nothing else: the subject is the CN alone and the
    extensions are this function's (not a CA, clientAuth only), whatever the CSR asked.
    """
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not verify")
    name = device_name_of(csr)
    _check_device_name(name)
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != CURVE.name:
        raise PkiError("device keys must be ECDSA P-256")
    builder = _leaf(ca_key, ca_cert, _cn(name), public).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    return _validity(builder, now, days).sign(ca_key, _HASH)


def _check_device_name(name: str) -> None:
    if not is_user_id(name):
        raise PkiError("device name: 1-64 characters of [A-Za-z0-9_.-]")
    if is_server_account(name):
        raise PkiError(f"device name: {name} is a server's account")


def _leaf(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


# ---------------------------------------------------------------- revocation


def revoke(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    serials: Iterable[int] = (),
    *,
    previous: x509.CertificateRevocationList | None = None,
    days: int = CRL_DAYS,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A new CRL: everything ``previous`` revoked plus ``serials``, with the next CRL
    number. With no serials it renews the CRL (a fresh ``nextUpdate``)."""
    start = _now(now)
    number = 1
    revoked: dict[int, x509.RevokedCertificate] = {}
    if previous is not None:
        if not previous.is_signature_valid(ca_key.public_key()):
            raise PkiError("the previous CRL was not issued by this CA")
        for entry in previous:
            revoked[entry.serial_number] = entry
        with contextlib.suppress(x509.ExtensionNotFound):
            number = (
                previous.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
            )
    for serial in serials:
        if serial not in revoked:
            revoked[serial] = (
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(start - BACKDATE)
                .build()
            )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start - BACKDATE)
        .next_update(start + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for entry in revoked.values():
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, _HASH)


def is_revoked(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    """Whether ``crl`` lists ``cert``'s serial number."""
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


# ---------------------------------------------------------------- files


def save_private_key(path: Path, key: PrivateKey, *, group: str | None = None) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, atomically, mode 0600.

    ``group``: also readable by that group (mode 0640), e.g. ``mosquitto`` for the
    broker's own key, which Mosquitto reads after dropping root. Needs root (or
    membership of the group) to set; :class:`PermissionError` otherwise.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path, pem, 0o640 if group else 0o600, group)


def save_pem(path: Path, obj: Signable, *, group: str | None = None) -> None:
    """Write a certificate, CSR or CRL as PEM, atomically, mode 0644 (public data;
    ``group`` only sets the group owner)."""
    _write_atomic(path, obj.public_bytes(serialization.Encoding.PEM), 0o644, group)


def load_private_key(path: Path) -> PrivateKey:
    """Read an unencrypted PEM private key (P-256); :class:`PkiError` otherwise."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise PkiError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise PkiError(f"{path}: not an ECDSA P-256 key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_csr(path: Path) -> x509.CertificateSigningRequest:
    """Read a PEM certificate signing request."""
    return x509.load_pem_x509_csr(path.read_bytes())


def load_crl(path: Path) -> x509.CertificateRevocationList:
    """Read a PEM CRL."""
    return x509.load_pem_x509_crl(path.read_bytes())


def _write_atomic(path: Path, data: bytes, mode: int, group: str | None) -> None:
    """Write via a temp file created with ``mode`` (never wider, even for a moment)
    in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            if group is not None:
                os.fchown(out.fileno(), -1, grp.getgrnam(group).gr_gid)
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
