"""``gochat-server --config FILE``: load, connect, serve until SIGTERM/SIGINT.

``gochat-server check-config FILE`` validates a configuration: prints ``ok``, or the
one-line error and exits 78, as the server would at start.
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


def main(argv: list[str] | None = None) -> int:
    """Run the business server (or ``check-config FILE``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check-config"]:
        return _check_config(argv[1:])
    parser = argparse.ArgumentParser(prog="gochat-server", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML config (env GOCHAT_* overrides)")
    args = parser.parse_args(argv)
    try:
        settings = ServerSettings.load(args.config)
    except ConfigError as exc:
        print(f"gochat-server: {exc}", file=sys.stderr)
        return EX_CONFIG
    logging.basicConfig(
        level=settings.log.level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        store = open_store(settings.store, settings.username)
    except StoreError as exc:
        print(f"gochat-server: {exc}", file=sys.stderr)
        return EX_CONFIG
    asyncio.run(serve(settings, store))
    return 0


def _check_config(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gochat-server check-config", description="validate a server configuration"
    )
    parser.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    try:
        ServerSettings.load(args.config)
    except ConfigError as exc:
        print(f"gochat-server: {exc}", file=sys.stderr)
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
