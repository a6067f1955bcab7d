"""A real Mosquitto for tests and development, configured like production.

:class:`Broker` runs ``mosquitto`` on free loopback ports in its own directory. Its
configuration is the shipped ``config/mosquitto/mosquitto.conf`` with only the
listeners' ports, the file paths, the log destination and ``user`` substituted
(:func:`render_conf`), and its ACL *is* the shipped ``config/mosquitto/acl``: the
tests prove what is deployed. Accounts are made by :mod:`appliance.deploy.accounts`, the same
code as ``gochat-admin``; certificates by :mod:`appliance.deploy.ca`, the same code as
``gochat-admin ca-init | sign-device | revoke``.

TLS: every broker has its own broker certificate (for 127.0.0.1 and localhost) and CRL,
signed by one CA made once per process (:func:`test_ca`). Clients use :attr:`Broker.port`
(TLS + password), :attr:`Broker.cert_port` (TLS + client certificate) or, where a test
needs it, :attr:`Broker.plain_port` (the shipped plain loopback listener). Browsers use
:attr:`Broker.ws_port` (MQTT over WebSockets, loopback) or :attr:`Broker.wss_port` (WSS).

The broker plugin (``broker-plugin/``, :func:`guard_plugin`) is built on first use and
loaded as shipped; ``Broker(guard=False)`` leaves it out, for what the server does on a
broker without it.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509

from appliance.deploy import accounts, ca, pki
from appliance.deploy.brokerconf import (
    CERT_PORT,
    LOOPBACK,
    PLAIN_PORT,
    SHIPPED_ACL,
    SHIPPED_CONF,
    TLS_PORT,
    WS_PORT,
    WSS_PORT,
    TlsFiles,
    render_conf,
)
from appliance.protocol.topics import server_account
from appliance.settings import BrokerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]

# The shipped listeners, in the order of :attr:`Broker.ports`.
SHIPPED_PORTS = (TLS_PORT, CERT_PORT, PLAIN_PORT, WS_PORT, WSS_PORT)

# A throwaway account whose password changes with every reload: once the broker
# accepts its newest password, it has read every change written before it.
PROBE_USER = "zz-broker-probe"
PLUGIN_SOURCE = REPO_ROOT / "broker-plugin"


@functools.cache
def guard_plugin() -> Path:
    """The gochat_guard broker plugin, built by ``make -C broker-plugin`` on the first
    call of a process (a no-op once built; compiling it takes about a second)."""
    done = subprocess.run(
        ["make", "-s", "-C", str(PLUGIN_SOURCE)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BrokerError(
            "cannot build the broker plugin (make venv installs mosquitto-dev):\n"
            + done.stdout
            + done.stderr
        )
    return PLUGIN_SOURCE / "build" / "gochat_guard.so"


@functools.cache
def test_ca() -> tuple[pki.PrivateKey, x509.Certificate]:
    """The CA of every test broker in this process (made on first use)."""
    return pki.create_ca("GoChat test CA")


def device_tls_env(directory: Path, name: str) -> dict[str, str]:
    """A CA certificate, and a key and certificate for device ``name`` from the test CA,
    written to ``directory``; returns the ``GOCHAT_BROKER__TLS_*`` variables naming them
    (for configs like the shipped example, which expects them)."""
    ca_key, ca_cert = test_ca()
    key = pki.generate_key()
    files = {"CA": directory / "ca.crt", "CERT": directory / f"{name}.crt"}
    files["KEY"] = directory / f"{name}.key"
    pki.save_pem(files["CA"], ca_cert)
    pki.save_pem(files["CERT"], pki.sign_csr(ca_key, ca_cert, pki.make_csr(key, name)))
    pki.save_private_key(files["KEY"], key)
    return {f"GOCHAT_BROKER__TLS_{kind}_FILE": str(path) for kind, path in files.items()}


def tls_context(ca_file: Path) -> ssl.SSLContext:
    """A client context that verifies the broker (certificate and host name)."""
    return ssl.create_default_context(cafile=str(ca_file))


class BrokerError(RuntimeError):
    """The broker would not start, stop or reload; the message has its log's tail."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the kernel's choice)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago.

    The sockets are held until all are bound: ports picked one at a time may
    repeat, and two listeners on one port kill Mosquitto at its next reload.
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


