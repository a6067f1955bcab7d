"""``gochat-admin``: Mosquitto-compatible hashes, safe files, one-line errors."""

from __future__ import annotations

import base64
import grp
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from appliance.deploy import accounts, admin
from testbed import Broker, MqttClientFactory


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = admin.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def files(tmp_path: Path) -> list[str]:
    return ["--passwd-file", str(tmp_path / "passwd"), "--secret-dir", str(tmp_path / "sec")]


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="needs mosquitto_passwd")
def test_hash_is_byte_for_byte_mosquitto_passwd(tmp_path: Path) -> None:
    # A throwaway password on a command line is fine here; gochat-admin never does it.
    pwfile = tmp_path / "reference"
    pwfile.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "alice", "not-a-secret"], check=True)
    line = pwfile.read_text().strip()
    user, encoded = line.split(":", 1)
    assert user == "alice"
    salt = base64.b64decode(encoded.split("$")[3])
    assert accounts.hash_password("not-a-secret", salt=salt) == encoded
    assert accounts.verify_password("not-a-secret", encoded)
    assert not accounts.verify_password("not-a-secreT", encoded)


def test_add_device_writes_secret_and_hash_and_prints_only_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["add-device", "kitchen-pi", *files(tmp_path)], capsys)
    assert (code, err) == (0, "")
    secret = tmp_path / "sec" / "kitchen-pi.password"
    password = secret.read_text().strip()
    assert len(password) >= 43  # 256 random bits
    assert password not in out
    assert out.splitlines() == [
        f"passwd file: {tmp_path / 'passwd'}",
        f"secret file: {secret}",
    ]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    (line,) = (tmp_path / "passwd").read_text().splitlines()
    name, encoded = line.split(":", 1)
    assert name == "kitchen-pi" and encoded.startswith("$7$101$")
    assert accounts.verify_password(password, encoded)
    assert not list(secret.parent.glob(".*"))  # no temp file left behind


def test_passwd_file_is_readable_by_the_broker_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["add-server", *files(tmp_path)], capsys)
    st = (tmp_path / "passwd").stat()
    try:
        broker_gid = grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        broker_gid = None
    if os.geteuid() == 0 and broker_gid is not None:
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, broker_gid, 0o640)
    else:
        assert stat.S_IMODE(st.st_mode) == 0o600


def test_re_adding_replaces_only_that_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["add-server"], ["add-device", "a"], ["add-device", "b"]):
        assert run([*argv, *files(tmp_path)], capsys)[0] == 0
    before = (tmp_path / "passwd").read_text().splitlines()
    old_password = (tmp_path / "sec" / "a.password").read_text().strip()
    assert run(["add-device", "a", *files(tmp_path)], capsys)[0] == 0
    after = (tmp_path / "passwd").read_text().splitlines()
    assert accounts.users(tmp_path / "passwd") == ["gochat-server", "b", "a"]
    assert after[:2] == [before[0], before[2]]  # untouched lines kept verbatim
    new_password = (tmp_path / "sec" / "a.password").read_text().strip()
    assert new_password != old_password
    assert accounts.verify_password(new_password, after[2].split(":", 1)[1])


def test_remove_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(["add-device", "a", *files(tmp_path)], capsys)
    run(["add-device", "b", *files(tmp_path)], capsys)
    code, out, err = run(["remove-device", "a", *files(tmp_path)], capsys)
    assert (code, err) == (0, "")
    assert accounts.users(tmp_path / "passwd") == ["b"]
    assert not (tmp_path / "sec" / "a.password").exists()
    code, out, err = run(["remove-device", "a", *files(tmp_path)], capsys)
    assert code == 1 and out == "" and len(err.splitlines()) == 1 and "no user 'a'" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["add-device", ""],
        ["add-device", "has space"],
        ["add-device", "a/b"],
        ["add-device", "a+b"],
        ["add-device", "#"],
        ["add-device", "x" * 65],
        ["add-device", "gochat-server"],
        ["add-device", "gochat-server-2"],
        ["remove-device", "gochat-server"],
        ["add-device"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_input_is_one_line_and_status_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*argv, *files(tmp_path)] if argv else argv, capsys)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "passwd").exists()


def test_an_account_made_by_the_cli_logs_in(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--passwd-file", str(broker.passwd_path), "--secret-dir", str(broker.secret_dir)]
    assert run(["add-device", "dev-1", *argv], capsys)[0] == 0
    broker.reload()
    password = (broker.secret_dir / "dev-1.password").read_text().strip()
    assert broker.probe_login("dev-1", password) == 0
    assert broker.probe_login("dev-1", password + "x") != 0


def test_add_server_instance_2_gets_an_account_and_its_acl_entry_once(
    broker: Broker, mqtt_client: MqttClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--passwd-file", str(broker.passwd_path), "--secret-dir", str(broker.secret_dir)]
    acl = ["--acl-file", str(broker.acl_file)]
    for _ in range(2):  # again: re-keyed, the ACL entry not repeated
        code, _out, _err = run(["add-server", "--instance", "2", *acl, *argv], capsys)
        assert code == 0
    assert broker.acl_file.read_text().count("user gochat-server-2\n") == 1
    broker.reload()
    password = (broker.secret_dir / "gochat-server-2.password").read_text().strip()
    server2 = mqtt_client(broker, "gochat-server-2", password=password)
    # It may do what the server does: read any user's requests, answer on any topic.
    server2.subscribe_wait("gochat/v1/req/#", qos=1)
    assert not server2.publish_wait("gochat/v1/resp/ann", b"{}", qos=1).is_failure
    # And no device may take a server instance's name.
    assert run(["add-device", "gochat-server-7", *argv], capsys)[0] == 2
