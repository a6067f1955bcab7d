"""``gochat-server``'s configuration: TOML under environment overrides; a broken one is
one clear line and exit 78 (EX_CONFIG), so systemd does not restart-loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance.server.settings import ServerSettings

REPO = Path(__file__).resolve().parents[2]


def run_server(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.server", *args],
        check=False, capture_output=True, text=True, timeout=20, cwd=REPO,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[broker]\nport = 70000\n", "broker.port"),
        ("[broker]\nport = 'x'\n", "broker.port"),
        ("[broker]\npassword_file = '/no/such/file'\n", "broker.password_file"),
        ("[store]\npaht = 'x.db'\n", "store.paht"),
        ("[store]\nurl = 'mysql://db/x'\n", "store.url"),
        ("[log]\nlevel = 'LOUD'\n", "log.level"),
        ("[broker\n", "config file"),
    ],
)
def test_a_broken_config_is_one_line_and_exit_78(tmp_path: Path, toml: str, names: str) -> None:
    config = tmp_path / "server.toml"
    config.write_text(toml)
    result = run_server("--config", str(config))
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr


def test_a_missing_config_file_is_exit_78(tmp_path: Path) -> None:
    result = run_server("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 78 and "not found" in result.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = tmp_path / "server.toml"
    config.write_text("[broker]\nhost = 'broker.example'\nport = 1883\n")
    monkeypatch.setenv("GOCHAT_BROKER__HOST", "127.0.0.1")
    monkeypatch.setenv("GOCHAT_BROKER__PORT", "18830")
    monkeypatch.setenv("GOCHAT_BROKER__USERNAME", "gochat-server")
    monkeypatch.setenv("GOCHAT_BROKER__PASSWORD_FILE", str(secret))
    monkeypatch.setenv("GOCHAT_STORE__PATH", str(tmp_path / "s.db"))
    settings = ServerSettings.load(config)
    assert (settings.broker.host, settings.broker.port) == ("127.0.0.1", 18830)
    assert settings.store.path == tmp_path / "s.db"
    password = settings.broker.password()
    assert password is not None and password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)  # secrets never reach logs


def test_the_shipped_example_is_valid_but_for_its_password_file() -> None:
    result = run_server("--config", str(REPO / "config" / "server.toml"))
    assert result.returncode == 78 and "broker.password_file" in result.stderr


def test_a_store_url_in_the_environment_selects_postgresql_and_hides_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "server.toml"
    config.write_text("[store]\npath = 'rooms.db'\n")
    monkeypatch.setenv("GOCHAT_STORE__URL", "postgresql://gochat:pa55word@db.lan/gochat")
    settings = ServerSettings.load(config)
    assert settings.store.url is not None  # wins over path (appliance.server.engines.open_store)
    assert settings.store.url.get_secret_value().endswith("@db.lan/gochat")
    assert "pa55word" not in repr(settings)


def test_an_unreachable_postgresql_is_one_line_and_exit_78(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(
        "[broker]\nport = 1883\n[store]\nurl = 'postgresql://u:pa55word@127.0.0.1:1/db'\n"
    )
    result = run_server("--config", str(config))
    assert result.returncode == 78, result.stderr
    assert "cannot open store" in result.stderr and "pa55word" not in result.stderr
