"""``gochat-admin``: broker accounts (``add-device | add-user | add-server | remove-device``,
:mod:`appliance.deploy.accounts`), the deployment's certificates (``ca-init |
sign-device | crl-renew | revoke``, :mod:`appliance.deploy.ca` and
:mod:`appliance.deploy.revocation`; docs/security.md), and ``broker-conf``, a private
broker's configuration for development (:mod:`appliance.deploy.brokerconf`).

Prints the paths it wrote, never a password; errors are one line on stderr. What the
broker must read is made readable by it (:func:`appliance.deploy.files.broker_group`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from appliance.deploy import brokerconf, ca, pki, revocation
from appliance.deploy.accounts import (
    InvalidNameError,
    add_user,
    check_name,
    grant_server,
    remove_user,
)
from appliance.deploy.files import DeployError, broker_group
from appliance.protocol.topics import SERVER_USER_ID, is_server_account, server_account
from appliance.settings import BrokerSettings

DEFAULT_PASSWD_FILE = Path("/etc/mosquitto/gochat/passwd")
DEFAULT_SECRET_DIR = Path("/etc/gochat/credentials")
DEFAULT_ACL_FILE = Path("/etc/mosquitto/gochat/acl")
DEFAULT_CA_DIR = Path("/etc/gochat/ca")
DEFAULT_BROKER_DIR = Path("/etc/mosquitto/gochat")
DEFAULT_PID_FILE = Path("/run/mosquitto/mosquitto.pid")
RELOAD_SETTLE_S = 0.3  # SIGHUP is asynchronous; the cut's login also retries
DEVICE_KEY = "device.key"  # beside its request, where `gochat-appliance enroll` made it

EX_USAGE = 2
EX_FAILURE = 1


# --- command line ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
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
    add_device = sub.add_parser(
        "add-device",
        help="create or re-key a device account",
        description="Create a device's broker account, or give it a new password: the hash"
        " goes into the broker's password file, the password into SECRET_DIR/NAME.password"
        " (printed: only the paths). For sites without a CA.",
    )
    add_device.add_argument("name", metavar="NAME", help="the device's user id")
    files(add_device)
    reader(add_device)
    add_user = sub.add_parser(
        "add-user",
        help="create or re-key a person's account, to log in from a browser",
        description="Create a person's broker account for the web page, or give it a new"
        " password, kept in SECRET_DIR/NAME.password (printed: only the paths).",
    )
    add_user.add_argument("name", metavar="NAME", help="the user id (also the login name)")
    files(add_user)
    add_server = sub.add_parser(
        "add-server",
        help=f"create or re-key a server instance's account ({SERVER_USER_ID}[-N])",
        description=f"Create a business server instance's broker account ({SERVER_USER_ID},"
        f" or {SERVER_USER_ID}-N for instance N >= 2, with its ACL entry), or give it a new"
        " password, kept in SECRET_DIR for the server to read.",
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
    remove_device = sub.add_parser(
        "remove-device",
        help="delete a device account",
        description="Delete a device's broker account and its password file.",
    )
    remove_device.add_argument("name", metavar="NAME", help="the device's user id")
    files(remove_device)
    _tls_commands(sub, files)
    conf = sub.add_parser(
        "broker-conf",
        help="print the shipped mosquitto.conf for a private loopback broker",
        description="Print the shipped mosquitto.conf with only its ports (on loopback),"
        " paths, log and user changed, for a private broker (make run); its CA and"
        " certificate are made on first use.",
    )
    conf.add_argument(
        "--port", type=int, required=True, help="loopback port for TLS with passwords"
    )
    conf.add_argument("--cert-port", type=int, help="for TLS with client certificates (PORT+1)")
    conf.add_argument("--plain-port", type=int, help="for plain MQTT (PORT+2)")
    conf.add_argument("--ws-port", type=int, help="for MQTT over WebSockets (PORT+3)")
    conf.add_argument("--wss-port", type=int, help="for MQTT over WebSockets with TLS (PORT+4)")
    conf.add_argument("--dir", type=Path, required=True, help="for its passwd file and data")
    conf.add_argument("--ca", type=Path, help="CA directory, made on first use (default DIR/tls)")
    conf.add_argument(
        "--plugin",
        type=Path,
        help="the built gochat_guard plugin (make -C broker-plugin); without it the broker"
        " is guarded only by the server (docs/security.md)",
    )
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

    def crl_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--broker-dir",
            default=str(DEFAULT_BROKER_DIR),
            help=f"where the broker reads crl.pem (default {DEFAULT_BROKER_DIR}; '' skips)",
        )

    init = sub.add_parser(
        "ca-init",
        help="create the CA, the broker's certificate and the CRL",
        description="Create what is missing of the deployment's CA, the broker's key and"
        " certificate and the CRL, and install the broker's files. Run again, it keeps the"
        " CA (what it issued stays valid) and re-issues the broker's certificate only for"
        " other host names.",
    )
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
    sign = sub.add_parser(
        "sign-device",
        help="sign a device's certificate request",
        description="Sign a device's certificate request (gochat-appliance enroll made it):"
        " the certificate's CN, the device's user id, is its broker login.",
    )
    sign.add_argument("request", type=Path, metavar="REQUEST", help="the device.csr file")
    ca_dir(sign)
    sign.add_argument("--out", type=Path, help="certificate file (default: REQUEST as .crt)")
    renew = sub.add_parser(
        "crl-renew",
        help="re-issue the CRL before it expires",
        description="Re-issue the CRL with the same entries and a new expiry: an expired"
        " CRL makes the broker refuse every client certificate.",
    )
    ca_dir(renew)
    crl_dir(renew)
    revoke = sub.add_parser(
        "revoke",
        help="revoke a device's certificates, reload the broker, cut its session",
        description="Revoke every certificate issued to a device, reload the broker, and"
        " cut the device's open session and server login (docs/security.md).",
    )
    revoke.add_argument("name", metavar="NAME", help="the device's user id")
    ca_dir(revoke)
    crl_dir(revoke)
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
    done = ca.init_ca(args.ca, hosts, group=broker_group())
    ca_state = "made" if done.ca_made else "kept (the certificates it issued stay valid)"
    print(f"CA: {args.ca / ca.CA_CERT}, {ca_state}; its key {args.ca / ca.CA_KEY}: keep it private")
    names = ", ".join(done.hosts)
    if done.broker_cert == "re-issued":
        was = ", ".join(done.previous_hosts)
        print(f"broker certificate: re-issued for {names} (was {was}; same key)")
    else:
        print(f"broker certificate: {done.broker_cert}, for {names}")
    if args.broker_dir:
        target = Path(args.broker_dir)
        for path in ca.install_broker_files(done.files, target, group=broker_group()):
            print(f"broker file: {path}")
    return 0


def _sign_device(args: argparse.Namespace) -> int:
    request: Path = args.request
    name, cert = ca.sign_device(args.ca, pki.load_csr(request))
    out: Path = args.out or request.with_suffix(".crt")
    pki.save_pem(out, cert)
    print(f"certificate for {name}: {out}")
    for line in _after_signing(out, args.ca / ca.CA_CERT):
        print(line)
    return 0


def _after_signing(cert: Path, ca_cert: Path) -> list[str]:
    """What is left to do once ``cert`` is written: where it was written decides."""
    beside = cert.parent / ca.CA_CERT
    if (cert.parent / DEVICE_KEY).is_file():  # signed where the device keeps its key
        if beside.is_file() and beside.read_bytes() == ca_cert.read_bytes():
            return ["it is in place: the appliance uses it from its next start"]
        return [f"next, the CA's certificate beside it: install -m 0644 {ca_cert} {beside}"]
    return [
        f"copy it and {ca_cert} to the device, beside its key (/etc/gochat/tls/ on an",
        "installed Pi) as device.crt and ca.crt, then: systemctl restart gochat-appliance",
    ]


def _crl_renew(args: argparse.Namespace) -> int:
    group = broker_group()
    crl = ca.renew_crl(args.ca, group=group)
    if args.broker_dir and Path(args.broker_dir).is_dir():
        crl = ca.install_crl(args.ca, Path(args.broker_dir), group=group)
    print(f"renewed {crl}: reload the broker (systemctl reload mosquitto)")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    group = broker_group()
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
    :mod:`appliance.deploy.revocation`); any password account of ``name`` is gone after."""
    secret = add_user(args.passwd_file, args.secret_dir, name, broker_group=broker_group())
    try:
        _reload_broker(args.pid_file)
        broker = BrokerSettings(
            host=args.host, port=args.port, tls_ca_file=args.ca / ca.CA_CERT, password_file=secret
        )
        revocation.take_over_and_log_out(broker, name)
    finally:
        remove_user(args.passwd_file, args.secret_dir, name, broker_group=broker_group())
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
    except (DeployError, revocation.CutError, OSError, ValueError) as exc:
        print(f"gochat-admin: {args.command}: {exc}", file=sys.stderr)
        return EX_FAILURE


