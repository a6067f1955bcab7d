"""Broker credentials: ``gochat-admin add-device | add-server | remove-device``,
certificates: ``ca-init | sign-device | revoke`` (:mod:`appliance.ca`,
:mod:`appliance.revocation`; docs/security.md), and ``broker-conf``, a private
broker's configuration for development.

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

File ownership: Mosquitto 2 reads the password file *after* dropping root to the
``mosquitto`` user, also on every reload (SIGHUP). So when this runs as root and
that user exists, the password file is made ``root:mosquitto`` mode 0640: the
broker can read it, nobody else can, and only root can change it. Otherwise (a
developer's own broker, the tests) it is left owned by the caller, mode 0600.

After changing the password file, tell the broker: ``systemctl reload mosquitto``
(or ``kill -HUP`` its pid). Clients already connected stay connected.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import grp
import hashlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from appliance import brokerconf, ca, pki, revocation
from appliance.protocol.topics import (
    SERVER_USER_ID,
    is_server_account,
    is_user_id,
    server_account,
)
from appliance.settings import BrokerSettings

DEFAULT_PASSWD_FILE = Path("/etc/mosquitto/gochat/passwd")
DEFAULT_SECRET_DIR = Path("/etc/gochat/credentials")
DEFAULT_ACL_FILE = Path("/etc/mosquitto/gochat/acl")
SERVER_GRANT = "topic readwrite gochat/#"  # what a server account may do (the ACL)
DEFAULT_CA_DIR = Path("/etc/gochat/ca")
DEFAULT_BROKER_DIR = Path("/etc/mosquitto/gochat")
DEFAULT_PID_FILE = Path("/run/mosquitto/mosquitto.pid")
RELOAD_SETTLE_S = 0.3  # SIGHUP is asynchronous; the cut's login also retries
BROKER_GROUP = "mosquitto"

HASH_TYPE_PBKDF2_SHA512 = 7
ITERATIONS = 101  # mosquitto_passwd's default (PW_DEFAULT_ITERATIONS); see module doc
SALT_BYTES = 12  # mosquitto_passwd's SALT_LEN
PASSWORD_BYTES = 32  # 256 bits of entropy -> 43 URL-safe characters
SECRET_SUFFIX = ".password"  # noqa: S105  (a file name suffix, not a password)

EX_USAGE = 2
EX_FAILURE = 1


class AdminError(Exception):
    """A refused or failed admin operation; ``str()`` is one line for the operator."""


class InvalidNameError(AdminError):
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
    """Return ``name`` if it is a valid GoChat user id, else raise :class:`AdminError`."""
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
    broker_group: str | None = BROKER_GROUP,
    reader_group: str | None = None,
) -> Path:
    """Create or replace the broker account ``name``; return its secret file.

    A fresh random password is hashed into ``passwd_path`` (created if missing; the
    line of an existing ``name`` is replaced, every other line is kept as it was)
    and written to ``<secret_dir>/<name>.password`` (mode 0600, directory 0700 if
    created). Both files are replaced atomically, so a broker reloading meanwhile
    sees the old or the new file, never half of one. ``broker_group``: see the
    module doc; None never changes ownership. ``reader_group``: the service that
    reads the secret runs in this group (the server as ``gochat``), so the secret is
    made group-readable (0640) and its directory enterable (0750) by that group only.
    """
    check_name(name)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    passwd_path = Path(passwd_path)
    target = secret_path(secret_dir, name)
    reader_gid = _group_id(reader_group) if reader_group else None
    # Secret first: if writing the hash then fails, the account is simply unchanged
    # and the next attempt overwrites the orphan secret.
    if reader_gid is None:
        _ensure_dir(target.parent, 0o700)
        _atomic_write(target, (password + "\n").encode("utf-8"), 0o600)
    else:
        _share_dir(target.parent, reader_gid)
        _atomic_write(target, (password + "\n").encode("utf-8"), 0o640, reader_gid)
    line = f"{name}:{hash_password(password)}"
    gid = _broker_gid(broker_group)
    with _locked(passwd_path, gid):
        lines = [ln for ln in _read_lines(passwd_path) if _user_of(ln) != name]
        lines.append(line)
        _write_passwd(passwd_path, lines, gid)
    return target


def remove_user(
    passwd_path: Path,
    secret_dir: Path | None,
    name: str,
    *,
    broker_group: str | None = BROKER_GROUP,
) -> None:
    """Delete the broker account ``name`` and its secret file (if ``secret_dir``).

    Raises :class:`AdminError` if ``passwd_path`` has no such user.
    """
    check_name(name)
    passwd_path = Path(passwd_path)
    if not passwd_path.is_file():
        raise AdminError(f"no such password file: {passwd_path}")
    gid = _broker_gid(broker_group)
    with _locked(passwd_path, gid):
        lines = _read_lines(passwd_path)
        kept = [ln for ln in lines if _user_of(ln) != name]
        if len(kept) == len(lines):
            raise AdminError(f"no user {name!r} in {passwd_path}")
        _write_passwd(passwd_path, kept, gid)
    if secret_dir is not None:
        secret_path(secret_dir, name).unlink(missing_ok=True)


def grant_server(acl_path: Path, name: str) -> bool:
    """Give server account ``name`` its ACL entry (``user NAME`` and
    :data:`SERVER_GRANT`), unless it has one; True if the file changed."""
    lines = acl_path.read_text(encoding="utf-8").splitlines()
    if f"user {name}" in (line.strip() for line in lines):
        return False
    text = "\n".join([*lines, "", f"user {name}", SERVER_GRANT, ""])
    st = acl_path.stat()
    _atomic_write(acl_path, text.encode(), st.st_mode & 0o777, st.st_gid)
    return True


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
        raise AdminError(f"cannot read {path}: {exc}") from None
    return [line for line in text.splitlines() if line.strip()]


def _write_passwd(path: Path, lines: list[str], gid: int | None) -> None:
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    _atomic_write(path, data, 0o640 if gid is not None else 0o600, gid)


def _broker_gid(group: str | None) -> int | None:
    """The broker's group id when we are root and it exists; else None."""
    if group is None or os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise AdminError(f"no such group: {name}") from None


