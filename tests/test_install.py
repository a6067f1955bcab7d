"""``scripts/install-pi --root DIR`` end to end: install into a temporary tree, then run
every step it prints exactly as printed, the last ones (broker, server, appliance) each
in a session of its own as an operator would in a terminal, and a room forms.

The installer and its steps run twice: as root, and as an ordinary user (a throwaway
account when the test runs as root, as CI does), with that user's own PATH. Everything
is real (Mosquitto, the server, the daemon, TLS with client certificates, SQLite); the
appliance's hardware is stood in because the printed step says so off a Pi. The test
changes nothing in what was installed: the trial's ports are the installer's own
options (``--broker-ports``, ``--coap-port``), and the room is made through the
appliance's local API, as the console or any client would.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.deploy import admin
from appliance.deploy.brokerconf import LOOPBACK
from testbed.broker import free_ports
from testbed.daemons import CoapClient, free_udp_port
from testbed.postgres import Postgres

REPO = Path(__file__).resolve().parents[1]
INSTALLER = REPO / "scripts" / "install-pi"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"  # Debian's for ordinary users: no sbin
STEP_RE = re.compile(r"^\s+\$ (.+)$", re.MULTILINE)
START_RE = re.compile(r"^(\S*mosquitto -c |\S+/gochat-server --config |\S+/gochat-appliance run )")
ABSOLUTE_RE = re.compile(r"(?<![\w.~-])/[\w.@+-][\w./@+-]*")
DEVICE = "pi-test"
DEPS = Path(sysconfig.get_paths()["purelib"])
"""This test's own dependencies: the installed venv takes them (no network)."""
SOURCES = ("scripts", "config", "systemd", "appliance", "hw_mocks", "pyproject.toml", "README.md")
"""What the installer reads of this checkout."""


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of root's shell: none of the test's Python set-up."""
    drop = ("PYTHONPATH", "WT", "VIRTUAL_ENV", "SUDO_USER")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GOCHAT_")}
    # A user's own Python first on PATH (as a pyenv shim would be): the installer
    # must not pick it up.
    env["PATH"] = f"{Path(sys.executable).parent}:{ROOT_PATH}"
    return {**env, **extra}


@dataclass
class Operator:
    """Who runs the installer and the steps it prints, in a shell of their own."""

    user: str | None
    """An account to run as (with ``runuser``), or None: this process's own."""
    home: Path
    """Theirs to write in: the install goes under it."""
    sources: Path = REPO
    deps: Path = DEPS

    def argv(self, command: str) -> list[str]:
        """``command`` as typed at their prompt."""
        if self.user is None:
            return ["bash", "-c", command]
        env = [f"HOME={self.home}", f"PATH={USER_PATH}", f"USER={self.user}", "LANG=C.UTF-8"]
        return ["runuser", "-u", self.user, "--", "env", "-i", *env, "bash", "-c", command]

    def env(self) -> dict[str, str]:
        return clean_env(HOME=str(self.home)) if self.user is None else {"PATH": ROOT_PATH}

    def run(self, command: str, timeout_s: float = 60) -> str:
        """Run ``command``; what it printed (stdout and stderr)."""
        done = subprocess.run(
            self.argv(command), env=self.env(), cwd=self.home, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"$ {command}\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    def install(self, root: Path, *args: str) -> str:
        """The installer into ``root`` (dependencies from this test's environment, no
        network); its printed next steps."""
        installer = self.sources / "scripts" / "install-pi"
        argv = [str(installer), "--root", str(root), "--deps-from", str(self.deps), *args]
        done = subprocess.run(
            self.argv(shlex.join(argv)), env=self.env(), cwd=self.home, capture_output=True,
            text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout


@pytest.fixture(params=["root", "user"])
def operator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Operator]:
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("the root operator needs root (CI runs as root)")
        yield Operator(None, tmp_path)
        return
    if os.geteuid() != 0:
        yield Operator(None, tmp_path)  # this process's own user is an ordinary one
        return
    with throwaway_user() as name:
        operator = ordinary_operator(name)
        try:
            yield operator
        finally:
            for made in {operator.home, operator.sources, operator.deps} - {REPO, DEPS}:
                shutil.rmtree(made, ignore_errors=True)


@contextlib.contextmanager
def throwaway_user() -> Iterator[str]:
    """A new unprivileged account (its own group, no home, no login); removed after."""
    name = f"gochat-t{os.getpid() % 100000}"
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/bash", name],
        check=True,
    )
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], check=False)


