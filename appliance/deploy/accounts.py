"""Broker password accounts: ``gochat-admin add-device | add-server | remove-device``.

Every GoChat client logs in to Mosquitto with its user id as username (docs/protocol.md
section 1). This module creates those accounts: it generates a strong random
password, writes its hash into Mosquitto's ``password_file`` and the password itself
into a ``<secret-dir>/<name>.password`` file (mode 0600) that the device or the
server reads through ``broker.password_file``. The password never appears on a
command line, in the process list, or on stdout.

Hash format (Mosquitto 2.0, ``apps/mosquitto_passwd`` and ``src/password_mosq.c``)::

    user:$7$<iterations>$<base64 salt>$<base64 hash>

``7`` is PBKDF2-HMAC-SHA512, the salt is 12 random bytes, the hash is the full
64-byte SHA-512 output, both in standard base64 with ``=`` padding, and
``mosquitto_passwd`` uses 101 iterations. We keep 101: the passwords are 256-bit
random tokens, so key stretching adds nothing against guessing, while every
CONNECT pays for it on the broker.

File ownership: the broker reads the password file after dropping root, also on every
reload, so ``gochat-admin`` passes ``broker_group``
(:func:`appliance.deploy.files.broker_group`): the file is then ``root:mosquitto``
0640. Without it (a developer's own broker, the tests) it is the caller's, 0600.

After changing the password file, tell the broker: ``systemctl reload mosquitto``
(or ``kill -HUP`` its pid). Clients already connected stay connected.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import grp
import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from appliance.deploy.files import DeployError, ensure_dir, group_id, write_atomic
from appliance.protocol.topics import is_user_id

HASH_TYPE_PBKDF2_SHA512 = 7
ITERATIONS = 101  # mosquitto_passwd's default (PW_DEFAULT_ITERATIONS); see module doc
SALT_BYTES = 12  # mosquitto_passwd's SALT_LEN
PASSWORD_BYTES = 32  # 256 bits of entropy -> 43 URL-safe characters
SECRET_SUFFIX = ".password"  # noqa: S105  (a file name suffix, not a password)


class InvalidNameError(DeployError):
    """The name is not a valid GoChat user id (a usage error: exit status 2)."""


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The Mosquitto 2 ``password_file`` hash of ``password`` (without ``user:``).

    ``salt`` is for reproducible tests only; by default 12 fresh random bytes.
    """
    salt_bytes = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt_bytes, iterations)
    b64_salt = base64.b64encode(salt_bytes).decode("ascii")
    b64_hash = base64.b64encode(digest).decode("ascii")
    return f"${HASH_TYPE_PBKDF2_SHA512}${iterations}${b64_salt}${b64_hash}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash as :func:`hash_password` writes it."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != str(HASH_TYPE_PBKDF2_SHA512):
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return secrets.compare_digest(digest, expected)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid GoChat user id, else raise :class:`InvalidNameError`."""
    if not is_user_id(name):
        raise InvalidNameError(f"invalid name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . -")
    return name


def secret_path(secret_dir: Path, name: str) -> Path:
    """Where the password of ``name`` is kept: ``<secret_dir>/<name>.password``."""
    return Path(secret_dir) / f"{check_name(name)}{SECRET_SUFFIX}"


def add_user(
    passwd_path: Path,
    secret_dir: Path,
    name: str,
    *,
    broker_group: str | None = None,
    reader_group: str | None = None,
) -> Path:
    """Create or replace the broker account ``name``; return its secret file.

    A fresh random password is hashed into ``passwd_path`` (created if missing; the
    line of an existing ``name`` is replaced, every other line is kept as it was)
    and written to ``<secret_dir>/<name>.password`` (mode 0600, directory 0700 if
    created). Both files are replaced atomically, so a broker reloading meanwhile
    sees the old or the new file, never half of one. ``broker_group``: see the
    module doc. ``reader_group``: the service that reads the secret runs in this
    group (the server as ``gochat``), so the secret is made group-readable (0640)
    and its directory enterable (0750) by that group only.
    """
    check_name(name)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    passwd_path = Path(passwd_path)
    target = secret_path(secret_dir, name)
    # Secret first: if writing the hash then fails, the account is simply unchanged
    # and the next attempt overwrites the orphan secret.
    if reader_group is None:
        ensure_dir(target.parent, 0o700)
        write_atomic(target, (password + "\n").encode("utf-8"), 0o600)
    else:
        _share_dir(target.parent, reader_group)
        write_atomic(target, (password + "\n").encode("utf-8"), 0o640, reader_group)
    line = f"{name}:{hash_password(password)}"
    with _locked(passwd_path, broker_group):
        lines = [ln for ln in _read_lines(passwd_path) if _user_of(ln) != name]
        lines.append(line)
        _write_passwd(passwd_path, lines, broker_group)
    return target


def remove_user(
    passwd_path: Path,
    secret_dir: Path | None,
    name: str,
    *,
    broker_group: str | None = None,
) -> None:
    """Delete the broker account ``name`` and its secret file (if ``secret_dir``).

    Raises :class:`~appliance.deploy.files.DeployError` if ``passwd_path`` has no such
    user.
    """
    check_name(name)
    passwd_path = Path(passwd_path)
    if not passwd_path.is_file():
        raise DeployError(f"no such password file: {passwd_path}")
    with _locked(passwd_path, broker_group):
        lines = _read_lines(passwd_path)
        kept = [ln for ln in lines if _user_of(ln) != name]
        if len(kept) == len(lines):
            raise DeployError(f"no user {name!r} in {passwd_path}")
        _write_passwd(passwd_path, kept, broker_group)
    if secret_dir is not None:
        secret_path(secret_dir, name).unlink(missing_ok=True)


def users(passwd_path: Path) -> list[str]:
    """The user names in a Mosquitto password file, in file order."""
    names = (_user_of(line) for line in _read_lines(Path(passwd_path)))
    return [name for name in names if name]


# --- files -------------------------------------------------------------------------


def _user_of(line: str) -> str:
    # Mosquitto splits on the first ':' and ignores surrounding blanks.
    if line.lstrip().startswith("#") or ":" not in line:
        return ""
    return line.split(":", 1)[0].strip()


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read {path}: {exc}") from None
    return [line for line in text.splitlines() if line.strip()]


def _write_passwd(path: Path, lines: list[str], group: str | None) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    write_atomic(path, data, 0o640 if group is not None else 0o600, group)


def _share_dir(path: Path, group: str) -> None:
    """``path`` exists, is ``group``'s and 0750: that group may enter, nobody else."""
    gid = group_id(group)
    ensure_dir(path, 0o750, group)
    try:
        os.chown(path, -1, gid)
        path.chmod(0o750)
    except OSError as exc:
        raise DeployError(f"cannot give {path} to group {group}: {exc}") from None


@contextlib.contextmanager
def _locked(passwd_path: Path, group: str | None) -> Iterator[None]:
    """Serialise read-modify-write of the password file between admin processes.

    Creates the file's directory if needed (0750 and ``group`` when there is one: the
    broker must be able to enter it). The lock is a sidecar file: the password file
    itself is replaced by rename, and a lock on a replaced inode would protect nothing.
    """
    ensure_dir(passwd_path.parent, 0o750 if group is not None else 0o700, group)
    lock = passwd_path.with_name(passwd_path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DeployError(f"cannot lock {lock}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


SERVER_GRANT = "topic readwrite gochat/#"
"""What a server account may do, in the broker's ACL."""


def grant_server(acl_path: Path, name: str) -> bool:
    """Give server account ``name`` its ACL entry (``user NAME`` and
    :data:`SERVER_GRANT`), unless it has one; True if the file changed."""
    lines = acl_path.read_text(encoding="utf-8").splitlines()
    if f"user {name}" in (line.strip() for line in lines):
        return False
    text = "\n".join([*lines, "", f"user {name}", SERVER_GRANT, ""])
    st = acl_path.stat()
    try:
        group: str | None = grp.getgrgid(st.st_gid).gr_name  # the broker's, kept
    except KeyError:
        group = None
    write_atomic(acl_path, text.encode(), st.st_mode & 0o777, group)
    return True
