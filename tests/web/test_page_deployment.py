"""A deployment's shape, run for real on the loopback: nginx from the OS packages serves
the page over HTTPS with the shipped site (config/nginx/gochat.conf, only its ports and
paths substituted), with the broker's certificate from the site's CA, and the page
logs in over the broker's WSS listener. Chromium trusts the site's certificate as a
browser that imported the CA would (by the certificate's public key)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.sync_api import Playwright, expect

from testbed import Broker, free_ports
from testbed.server import RunningServer
from testbed.web import CHROMIUM, PageUser, chromium_args

REPO = Path(__file__).resolve().parents[2]
SHIPPED_SITE = REPO / "config" / "nginx" / "gochat.conf"


def site_conf(http_port: int, https_port: int, cert: Path, key: Path, root: Path) -> str:
    """The shipped site on loopback ports, with these files."""
    text = SHIPPED_SITE.read_text(encoding="utf-8")
    text = text.replace("    listen [::]:80;\n", "").replace("    listen [::]:443 ssl;\n", "")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    text = text.replace("/etc/mosquitto/gochat/server.crt", str(cert))
    text = text.replace("/etc/mosquitto/gochat/server.key", str(key))
    return text.replace("root /opt/gochat/web;", f"root {root};")


class Nginx:
    """nginx in the foreground with a main config of ours around the shipped site."""

    def __init__(self, workdir: Path, site: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "site.conf").write_text(site, encoding="utf-8")
        temp = "".join(
            f"{kind}_temp_path {workdir}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"daemon off;\nmaster_process off;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\n"
            f"events {{}}\nhttp {{\ninclude /etc/nginx/mime.types;\naccess_log off;\n{temp}"
            f"include {workdir}/site.conf;\n}}\n",
            encoding="utf-8",
        )
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> None:
        check = subprocess.run(
            ["nginx", "-t", "-c", str(self.conf)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(["nginx", "-c", str(self.conf)], stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise AssertionError((self.workdir / "error.log").read_text())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def site(web_broker: Broker, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The page installed as the installer does, served by nginx; (https url, http port)."""
    if shutil.which("nginx") is None:
        pytest.fail("nginx is not installed (make venv installs nginx-light)")
    root = tmp_path / "web"
    shutil.copytree(
        REPO / "web", root, ignore=shutil.ignore_patterns("node_modules", "package*.json")
    )
    (root / "config.json").write_text(
        json.dumps({"broker_url": f"wss://127.0.0.1:{web_broker.wss_port}/"})
    )
    http_port, https_port = free_ports(2)
    tls = web_broker.tls
    nginx = Nginx(tmp_path / "nginx", site_conf(http_port, https_port, tls.cert, tls.key, root))
    nginx.start(http_port)
    yield f"https://127.0.0.1:{https_port}/", http_port
    nginx.stop()


def spki_sha256(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_nginx_serves_the_page_over_https_and_it_logs_in_over_wss(
    site: tuple[str, int],
    web_broker: Broker,
    web_server: RunningServer,
    playwright: Playwright,
    tmp_path: Path,
) -> None:
    url, http_port = site
    trusted = ssl.create_default_context(cafile=str(web_broker.ca_file))
    with urllib.request.urlopen(url + "js/app.js", context=trusted) as answer:
        assert answer.headers["Content-Type"] == "application/javascript"
        assert answer.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert answer.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    plain = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
    plain.request("GET", "/x")
    redirect = plain.getresponse()
    assert redirect.status == 301 and redirect.headers["Location"].startswith("https://")
    plain.close()

    mic = tmp_path / "silence.wav"
    subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", str(mic), "trim", "0", "1"], check=True)
    args = [
        *chromium_args(mic),
        f"--ignore-certificate-errors-spki-list={spki_sha256(web_broker.tls.cert)}",
    ]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    try:
        person = PageUser(browser, url, "web-tls", web_broker.add_user("web-tls"))
        person.login()
        assert person.page.evaluate("crossOriginIsolated") is True
        room_id = person.create_room("Over TLS")
        expect(person.by("room-view")).to_have_attribute("data-room-id", room_id)
        assert not person.errors
    finally:
        browser.close()