def _share_dir(path: Path, gid: int) -> None:
    """``path`` exists, is group ``gid`` and 0750: that group may enter, nobody else."""
    _ensure_dir(path, 0o750, gid)
    try:
        os.chown(path, -1, gid)
        path.chmod(0o750)
    except OSError as exc:
        raise AdminError(f"cannot give {path} to group {gid}: {exc}") from None


def _ensure_dir(path: Path, mode: int, gid: int | None = None) -> None:
    if path.is_dir():
        return
    try:
        path.mkdir(mode=mode, parents=True)
        if gid is not None:
            os.chown(path, -1, gid)
    except OSError as exc:
        raise AdminError(f"cannot create {path}: {exc}") from None


def _atomic_write(path: Path, data: bytes, mode: int, gid: int | None = None) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over it."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise AdminError(f"cannot write {path}: {exc}") from None
    try:
        # mkstemp makes the file 0600 and owned by us; set the final mode and owner
        # before any data lands, so the secret is never readable by anyone else.
        os.fchmod(fd, mode)
        if gid is not None:
            os.fchown(fd, -1, gid)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise AdminError(f"cannot write {path}: {exc}") from None
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable across a power cut (a Pi's SD card).
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked(passwd_path: Path, gid: int | None) -> Iterator[None]:
    """Serialise read-modify-write of the password file between admin processes.

    Creates the file's directory if needed (0750 and the broker's group when
    ``gid``: the broker must be able to enter it). The lock is a sidecar file: the
    password file itself is replaced by rename, and a lock on a replaced inode
    would protect nothing.
    """
    _ensure_dir(passwd_path.parent, 0o750 if gid is not None else 0o700, gid)
    lock = passwd_path.with_name(passwd_path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AdminError(f"cannot lock {lock}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- command line ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gochat-admin",
        description="Manage GoChat broker accounts and the deployment's certificates.",
        epilog="After a change, reload the broker: systemctl reload mosquitto.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def files(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--passwd-file",
            type=Path,
            metavar="PATH",
            default=DEFAULT_PASSWD_FILE,
            help=f"Mosquitto password file (default {DEFAULT_PASSWD_FILE})",
        )
        p.add_argument(
            "--secret-dir",
            type=Path,
            metavar="DIR",
            default=DEFAULT_SECRET_DIR,
            help=f"where NAME.password files go (default {DEFAULT_SECRET_DIR})",
        )

    def reader(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--group",
            metavar="GROUP",
            help="the service reading the password runs in GROUP (e.g. gochat): the file"
            " is made 0640 and its folder 0750, that group's (default: 0600, 0700)",
        )

    # Subparsers are built with the parser's own class, so they are one-line too.
    add_device = sub.add_parser("add-device", help="create or re-key a device account")
    add_device.add_argument("name", metavar="NAME", help="the device's user id")
    files(add_device)
    reader(add_device)
    add_server = sub.add_parser(
        "add-server", help=f"create or re-key a server instance's account ({SERVER_USER_ID}[-N])"
    )
    add_server.add_argument(
        "--instance",
        type=int,
        default=1,
        metavar="N",
        help=f"instance N >= 2 is {SERVER_USER_ID}-N, given its ACL entry too (default 1)",
    )
    add_server.add_argument(
        "--acl-file",
        type=Path,
        metavar="PATH",
        default=DEFAULT_ACL_FILE,
        help=f"the broker's ACL, for instances >= 2 (default {DEFAULT_ACL_FILE})",
    )
    files(add_server)
    reader(add_server)
    remove_device = sub.add_parser("remove-device", help="delete a device account")
    remove_device.add_argument("name", metavar="NAME", help="the device's user id")
    files(remove_device)
    _tls_commands(sub, files)
    conf = sub.add_parser(
        "broker-conf", help="print the shipped mosquitto.conf for a private loopback broker"
    )
    conf.add_argument(
        "--port", type=int, required=True, help="loopback port for TLS with passwords"
    )
    conf.add_argument("--cert-port", type=int, help="for TLS with client certificates (PORT+1)")
    conf.add_argument("--plain-port", type=int, help="for plain MQTT (PORT+2)")
    conf.add_argument("--dir", type=Path, required=True, help="for its passwd file and data")
    conf.add_argument("--ca", type=Path, help="CA directory, made on first use (default DIR/tls)")
    return parser


def _tls_commands(
    sub: argparse._SubParsersAction[_Parser],
    files: Callable[[argparse.ArgumentParser], None],
) -> None:
    def ca_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--ca",
            type=Path,
            metavar="DIR",
            default=DEFAULT_CA_DIR,
            help=f"the CA directory (default {DEFAULT_CA_DIR})",
        )

    init = sub.add_parser("ca-init", help="create the CA, the broker's certificate and the CRL")
    ca_dir(init)
    init.add_argument(
        "--hosts",
        default=",".join(pki.DEFAULT_HOSTS),
        help="comma-separated names and addresses clients dial (127.0.0.1 and"
        " localhost are always added)",
    )
    init.add_argument(
        "--broker-dir",
        default=str(DEFAULT_BROKER_DIR),
        help=f"install the broker's files here (default {DEFAULT_BROKER_DIR}; '' skips)",
    )
    sign = sub.add_parser("sign-device", help="sign a device's certificate request")
    sign.add_argument("request", type=Path, metavar="REQUEST", help="the device.csr file")
    ca_dir(sign)
    sign.add_argument("--out", type=Path, help="certificate file (default: REQUEST as .crt)")
    renew = sub.add_parser("crl-renew", help="re-issue the CRL before it expires")
    ca_dir(renew)
    renew.add_argument(
        "--broker-dir",
        default=str(DEFAULT_BROKER_DIR),
        help=f"where the broker reads crl.pem (default {DEFAULT_BROKER_DIR}; '' skips)",
    )
    revoke = sub.add_parser(
        "revoke", help="revoke a device's certificates, reload the broker, cut its session"
    )
    revoke.add_argument("name", metavar="NAME", help="the device's user id")
    ca_dir(revoke)
    revoke.add_argument(
        "--broker-dir",
        default=str(DEFAULT_BROKER_DIR),
        help=f"where the broker reads crl.pem (default {DEFAULT_BROKER_DIR}; '' skips)",
    )
    revoke.add_argument(
        "--pid-file", type=Path, default=DEFAULT_PID_FILE, help="the broker's (SIGHUP to reload)"
    )
    revoke.add_argument("--host", default=brokerconf.LOOPBACK, help="broker host for the cut")
    revoke.add_argument(
        "--port", type=int, default=brokerconf.TLS_PORT, help="its TLS password port"
    )
    revoke.add_argument(
        "--no-cut", action="store_true", help="do not disconnect and log out the device now"
    )
    files(revoke)


def _ca_init(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in str(args.hosts).split(",") if h.strip()]
    # Same-host clients (the server, revoke's cut) dial the loopback: always valid there.
    hosts += [h for h in pki.DEFAULT_HOSTS if h not in hosts]
    tls = ca.init_ca(args.ca, hosts, group=ca.broker_group())
    print(f"CA: {args.ca / ca.CA_CERT} (its key {args.ca / ca.CA_KEY}: keep it private)")
    if args.broker_dir:
        target = Path(args.broker_dir)
        for path in ca.install_broker_files(tls, target, group=ca.broker_group()):
            print(f"broker file: {path}")
    return 0


def _sign_device(args: argparse.Namespace) -> int:
    request: Path = args.request
    name, cert = ca.sign_device(args.ca, pki.load_csr(request))
    out: Path = args.out or request.with_suffix(".crt")
    pki.save_pem(out, cert)
    print(f"certificate for {name}: {out}")
    print(f"copy it and {args.ca / ca.CA_CERT} to the device's /etc/gochat/tls/")
    print("(as device.crt and ca.crt), then: systemctl restart gochat-appliance")
    return 0


def _crl_renew(args: argparse.Namespace) -> int:
    group = ca.broker_group()
    crl = ca.renew_crl(args.ca, group=group)
    if args.broker_dir and Path(args.broker_dir).is_dir():
        crl = ca.install_crl(args.ca, Path(args.broker_dir), group=group)
    print(f"renewed {crl}: reload the broker (systemctl reload mosquitto)")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    group = ca.broker_group()
    ca.revoke_device(args.ca, name, group=group)
    crl = args.ca / ca.CRL
    if args.broker_dir and Path(args.broker_dir).is_dir():
        crl = ca.install_crl(args.ca, Path(args.broker_dir), group=group)
    print(f"revoked {name}: {crl}")
    if not _reload_broker(args.pid_file):
        print("reload the broker now: systemctl reload mosquitto", file=sys.stderr)
        print(f"then cut {name}'s open session: gochat-admin revoke {name} again", file=sys.stderr)
        return EX_FAILURE
    if args.no_cut:
        print(f"{name} stays connected until it disconnects or the broker restarts")
        return 0
    _cut(args, name)
    print(f"disconnected {name} and logged it out of the server")
    return 0


def _cut(args: argparse.Namespace, name: str) -> None:
    """A temporary password account as ``name`` for the session takeover (see
    :mod:`appliance.revocation`); any password account of ``name`` is gone after."""
    secret = add_user(args.passwd_file, args.secret_dir, name)
    try:
        _reload_broker(args.pid_file)
        broker = BrokerSettings(
            host=args.host, port=args.port, tls_ca_file=args.ca / ca.CA_CERT, password_file=secret
        )
        revocation.take_over_and_log_out(broker, name)
    finally:
        remove_user(args.passwd_file, args.secret_dir, name)
        _reload_broker(args.pid_file)


def _reload_broker(pid_file: Path) -> bool:
    """SIGHUP the broker (it re-reads passwords, ACL and CRL); False if we cannot."""
    try:
        pid = int(pid_file.read_text(encoding="ascii").split()[0])
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError, IndexError):
        return False
    time.sleep(RELOAD_SETTLE_S)
    return True


