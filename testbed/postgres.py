"""A throwaway PostgreSQL cluster from the OS's packages, for tests and benchmarks.

:class:`Postgres` runs ``initdb`` and ``pg_ctl`` from Debian's ``postgresql`` package
on a free loopback port, in a directory of its own, and hands out empty databases
(:meth:`Postgres.new_database`, a few ms each: a copy of ``template0``).

PostgreSQL refuses to run as root, and CI runs as root: then the cluster runs as the
unprivileged ``postgres`` account that the package creates, in a directory under
``/tmp`` owned by it (a pytest ``tmp_path`` lies under a root-only directory that
``postgres`` cannot enter). Not durable by default (``fsync=off``): tests kill server
processes, never the cluster, so what they check does not depend on fsync;
``durable=True`` keeps PostgreSQL's defaults for benchmarks.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

from .broker import free_port

OS_ACCOUNT = "postgres"  # made by Debian's postgresql-common
SUPERUSER = "gochat"


class PostgresError(RuntimeError):
    """The cluster would not initialise, start or stop; the message has its log's tail."""


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL server program (``initdb``, ``pg_ctl``): not on PATH
    in Debian, which keeps them under /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise PostgresError(f"{name} not found: install Debian's postgresql (make venv does)")
    return candidates[-1]


class Postgres:
    """A PostgreSQL cluster on ``127.0.0.1:<free port>``; use as a context manager."""

    host = "127.0.0.1"

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.port = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="gochat-pg-"))
        self.datadir = self.workdir / "data"
        self.log_path = self.workdir / "postgres.log"
        self._account = _unprivileged_account()
        self._databases = 0

    # --- lifecycle -----------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """initdb (first time) and start; returns once connections are accepted."""
        if self._account is not None:
            os.chown(self.workdir, self._account.pw_uid, self._account.pw_gid)
        if not self.datadir.exists():
            self._run(
                pg_bin("initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
        self.port = self.port or free_port()  # a restart keeps the port
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses={self.host}"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        self._run(
            pg_bin("pg_ctl"), "-D", str(self.datadir), "-l", str(self.log_path),
            "-o", options, "-w", "-t", str(int(timeout_s)), "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop (fast shutdown) and remove every file."""
        if self.datadir.exists():
            with contextlib.suppress(PostgresError):
                self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def halt(self) -> None:
        """Stop the server (fast shutdown: sessions are cut), keeping its files for
        :meth:`start` again on the same port."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop")

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

    # --- databases -----------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """The ``postgresql://`` URL of ``database`` (no password: trust on loopback)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database; returns its URL."""
        self._databases += 1
        name = f"t{os.getpid()}_{self._databases}_{time.monotonic_ns() % 10**6}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    # --- internals -----------------------------------------------------------------

    def _run(self, *argv: str) -> None:
        user = self._account.pw_name if self._account is not None else None
        done = subprocess.run(
            argv, user=user, capture_output=True, text=True, check=False, cwd=self.workdir
        )
        if done.returncode != 0:
            log = self.log_path
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresError(f"{Path(argv[0]).name} failed: {done.stderr.strip()}\n{tail}")


def _unprivileged_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_ACCOUNT)
    except KeyError:
        raise PostgresError(
            f"running as root and no {OS_ACCOUNT!r} account: install Debian's postgresql"
        ) from None
