"""``scripts/install-pi --root DIR`` end to end: install into a temporary tree, run every
printed next step as printed, then start the *installed* broker configuration, server
and appliance from that tree, and a room forms.

Everything is real (Mosquitto, the server, the daemon, TLS with client certificates,
SQLite); only the appliance's hardware is stood in (``--mock-hw``). What the test
changes in the printed start commands: the broker's listener ports, log destination
and user (as testbed/broker.py does for the shipped conf), the server's broker port and
the appliance's CoAP port (environment overrides), ``--mock-hw``, and a room to host.
"""

from __future__ import annotations

import grp
import json
import os
import re
import shlex
import socket
import sqlite3
import stat
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import admin, brokerconf
from testbed.broker import free_port
from testbed.daemons import free_udp_port
from testbed.postgres import Postgres

REPO = Path(__file__).resolve().parents[1]
INSTALLER = REPO / "scripts" / "install-pi"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STEP_RE = re.compile(r"^\s+\$ (.+)$", re.MULTILINE)
START_RE = re.compile(r"^(mosquitto -c |\S+/gochat-server --config |\S+/gochat-appliance run )")
DEVICE = "pi-test"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of an operator's shell: none of the test's Python set-up."""
    drop = ("PYTHONPATH", "WT", "VIRTUAL_ENV", "SUDO_USER")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GOCHAT_")}
    # A user's own Python first on PATH (as a pyenv shim would be): the installer
    # must not pick it up.
    env["PATH"] = f"{Path(sys.executable).parent}:{SYSTEM_PATH}"
    return {**env, **extra}


class Processes:
    """Long-running processes started by the test, stopped at its end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=self.logs
            )
        self.running.append((proc, log))
        return proc

    def report(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.running)

    def stop(self) -> None:
        for proc, _ in reversed(self.running):
            proc.terminate()
        for proc, _ in self.running:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop()


