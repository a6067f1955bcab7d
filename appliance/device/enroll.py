"""``gochat-appliance enroll``: this device's TLS key and certificate request.

The key is made on the device and never leaves it (mode 0600, owned by the service
user when run as root); the CSR names the device's user id as its CN. The deployment's
operator signs it with ``gochat-admin sign-device`` and the certificate comes back as
``device.crt`` next to the key (docs/security.md). An existing key is kept, so
enrolling again (a certificate about to expire) asks for a new certificate for the
same key.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from appliance.deploy import pki

DEFAULT_DIR = Path("/etc/gochat/tls")
SERVICE_USER = "gochat"
KEY_NAME = "device.key"
CSR_NAME = "device.csr"
CERT_NAME = "device.crt"
CA_NAME = "ca.crt"


def enroll(name: str, directory: Path = DEFAULT_DIR, *, owner: str = SERVICE_USER) -> Path:
    """Write ``directory/device.key`` (if missing) and ``directory/device.csr``; return
    the CSR's path. Raises :class:`~appliance.deploy.pki.PkiError` for a bad name, and
    :class:`~appliance.deploy.files.DeployError` when the files cannot be written."""
    csr_path = directory / CSR_NAME
    key_path = directory / KEY_NAME
    if key_path.exists():
        key = pki.load_private_key(key_path)
        csr = pki.make_csr(key, name)
    else:
        key = pki.generate_key()
        csr = pki.make_csr(key, name)  # checks the name before anything is written
        pki.save_private_key(key_path, key)
    _give_to(owner, key_path)
    pki.save_pem(csr_path, csr)
    return csr_path


def _give_to(owner: str, path: Path) -> None:
    """chown to the service user when we are root and it exists: the daemon runs as it."""
    if os.geteuid() != 0:
        return
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        return
    os.chown(path, entry.pw_uid, entry.pw_gid)
