"""Files the deployment tools write: atomically, with their final mode from the start,
and readable by the broker where it must read them.

Mosquitto reads its password file, ACL, certificates, key and CRL *after* dropping
root to the ``mosquitto`` user, on start and on every reload (SIGHUP). So when the
tools run as root and that group exists, what the broker reads is made group
``mosquitto`` (secrets 0640): the broker can read them, nobody else can, and only
root can change them. Otherwise (a developer's own broker, a ``--root`` trial, the
tests) the files stay the caller's alone.
"""

from __future__ import annotations

import contextlib
import grp
import os
import tempfile
from pathlib import Path

BROKER_GROUP = "mosquitto"


class DeployError(Exception):
    """A refused or failed deployment operation; ``str()`` is one line for the operator."""


def broker_group() -> str | None:
    """``mosquitto`` when we are root and that group exists (see the module doc);
    None otherwise: the files are left to the caller."""
    if os.geteuid() != 0:
        return None
    try:
        grp.getgrnam(BROKER_GROUP)
    except KeyError:
        return None
    return BROKER_GROUP


def group_id(name: str) -> int:
    """The id of group ``name``; :class:`DeployError` if there is none."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise DeployError(f"no such group: {name}") from None


def ensure_dir(path: Path, mode: int, group: str | None = None) -> None:
    """Create ``path`` (and its parents) with ``mode`` and ``group`` unless it exists;
    an existing directory is left as it is."""
    if path.is_dir():
        return
    gid = group_id(group) if group is not None else None
    try:
        path.mkdir(mode=mode, parents=True)
        if gid is not None:
            os.chown(path, -1, gid)
    except OSError as exc:
        raise DeployError(f"cannot create {path}: {exc}") from None


def write_atomic(path: Path, data: bytes, mode: int, group: str | None = None) -> None:
    """Replace ``path`` with ``data``: a temp file beside it, with ``mode`` and
    ``group`` set before any data lands (so a secret is never readable by anyone else,
    even for a moment), fsynced, then renamed over ``path``. A reader sees the old or
    the new file, never half of one. Missing parent directories are created (0755:
    make a private one with :func:`ensure_dir` first). :class:`DeployError` if it fails.
    """
    gid = group_id(group) if group is not None else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    except OSError as exc:
        raise DeployError(f"cannot write {path}: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            if gid is not None:
                os.fchown(out.fileno(), -1, gid)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise DeployError(f"cannot write {path}: {exc}") from None
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable across a power cut (a Pi's SD card).
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
