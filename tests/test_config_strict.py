"""``check-config`` of the appliance and of the server is strict: an empty, unreadable
or folder password file, or a value of the wrong TOML type, is one line naming the key
and where its value came from (the file, or the environment variable), exit 78."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EX_CONFIG = 78
PROGRAMS = {"appliance": "appliance", "server": "appliance.server"}
HEADERS = {"appliance": "[device]\nuser_id = 'pi-a'\n", "server": ""}


def check_config(
    program: str, config: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
    return subprocess.run(
        [sys.executable, "-m", PROGRAMS[program], "check-config", str(config)],
        check=False, capture_output=True, text=True, timeout=30, env={**base, **(env or {})},
    )  # fmt: skip


def write_config(tmp_path: Path, program: str, broker: str) -> Path:
    config = tmp_path / f"{program}.toml"
    config.write_text(f"{HEADERS[program]}[broker]\nhost = '127.0.0.1'\n{broker}")
    return config


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == EX_CONFIG, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(params=sorted(PROGRAMS))
def program(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_good_password_file_checks_ok(tmp_path: Path, program: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    done = check_config(program, write_config(tmp_path, program, f"password_file = '{secret}'\n"))
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")


def test_an_empty_password_file_names_the_key_and_the_file(tmp_path: Path, program: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text("")
    config = write_config(tmp_path, program, f"password_file = '{secret}'\n")
    line = one_line(check_config(program, config))
    assert f"broker.password_file (in {config}): {secret} is empty" in line


def test_an_unreadable_password_file_is_refused(tmp_path: Path, program: str) -> None:
    # Tests run as root, so modes cannot make it unreadable; bytes that are not UTF-8
    # fail the same read.
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xff\xfe\x00")
    config = write_config(tmp_path, program, f"password_file = '{secret}'\n")
    assert f"broker.password_file (in {config}): cannot read {secret}" in one_line(
        check_config(program, config)
    )


def test_a_folder_is_not_a_password_file(tmp_path: Path, program: str) -> None:
    config = write_config(tmp_path, program, f"password_file = '{tmp_path}'\n")
    line = one_line(check_config(program, config))
    assert f"broker.password_file (in {config}): a folder, not a file: {tmp_path}" in line


def test_a_folder_where_a_certificate_goes_is_refused(tmp_path: Path, program: str) -> None:
    config = write_config(tmp_path, program, f"tls_ca_file = '{tmp_path}'\n")
    line = one_line(check_config(program, config))
    assert f"broker.tls_ca_file (in {config}): a folder, not a file" in line


@pytest.mark.parametrize(
    ("broker", "key", "got"),
    [
        ("port = '1883'\n", "broker.port", 'not a string "1883"'),
        ("port = 1883.0\n", "broker.port", "not a number 1883.0"),
        ("keepalive_s = true\n", "broker.keepalive_s", "not a boolean true"),
        ("username = 5\n", "broker.username", "not an integer 5"),
        ("password_file = ['a']\n", "broker.password_file", "not an array"),
    ],
)
def test_a_wrong_toml_type_is_refused_in_strict_mode(
    tmp_path: Path, program: str, broker: str, key: str, got: str
) -> None:
    config = write_config(tmp_path, program, broker)
    line = one_line(check_config(program, config))
    assert f"invalid config: {key} (in {config}): " in line and got in line, line


def test_the_environment_is_text_and_converted(tmp_path: Path, program: str) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = write_config(tmp_path, program, f"password_file = '{secret}'\n")
    done = check_config(program, config, {"GOCHAT_BROKER__PORT": "1884"})
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_a_value_from_the_environment_says_so(tmp_path: Path, program: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    config = write_config(tmp_path, program, "")
    done = check_config(program, config, {"GOCHAT_BROKER__PASSWORD_FILE": str(empty)})
    line = one_line(done)
    assert f"broker.password_file (env GOCHAT_BROKER__PASSWORD_FILE): {empty} is empty" in line
    assert str(config) not in line


def test_a_missing_required_key_says_where_it_was_looked_for(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text("[room]\nmode = 'idle'\n")
    line = one_line(check_config("appliance", config))
    assert f"device.user_id (not in {config} nor env GOCHAT_DEVICE__USER_ID)" in line


def test_a_folder_given_as_the_config_file_is_refused(tmp_path: Path, program: str) -> None:
    line = one_line(check_config(program, tmp_path))
    assert f"config file {tmp_path}: a folder, not a file" in line


@pytest.mark.parametrize(
    ("program", "missing", "made_by"),
    [
        ("appliance", "broker.tls_ca_file", "gochat-admin ca-init"),
        ("server", "broker.password_file", "gochat-admin add-device or add-server"),
    ],
)
def test_the_shipped_templates_say_which_step_makes_what_they_miss(
    program: str, missing: str, made_by: str
) -> None:
    """``config/*.toml`` name the installed files, which exist only once the installer's
    printed steps have run: checking a template says which tool makes the first one
    missing, and its header says it is a template."""
    template = Path(__file__).resolve().parents[1] / "config" / f"{program}.toml"
    line = one_line(check_config(program, template))
    assert f"invalid config: {missing} (in {template}): no such file: /etc/gochat/" in line
    assert line.endswith(f", from {made_by})"), line
    assert "the template scripts/install-pi" in template.read_text()


@pytest.mark.parametrize(
    ("program", "toml", "said"),
    [
        ("appliance", "[device]\nuser_idd = 'pi-a'\n", "device.user_idd ({config}): unknown key"
         " (did you mean device.user_id?)"),
        ("appliance", "[device]\nuser_id = 'pi-a'\n[devise]\nname = 'a'\n",
         "devise ({config}): unknown key (did you mean device?)"),
        ("server", "[broker]\nhots = 'x'\n", "broker.hots ({config}): unknown key"
         " (did you mean broker.host?)"),
        ("server", "[store]\nfoo = 1\n", "store.foo ({config}): unknown key ([store] takes: path"),
    ],
)  # fmt: skip
def test_a_misspelt_key_gets_a_suggestion(
    tmp_path: Path, program: str, toml: str, said: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    line = one_line(check_config(program, config))
    assert said.format(config=f"in {config}") in line, line
