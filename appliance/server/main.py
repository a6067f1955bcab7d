"""``gochat-server``: the business server, and ``gochat-server check-config FILE``.

``gochat-server --config FILE`` loads, connects and serves until SIGTERM or SIGINT;
``check-config`` validates a configuration as the server would at start: it prints
``ok``, or the one-line error and exits 78.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from appliance.server.app import Server
from appliance.server.engines import open_store
from appliance.server.rules import RoomService
from appliance.server.settings import ServerSettings
from appliance.server.store import Store, StoreError
from appliance.service import notify, watchdog_interval_s
from appliance.settings import EX_CONFIG, ConfigError

log = logging.getLogger("gochat.server")
PROG = "gochat-server"


def build_parser() -> argparse.ArgumentParser:
    """``gochat-server [--config FILE]``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] [--config FILE]\n       {PROG} check-config [-h] FILE",
        description="The GoChat business server: users, rooms, seats, microphones, raised"
        " hands and invitations, over MQTT through the broker. Serves until SIGTERM or"
        " SIGINT.",
        epilog=f"{PROG} check-config FILE validates a configuration without serving.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config (e.g. /etc/gochat/server.toml; env GOCHAT_* overrides it)",
    )
    return parser


def build_check_parser() -> argparse.ArgumentParser:
    """``gochat-server check-config FILE``."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} check-config",
        description="Validate a server configuration as the server would at start,"
        ' environment overrides (GOCHAT_*) included, and the files it names: prints "ok",'
        " or one line naming the key, where its value came from and why (exit 78).",
    )
    parser.add_argument("config", type=Path, metavar="FILE", help="e.g. /etc/gochat/server.toml")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the business server (or ``check-config FILE``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check-config"]:
        return _check_config(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        settings = ServerSettings.load(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_CONFIG
    logging.basicConfig(
        level=settings.log.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        store = open_store(settings.store, settings.username)
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_CONFIG
    asyncio.run(serve(settings, store))
    return 0


def _check_config(argv: list[str]) -> int:
    args = build_check_parser().parse_args(argv)
    try:
        ServerSettings.load(args.config)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_CONFIG
    print("ok")
    return 0


async def serve(settings: ServerSettings, store: Store) -> None:
    """Serve until a stop signal arrives."""
    service = RoomService()
    store.load_into(service)
    server = Server(settings, service, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server.start()
    log.info("%d open rooms restored", sum(not r.closed for r in service.rooms.values()))
    watchdog = asyncio.create_task(_ready_and_watchdog(server, stop))
    try:
        await server.run(stop)
    finally:
        notify("STOPPING=1")
        watchdog.cancel()
        server.close()
        log.info("stopped; counters: %s", dict(server.counters))


async def _ready_and_watchdog(server: Server, stop: asyncio.Event) -> None:
    """READY=1 once the broker is reached; WATCHDOG=1 while the loop turns."""
    await server.connected.wait()
    notify("READY=1", "STATUS=serving")
    interval = watchdog_interval_s()
    while interval is not None and not stop.is_set():
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