class Broker:
    """A real ``mosquitto`` on ``127.0.0.1:<free port>``, files under ``workdir``.

    Usage::

        broker = Broker(tmp_path / "broker")
        password = broker.add_user("alice")   # before or after start()
        broker.start()
        ...  # connect to broker.host, broker.port
        broker.restart()                      # same port; retained messages kept
        broker.stop()

    Persistence is on, in ``workdir/data``: :meth:`stop` sends SIGTERM, on which
    Mosquitto saves retained messages and sessions, so :meth:`restart` brings them
    back, as in production. :meth:`kill` is a crash (SIGKILL): nothing is saved.
    """

    host: str = LOOPBACK

    def __init__(
        self,
        workdir: Path,
        *,
        users: Iterable[str] = (),
        port: int | None = None,
        acl_file: Path = SHIPPED_ACL,
        conf_template: Path = SHIPPED_CONF,
        persistence: bool = True,
        guard: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.passwd_path = self.workdir / "passwd"
        self.secret_dir = self.workdir / "secrets"
        self.data_dir = self.workdir / "data"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.stderr_path = self.workdir / "mosquitto.stderr"
        # The shipped ACL is copied, so that server instances can be granted their
        # entries (gochat-admin add-server --instance N does the same to the installed
        # file); a test's own ACL file is used where it is, as the test edits it.
        self.acl_file = Path(acl_file)
        if self.acl_file.resolve() == SHIPPED_ACL.resolve():
            self.acl_file = self.workdir / "acl"
            shutil.copyfile(acl_file, self.acl_file)
        self.conf_template = Path(conf_template)
        self.persistence = persistence
        self.guard = guard
        self.port = port if port is not None else 0
        self.cert_port = 0
        self.plain_port = 0
        self.ws_port = 0
        self.wss_port = 0
        self._fixed_port = port is not None
        self.tls_dir = self.workdir / "tls"
        self.tls: TlsFiles = self._init_tls()
        self._proc: subprocess.Popen[bytes] | None = None
        self._passwords: dict[str, str] = {}
        self._probe_password: str | None = None
        for name in users:
            self.add_user(name)

    # --- lifecycle -----------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the mosquitto process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The mosquitto process id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto; return once its port accepts connections.

        The first start picks a free port (retrying if another process grabs it
        first); later starts reuse it, so clients reconnect to the same address.
        """
        if self.running:
            raise BrokerError("broker already running")
        self._ensure_probe()
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            self._pick_ports()
            try:
                self._spawn(timeout)
            except BrokerError:
                if attempt + 1 < attempts and "Address already in use" in self._output():
                    continue
                raise
            # Pin the port: restarts must come back where the clients expect it.
            self._fixed_port = True
            return

    def _pick_ports(self) -> None:
        if self._fixed_port and self.cert_port:
            return
        taken = {self.port} if self._fixed_port else set()
        picked = [p for p in free_ports(6) if p not in taken]
        if not self._fixed_port:
            self.port = picked.pop()
        self.cert_port, self.plain_port, self.ws_port, self.wss_port = picked[:4]

    def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (SIGTERM: mosquitto saves its persistence file)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash the broker (SIGKILL): nothing is saved since the last autosave."""
        self._end(signal.SIGKILL, 5.0)

    def restart(self, timeout: float = 10.0) -> None:
        """:meth:`stop` then :meth:`start` on the same port."""
        self.stop(timeout)
        self.start(timeout)

    def reload(self, timeout: float = 5.0) -> None:
        """Make a running broker re-read the password and ACL files (SIGHUP).

        Returns once the reload has taken effect. Connected clients stay connected.
        """
        if not self.running or self._proc is None:
            return
        probe = self._rotate_probe()
        self._proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.probe_login(PROBE_USER, probe) == 0:
                return
            if not self.running:
                raise BrokerError(f"broker died on reload\n{self._output()}")
            time.sleep(0.005)
        raise BrokerError(f"broker did not reload within {timeout} s\n{self._output()}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- accounts ------------------------------------------------------------------

    def add_user(self, name: str) -> str:
        """Create (or re-key) account ``name`` with :func:`appliance.deploy.accounts.add_user`.

        Returns its password. If the broker is running it is reloaded, and the
        account works when this returns.
        """
        secret = accounts.add_user(self.passwd_path, self.secret_dir, name)
        password = secret.read_text(encoding="utf-8").strip()
        self._passwords[name] = password
        self.reload()
        return password

    def add_server(self, instance: int) -> str:
        """Server instance ``instance``'s account, with its ACL entry, as
        ``gochat-admin add-server --instance N`` makes it; returns the account name."""
        name = server_account(instance)
        if accounts.grant_server(self.acl_file, name) or not self.has_user(name):
            self.add_user(name)
        return name

    def add_users(self, *names: str) -> dict[str, str]:
        """Several :meth:`add_user` at the cost of one reload; name -> password."""
        for name in names:
            secret = accounts.add_user(self.passwd_path, self.secret_dir, name)
            self._passwords[name] = secret.read_text(encoding="utf-8").strip()
        self.reload()
        return {name: self._passwords[name] for name in names}

    def add_load_users(self, names: Iterable[str]) -> dict[str, str]:
        """Thousands of new accounts for a load test, at the cost of one file write and
        one reload; name -> password.

        :meth:`add_users` rewrites the password file once per account (quadratic in
        its size). This appends the same ``$7$`` lines
        (:func:`appliance.deploy.accounts.hash_password`) in one go and writes no secret
        files, so :meth:`password_file` does not serve these accounts. The names must be
        new, and the file must exist already (made by :meth:`add_user`, with the mode
        and group the broker expects).
        """
        if not self.passwd_path.exists():
            raise FileNotFoundError(f"{self.passwd_path}: add one account with add_user first")
        fresh: dict[str, str] = {}
        for name in names:
            accounts.check_name(name)
            if name in self._passwords or name in fresh:
                raise ValueError(f"account {name} exists already")
            fresh[name] = secrets.token_urlsafe(accounts.PASSWORD_BYTES)
        lines = "".join(f"{n}:{accounts.hash_password(p)}\n" for n, p in fresh.items())
        with self.passwd_path.open("a", encoding="utf-8") as passwd:
            passwd.write(lines)
        self._passwords.update(fresh)
        self.reload()
        return fresh

    def remove_user(self, name: str) -> None:
        """Delete account ``name`` (reloads a running broker)."""
        accounts.remove_user(self.passwd_path, self.secret_dir, name)
        self._passwords.pop(name, None)
        self.reload()

    def has_user(self, name: str) -> bool:
        """Whether ``name`` was created through this broker."""
        return name in self._passwords

    def password(self, name: str) -> str:
        """The password of ``name`` (KeyError if it was never added)."""
        return self._passwords[name]

    def password_file(self, name: str) -> Path:
        """A file holding the password of ``name`` (for ``broker.password_file``)."""
        if name not in self._passwords:
            raise KeyError(name)
        return accounts.secret_path(self.secret_dir, name)

    # --- TLS ----------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients verify this broker with."""
        return self.tls.ca

    def tls_context(self) -> ssl.SSLContext:
        """A client TLS context trusting this broker's CA."""
        return tls_context(self.ca_file)

    def issue_device(self, name: str) -> tuple[Path, Path]:
        """A key and a certificate with CN ``name`` from this broker's CA, made the way a
        device enrols (key, CSR, ``sign-device``); returns (certificate, key) paths."""
        key = pki.generate_key()
        _, cert = ca.sign_device(self.tls_dir, pki.make_csr(key, name))
        cert_path, key_path = self.device_files(name)
        pki.save_private_key(key_path, key)
        pki.save_pem(cert_path, cert)
        return cert_path, key_path

    def device_files(self, name: str) -> tuple[Path, Path]:
        """Where :meth:`issue_device` keeps ``name``'s (certificate, key)."""
        directory = self.workdir / "devices"
        return directory / f"{name}.crt", directory / f"{name}.key"

    def revoke(self, name: str) -> None:
        """Revoke ``name``'s certificates (``gochat-admin revoke``) and reload."""
        ca.revoke_device(self.tls_dir, name)
        self.reload()

    def settings(self, user: str, *, cert: bool = False, **overrides: object) -> BrokerSettings:
        """Client settings for ``user``: TLS with a password (created if missing), or
        with ``cert`` its client certificate (issued if missing) on :attr:`cert_port`."""
        values: dict[str, object] = {"host": self.host, "tls_ca_file": self.ca_file}
        if cert:
            cert_path, key_path = self.device_files(user)
            if not cert_path.exists():
                self.issue_device(user)
            values.update(port=self.cert_port, tls_cert_file=cert_path, tls_key_file=key_path)
        else:
            if not self.has_user(user):
                self.add_user(user)
            values.update(port=self.port, password_file=self.password_file(user))
        values.update(overrides)
        return BrokerSettings.model_validate(values)

    def probe_login(self, username: str, password: str, timeout: float = 1.0) -> int:
        """:func:`probe_login` over TLS on :attr:`port`."""
        return probe_login(
            self.host, self.port, username, password, timeout, tls=self.tls_context()
        )

    def _init_tls(self) -> TlsFiles:
        ca_key, ca_cert = test_ca()
        if not (self.tls_dir / ca.CA_KEY).exists():
            pki.save_private_key(self.tls_dir / ca.CA_KEY, ca_key)
            pki.save_pem(self.tls_dir / ca.CA_CERT, ca_cert)
        return ca.init_ca(self.tls_dir).files

    # --- diagnostics ---------------------------------------------------------------

    def rss_kib(self) -> int:
        """The running broker's resident memory (KiB, from /proc)."""
        if self.pid is None:
            raise BrokerError("the broker is not running")
        for line in Path(f"/proc/{self.pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise BrokerError(f"no VmRSS for pid {self.pid}")

    def log_text(self) -> str:
        """Mosquitto's log so far (useful in assertion messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # --- internals -----------------------------------------------------------------

    def _write_conf(self) -> None:
        if self.persistence:
            self.data_dir.mkdir(exist_ok=True)
        text = render_conf(
            self.conf_template.read_text(encoding="utf-8"),
            ports=dict(zip(SHIPPED_PORTS, self.ports, strict=True)),
            tls=self.tls,
            passwd_file=self.passwd_path,
            acl_file=self.acl_file,
            data_dir=self.data_dir if self.persistence else None,
            log_file=self.log_path,
            plugin=guard_plugin() if self.guard else None,
        )
        self.conf_path.write_text(text, encoding="utf-8")

    def _spawn(self, timeout: float) -> None:
        self._write_conf()
        with self.stderr_path.open("wb") as err:
            # Own process group: a Ctrl-C in the terminal reaches pytest, which then
            # stops the broker through the fixture, not both at once.
            self._proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                raise BrokerError(f"mosquitto exited at start\n{self._output()}")
            # Every listener, not just the first: Mosquitto binds them in turn and
            # exits if a later port was taken meanwhile (a free port is only a guess).
            if all(self._accepts(port) for port in self.ports):
                return
            time.sleep(0.005)
        self._end(signal.SIGKILL, 5.0)
        raise BrokerError(f"mosquitto did not listen within {timeout} s\n{self._output()}")

    @property
    def ports(self) -> tuple[int, ...]:
        """Every listener's port."""
        return (self.port, self.cert_port, self.plain_port, self.ws_port, self.wss_port)

    @property
    def ws_url(self) -> str:
        """Where a page served from the loopback finds the broker."""
        return f"ws://{self.host}:{self.ws_port}/"

    def _accepts(self, port: int) -> bool:
        try:
            socket.create_connection((self.host, port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BrokerError(f"mosquitto ignored {sig.name}; killed") from None

    def _ensure_probe(self) -> None:
        if self._probe_password is None:
            self._rotate_probe()

    def _rotate_probe(self) -> str:
        secret = accounts.add_user(self.passwd_path, self.secret_dir, PROBE_USER)
        self._probe_password = secret.read_text(encoding="utf-8").strip()
        return self._probe_password

    def _output(self) -> str:
        parts = []
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(encoding="utf-8", errors="replace")[-2000:])
        return "\n".join(p for p in parts if p)


def probe_login(
    host: str,
    port: int,
    username: str,
    password: str,
    timeout: float = 1.0,
    *,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Try an MQTT 3.1.1 CONNECT; return the CONNACK return code (0 = accepted).

    Hand-rolled (a dozen bytes each way) so a probe needs no client thread. ``tls``:
    talk TLS with that context. Returns -1 if the connection fails or closes without
    a CONNACK.
    """

    def utf8(value: str) -> bytes:
        data = value.encode("utf-8")
        return struct.pack("!H", len(data)) + data

    # Variable header: protocol name, level 4, flags (username, password, clean
    # session), keepalive 10 s; payload: client id, username, password.
    body = utf8("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 10)
    body += utf8(username) + utf8(username) + utf8(password)
    length = bytearray()
    remaining = len(body)
    while True:
        byte, remaining = remaining % 128, remaining // 128
        length.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    try:
        with contextlib.ExitStack() as stack:
            sock = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
            if tls is not None:
                sock = stack.enter_context(tls.wrap_socket(sock, server_hostname=host))
            sock.sendall(bytes([0x10]) + bytes(length) + body)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    return -1
                connack += chunk
            if connack[0] != 0x20:
                return -1
            if connack[3] == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT: a clean goodbye, no Will
            return connack[3]
    except OSError:
        return -1