def install(root: Path, *args: str) -> str:
    """Run the installer into ``root``; its printed next steps."""
    deps = sysconfig.get_paths()["purelib"]  # this test's own environment: no network
    done = subprocess.run(
        ["bash", str(INSTALLER), "--root", str(root), "--deps-from", deps, *args],
        env=clean_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    return done.stdout


def run_step(command: str, cwd: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", command], env=clean_env(), capture_output=True, text=True, timeout=60,
        check=False, cwd=cwd,
    )  # fmt: skip
    assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the broker exited"
        with socket.socket() as sock:
            if sock.connect_ex((brokerconf.LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def broker_conf(installed: Path, ports: dict[int, int], log: Path) -> str:
    """The installed mosquitto.conf with only its ports, log and user changed (its
    own paths, all inside the installed tree, kept)."""
    text = installed.read_text()
    lines = (line.strip() for line in text.splitlines())
    conf = dict(line.split(None, 1) for line in lines if line and not line.startswith("#"))
    broker_dir = Path(conf["password_file"]).parent
    tls = brokerconf.TlsFiles(
        ca=broker_dir / "ca.crt",
        cert=broker_dir / "server.crt",
        key=broker_dir / "server.key",
        crl=broker_dir / "crl.pem",
    )
    return brokerconf.render_conf(
        text,
        ports=ports,
        passwd_file=Path(conf["password_file"]),
        acl_file=Path(conf["acl_file"]),
        data_dir=Path(conf["persistence_location"]),
        log_file=log,
        tls=tls,
    )


@pytest.mark.timeout(180)
def test_the_printed_steps_install_a_working_room(tmp_path: Path, processes: Processes) -> None:
    root = tmp_path / "root"
    cert_port, tls_port, plain_port = free_port(), free_port(), free_port()
    coap_port = free_udp_port()
    printed = install(
        root, "--device", DEVICE, "--broker", "127.0.0.1", "--port", str(cert_port), "--server"
    )

    # The venv is the system interpreter's, and the tools are linked onto the (rooted) PATH.
    venv = root / "opt/gochat/venv"
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()
    where = subprocess.run(
        [venv / "bin/python", "-c", "import appliance; print(appliance.__file__)"],
        env=clean_env(), cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert where.startswith(f"{venv}/lib/"), where  # the installed copy, not this checkout
    for tool in ("gochat-admin", "gochat-appliance", "gochat-server"):
        link = root / "usr/local/bin" / tool
        assert link.resolve() == (venv / "bin" / tool).resolve(), tool
    # The paths the server reads are where the admin tool writes.
    server_toml = (root / "etc/gochat/server.toml").read_text()
    assert f'password_file = "{root}/etc/gochat/credentials/gochat-server.password"' in server_toml

    steps = STEP_RE.findall(printed)
    setup = [s for s in steps if not START_RE.match(s)]
    start = [s for s in steps if START_RE.match(s)]
    assert len(start) == 3 and len(setup) >= 6, printed
    for step in steps:
        assert "sudo" not in step, step  # run as root: no sudo in what it prints
        for word in shlex.split(step):
            if word.startswith("/"):
                assert word.startswith(f"{root}/"), f"{word} is outside the root: {step}"
    for step in setup:
        run_step(step, tmp_path)

    env = clean_env()
    broker_cmd, server_cmd, appliance_cmd = (shlex.split(s) for s in start)
    assert broker_cmd[:2] == ["mosquitto", "-c"]
    rendered = tmp_path / "mosquitto.conf"
    ports = {brokerconf.CERT_PORT: cert_port, brokerconf.TLS_PORT: tls_port}
    ports[brokerconf.PLAIN_PORT] = plain_port
    rendered.write_text(broker_conf(Path(broker_cmd[2]), ports, tmp_path / "broker.log"))
    broker = processes.start(["mosquitto", "-c", str(rendered)], env, "mosquitto")
    for port in (cert_port, tls_port):
        wait_for_port(port, broker)
    processes.start(server_cmd, {**env, "GOCHAT_BROKER__PORT": str(tls_port)}, "server")
    processes.start(
        [*appliance_cmd, "--mock-hw"],
        {**env, "GOCHAT_COAP__PORT": str(coap_port), "GOCHAT_ROOM__MODE": "host"},
        "appliance",
    )

    status_cmd = [str(root / "usr/local/bin/gochat-appliance"), "status", "--port", str(coap_port)]
    done = subprocess.run(
        [*status_cmd, "--wait-in-room", "--timeout", "60"],
        env=env, capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + processes.report()
    status = json.loads(done.stdout)
    assert (status["connection"], status["role"]) == ("online", "host"), status
    # The server holds the room in its installed database, hosted by the installed device.
    db = root / "var/lib/gochat/server.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rooms = conn.execute("SELECT room_id, host_id FROM rooms WHERE closed_at IS NULL")
        assert (status["room_id"], DEVICE) in rooms.fetchall()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--device", "a b"], "--device"),
        (["--port", "88x3"], "--port"),
        (["--broker", "a/b"], "--broker"),
        (["--root", "/tmp/a b"], "--root"),
        (["--deps-from", "/no/such/dir"], "--deps-from"),
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
    printed = install(root, "--device", DEVICE, "--password", "--server")
    assert "home = /usr/bin\n" in (venv / "pyvenv.cfg").read_text()
    appliance_toml = root / "etc/gochat/appliance.toml"
    check = [str(root / "usr/local/bin/gochat-appliance"), "check-config", str(appliance_toml)]
    before = subprocess.run(check, env=clean_env(), capture_output=True, text=True, check=False)
    # No empty password file is made: until the account exists the check says why.
    assert before.returncode == 78 and "broker.password_file (in " in before.stderr
    steps = [s for s in STEP_RE.findall(printed) if not START_RE.match(s)]
    assert any(" add-device pi-test --group " in s for s in steps), printed
    for step in steps:  # the check-config steps among them now pass
        run_step(step, tmp_path)


def test_a_server_on_postgresql_gets_its_url_and_its_driver(
    tmp_path: Path, postgres: Postgres
) -> None:
    root = tmp_path / "root"
    url = postgres.new_database()
    printed = install(root, "--device", DEVICE, "--password", "--server", "--store-url", url)
    server_toml = root / "etc/gochat/server.toml"
    assert f'url = "{url}"' in server_toml.read_text()
    steps = [s for s in STEP_RE.findall(printed) if not START_RE.match(s)]
    for step in steps:  # the server's check-config among them
        run_step(step, tmp_path)
    # The installed server opens the database and makes its tables.
    python = root / "opt/gochat/venv/bin/python"
    opened = (
        "from appliance.server.pg_store import PostgresStore;"
        f"PostgresStore({url!r}, 'gochat-server').close()"
    )
    subprocess.run([str(python), "-c", opened], env=clean_env(), check=True, timeout=60)


def test_a_device_only_install_checks_once_the_certificate_is_in_place(tmp_path: Path) -> None:
    root = tmp_path / "root"
    printed = install(root, "--device", DEVICE, "--broker", "127.0.0.1")
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
    run_step(steps[0], tmp_path)
