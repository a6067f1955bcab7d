"""The page's pure modules (packet order, the ring, Opus bytes, the room model) under
Node's own test runner: web/test/units.test.js."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

WEB = Path(__file__).resolve().parents[2] / "web"


def test_the_pages_pure_modules_pass_their_node_tests() -> None:
    node = shutil.which("node")
    assert node, "node is not installed (make venv installs nodejs)"
    done = subprocess.run(
        [node, "--test", str(WEB / "test")], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout
