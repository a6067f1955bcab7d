"""The hands-free chain end to end: a listener brought on stage hears the host through
its own speaker, and must not send that echo back into the room; its own voice must get
through while the host talks; room noise is suppressed; and two echoing boxes on stage
do not howl.

Real broker and server, appliances in process on the stand-in sound card; the
listener's card sits in a stand-in room whose echo path returns everything its speaker
plays to its microphone at 0 dB. The echo tests take what the listener publishes just
before the encoder (the chain's output, sample for sample against what its microphone
heard); the others decode what another member of the room receives (:class:`Heard`:
it holds the room's voice key, so it opens and decodes every frame). The boxes whose
stream is decoded run with DTX off (:data:`MEASURED`): these tests measure the chain's
output block for block, quiet residuals included, which DTX would leave unsent.
"""

from __future__ import annotations

import subprocess
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from appliance.hw_mocks.room import dbfs, speech_like

from appliance.audio import opus
from testbed.daemons import InProcessDaemon, wait_until
from testbed.server import RunningServer

pytest.importorskip("pywebrtc_audio", reason="pywebrtc-audio is in the audio extra")

RATE = 48_000
ECHO = "delay_ms=30,gain_db=0,rt60_ms=250"
SETTLE_S = 3.0  # the echo canceller converges within this
MEASURE_S = 3.0
STALL_AT_BLOCK = 100  # 2 s in: the echo canceller has converged by then
MEASURED = {"dtx": False}  # a continuous stream to measure (DTX sends no quiet blocks)


