"""A private Mosquitto configuration rendered from the shipped one.

``make run`` and the tests run their own broker on a loopback port with the *shipped*
``config/mosquitto/mosquitto.conf`` and ACL, so what they exercise is what is deployed:
:func:`render_conf` changes only the listener's port, the file paths, the log
destination and the user. ``gochat-admin broker-conf`` prints it.
"""

from __future__ import annotations

import getpass
import re
from pathlib import Path

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "mosquitto"
SHIPPED_CONF = REPO_CONFIG / "mosquitto.conf"
SHIPPED_ACL = REPO_CONFIG / "acl"
LOOPBACK = "127.0.0.1"

_LISTENER_RE = re.compile(r"^listener\s+(\d+)(?:\s+(\S+))?\s*$")


def render_conf(
    template: str,
    *,
    port: int,
    passwd_file: Path,
    acl_file: Path,
    data_dir: Path | None,
    log_file: Path | None,
    run_as: str | None = None,
) -> str:
    """The shipped ``mosquitto.conf`` text, localised for a private broker.

    Substitutes: the (single, loopback) listener's port; ``password_file``;
    ``acl_file``; ``persistence_location`` (``data_dir``; None turns persistence
    off); ``log_dest`` (``log_file``; None keeps the template's); ``user``
    (``run_as``, default the current user, so that a root test run does not drop
    to ``mosquitto`` and lose access to its temp files). ``pid_file`` is dropped.
    Every other line, limits and listener options included, is kept verbatim.
    Raises ValueError if the template has other than one plain listener.
    """
    substitutes: dict[str, str | None] = {
        "user": f"user {run_as or getpass.getuser()}",
        "password_file": f"password_file {passwd_file}",
        "acl_file": f"acl_file {acl_file}",
        "persistence": f"persistence {'true' if data_dir is not None else 'false'}",
        "persistence_location": f"persistence_location {data_dir}" if data_dir else None,
        "pid_file": None,
    }
    if log_file is not None:
        substitutes["log_dest"] = f"log_dest file {log_file}"
    out = [f"# rendered from {SHIPPED_CONF.name}: do not edit"]
    for line in _settings(template):
        key = line.split(None, 1)[0]
        if key == "listener":
            out.append(_listener(line, port, out))
        elif key in _TLS_KEYS:
            raise ValueError(f"render_conf does not support TLS listeners: {line}")
        elif key not in substitutes:
            out.append(line)
        elif (new := substitutes[key]) is not None and new not in out:
            out.append(new)
    if not any(line.startswith("listener ") for line in out):
        raise ValueError("render_conf needs exactly one listener in the template")
    return "\n".join(out) + "\n"


_TLS_KEYS = frozenset({"certfile", "keyfile", "cafile", "capath"})


def _settings(template: str) -> list[str]:
    """The template's setting lines, without comments and blank lines."""
    lines = (raw.strip() for raw in template.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _listener(line: str, port: int, rendered: list[str]) -> str:
    if _LISTENER_RE.match(line) is None or any(x.startswith("listener ") for x in rendered):
        raise ValueError(f"render_conf supports one plain listener, not: {line}")
    return f"listener {port} {LOOPBACK}"


def private_conf(
    port: int, workdir: Path, acl: Path = SHIPPED_ACL, log_file: Path | None = None
) -> str:
    """The configuration for a private broker keeping its files in ``workdir``."""
    workdir = workdir.resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    return render_conf(
        SHIPPED_CONF.read_text(encoding="utf-8"),
        port=port,
        passwd_file=workdir / "passwd",
        acl_file=acl.resolve(),
        data_dir=workdir / "data",
        log_file=log_file.resolve() if log_file else None,
    )
