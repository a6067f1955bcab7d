"""sd_notify never blocks: a notify socket nobody reads drops messages instead."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from appliance.service import notify


def test_notify_to_an_unread_socket_never_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        results = [notify(f"STATUS=line {i}") for i in range(200)]  # far past the queue
        assert results[0] is True and results[-1] is False
        assert sink.recv(100) == b"STATUS=line 0"


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
