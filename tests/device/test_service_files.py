"""The systemd units and the shell scripts, checked by the tools that run them.

``systemd-analyze verify`` must print nothing at all (a warning is a failure), and the
units' exposure (``systemd-analyze security --offline``) must stay as low as GPIO and
ALSA access allow. The scripts are parsed and linted here; tests/test_install.py runs
the install script into a temporary root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.server import REPO_ROOT

UNITS = ["gochat-appliance.service", "gochat-server.service"]
VENV_BIN = REPO_ROOT / ".venv" / "bin"
MAX_EXPOSURE = {"gochat-appliance.service": 1.6, "gochat-server.service": 1.2}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (make venv installs it)")
    return path


def localised(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's venv (verify checks that the
    binary exists and is executable)."""
    text = (REPO_ROOT / "systemd" / unit).read_text(encoding="utf-8")
    assert "ExecStart=/opt/gochat/venv/bin/" in text
    path = tmp_path / unit
    path.write_text(text.replace("/opt/gochat/venv/bin/", f"{VENV_BIN}/"), encoding="utf-8")
    return path


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_is_silent(unit: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [tool("systemd-analyze"), "verify", "--man=no", str(localised(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


@pytest.mark.parametrize("unit", UNITS)
def test_the_units_are_hardened(unit: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [tool("systemd-analyze"), "security", "--offline=true", str(localised(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE[unit]
    text = (REPO_ROOT / "systemd" / unit).read_text(encoding="utf-8")
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=10s",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "User=gochat",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "TimeoutStopSec=5s",
    ):
        assert f"\n{line}\n" in text, line


def test_the_appliance_may_reach_gpio_and_sound_and_nothing_else() -> None:
    text = (REPO_ROOT / "systemd" / "gochat-appliance.service").read_text(encoding="utf-8")
    assert "\nSupplementaryGroups=gpio audio\n" in text
    assert "\nDevicePolicy=closed\n" in text
    allowed = re.findall(r"^DeviceAllow=(.+)$", text, flags=re.MULTILINE)
    assert allowed == ["char-gpiochip rw", "/dev/gpiomem rw", "char-alsa rw"]
    assert (
        "\nExecStart=/opt/gochat/venv/bin/gochat-appliance run --config /etc/gochat/appliance.toml\n"
        in text
    )
    server = (REPO_ROOT / "systemd" / "gochat-server.service").read_text(encoding="utf-8")
    assert "\nStateDirectory=gochat\n" in server and "\nPrivateDevices=yes\n" in server


@pytest.mark.parametrize("script", ["scripts/install-pi", "scripts/run-dev"])
def test_scripts_parse_and_pass_shellcheck(script: str) -> None:
    path = REPO_ROOT / script
    assert path.stat().st_mode & 0o111, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(
        [shellcheck, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout
