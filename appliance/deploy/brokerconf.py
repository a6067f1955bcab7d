"""A private Mosquitto configuration rendered from the shipped one.

``make run`` and the tests run their own broker on loopback ports with the *shipped*
``config/mosquitto/mosquitto.conf`` and ACL, so what they exercise is what is deployed:
:func:`render_conf` changes only the listeners' ports (and binds them to loopback),
the file paths (TLS files and the broker plugin included), the log destination and
the user.
``gochat-admin broker-conf`` prints it.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_CONFIG = Path(__file__).resolve().parents[2] / "config" / "mosquitto"
SHIPPED_CONF = REPO_CONFIG / "mosquitto.conf"
SHIPPED_ACL = REPO_CONFIG / "acl"
LOOPBACK = "127.0.0.1"

# The shipped listeners (docs/protocol.md section 1.2).
PLAIN_PORT = 1883  # plain MQTT, loopback only
CERT_PORT = 8883  # TLS, the client certificate is the identity
TLS_PORT = 8884  # TLS, username and password
WS_PORT = 8080  # MQTT over WebSockets, loopback only (docs/web.md)
WSS_PORT = 8081  # MQTT over WebSockets with TLS, password: browsers

_LISTENER_RE = re.compile(r"^listener\s+(\d+)(?:\s+(\S+))?\s*$")
_TLS_KEYS = ("cafile", "certfile", "keyfile", "crlfile")


@dataclass(frozen=True)
class TlsFiles:
    """Where a private broker's CA certificate, own certificate and key, and CRL are."""

    ca: Path
    cert: Path
    key: Path
    crl: Path

    def path(self, key: str) -> Path:
        """The file for a listener option (``cafile`` ...)."""
        return {"cafile": self.ca, "certfile": self.cert, "keyfile": self.key, "crlfile": self.crl}[
            key
        ]


def _check_distinct(ports: Mapping[int, int]) -> None:
    seen: dict[int, int] = {}
    for shipped, port in ports.items():
        if port in seen:
            raise ValueError(f"listeners {seen[port]} and {shipped} both on port {port}")
        seen[port] = shipped


def render_conf(
    template: str,
    *,
    ports: Mapping[int, int],
    passwd_file: Path,
    acl_file: Path,
    data_dir: Path | None,
    log_file: Path | None,
    tls: TlsFiles,
    plugin: Path | None,
    run_as: str | None = None,
) -> str:
    """The shipped ``mosquitto.conf`` text, localised for a private broker.

    ``ports`` maps each of the template's listener ports to the port to use; every
    listener is bound to 127.0.0.1. Substitutes: ``password_file``; ``acl_file``;
    ``cafile``/``certfile``/``keyfile``/``crlfile`` (``tls``); ``persistence_location``
    (``data_dir``; None turns persistence off); ``log_dest`` (``log_file``; None keeps
    the template's); ``user`` (``run_as``, default the current user, so that a root run
    does not drop to ``mosquitto`` and lose access to its 0700 temp dir); ``plugin``
    (the gochat_guard plugin built from ``broker-plugin/``; None drops it and its
    ``plugin_opt_`` lines: a broker guarded only by the server). ``pid_file`` is
    dropped. Every other line, limits and listener options included, is kept
    verbatim. Raises ValueError for a listener ``ports`` does not map, or for two
    listeners on one port (Mosquitto starts so, then dies at its first reload).
    """
    _check_distinct(ports)
    substitutes: dict[str, str | None] = {
        "user": f"user {run_as or getpass.getuser()}",
        "password_file": f"password_file {passwd_file}",
        "acl_file": f"acl_file {acl_file}",
        "persistence": f"persistence {'true' if data_dir is not None else 'false'}",
        "persistence_location": f"persistence_location {data_dir}" if data_dir else None,
        "pid_file": None,
        "plugin": f"plugin {plugin}" if plugin is not None else None,
    }
    if log_file is not None:
        substitutes["log_dest"] = f"log_dest file {log_file}"
    out = [f"# rendered from {SHIPPED_CONF.name}: do not edit"]
    for line in _settings(template):
        key = line.split(None, 1)[0]
        if key == "listener":
            out.append(_listener(line, ports))
        elif key in _TLS_KEYS:
            out.append(f"{key} {tls.path(key)}")  # per listener: never deduplicated
        elif key.startswith("plugin_opt_") and plugin is None:
            continue
        elif key not in substitutes:
            out.append(line)
        elif (new := substitutes[key]) is not None and new not in out:
            out.append(new)
    if not any(line.startswith("listener ") for line in out):
        raise ValueError("render_conf needs at least one listener in the template")
    return "\n".join(out) + "\n"


def _settings(template: str) -> list[str]:
    """The template's setting lines, without comments and blank lines."""
    lines = (raw.strip() for raw in template.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _listener(line: str, ports: Mapping[int, int]) -> str:
    match = _LISTENER_RE.match(line)
    if match is None or int(match.group(1)) not in ports:
        raise ValueError(f"render_conf has no port for: {line}")
    return f"listener {ports[int(match.group(1))]} {LOOPBACK}"


def private_conf(
    ports: Mapping[int, int],
    workdir: Path,
    tls: TlsFiles,
    acl: Path = SHIPPED_ACL,
    log_file: Path | None = None,
    *,
    plugin: Path | None = None,
) -> str:
    """The configuration for a private broker keeping its files in ``workdir``
    (guarded by ``plugin`` when given, see :func:`render_conf`)."""
    workdir = workdir.resolve()
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    return render_conf(
        SHIPPED_CONF.read_text(encoding="utf-8"),
        ports=ports,
        passwd_file=workdir / "passwd",
        acl_file=acl.resolve(),
        data_dir=workdir / "data",
        log_file=log_file.resolve() if log_file else None,
        tls=tls,
        plugin=plugin.resolve() if plugin else None,
    )
