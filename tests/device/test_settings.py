"""The appliance's configuration: defaults, environment overrides, one-line errors, exit 78."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.device.settings import ApplianceSettings
from appliance.settings import ConfigError
from testbed.broker import device_tls_env
from testbed.server import REPO_ROOT

EXAMPLE = REPO_ROOT / "config" / "appliance.toml"


@pytest.fixture
def password(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.password"
    path.write_text("s3cret\n", encoding="utf-8")
    return path


@pytest.fixture
def example_tls(tmp_path: Path) -> dict[str, str]:
    """The TLS files the example config names, for its device (pi-kitchen)."""
    return device_tls_env(tmp_path, "pi-kitchen")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("GOCHAT_"):
            monkeypatch.delenv(key)
    return monkeypatch


def load(env: pytest.MonkeyPatch, path: Path | None = None, **values: str) -> ApplianceSettings:
    for key, value in values.items():
        env.setenv(f"GOCHAT_{key}", value)
    return ApplianceSettings.load(path)


def test_the_example_file_documents_every_key_and_loads(
    clean_env: pytest.MonkeyPatch, example_tls: dict[str, str]
) -> None:
    for key, value in example_tls.items():
        clean_env.setenv(key, value)
    settings = load(clean_env, EXAMPLE)
    assert settings.broker.port == 8883  # TLS with a client certificate
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, model in ApplianceSettings.model_fields.items():
        assert f"[{section}]" in text
        assert model.annotation is not None
        for key in model.annotation.model_fields:  # type: ignore[union-attr]
            assert f"{key} = " in text, f"{section}.{key} is not in config/appliance.toml"
    assert settings.device.user_id == "pi-kitchen"
    assert settings.username == "pi-kitchen"


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = load(clean_env, DEVICE__USER_ID="pi-a")
    assert s.device.display_name == "pi-a"
    assert (s.room.mode, s.room.room_id, s.room.auto_accept_when_hand_raised) == ("idle", "", True)
    assert (s.coap.bind, s.coap.port) == ("127.0.0.1", 5683)
    g = s.gpio
    assert (g.button_raise_hand, g.button_mute, g.button_accept) == (17, 27, 22)
    assert (g.led_status, g.led_hand, g.led_invite, g.led_mic) == (5, 6, 13, 19)
    assert (g.debounce_ms, g.long_press_ms) == (30, 1500)
    assert (s.audio.input_device, s.audio.output_device, s.audio.profile) == (
        "default",
        "default",
        "default",
    )
    assert s.subject == "pi-a's room"
    a = s.audio
    assert (a.echo_cancellation, a.noise_suppression, a.auto_gain) == (True, True, True)
    assert (a.mock_echo, a.mock_noise) == ("off", "off")


def test_the_hands_free_switches_and_the_stand_in_room_come_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    a = load(
        clean_env,
        DEVICE__USER_ID="pi-a",
        AUDIO__ECHO_CANCELLATION="false",
        AUDIO__NOISE_SUPPRESSION="false",
        AUDIO__AUTO_GAIN="0",
        AUDIO__MOCK_ECHO="rt60_ms=250,delay_ms=30,gain_db=-3",
        AUDIO__MOCK_NOISE="pink:-50",
    ).audio
    assert (a.echo_cancellation, a.noise_suppression, a.auto_gain) == (False, False, False)
    assert (a.mock_echo, a.mock_noise) == ("rt60_ms=250,delay_ms=30,gain_db=-3", "pink:-50")


def test_every_documented_environment_override_works(
    clean_env: pytest.MonkeyPatch, password: Path, tmp_path: Path
) -> None:
    for key, value in device_tls_env(tmp_path, "pi-x").items():
        clean_env.setenv(key, value)
    s = load(
        clean_env,
        EXAMPLE,
        DEVICE__USER_ID="pi-x",
        DEVICE__NAME="Xylophone",
        BROKER__HOST="10.0.0.7",
        BROKER__PORT="1884",
        BROKER__USERNAME="pi-x",
        BROKER__PASSWORD_FILE=str(password),
        ROOM__MODE="join",
        ROOM__SUBJECT="Evening",
        ROOM__ROOM_ID="abc_DEF-1",
        COAP__BIND="::1",
        COAP__PORT="5699",
    )
    assert (s.device.user_id, s.device.display_name) == ("pi-x", "Xylophone")
    assert (s.broker.host, s.broker.port, s.broker.username) == ("10.0.0.7", 1884, "pi-x")
    assert s.broker.password_file == password
    assert (s.room.mode, s.room.subject, s.room.room_id) == ("join", "Evening", "abc_DEF-1")
    assert (s.coap.bind, s.coap.port) == ("::1", 5699)


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({}, "device.user_id (no config file, and env GOCHAT_DEVICE__USER_ID is not set)"),
        ({"DEVICE__USER_ID": "pi a"}, "device.user_id"),
        ({"DEVICE__USER_ID": "gochat-server"}, "device.user_id"),
        ({"DEVICE__NAME": "x" * 33}, "device.name"),
        ({"BROKER__USERNAME": "pi-other"}, "broker.username (env GOCHAT_BROKER__USERNAME)"),
        ({"BROKER__PORT": "0"}, "broker.port"),
        ({"BROKER__PASSWORD_FILE": "/nonexistent/pw"}, "broker.password_file"),
        ({"ROOM__MODE": "hots"}, "room.mode"),
        ({"ROOM__ROOM_ID": "a/b"}, "room.room_id"),
        ({"ROOM__SUBJECT": "s" * 65}, "room.subject"),
        ({"GPIO__LED_MIC": "28"}, "gpio.led_mic"),
        ({"GPIO__LED_MIC": "17"}, "gpio.led_mic"),
        ({"GPIO__LONG_PRESS_MS": "100", "GPIO__DEBOUNCE_MS": "200"}, "gpio.long_press_ms"),
        ({"AUDIO__PROFILE": "hifi"}, "audio.profile"),
        ({"AUDIO__JITTER_MIN_PACKETS": "5"}, "audio.jitter_min_packets"),
        ({"AUDIO__MOCK_INPUT": "tone:loud"}, "audio.mock_input"),
        ({"AUDIO__MOCK_INPUT": "/no/such.wav"}, "audio.mock_input"),
        ({"AUDIO__BITRATE": "1000"}, "audio.bitrate"),
        ({"AUDIO__ECHO_CANCELLATION": "maybe"}, "audio.echo_cancellation"),
        ({"AUDIO__MOCK_ECHO": "delay_ms=30"}, "audio.mock_echo"),
        ({"AUDIO__MOCK_ECHO": "delay_ms=30,gain_db=0,gain_db=0"}, "audio.mock_echo"),
        ({"AUDIO__MOCK_ECHO": "delay_ms=3000,gain_db=0,rt60_ms=100"}, "audio.mock_echo"),
        ({"AUDIO__MOCK_ECHO": "delay_ms=30,gain_db=0,rt60_ms=1,x=1"}, "audio.mock_echo"),
        ({"AUDIO__MOCK_NOISE": "pink"}, "audio.mock_noise"),
        ({"AUDIO__MOCK_NOISE": "brown:-40"}, "audio.mock_noise"),
        ({"AUDIO__MOCK_NOISE": "pink:6"}, "audio.mock_noise"),
        ({"COAP__PORT": "70000"}, "coap.port (env GOCHAT_COAP__PORT)"),
        ({"COAP__BIND": "localhost"}, "coap.bind"),
        ({"DEVICE__COLOUR": "red"}, "device.colour (env GOCHAT_DEVICE__COLOUR): unknown key"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_key(
    clean_env: pytest.MonkeyPatch, values: dict[str, str], key: str
) -> None:
    if "DEVICE__USER_ID" not in values and values:
        values = {"DEVICE__USER_ID": "pi-a", **values}
    with pytest.raises(ConfigError) as caught:
        load(clean_env, **values)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"invalid config: {key}")


def test_an_unreadable_password_file_is_a_config_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Tests run as root, so permissions cannot make a file unreadable; bytes that are
    # not UTF-8 fail the same read.
    unreadable = tmp_path / "password"
    unreadable.write_bytes(b"\xff\xfe\x00bad utf-8")
    with pytest.raises(ConfigError, match=r"^invalid config: broker.password_file .*cannot read"):
        load(clean_env, DEVICE__USER_ID="pi-a", BROKER__PASSWORD_FILE=str(unreadable))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GOCHAT_")}
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        check=False,
        cwd=REPO_ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_check_config_prints_ok(example_tls: dict[str, str]) -> None:
    done = run_cli("check-config", str(EXAMPLE), env=example_tls)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"GOCHAT_GPIO__BUTTON_MUTE": "40"}, "gpio.button_mute"),
        ({"GOCHAT_COAP__PORT": "99999"}, "coap.port"),
        (
            {"GOCHAT_BROKER__PASSWORD_FILE": "/nonexistent/appliance.password"},
            "broker.password_file",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_bad_config_exits_78_with_one_line(
    example_tls: dict[str, str], env: dict[str, str], key: str, command: str
) -> None:
    env = {**example_tls, **env}
    args = (
        ["run", "--mock-hw", "--config", str(EXAMPLE)]
        if command == "run"
        else [command, str(EXAMPLE)]
    )
    done = run_cli(*args, env=env)
    assert done.returncode == 78
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"gochat-appliance: invalid config: {key} ")
    assert done.stdout == ""


def test_a_missing_config_file_exits_78() -> None:
    done = run_cli("run", "--config", "/nonexistent/appliance.toml")
    assert done.returncode == 78
    assert (
        done.stderr.strip()
        == "gochat-appliance: config file not found: /nonexistent/appliance.toml"
    )
