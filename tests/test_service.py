"""sd_notify never blocks: a notify socket nobody reads drops messages instead. Threads
get their names in the kernel, once each."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from appliance.service import name_threads, notify


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


def test_threads_carry_their_python_names_in_the_kernel() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="mqtt-network-thread")
    thread.start()
    try:
        assert name_threads() >= 1
        comm = Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip()
        assert comm == "mqtt-network-th"  # the kernel keeps 15 bytes
        assert name_threads() == 0  # each thread is written once
        thread.name = "renamed"
        assert name_threads() == 1
        assert Path(f"/proc/self/task/{thread.native_id}/comm").read_text().strip() == "renamed"
    finally:
        release.set()
        thread.join()