class Tap:
    """What a daemon's microphone heard and what its engine sent, block for block."""

    def __init__(
        self, device: InProcessDaemon, stall_s: float = 0.0, stall_at: int = STALL_AT_BLOCK
    ) -> None:
        audio = device.daemon.audio
        assert audio is not None
        hardware: Any = audio._pa_module.hardware
        self.heard: list[bytes] = []
        self.sent: list[np.ndarray] = []
        self._lock = threading.Lock()
        hear, on_block = hardware.hear, audio.sender.on_block

        def tapped_hear(n: int, rate: int, at: int) -> bytes:
            data: bytes = hear(n, rate, at)
            with self._lock:
                self.heard.append(data)
                stall = len(self.heard) == stall_at and stall_s
            if stall:  # the capture thread is held up once, as a busy CPU would
                time.sleep(stall_s)
            return data

        def tapped_on_block(pcm: np.ndarray, *, speaking: bool = False) -> bool:
            with self._lock:
                self.sent.append(pcm.copy())
            return bool(on_block(pcm, speaking=speaking))

        hardware.hear = tapped_hear
        audio.sender.on_block = tapped_on_block

    def seconds_sent(self) -> float:
        with self._lock:
            return sum(len(p) for p in self.sent) / RATE

    def per_second(self) -> list[float]:
        """dBFS of each whole second sent, from the first block on."""
        with self._lock:
            sent = np.concatenate(self.sent) if self.sent else np.zeros(0, np.int16)
        return [dbfs(sent[k * RATE : (k + 1) * RATE]) for k in range(len(sent) // RATE)]

    def levels(self) -> tuple[float, float]:
        """(mic, sent) dBFS over the measuring window after the settling time."""
        with self._lock:
            mic = np.frombuffer(b"".join(self.heard), dtype=np.int16)
            sent = np.concatenate(self.sent)
        lo, hi = int(SETTLE_S * RATE), int((SETTLE_S + MEASURE_S) * RATE)
        assert len(mic) >= hi and len(sent) >= hi
        return dbfs(mic[lo:hi]), dbfs(sent[lo:hi])


def speech_wav(path: Path, pcm: np.ndarray | None = None) -> Path:
    if pcm is None:
        pcm = speech_like(8.0, RATE, seed=4, level_dbfs=-20.0)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm.tobytes())
    return path


def echo_on_stage(
    daemons: Callable[..., InProcessDaemon],
    tmp_path: Path,
    stall_s: float = 0.0,
    **switches: bool,
) -> tuple[float, float]:
    """The host speaks; pi-ann, silent in an echoing room, is brought on stage."""
    voice = speech_wav(tmp_path / "voice.wav")
    host = daemons("pi-host", mode="host", subject="Echo",
                   audio={"mock_input": f"loop:{voice}"})  # fmt: skip
    ann = daemons("pi-ann", mode="join", audio={"mock_echo": ECHO, **switches})
    tap = Tap(ann, stall_s)
    ann.press("raise_hand")
    ann.wait_status(lambda s: s["hand_raised"])
    host.press("accept")  # the hand is up: pi-ann accepts at once, mic on
    ann.wait_status(lambda s: s["role"] == "speaker" and s["mic_on"])
    wait_until(tap.seconds_sent, lambda s: s >= SETTLE_S + MEASURE_S, 15, "ann's stream")
    status = ann.status["audio"]
    assert status["input_level_dbfs"] is not None  # publishing
    ann.stop()
    host.stop()
    return tap.levels()


@pytest.mark.timeout(60)
def test_a_listener_on_stage_does_not_send_the_host_back(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    mic, sent = echo_on_stage(daemons, tmp_path)
    assert mic > -30.0, f"the echo never reached the microphone ({mic:.1f} dBFS)"
    assert mic - sent >= 25.0, f"echo {mic:.1f} dBFS, sent {sent:.1f} dBFS"


@pytest.mark.timeout(60)
def test_a_stalled_capture_thread_keeps_the_echo_cancelled(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    # 200 ms late, then its blocks arrive back to back: still in order, so the reference
    # must keep its alignment (realigning would cost the canceller seconds to relearn).
    mic, sent = echo_on_stage(daemons, tmp_path, stall_s=0.2)
    assert mic > -30.0, f"the echo never reached the microphone ({mic:.1f} dBFS)"
    assert mic - sent >= 25.0, f"echo {mic:.1f} dBFS, sent {sent:.1f} dBFS"


@pytest.mark.timeout(60)
def test_without_echo_cancellation_the_host_comes_back(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    # Automatic gain off too: it would raise the echo (taken for a talker) by several dB,
    # and this measures what gets through, not how loud the AGC makes it.
    mic, sent = echo_on_stage(daemons, tmp_path, echo_cancellation=False, auto_gain=False)
    assert mic > -30.0, f"the echo never reached the microphone ({mic:.1f} dBFS)"
    assert abs(sent - mic) <= 3.0, f"echo {mic:.1f} dBFS, sent {sent:.1f} dBFS"


# ---------------------------------------------------------------- what a member hears


BLOCK = RATE // 50  # the default profile: 20 ms at 48 kHz (and 960 timestamp ticks)


class Heard:
    """Every frame a member receives, opened with its room key and decoded per talker.

    Taps the member's receiver on the network thread (before the jitter buffer), so the
    decoded stream is exactly what the talker published, placed by its timestamp (a
    frame left out or lost is concealed) and stamped with its arrival time.
    """

    def __init__(self, device: InProcessDaemon) -> None:
        audio: Any = device.daemon.audio  # the engine behind the port
        self.receiver: Any = audio.receiver
        self._frames: list[tuple[float, str, str, bytes]] = []
        self._lock = threading.Lock()
        on_frame = self.receiver.on_frame

        def tapped(user_id: str, topic: str, payload: bytes, arrival: float) -> None:
            with self._lock:
                self._frames.append((arrival, user_id, topic, payload))
            on_frame(user_id, topic, payload, arrival)

        self.receiver.on_frame = tapped

    def count(self, user_id: str) -> int:
        with self._lock:
            return sum(1 for f in self._frames if f[1] == user_id)

    def stream(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(decoded int16 samples from the first frame on, arrival time of each block)."""
        with self._lock:
            frames = [f for f in self._frames if f[1] == user_id]
        opener = self.receiver._opener
        opened = [(t, opener.open(payload, topic)) for t, _, topic, payload in frames]
        assert opened, f"nothing heard from {user_id}"
        # Placed by timestamp (48 kHz ticks): a frame DTX left out or the network lost
        # is concealed where it belongs, so block k is still block k of the microphone.
        first = opened[0][1].timestamp
        count = max(((f.timestamp - first) & 0xFFFF_FFFF) // BLOCK for _, f in opened) + 1
        pcm = np.zeros(count * BLOCK, np.int16)
        arrival = np.full(count, np.nan)
        with opus.Decoder(RATE) as decoder:
            done = -1
            for t, frame in opened:
                k = ((frame.timestamp - first) & 0xFFFF_FFFF) // BLOCK
                if k <= done:
                    continue  # late or duplicate
                for gap in range(done + 1, k):
                    pcm[gap * BLOCK : (gap + 1) * BLOCK] = decoder.conceal(BLOCK)
                pcm[k * BLOCK : (k + 1) * BLOCK] = decoder.decode(frame.opus)
                arrival[k], done = t, k
        return pcm, arrival


def between(pcm: np.ndarray, arrival: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The decoded blocks that arrived between ``lo`` and ``hi`` (monotonic seconds)."""
    blocks = np.flatnonzero((arrival >= lo) & (arrival < hi))
    assert len(blocks) > 0.8 * (hi - lo) * 50, f"{len(blocks)} blocks between {lo} and {hi}"
    return np.concatenate([pcm[k * BLOCK : (k + 1) * BLOCK] for k in blocks])


def on_stage(host: InProcessDaemon, guest: InProcessDaemon) -> None:
    guest.press("raise_hand")
    guest.wait_status(lambda s: s["hand_raised"])
    host.press("accept")
    guest.wait_status(lambda s: s["role"] == "speaker" and s["mic_on"])


# ---------------------------------------------------------------- double talk

B_LEAD_S = 6.0  # B silent while the host talks: the echo canceller converges
B_TALK_S = 6.0  # then B talks over the host
B_DBFS = -20.0  # B's speech at its microphone: as loud as the host's echo (0 dB)


@pytest.mark.timeout(60)
def test_double_talk_the_near_voice_gets_through_without_the_echo(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    """The host talks all along; B, on stage in a room echoing at 0 dB, starts talking
    over the host once the canceller has converged. B's decoded stream carries B's
    voice within 6 dB of its level, and the host's echo (as loud as B) neither alone nor in the pauses
    between B's words."""
    host_voice = speech_wav(tmp_path / "host.wav")  # -20 dBFS, looped: the host never stops
    b_voice = speech_like(B_TALK_S, RATE, seed=11, level_dbfs=B_DBFS)  # another voice
    b_wav = np.concatenate([np.zeros(int(B_LEAD_S * RATE), np.int16), b_voice])
    host = daemons("pi-host", mode="host", subject="Double talk",
                   audio={"mock_input": f"loop:{host_voice}"})  # fmt: skip
    guest = daemons("pi-bea", mode="join", audio={
        "mock_input": str(speech_wav(tmp_path / "bea.wav", b_wav)),  # once, from capture on
        "mock_echo": ECHO,
        **MEASURED,
    })  # fmt: skip
    heard = Heard(host)
    on_stage(host, guest)
    total = int((B_LEAD_S + B_TALK_S) / 0.02)
    wait_until(lambda: heard.count("pi-bea"), lambda n: n >= total + 10, 25, "bea's stream")
    chain: Any = guest.daemon.audio.chain  # type: ignore[attr-defined]
    state = "no chain" if chain is None else f"{chain.reference.resyncs} resyncs"
    guest.stop()
    host.stop()
    pcm, _ = heard.stream("pi-bea")
    # Block k of the stream is block k of B's microphone (its WAV starts with capture).
    lead = slice(int((B_LEAD_S - 2.0) * RATE), int(B_LEAD_S * RATE))
    echo_alone = dbfs(pcm[lead])
    assert echo_alone < B_DBFS - 20, f"echo alone sent at {echo_alone:.1f} dBFS ({state})"
    talk = slice(int(B_LEAD_S * RATE), int((B_LEAD_S + B_TALK_S) * RATE))
    sent, clean = dbfs(pcm[talk]), dbfs(b_wav[talk])
    assert abs(sent - clean) <= 6.0, f"B spoke at {clean:.1f} dBFS, sent {sent:.1f} dBFS"
    # Between B's words (100 ms after each, for the room's tail and the codec) only the
    # host's echo could be there.
    words = np.convolve(np.abs(b_wav[talk]) > 0, np.ones(RATE // 10), "full")[: len(b_wav[talk])]
    pauses = pcm[talk][words == 0]
    assert len(pauses) > RATE // 2, "B never paused"
    leak = dbfs(pauses)
    assert leak < B_DBFS - 15, f"the host's echo between B's words: {leak:.1f} dBFS"


# ---------------------------------------------------------------- noise


@pytest.mark.timeout(60)
def test_room_noise_is_suppressed(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    """Two silent boxes on stage in rooms with pink noise at -40 dBFS, one suppressing
    noise and one not: the first's stream is at least 15 dB quieter.

    Echo cancellation is off in both, so only noise suppression differs: each box plays
    the other's residual noise, and AEC3 may duck a near end while its far end is
    active (one run measured the unsuppressed stream 6 dB low, most likely so)."""
    host = daemons("pi-host", mode="host", subject="Noise")
    no_echo = {"mock_noise": "pink:-40", "echo_cancellation": False, **MEASURED}
    quiet = daemons("pi-ann", mode="join", audio=no_echo)
    noisy = daemons("pi-bob", mode="join", audio={**no_echo, "noise_suppression": False})
    heard = Heard(host)
    on_stage(host, quiet)
    on_stage(host, noisy)
    wait_until(lambda: min(heard.count("pi-ann"), heard.count("pi-bob")),
               lambda n: n >= 250, 15, "both streams")  # fmt: skip
    host.stop()
    skip = int(1.0 * RATE)  # NS learns the noise within its first second
    ann, _ = heard.stream("pi-ann")
    bob, _ = heard.stream("pi-bob")
    suppressed, unsuppressed = dbfs(ann[skip : 5 * RATE]), dbfs(bob[skip : 5 * RATE])
    assert unsuppressed > -48, f"the noise never reached the microphone ({unsuppressed:.1f})"
    assert unsuppressed - suppressed >= 15, f"{unsuppressed:.1f} -> {suppressed:.1f} dBFS"


# ---------------------------------------------------------------- no feedback loop

LOOP_S = 10.0


@pytest.mark.timeout(60)
def test_two_echoing_boxes_on_stage_do_not_howl(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    """Host and guest each hear their own speaker at 0 dB and play each other: a loop
    of gain 1 through two echo paths. The host talks; over 10 s neither stream grows."""
    voice = speech_wav(tmp_path / "voice.wav")
    echo = "delay_ms=30,gain_db=0,rt60_ms=250"
    host = daemons("pi-host", mode="host", subject="Loop",
                   audio={"mock_input": f"loop:{voice}", "mock_echo": echo, **MEASURED})  # fmt: skip
    guest = daemons("pi-ann", mode="join", audio={"mock_echo": echo, **MEASURED})
    at_host, at_guest = Heard(host), Heard(guest)
    on_stage(host, guest)
    start = time.monotonic()
    time.sleep(LOOP_S)
    guest.stop()
    host.stop()
    for name, heard, user in (("guest", at_host, "pi-ann"), ("host", at_guest, "pi-host")):
        pcm, arrival = heard.stream(user)
        early = dbfs(between(pcm, arrival, start + 1.0, start + 3.0))
        late = dbfs(between(pcm, arrival, start + LOOP_S - 2.0, start + LOOP_S - 0.2))
        assert late <= early + 2.0, f"the {name}'s stream grew: {early:.1f} -> {late:.1f} dBFS"
        assert late < -10.0, f"the {name}'s stream howls at {late:.1f} dBFS"
    guest_pcm, guest_arrival = at_host.stream("pi-ann")
    residual = dbfs(between(guest_pcm, guest_arrival, start + 5.0, start + LOOP_S - 0.2))
    assert residual < -50.0, f"the guest sends the host back at {residual:.1f} dBFS"


# ---------------------------------------------------------------- the demo's own room

DEMO_ECHO = "delay_ms=30,gain_db=-3,rt60_ms=250"  # scripts/run-dev's stand-in room ...
DEMO_NOISE = "pink:-50"  # ... on every box, the host's included
DEMO_ROOM = {"mock_echo": DEMO_ECHO, "mock_noise": DEMO_NOISE}
SENTENCE = "Good morning, and welcome to the morning room. Today we talk about the weather."
FIRST_S = 4  # a newcomer's first seconds on stage: >= 15 dB under the talker ...
EARLY_DB, LATE_DB, HOWL_DB = -15.0, -25.0, 3.0  # ... then >= 25 dB; nobody over it + 3


def espeak_wav(path: Path) -> Path:
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), SENTENCE], check=True)
    return path


def talker_level(tap: Tap) -> float:
    """The talker's level: the median of its seconds that carry speech."""
    seconds = [db for db in tap.per_second() if db > -45]
    assert len(seconds) >= 3, f"the talker was hardly heard: {tap.per_second()}"
    return float(np.median(seconds))


def under_the_talker(newcomer: Tap, talker: float) -> list[float]:
    return [round(db - talker, 1) for db in newcomer.per_second()]


def assert_quiet_from_the_first_second(relative: list[float], who: str) -> None:
    early, late = relative[:FIRST_S], relative[FIRST_S:]
    assert max(early) <= EARLY_DB, f"{who} in its first {FIRST_S} s on stage: {relative} dB"
    assert max(late) <= LATE_DB, f"{who} after {FIRST_S} s on stage: {relative} dB"


STAGE_S = 60


@pytest.mark.timeout(120)
def test_three_boxes_on_stage_in_the_demo_room_for_a_minute_with_one_talker(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    """make run's story, all of it: host, pi-ann and pi-bob all on stage, all in the
    demo's room, each hearing the other two: three loops through three echo paths. The
    host talks for a minute; no guest sends it back from its first second on stage, and
    nothing howls.

    pi-bob's first microphone block comes 150 ms late (a busy board as the mic opens),
    then the late blocks arrive back to back. Aligned on the newest reference, such a
    run read reference that was never played, and the box sent the host back for good.
    """
    voice = espeak_wav(tmp_path / "voice.wav")
    host = daemons("pi-host", mode="host", subject="Three",
                   audio={"mock_input": f"loop:{voice}", **DEMO_ROOM})  # fmt: skip
    guests = [daemons(name, mode="join", audio=DEMO_ROOM) for name in ("pi-ann", "pi-bob")]
    talker = Tap(host)
    taps = [Tap(guests[0]), Tap(guests[1], stall_s=0.15, stall_at=1)]
    for guest in guests:
        on_stage(host, guest)
    last = taps[-1]
    stage_from = len(talker.per_second())  # the host's seconds before both guests were on
    wait_until(last.seconds_sent, lambda s: s >= STAGE_S, STAGE_S + 20, "a minute on stage")
    level = talker_level(talker)
    for guest, tap in zip(guests, taps, strict=True):
        relative = under_the_talker(tap, level)
        chain: Any = guest.daemon.audio.chain  # type: ignore[attr-defined]
        assert_quiet_from_the_first_second(
            relative, f"{guest.user} ({chain.reference.resyncs} runs)"
        )
        assert guest.status["audio"]["howl_events"] == 0
    # The host's own stream, from when both guests are on stage (and past its first 5 s,
    # where AGC2 is still settling on its voice): none of their rooms comes back into it.
    host_seconds = talker.per_second()[max(stage_from, 5) :]
    assert max(host_seconds) <= level + HOWL_DB, f"the host's stream grew: {host_seconds}"


@pytest.mark.timeout(60)
def test_the_howl_guard_breaks_a_loop_the_echo_canceller_does_not(
    gochat_server: RunningServer, daemons: Callable[..., InProcessDaemon], tmp_path: Path
) -> None:
    """Two boxes on stage without echo cancellation, each hearing its speaker 6 dB over
    what it played: a loop of gain +12 dB. It rings up, and the howl guard cuts it."""
    loud = {"mock_echo": "delay_ms=30,gain_db=6,rt60_ms=250", "mock_noise": DEMO_NOISE,
            "echo_cancellation": False}  # fmt: skip
    voice = speech_wav(tmp_path / "voice.wav", speech_like(1.0, RATE, seed=4, level_dbfs=-20))
    host = daemons("pi-host", mode="host", subject="Loop", audio={"mock_input": str(voice), **loud})
    guest = daemons("pi-ann", mode="join", audio=loud)
    taps = [Tap(host), Tap(guest)]
    on_stage(host, guest)
    wait_until(taps[1].seconds_sent, lambda s: s >= 10, 25, "the loop")
    events = [box.status["audio"]["howl_events"] for box in (host, guest)]
    assert sum(events) >= 1, f"no howl was cut: {events} {[t.per_second() for t in taps]}"
    for tap in taps:  # cut and kept down: the last seconds are no howl
        assert max(tap.per_second()[-3:]) < -30, tap.per_second()
