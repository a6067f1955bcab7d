"""``gochat-page``: serve the browser page (``web/``) on the loopback, for ``make run``
and the browser tests.

Deployments serve the same files with a real web server over HTTPS (the installer
configures nginx; docs/web.md); this one is for 127.0.0.1, where plain HTTP is a
secure context. It serves only files under its root, with the MIME types ES modules
and AudioWorklets need, ``config.json`` made from its arguments (where the page finds
the broker), and the cross-origin isolation headers that give the page
``SharedArrayBuffer`` (the wait-free ring between the decoders and the AudioWorklet).
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import threading
from collections.abc import Sequence
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WEB_ROOT = Path(__file__).resolve().parents[1] / "web"
LOOPBACK = "127.0.0.1"
CONFIG_PATH = "/config.json"
MQTT_BUNDLE = Path("vendor") / "mqtt.esm.js"
# Served with every file: the page is cross-origin isolated (SharedArrayBuffer) and
# never cached stale during development.
HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
         ".html": "text/html", ".json": "application/json", ".svg": "image/svg+xml",
         ".png": "image/png", ".ico": "image/x-icon"}  # fmt: skip


def site_config(broker_url: str) -> dict[str, Any]:
    """What the page reads from ``config.json``."""
    return {"broker_url": broker_url}


class PageHandler(SimpleHTTPRequestHandler):
    """Static files from the root, ``/config.json`` from memory; nothing else."""

    extensions_map = {**mimetypes.types_map, **TYPES}  # noqa: RUF012 (the base class's hook)
    config_body = b"{}"

    def end_headers(self) -> None:
        for name, value in HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == CONFIG_PATH:
            self._send_config()
            return
        super().do_GET()

    def list_directory(self, path: str | Path) -> None:  # type: ignore[override]
        self.send_error(HTTPStatus.NOT_FOUND, "no listing")

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: the page polls nothing, errors show in the browser."""

    def _send_config(self) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.config_body)))
        self.end_headers()
        self.wfile.write(self.config_body)


class PageServer:
    """The page on ``http://host:port/`` from a background thread (tests, benchmarks)."""

    def __init__(self, broker_url: str, *, root: Path = WEB_ROOT, host: str = LOOPBACK,
                 port: int = 0) -> None:  # fmt: skip
        check_root(root)
        body = json.dumps(site_config(broker_url)).encode()
        handler = type("Handler", (PageHandler,), {"config_body": body})
        self.httpd = ThreadingHTTPServer((host, port), partial(handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The page's address."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> PageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


def check_root(root: Path) -> None:
    """Raise FileNotFoundError unless ``root`` holds the page and its MQTT.js bundle."""
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"no page in {root}")
    if not (root / MQTT_BUNDLE).is_file():
        raise FileNotFoundError(f"{root / MQTT_BUNDLE} is missing: 'make venv' installs it")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; prints the page's address on a line of its own (or
    writes it to ``--url-file``, once it serves)."""
    parser = argparse.ArgumentParser(prog="gochat-page", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker-url", required=True, help="the broker's WebSocket URL")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1)")
    parser.add_argument("--root", type=Path, default=WEB_ROOT, help="the page's files")
    parser.add_argument("--url-file", type=Path, help="also write the address to this file")
    args = parser.parse_args(argv)
    try:
        server = PageServer(args.broker_url, root=args.root, host=args.host, port=args.port)
    except (OSError, FileNotFoundError) as exc:
        print(f"gochat-page: {exc}", file=sys.stderr)
        return 1
    if args.url_file:
        args.url_file.write_text(server.url + "\n", encoding="utf-8")
    else:
        print(server.url, flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
