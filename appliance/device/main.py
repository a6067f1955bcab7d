"""``gochat-appliance``: run the daemon, check a configuration, or watch devices.

::

    gochat-appliance run [--config FILE] [--mock-hw] [-v]
    gochat-appliance check-config FILE
    gochat-appliance console [--ports 5683,5684,5685] [--host 127.0.0.1]
    gochat-appliance status [--port 5683] [--host 127.0.0.1] [--wait-in-room]

Kept light on purpose: each command imports only what it needs, so ``--help`` and
the daemon's start (READY=1) stay fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from appliance.audio.devices import PyAudioModule
    from appliance.device.daemon import Hardware
    from appliance.device.settings import AudioSettings

STARTED_AT = time.monotonic()
EX_CONFIG = 78
SILENT_DBFS = -60.0
"""``test-audio`` fails when the recording's level is below this."""
PROG = "gochat-appliance"


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="The GoChat appliance: a voice-room member with three buttons."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the daemon (systemd: Type=notify)",
        description="Run the appliance: join or host a room as the config says, and turn"
        " the buttons, LEDs, microphone and speaker into a member of it.",
    )
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config (default /etc/gochat/appliance.toml; env GOCHAT_* overrides)",
    )
    run.add_argument(
        "--mock-hw",
        action="store_true",
        help="GPIO and sound on stand-ins (hw_mocks): press buttons over CoAP",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    check = sub.add_parser(
        "check-config",
        help='validate a config: prints "ok" or the error',
        description="Validate a configuration as the daemon would at start, environment"
        ' overrides (GOCHAT_*) included, and the files it names: prints "ok", or one'
        " line naming the key, where its value came from and why (exit 78).",
    )
    check.add_argument("config", type=Path, metavar="FILE", help="e.g. /etc/gochat/appliance.toml")
    console = sub.add_parser(
        "console",
        help="watch and press appliances over CoAP (curses)",
        description="Watch appliances' LEDs blink live and press their buttons, over their"
        " local CoAP API (in a terminal; ? shows the keys, q quits).",
    )
    console.add_argument(
        "--ports",
        default="5683,5684,5685",
        help="comma-separated CoAP ports (default: %(default)s)",
    )
    console.add_argument("--host", default="127.0.0.1", help="CoAP host (default: %(default)s)")
    status = sub.add_parser(
        "status",
        help="print an appliance's /status (JSON)",
        description="Print an appliance's /status as JSON: connection, room, role, mic,"
        " hand, invitation, LEDs and audio counters (exit 1 when it does not answer).",
    )
    status.add_argument("--port", type=int, default=5683, help="CoAP port (default: %(default)s)")
    status.add_argument("--host", default="127.0.0.1", help="CoAP host (default: %(default)s)")
    status.add_argument(
        "--wait-in-room", action="store_true", help="first wait until it is online in a room"
    )
    status.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        help="seconds to wait with --wait-in-room (default: 15); else at most 2",
    )
    devices = sub.add_parser(
        "audio-devices",
        help="list the ALSA devices PortAudio sees",
        description="List the ALSA devices PortAudio sees: the names for the [audio]"
        " section's input_device and output_device.",
    )
    devices.add_argument("--mock-hw", action="store_true", help="list the stand-in devices")
    test = sub.add_parser(
        "test-audio",
        help="play a tone, then record a few seconds: check speaker and mic",
        description="Play a 440 Hz tone on the speaker, then record from the microphone"
        " and report its level and pitch (exit 1 when it heard almost nothing). Reads"
        " only the [audio] section of the config.",
    )
    test.add_argument("--config", type=Path, default=None, help="take the devices from here")
    test.add_argument("--mock-hw", action="store_true", help="use the stand-in devices")
    test.add_argument("--seconds", type=float, default=3.0, help="recording length")
    test.add_argument("--wav", type=Path, default=None, help="keep the recording here")
    enroll = sub.add_parser(
        "enroll",
        help="make this device's TLS key and certificate request",
        description="Make this device's TLS key (kept if there is one; it never leaves"
        " the device) and a certificate request for the deployment's CA to sign"
        " (gochat-admin sign-device).",
    )
    enroll.add_argument("--device", required=True, help="its user id (the certificate's CN)")
    enroll.add_argument(
        "--dir", type=Path, default=Path("/etc/gochat/tls"), help="default: %(default)s"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "status":
        from appliance.tools.console import status_command

        return status_command(
            args.host, args.port, wait_in_room=args.wait_in_room, timeout_s=args.timeout
        )
    if args.command == "console":
        from appliance.tools.console import run_console

        return run_console(args.host, args.ports)
    if args.command == "enroll":
        return _enroll(args.device, args.dir)
    if args.command in ("audio-devices", "test-audio"):
        return _audio_command(args)
    return _run(args.config, mock_hw=args.mock_hw, verbose=args.verbose)


def _audio_command(args: argparse.Namespace) -> int:
    from appliance.audio import check
    from appliance.device.settings import DEFAULT_CONFIG_PATH, AudioOnlySettings
    from appliance.settings import ConfigError

    config = args.config if args.command == "test-audio" else None
    if config is None and DEFAULT_CONFIG_PATH.exists():
        config = DEFAULT_CONFIG_PATH
    try:
        audio = AudioOnlySettings.load(config).audio  # no broker credentials needed
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_CONFIG
    module = pyaudio_for(audio, mock_hw=args.mock_hw)
    if module is None:
        print(f"{PROG}: PyAudio is not installed", file=sys.stderr)
        return 69  # EX_UNAVAILABLE
    if args.command == "audio-devices":
        print(check.device_table(module))
        return 0
    try:
        print(f"playing a 440 Hz tone on {audio.output_device!r} ...")
        check.play_tone(module, audio.output_device)
        print(f"recording {args.seconds:g} s from {audio.input_device!r} ...")
        heard = check.record(module, audio.input_device, args.seconds, args.wav)
    except (OSError, LookupError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 69
    print(f"level {heard.level_dbfs:.1f} dBFS, dominant frequency {heard.dominant_hz:.0f} Hz")
    if heard.level_dbfs < SILENT_DBFS:
        why = (
            f"the stand-in hears GOCHAT_AUDIO__MOCK_INPUT ({audio.mock_input!r} now), e.g. tone:440"
            if args.mock_hw
            else "is it connected and unmuted (alsamixer)?"
        )
        print(f"the microphone heard (almost) nothing: {why}", file=sys.stderr)
        return 1
    return 0


def _enroll(name: str, directory: Path) -> int:
    from appliance.deploy.files import DeployError
    from appliance.device.enroll import CERT_NAME, enroll

    try:
        csr = enroll(name, directory)
    except (DeployError, OSError) as exc:  # a bad name (PkiError is one), or the files
        print(f"{PROG}: enroll: {exc}", file=sys.stderr)
        return 1
    print(f"key: {directory / 'device.key'} (stays on this device)")
    print(f"certificate request: {csr}")
    print(f"next: gochat-admin sign-device {csr} on the CA's machine; put the certificate")
    print(f"      at {directory / CERT_NAME} and the CA's ca.crt next to it")
    return 0


def _check_config(path: Path) -> int:
    from appliance.device.settings import ApplianceSettings
    from appliance.settings import ConfigError

    try:
        ApplianceSettings.load(path)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_CONFIG
    print("ok")
    return 0


def _run(path: Path | None, *, mock_hw: bool, verbose: bool) -> int:
    from appliance.device.settings import DEFAULT_CONFIG_PATH, ApplianceSettings
    from appliance.settings import ConfigError

    try:
        settings = ApplianceSettings.load(path if path is not None else DEFAULT_CONFIG_PATH)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EX_CONFIG
    _configure_logging(verbose)
    import asyncio

    from appliance.device.daemon import Daemon

    parts = hardware(settings.audio, mock_hw=mock_hw)
    daemon = Daemon(settings, hardware=parts, started_at=STARTED_AT)
    return asyncio.run(daemon.run())


def hardware(audio: AudioSettings, *, mock_hw: bool) -> Hardware:
    """The parts the daemon drives: the Pi's pins and ALSA, or with ``mock_hw`` the
    stand-ins of ``appliance.hw_mocks`` (loaded only then, never on a real Pi)."""
    from appliance.device.daemon import Hardware

    if not mock_hw:
        return Hardware(pin_factory=None, pyaudio=pyaudio_for(audio, mock_hw=False))
    from appliance.hw_mocks.gpio import mock_factory

    return Hardware(pin_factory=mock_factory(), pyaudio=pyaudio_for(audio, mock_hw=True))


def pyaudio_for(audio: AudioSettings, *, mock_hw: bool) -> PyAudioModule | None:
    """The real ``pyaudio`` module (None if not installed), or the stand-in sound card
    the ``audio.mock_*`` settings describe."""
    if mock_hw:
        from appliance.hw_mocks.audio import mock_pyaudio

        card: PyAudioModule = mock_pyaudio(
            audio.mock_input,
            audio.mock_output,
            audio.mock_unplug_file,
            echo_spec=audio.mock_echo,
            noise_spec=audio.mock_noise,
            output_keep_s=audio.mock_output_keep_s,
        )
        return card
    from appliance.audio.devices import load_pyaudio

    try:
        return load_pyaudio()
    except ImportError:
        return None


def _configure_logging(verbose: bool) -> None:
    # Under systemd, journald stamps every line itself (JOURNAL_STREAM is set then).
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=stamp + "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Library warnings (e.g. gpiozero's pin factory fallbacks) become one log line each.
    warnings.showwarning = _log_warning
    if not verbose:
        logging.getLogger("coap-server").setLevel(logging.WARNING)
        logging.getLogger("coap").setLevel(logging.WARNING)


def _log_warning(  # noqa: PLR0917  # the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)
