"""``gochat-appliance`` as an operator runs it, as real processes: it answers promptly,
says what is wrong and where to look, and its exit status tells a script the outcome."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from testbed.daemons import free_udp_port


def appliance(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m appliance ARGS`` with stdin closed (as from a script)."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_status_with_nothing_on_the_port_answers_at_once_with_a_hint() -> None:
    port = free_udp_port()
    started = time.monotonic()
    done = appliance("status", "--port", str(port))
    elapsed = time.monotonic() - started
    assert done.returncode == 1 and done.stdout == ""
    assert f"coap://127.0.0.1:{port}/status (nothing listens on that port)" in done.stderr
    assert "is the appliance running" in done.stderr and "[coap] port" in done.stderr
    assert elapsed < 10  # was 15.6 s: it kept asking for --timeout without --wait-in-room


def test_status_gives_up_on_a_silent_port_after_two_seconds() -> None:
    """Something holds the port but never answers (no "port unreachable" comes back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        started = time.monotonic()
        done = appliance("status", "--port", str(port))
        elapsed = time.monotonic() - started
        assert silent.recv(2048)  # the request did reach the port
    assert done.returncode == 1
    assert "(no answer in time)" in done.stderr and "is the appliance running" in done.stderr
    assert elapsed < 2.0 + 5.0  # the 2 s answer timeout, plus a generous interpreter start


def test_console_ports_that_are_not_numbers_are_a_usage_error() -> None:
    for ports, named in (("5683,abc", "'abc'"), ("5683,70000", "'70000'"), (",", "no port")):
        done = appliance("console", "--ports", ports)
        assert done.returncode == 2, ports
        assert done.stderr.startswith("gochat-appliance console: --ports: "), done.stderr
        assert named in done.stderr and "e.g. --ports 5683,5684,5685" in done.stderr
        assert "int()" not in done.stderr and "Traceback" not in done.stderr


def test_test_audio_needs_no_broker_credentials_and_fails_on_a_silent_microphone(
    tmp_path: Path,
) -> None:
    """The config names a password file that does not exist (as before ``gochat-admin``
    made it); the stand-in microphone hears silence, then a tone."""
    config = tmp_path / "appliance.toml"
    config.write_text(
        '[device]\nuser_id = "pi-test"\n'
        f'[broker]\nhost = "127.0.0.1"\npassword_file = "{tmp_path / "missing.password"}"\n'
        '[audio]\nmock_input = "silence"\n'
    )
    args = ("test-audio", "--mock-hw", "--config", str(config), "--seconds", "0.5")
    silent = appliance(*args)
    assert silent.returncode == 1, silent.stderr
    assert "password" not in silent.stderr
    assert "level -inf dBFS" in silent.stdout
    assert "the microphone heard (almost) nothing" in silent.stderr
    assert "the stand-in hears GOCHAT_AUDIO__MOCK_INPUT ('silence' now)" in silent.stderr

    heard = appliance(*args, env={"GOCHAT_AUDIO__MOCK_INPUT": "tone:440"})
    assert heard.returncode == 0, heard.stderr
    assert "dominant frequency 440 Hz" in heard.stdout and heard.stderr == ""


def test_test_audio_still_rejects_a_bad_audio_key(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text('[audio]\nmock_input = "silence"\nsample_rat = 48000\n')
    done = appliance("test-audio", "--mock-hw", "--config", str(config))
    assert done.returncode == 78
    assert "audio.sample_rat" in done.stderr and "unknown key" in done.stderr