def ordinary_operator(name: str) -> Operator:
    """``name``'s operator: a home of its own in /tmp, and this checkout and the test's
    dependencies where it can read them (copied when its permissions shut it out)."""
    home = Path(tempfile.mkdtemp(prefix="gochat-install-"))
    shutil.chown(home, name, name)
    home.chmod(0o700)
    operator = Operator(name, home)
    if not readable_by(name, REPO / "scripts" / "install-pi"):
        operator.sources = shared_copy(REPO, SOURCES, Path(tempfile.mkdtemp(prefix="gochat-src-")))
    if not readable_by(name, operator.deps / "paho"):
        target = Path(tempfile.mkdtemp(prefix="gochat-deps-"))
        operator.deps = shared_copy(operator.deps, os.listdir(operator.deps), target)
    return operator


def readable_by(user: str, path: Path) -> bool:
    done = subprocess.run(["runuser", "-u", user, "--", "test", "-r", str(path)], check=False)
    return done.returncode == 0


def shared_copy(source: Path, names: Iterable[str], target: Path) -> Path:
    """``source``'s ``names`` under ``target``, readable by everyone (hard links where
    the file system allows: a copy of the dependencies costs nothing then)."""
    target.chmod(0o755)
    for name in names:
        done = subprocess.run(["cp", "-al", str(source / name), str(target)], check=False)
        if done.returncode != 0:
            subprocess.run(["cp", "-a", str(source / name), str(target)], check=True)
    dirs = ["find", str(target), "-type", "d", "-exec", "chmod", "a+rx", "{}", "+"]
    subprocess.run(dirs, check=True)
    return target