def _broker_conf(args: argparse.Namespace) -> str:
    """A private broker's configuration; its CA and certificate are made if missing."""
    port: int = args.port
    ports = {
        brokerconf.TLS_PORT: port,
        brokerconf.CERT_PORT: args.cert_port or port + 1,
        brokerconf.PLAIN_PORT: args.plain_port or port + 2,
        brokerconf.WS_PORT: args.ws_port or port + 3,
        brokerconf.WSS_PORT: args.wss_port or port + 4,
    }
    tls = ca.init_ca((args.ca or args.dir / "tls").resolve()).files
    return brokerconf.private_conf(ports, args.dir, tls, plugin=args.plugin)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gochat-admin``; return the exit status (0 ok, 1 failed, 2 bad usage).

    Prints the paths it wrote, never a password. Errors are one line on stderr.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    if args.command in _TLS_COMMANDS:
        return _tls_command(args)
    passwd: Path = args.passwd_file
    secret_dir: Path = args.secret_dir
    group = broker_group()
    try:
        if args.command == "add-server":
            if args.instance < 1:
                raise InvalidNameError("--instance: instances are numbered from 1")
            account = server_account(args.instance)
            if args.instance > 1 and grant_server(args.acl_file, account):
                print(f"acl file: {args.acl_file} (grants {account})")
            secret = add_user(
                passwd, secret_dir, account, broker_group=group, reader_group=args.group
            )
        else:
            name: str = args.name
            check_name(name)
            if is_server_account(name):
                # A server account may read and write all of gochat/# (the ACL) and
                # retain anywhere (the broker plugin): never a device's name.
                hint = " (use add-server)" if args.command == "add-device" else ""
                raise InvalidNameError(f"{name!r} is a server's account, for no one else{hint}")
            if args.command == "remove-device":
                remove_user(passwd, secret_dir, name, broker_group=group)
                print(f"removed {name} from {passwd}")
                return 0
            reader = getattr(args, "group", None)  # add-user's secret is the person's
            secret = add_user(passwd, secret_dir, name, broker_group=group, reader_group=reader)
    except DeployError as exc:
        print(f"gochat-admin: {exc}", file=sys.stderr)
        return EX_USAGE if isinstance(exc, InvalidNameError) else EX_FAILURE
    print(f"passwd file: {passwd}")
    print(f"secret file: {secret}")
    if args.command == "add-user":
        print(f"{name} logs in on the page with the password in {secret}")
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