def _tls_command(args: argparse.Namespace) -> int:
    """``broker-conf`` and the CA's commands; errors are one line, exit status 1."""
    try:
        if args.command == "broker-conf":
            sys.stdout.write(_broker_conf(args))
            return 0
        return _TLS_COMMANDS[args.command](args)
    except (pki.PkiError, AdminError, revocation.CutError, OSError, ValueError) as exc:
        print(f"gochat-admin: {args.command}: {exc}", file=sys.stderr)
        return EX_FAILURE


def _broker_conf(args: argparse.Namespace) -> str:
    """A private broker's configuration; its CA and certificate are made if missing."""
    port: int = args.port
    ports = {
        brokerconf.TLS_PORT: port,
        brokerconf.CERT_PORT: args.cert_port or port + 1,
        brokerconf.PLAIN_PORT: args.plain_port or port + 2,
    }
    tls = ca.init_ca((args.ca or args.dir / "tls").resolve())
    return brokerconf.private_conf(ports, args.dir, tls)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gochat-admin``; return the exit status (0 ok, 1 failed, 2 bad usage).

    Prints the paths it wrote, never a password. Errors are one line on stderr.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    if args.command in _TLS_COMMANDS:
        return _tls_command(args)
    passwd: Path = args.passwd_file
    secret_dir: Path = args.secret_dir
    try:
        if args.command == "add-server":
            if args.instance < 1:
                raise InvalidNameError("--instance: instances are numbered from 1")
            account = server_account(args.instance)
            if args.instance > 1 and grant_server(args.acl_file, account):
                print(f"acl file: {args.acl_file} (grants {account})")
            secret = add_user(passwd, secret_dir, account, reader_group=args.group)
        else:
            name: str = args.name
            check_name(name)
            if is_server_account(name):
                # The server account may read and write all of gochat/# (the ACL):
                # a device must never be able to hold that name.
                hint = " (use add-server)" if args.command == "add-device" else ""
                raise InvalidNameError(f"{name!r} is the server's account, not a device{hint}")
            if args.command == "remove-device":
                remove_user(passwd, secret_dir, name)
                print(f"removed {name} from {passwd}")
                return 0
            secret = add_user(passwd, secret_dir, name, reader_group=args.group)
    except OSError as exc:
        print(f"gochat-admin: {exc}", file=sys.stderr)
        return EX_FAILURE
    except AdminError as exc:
        print(f"gochat-admin: {exc}", file=sys.stderr)
        return EX_USAGE if isinstance(exc, InvalidNameError) else EX_FAILURE
    print(f"passwd file: {passwd}")
    print(f"secret file: {secret}")
    return 0


_TLS_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "broker-conf": lambda args: 0,  # dispatched by _tls_command itself
    "ca-init": _ca_init,
    "sign-device": _sign_device,
    "revoke": _revoke,
    "crl-renew": _crl_renew,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