class Processes:
    """The programs the last steps start, each in a session of its own (a terminal's);
    stopped at the test's end as Ctrl-C would, newest first."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, operator: Operator, command: str, name: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                operator.argv(command), env=operator.env(), cwd=operator.home, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.running.append((proc, log))
        return proc

    def report(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.running)

    def stop(self) -> None:
        for proc, _ in reversed(self.running):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the broker exited"
        with socket.socket() as sock:
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def outside(root: Path, text: str) -> list[str]:
    """The absolute paths in ``text`` that are not under ``root``."""
    return [p for p in ABSOLUTE_RE.findall(text) if not p.startswith(f"{root}/")]


@pytest.mark.timeout(180)
def test_the_printed_steps_run_as_printed_and_a_room_forms(
    operator: Operator, processes: Processes
) -> None:
    root = operator.home / "root"
    cert_port, tls_port, plain_port, ws_port, wss_port = free_ports(5)
    coap_port = free_udp_port()
    ports = f"{cert_port},{tls_port},{plain_port},{ws_port},{wss_port}"
    printed = operator.install(
        root, "--device", DEVICE, "--broker", "127.0.0.1", "--server", "--web",
        "--broker-ports", ports, "--coap-port", str(coap_port),
    )  # fmt: skip

    # The venv is the system interpreter's, and the tools are linked onto the (rooted) PATH.
    venv = root / "opt/gochat/venv"
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()
    where = operator.run(f"{venv}/bin/python -c 'import appliance; print(appliance.__file__)'")
    assert where.startswith(f"{venv}/lib/"), where  # the installed copy, not this checkout
    for tool in ("gochat-admin", "gochat-appliance", "gochat-server"):
        link = root / "usr/local/bin" / tool
        assert link.resolve() == (venv / "bin" / tool).resolve(), tool
    # The page, its MQTT.js bundle, where it finds the broker, and the nginx site serving
    # it from there with the broker's certificate (tests/web/test_page_deployment.py runs it).
    web = root / "opt/gochat/web"
    assert (web / "index.html").is_file() and (web / "vendor/mqtt.esm.js").is_file()
    assert json.loads((web / "config.json").read_text()) == {"broker_url": f"wss://127.0.0.1:{wss_port}/"}
    site = (root / "etc/nginx/sites-enabled/gochat").read_text()
    assert f"root {web};" in site and f"ssl_certificate {root}/etc/mosquitto/gochat/server.crt;" in site
    assert "add-user NAME" in printed
    # The paths the server reads are where the admin tool writes.
    server_toml = (root / "etc/gochat/server.toml").read_text()
    assert f'password_file = "{root}/etc/gochat/credentials/gochat-server.password"' in server_toml

    steps = STEP_RE.findall(printed)
    setup = [s for s in steps if not START_RE.match(s)]
    start = [s for s in steps if START_RE.match(s)]
    assert len(start) == 3 and len(setup) >= 6, printed
    for step in steps:
        assert "sudo" not in step, step  # nobody needs sudo for a --root trial
        program, *words = shlex.split(step)
        assert outside(root, shlex.join(words)) == [], step
        assert "/" not in program or program.startswith(f"{root}/") or os.access(program, os.X_OK)
    for step in setup:  # what each says, too, stays in the tree
        said = operator.run(step)
        assert outside(root, said) == [] and "systemctl" not in said, f"$ {step}\n{said}"

    broker_step, server_step, appliance_step = start
    broker = processes.start(operator, broker_step, "mosquitto")
    for port in (cert_port, tls_port, plain_port, ws_port, wss_port):
        wait_for_port(port, broker)
    processes.start(operator, server_step, "server")
    processes.start(operator, appliance_step, "appliance")

    # The operator hosts a room through the appliance's local API.
    status = f"{root}/usr/local/bin/gochat-appliance status --port {coap_port}"
    wait_until_online = (
        f"for _ in $(seq 100); do {status} | grep -q '\"online\"' && exit; sleep 0.3; done; exit 1"
    )
    try:
        operator.run(wait_until_online, timeout_s=60)
        coap = CoapClient()
        try:
            reply = coap.request(coap_port, "PUT", "/room", {"subject": "Trial room"})
        finally:
            coap.close()
        assert reply.ok, reply
        shown = json.loads(operator.run(f"{status} --wait-in-room --timeout 30", timeout_s=60))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.report()}") from None
    assert (shown["connection"], shown["role"]) == ("online", "host"), shown
    # The server holds the room in its installed database, hosted by the installed device.
    db = root / "var/lib/gochat/server.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rooms = conn.execute("SELECT room_id, host_id, subject FROM rooms WHERE closed_at IS NULL")
        assert (shown["room_id"], DEVICE, "Trial room") in rooms.fetchall()
    # The installed broker runs the plugin the installer built into the tree.
    assert (root / "opt/gochat/lib/gochat_guard.so").is_file()
    assert f"plugin {root}/opt/gochat/lib/gochat_guard.so" in (
        root / "etc/mosquitto/mosquitto.conf"
    ).read_text()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--device", "a b"], "--device"),
        (["--port", "88x3"], "--port"),
        (["--broker", "a/b"], "--broker"),
        (["--root", "/tmp/a b"], "--root"),
        (["--deps-from", "/no/such/dir"], "--deps-from"),
        (["--web"], "--web"),
        (["--coap-port", "x"], "--coap-port"),
        (["--server", "--broker-ports", "8883,8884"], "--broker-ports"),
        (["--server", "--broker-ports", "8883,8884,8883"], "--broker-ports"),  # one port twice
        (["--server", "--broker-ports", "8883,8884,1883,8081,8081"], "--broker-ports"),
        (["--broker-ports", "18883,18884,11883"], "--broker-ports"),  # not without --server
        (["--server", "--store-url", "mysql://db/x"], "--store-url"),
        (["--store-url", "postgresql://db/x"], "--store-url"),  # without --server
    ],
)
def test_the_installer_refuses_bad_arguments_before_doing_anything(
    tmp_path: Path, args: list[str], named: str
) -> None:
    root = args[1] if args[0] == "--root" else str(tmp_path)
    rest = args if args[0] != "--root" else []
    done = subprocess.run(
        ["bash", str(INSTALLER), "--root", root, *rest],
        env=clean_env(), capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and named in done.stderr, done.stderr
    assert not (tmp_path / "opt").exists()


def test_add_server_group_lets_the_service_read_its_password(tmp_path: Path) -> None:
    secret_dir = tmp_path / "credentials"
    argv = ["--passwd-file", str(tmp_path / "passwd"), "--secret-dir", str(secret_dir)]
    assert admin.main(["add-server", "--group", "daemon", *argv]) == 0
    secret = secret_dir / "gochat-server.password"
    daemon_gid = grp.getgrnam("daemon").gr_gid
    assert (secret.stat().st_gid, stat.S_IMODE(secret.stat().st_mode)) == (daemon_gid, 0o640)
    assert (secret_dir.stat().st_gid, stat.S_IMODE(secret_dir.stat().st_mode)) == (
        daemon_gid,
        0o750,
    )
    # Without --group the secret stays the caller's alone.
    assert admin.main(["add-device", "pi-a", *argv]) == 0
    assert stat.S_IMODE((secret_dir / "pi-a.password").stat().st_mode) == 0o600


def test_add_server_refuses_an_unknown_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--passwd-file", str(tmp_path / "passwd"), "--secret-dir", str(tmp_path / "s")]
    assert admin.main(["add-server", "--group", "no-such-group-x", *argv]) == 1
    assert "no such group: no-such-group-x" in capsys.readouterr().err


def test_password_mode_steps_work_and_a_foreign_venv_is_remade(tmp_path: Path) -> None:
    root = tmp_path / "root"
    # A venv left by a user's own Python (here: this test's), as the gochat user could
    # not run it: the installer makes it again from /usr/bin/python3.
    venv = root / "opt/gochat/venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    me = Operator(None, tmp_path)
    printed = me.install(root, "--device", DEVICE, "--password", "--server")
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()
    appliance_toml = root / "etc/gochat/appliance.toml"
    check = [str(root / "usr/local/bin/gochat-appliance"), "check-config", str(appliance_toml)]
    before = subprocess.run(check, env=clean_env(), capture_output=True, text=True, check=False)
    # No empty password file is made: until the account exists the check says why.
    assert before.returncode == 78 and "broker.password_file (in " in before.stderr
    steps = [s for s in STEP_RE.findall(printed) if not START_RE.match(s)]
    assert any(" add-device pi-test --group " in s for s in steps), printed
    for step in steps:  # the check-config steps among them now pass
        me.run(step)


def test_a_server_on_postgresql_gets_its_url_and_its_driver(
    tmp_path: Path, postgres: Postgres
) -> None:
    root = tmp_path / "root"
    url = postgres.new_database()
    me = Operator(None, tmp_path)
    printed = me.install(root, "--device", DEVICE, "--password", "--server", "--store-url", url)
    server_toml = root / "etc/gochat/server.toml"
    assert f'url = "{url}"' in server_toml.read_text()
    steps = [s for s in STEP_RE.findall(printed) if not START_RE.match(s)]
    for step in steps:  # the server's check-config among them
        me.run(step)
    # The installed server opens the database and makes its tables.
    python = root / "opt/gochat/venv/bin/python"
    opened = (
        "from appliance.server.pg_store import PostgresStore;"
        f"PostgresStore({url!r}, 'gochat-server').close()"
    )
    subprocess.run([str(python), "-c", opened], env=clean_env(), check=True, timeout=60)


def test_a_device_only_install_checks_once_the_certificate_is_in_place(tmp_path: Path) -> None:
    root = tmp_path / "root"
    me = Operator(None, tmp_path)
    printed = me.install(root, "--device", DEVICE, "--broker", "127.0.0.1")
    tls = root / "etc/gochat/tls"
    assert (tls / "device.key").is_file() and (tls / "device.csr").is_file()
    assert not (root / "etc/mosquitto").exists() and not (root / "etc/gochat/server.toml").exists()
    # What the prose asks of the CA's machine, done with the installed admin tool.
    ca_dir, bin_dir = tmp_path / "ca", root / "usr/local/bin"
    for argv in (
        ["ca-init", "--ca", str(ca_dir), "--broker-dir", ""],
        [
            "sign-device",
            str(tls / "device.csr"),
            "--ca",
            str(ca_dir),
            "--out",
            str(tls / "device.crt"),
        ],
    ):
        subprocess.run([bin_dir / "gochat-admin", *argv], env=clean_env(), check=True)
    (tls / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())
    steps = [s for s in STEP_RE.findall(printed) if not START_RE.match(s)]
    assert steps == [f"{bin_dir}/gochat-appliance check-config {root}/etc/gochat/appliance.toml"]
    me.run(steps[0])


def test_help_is_the_whole_header_and_names_every_option() -> None:
    done = subprocess.run(
        ["bash", str(INSTALLER), "--help"], capture_output=True, text=True, check=True
    )
    header = []
    for line in INSTALLER.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(re.sub(r"^# ?", "", line))
    assert done.stdout == "\n".join(header) + "\n"
    assert done.stdout.rstrip().endswith(".")  # it ends on a whole sentence
    options = set(re.findall(r"^\s+(?:-\w \| )?(--[a-z-]+)\)", INSTALLER.read_text(), re.M))
    assert options >= {"--root", "--broker-ports", "--coap-port"}
    assert [o for o in options if o not in done.stdout] == []
