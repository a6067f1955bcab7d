"""The real business server for tests: in-process (fake clock) or as a process.

:class:`RunningServer` runs :class:`appliance.server.app.Server` on its own asyncio
loop in a thread, with an :class:`OffsetClock` that tests move forward to reach
invitation expiry, session TTLs and retained-state clearing without sleeping.
:class:`ServerProcess` runs ``python -m appliance.server`` for crash tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg
from pydantic import SecretStr

from appliance.client import GoChatClient
from appliance.protocol import models as m
from appliance.protocol.topics import server_account
from appliance.server.app import Server
from appliance.server.engines import open_store
from appliance.server.rules import RoomService
from appliance.server.settings import ServerSettings, StoreSettings

from .broker import Broker

REPO_ROOT = Path(__file__).resolve().parents[1]


class OffsetClock:
    """Wall time plus an offset that only grows: real pacing, fast-forward on demand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` into the future."""
        self.offset += seconds


def server_settings(
    broker: Broker, db_path: Path, store_url: str | None = None, instance: int = 1
) -> ServerSettings:
    """Settings pointing at ``broker`` (the instance's account is created if missing)
    and at SQLite ``db_path``, or PostgreSQL ``store_url`` if given."""
    account = server_account(instance)
    if instance > 1:
        broker.add_server(instance)
    elif not broker.has_user(account):
        broker.add_user(account)
    return ServerSettings(
        broker=broker.settings(account, username=account),
        store=StoreSettings(path=db_path, url=SecretStr(store_url) if store_url else None),
    )


def server_env(
    broker: Broker, db_path: Path, store_url: str | None = None, instance: int = 1
) -> dict[str, str]:
    """The environment that points ``gochat-server`` at ``broker`` and its store."""
    settings = server_settings(broker, db_path, store_url, instance)
    env = {
        **os.environ,
        "GOCHAT_BROKER__HOST": broker.host,
        "GOCHAT_BROKER__PORT": str(broker.port),
        "GOCHAT_BROKER__USERNAME": settings.username,
        "GOCHAT_BROKER__PASSWORD_FILE": str(settings.broker.password_file),
        "GOCHAT_BROKER__TLS_CA_FILE": str(broker.ca_file),
        "GOCHAT_STORE__PATH": str(db_path),
    }
    if store_url:
        env["GOCHAT_STORE__URL"] = store_url
    return env


class RunningServer:
    """The server on a background thread's event loop."""

    def __init__(
        self,
        broker: Broker,
        db_path: Path,
        clock: OffsetClock | None = None,
        service: Callable[[], RoomService] = RoomService,
        *,
        store_url: str | None = None,
        instance: int = 1,
    ) -> None:
        self.settings = server_settings(broker, db_path, store_url, instance)
        self.store_url = store_url
        self.peers: list[RunningServer] = []  # other instances on the same store
        self.clock = clock or OffsetClock()
        self._new_service = service
        self.server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._up = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        service = self._new_service()
        store = open_store(self.settings.store, self.settings.username)
        store.load_into(service)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.server = Server(self.settings, service, store, self.clock)
        self.server.start()
        await self.server.connected.wait()
        self._up.set()
        try:
            await self.server.run(self._stop)
        finally:
            self.server.close()

    def start(self, timeout_s: float = 10.0) -> RunningServer:
        """Start and wait until the server is subscribed."""
        self._thread.start()
        if not self._up.wait(timeout_s):
            raise TimeoutError("server did not connect to the broker")
        return self

    def stop(self) -> None:
        """Stop gracefully and wait for the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def counters(self) -> Counter[str]:
        """This instance's counters, plus its :attr:`peers`' (requests are dealt out
        among them)."""
        total: Counter[str] = Counter()
        for running in (self, *self.peers):
            if running.server is not None:
                total.update(running.server.counters)
        return total

    def call(self, fn: object) -> None:
        """Run ``fn()`` on the server's loop (e.g. to poke its internals)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn)  # type: ignore[arg-type]

    def wait_until(self, predicate: Callable[[RoomService], bool], timeout_s: float = 5.0) -> None:
        """Poll the server's state (read-only) until ``predicate`` holds."""
        deadline = time.monotonic() + timeout_s
        while self.server is None or not predicate(self.server.service):
            if time.monotonic() > deadline:
                raise TimeoutError("server state never satisfied the condition")
            time.sleep(0.005)

    def wait_presence(self, user_id: str, since: float, timeout_s: float = 5.0) -> None:
        """Wait until the server has seen a presence message of ``user_id`` after
        ``since`` (server clock): a Will, typically. With PostgreSQL, whichever
        instance saw it: the session's row says."""
        if self.store_url is None:
            self.wait_until(
                lambda s: user_id in s.sessions and s.sessions[user_id].last_seen > since
            )
            return
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.store_url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT last_seen FROM sessions WHERE user_id = %s", (user_id,)
                ).fetchone()
                if row is not None and row[0] is not None and row[0] > since:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no presence of {user_id} after {since}")
                time.sleep(0.01)

    def advance(self, seconds: float, settle_s: float = 0.6) -> None:
        """Move the clock and give the server's tick time to act on it."""
        self.clock.advance(seconds)
        time.sleep(settle_s)


class NotifySocket:
    """A stand-in for systemd's notification socket: collects ``sd_notify`` messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, state: str, timeout_s: float = 10.0) -> float:
        """Wait until a message containing ``state`` (e.g. ``READY=1``) arrives;
        returns the monotonic time it arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {state} (got {self.messages})")
            self.sock.settimeout(left)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(message)
            if state in message.split("\n"):
                return time.monotonic()

    def close(self) -> None:
        """Close and remove the socket."""
        self.sock.close()
        self.path.unlink(missing_ok=True)


class ServerProcess:
    """``python -m appliance.server`` as a child process, started until READY=1."""

    def __init__(
        self,
        broker: Broker,
        db_path: Path,
        log_path: Path,
        *,
        store_url: str | None = None,
        instance: int = 1,
    ) -> None:
        self.env = server_env(broker, db_path, store_url, instance)
        self.log_path = log_path
        self.notify_path = log_path.with_suffix(".notify")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> ServerProcess:
        """Start the process and wait for its READY=1 (it is subscribed then)."""
        notify = NotifySocket(self.notify_path)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "appliance.server"],
                env={**self.env, "NOTIFY_SOCKET": str(self.notify_path)},
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            notify.wait_for("READY=1", timeout_s)
        finally:
            log.close()
            notify.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(10)

    def log(self) -> str:
        """What the process printed."""
        return self.log_path.read_text(errors="replace")


def connect(broker: Broker, user: str, *, login: bool = True) -> GoChatClient:
    """A connected (and, by default, logged-in) :class:`GoChatClient` for ``user``."""
    password = broker.password(user) if broker.has_user(user) else broker.add_user(user)
    client = GoChatClient(
        broker.host, broker.port, user, password, tls_ca_file=broker.ca_file
    ).connect()
    if login:
        client.login(user.title()[: m.NAME_MAX])  # a long test user id: the name is cut
    return client
