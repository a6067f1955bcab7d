"""The deployment CA on disk: ``gochat-admin ca-init | sign-device | revoke``.

One directory holds everything (docs/security.md)::

    ca.key       the CA's private key, 0600: signs certificates and the CRL
    ca.crt       the CA certificate: every client's trust anchor, the broker's cafile
    server.key   the broker's key (root:mosquitto 0640 when made as root)
    server.crt   the broker's certificate, for the host names clients dial
    crl.pem      the revocation list the broker reads (crlfile)
    issued/      every device certificate signed, as NAME/SERIAL.crt (revoke reads them)

:func:`init_ca` is idempotent: an existing CA is kept (re-running never invalidates
the certificates already issued); the broker's certificate is re-issued only when asked
for other hosts. :mod:`appliance.deploy.pki` does the cryptography.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from appliance.deploy import pki
from appliance.deploy.brokerconf import TlsFiles
from appliance.protocol.topics import is_user_id

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
SERVER_KEY = "server.key"
SERVER_CERT = "server.crt"
CRL = "crl.pem"
ISSUED = "issued"


def tls_files(directory: Path) -> TlsFiles:
    """The broker's files in a CA directory made by :func:`init_ca`."""
    return TlsFiles(
        ca=directory / CA_CERT,
        cert=directory / SERVER_CERT,
        key=directory / SERVER_KEY,
        crl=directory / CRL,
    )


@dataclass(frozen=True, slots=True)
class CaInit:
    """What :func:`init_ca` found and did."""

    files: TlsFiles
    ca_made: bool
    """A new CA (else the one there was kept, and what it issued stays valid)."""
    broker_cert: Literal["made", "re-issued", "kept"]
    hosts: tuple[str, ...]
    """The names the broker's certificate is for."""
    previous_hosts: tuple[str, ...] = ()
    """When re-issued: the names it was for."""


def init_ca(
    directory: Path, hosts: Sequence[str] = pki.DEFAULT_HOSTS, *, group: str | None = None
) -> CaInit:
    """Create what is missing of the CA, the broker's key and certificate and the CRL.

    A broker certificate that does not name exactly ``hosts`` is re-issued (same key).
    ``group``: the broker key's group
    (:func:`appliance.deploy.files.broker_group`).
    """
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)  # the CA's key lives here
    files = tls_files(directory)
    ca_key, ca_cert, ca_made = _load_or_create(directory, files)
    previous = tuple(_hosts_of(pki.load_certificate(files.cert))) if files.cert.exists() else ()
    same = sorted(previous) == sorted(hosts)
    if not same:
        key = pki.load_private_key(files.key) if files.key.exists() else None
        server_key, server_cert = pki.issue_server_cert(ca_key, ca_cert, hosts, key=key)
        pki.save_private_key(files.key, server_key, group=group)
        pki.save_pem(files.cert, server_cert, group=group)
    if not files.crl.exists():
        pki.save_pem(files.crl, pki.revoke(ca_key, ca_cert), group=group)
    cert: Literal["made", "re-issued", "kept"] = (
        "kept" if same else "re-issued" if previous else "made"
    )
    return CaInit(files, ca_made, cert, tuple(hosts), () if same else previous)


def _load_or_create(
    directory: Path, files: TlsFiles
) -> tuple[pki.PrivateKey, x509.Certificate, bool]:
    """The CA in ``directory``, made if there is none; whether it was made."""
    ca_key_path = directory / CA_KEY
    if ca_key_path.exists() and files.ca.exists():
        return pki.load_private_key(ca_key_path), pki.load_certificate(files.ca), False
    ca_key, ca_cert = pki.create_ca()
    pki.save_private_key(ca_key_path, ca_key)
    pki.save_pem(files.ca, ca_cert)
    for stale in (files.cert, files.crl):
        stale.unlink(missing_ok=True)  # signed by a CA that is gone
    return ca_key, ca_cert, True


def _hosts_of(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    assert isinstance(san, x509.SubjectAlternativeName)
    return [str(name.value) for name in san]


def _load_ca(directory: Path) -> tuple[pki.PrivateKey, x509.Certificate]:
    key_path, cert_path = directory / CA_KEY, directory / CA_CERT
    if not key_path.is_file() or not cert_path.is_file():
        raise pki.PkiError(f"no CA in {directory} (gochat-admin ca-init makes one)")
    return pki.load_private_key(key_path), pki.load_certificate(cert_path)


def sign_device(
    directory: Path, csr: x509.CertificateSigningRequest
) -> tuple[str, x509.Certificate]:
    """Sign a device's CSR with the CA in ``directory``; keep a copy under ``issued/``.

    Returns the device name (the CSR's CN) and its certificate.
    """
    ca_key, ca_cert = _load_ca(directory)
    cert = pki.sign_csr(ca_key, ca_cert, csr)
    name = pki.device_name_of(cert)
    pki.save_pem(directory / ISSUED / name / f"{cert.serial_number:x}.crt", cert)
    return name, cert


def revoke_device(directory: Path, name: str, *, group: str | None = None) -> int:
    """Add every certificate issued to ``name`` to the CRL; return how many.

    Raises :class:`~appliance.deploy.pki.PkiError` if the CA never issued one to ``name``.
    """
    if not is_user_id(name):
        raise pki.PkiError(f"invalid device name {name!r}")
    ca_key, ca_cert = _load_ca(directory)
    issued = sorted((directory / ISSUED / name).glob("*.crt"))
    if not issued:
        raise pki.PkiError(f"no certificate was issued to {name!r} by the CA in {directory}")
    serials = [pki.load_certificate(path).serial_number for path in issued]
    crl_path = directory / CRL
    previous = pki.load_crl(crl_path) if crl_path.exists() else None
    pki.save_pem(crl_path, pki.revoke(ca_key, ca_cert, serials, previous=previous), group=group)
    return len(serials)


def renew_crl(directory: Path, *, group: str | None = None) -> Path:
    """Re-issue the CRL with the same entries and a fresh ``nextUpdate``: an expired CRL
    makes the broker refuse every client certificate. Returns its path."""
    ca_key, ca_cert = _load_ca(directory)
    crl_path = directory / CRL
    previous = pki.load_crl(crl_path) if crl_path.exists() else None
    pki.save_pem(crl_path, pki.revoke(ca_key, ca_cert, previous=previous), group=group)
    return crl_path


def install_broker_files(tls: TlsFiles, broker_dir: Path, *, group: str | None) -> list[Path]:
    """Copy the CA certificate, the broker's certificate and key and the CRL to where
    Mosquitto reads them (key 0640 with ``group``, the rest 0644); return the paths."""
    target = tls_files(broker_dir)
    pki.save_pem(target.ca, pki.load_certificate(tls.ca), group=group)
    pki.save_pem(target.cert, pki.load_certificate(tls.cert), group=group)
    pki.save_private_key(target.key, pki.load_private_key(tls.key), group=group)
    pki.save_pem(target.crl, pki.load_crl(tls.crl), group=group)
    return [target.ca, target.cert, target.key, target.crl]


def install_crl(directory: Path, broker_dir: Path, *, group: str | None) -> Path:
    """Copy the CA's current CRL to the broker's directory; return its path there."""
    target = broker_dir / CRL
    pki.save_pem(target, pki.load_crl(directory / CRL), group=group)
    return target
