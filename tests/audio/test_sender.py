"""The sender with DTX: what silence sends, and how fast speech comes back (real libopus,
real sealing; blocks are fed one by one, so time is counted in blocks, not slept)."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.audio import tone
from appliance.audio.profile import PROFILES
from appliance.audio.sender import Sender
from appliance.protocol import frames, topics
from appliance.protocol.voice import Opener

ROOM, USER = "room1", "alice"
KEY = bytes(range(32))
BLOCK = 960  # 20 ms at 48 kHz


class Published:
    """Every frame the sender published, opened, with the block it was sent on."""

    def __init__(self) -> None:
        self.opener = Opener()
        self.opener.add_key(1, KEY)
        self.block = 0
        self.sent: list[tuple[int, frames.AudioFrame]] = []

    def __call__(self, room: str, payload: bytes) -> None:
        frame = self.opener.open(payload, topics.audio(room, USER)).audio()
        self.sent.append((self.block, frame))


def talking(dtx: bool = True) -> tuple[Sender, Published]:
    published = Published()
    sender = Sender(PROFILES["default"], published, dtx=dtx)
    sender.set_key(ROOM, 1, KEY)
    sender.begin(ROOM, USER)
    return sender, published


def feed(sender: Sender, published: Published, pcm: np.ndarray, speaking: bool) -> None:
    for at in range(0, len(pcm) - BLOCK + 1, BLOCK):
        sender.on_block(pcm[at : at + BLOCK], speaking=speaking)
        published.block += 1


def noise(seconds: float, dbfs: float, seed: int = 7) -> np.ndarray:
    """White noise at ``dbfs`` RMS: a room's floor that libopus may code as speech."""
    x = np.random.default_rng(seed).standard_normal(round(seconds * 48_000))
    return np.round(x * 32768 * 10 ** (dbfs / 20)).astype(np.int16)


@pytest.mark.parametrize(
    "silence",
    [np.zeros(48_000 * 10, np.int16), noise(10, -55)],
    ids=["digital silence", "noise floor at -55 dBFS"],
)
def test_silence_sends_at_most_one_packet_a_second_after_400_ms(silence: np.ndarray) -> None:
    sender, published = talking()
    feed(sender, published, tone.sine(440, 48_000, amplitude=0.3), speaking=True)
    quiet_from = published.block
    feed(sender, published, silence, speaking=False)
    blocks = [b - quiet_from for b, _ in published.sent if b >= quiet_from]
    after = [b for b in blocks if b >= 20]  # 400 ms of silence
    per_second = [sum(1 for b in after if s <= b < s + 50) for s in range(20, 500)]
    assert max(per_second, default=0) <= 1, after
    assert len(after) <= 10
    assert sender.dtx_skipped >= 450


def test_speech_after_silence_is_sent_with_its_first_packet() -> None:
    sender, published = talking()
    feed(sender, published, tone.sine(440, 48_000, amplitude=0.3), speaking=True)
    feed(sender, published, noise(3, -55), speaking=False)
    before, last = len(published.sent), published.sent[-1][1]
    # the voice decision lags the first block of speech: its level sends it anyway
    sender.on_block(tone.sine(300, BLOCK, amplitude=0.3), speaking=False)
    assert len(published.sent) == before + 1
    resumed = published.sent[-1][1]
    assert resumed.seq == (last.seq + 1) & 0xFFFF  # no sequence gap: not a loss ...
    silent_blocks = published.block - published.sent[-2][0]
    assert resumed.timestamp == (last.timestamp + silent_blocks * BLOCK) & 0xFFFF_FFFF
    assert not resumed.end  # ... and the pause is silence, not the end of a spurt


def test_a_loud_steady_tone_is_sound_not_silence() -> None:
    # libopus's own DTX calls a steady tone non-speech; nobody is speaking either, but
    # it is loud: every block goes out.
    sender, published = talking()
    feed(sender, published, tone.sine(440, 48_000 * 3, amplitude=0.05), speaking=False)
    assert len(published.sent) == 150


def test_a_quiet_talker_the_voice_detector_hears_is_sent() -> None:
    sender, published = talking()
    feed(sender, published, np.zeros(48_000, np.int16), speaking=False)
    before = len(published.sent)
    feed(sender, published, noise(1, -55, seed=3), speaking=True)  # under the level gate
    assert len(published.sent) - before >= 45


def test_without_dtx_every_block_is_sent() -> None:
    sender, published = talking(dtx=False)
    feed(sender, published, np.zeros(48_000 * 2, np.int16), speaking=False)
    assert len(published.sent) == 100
    assert sender.dtx_skipped == 0


def test_the_last_packet_goes_out_even_in_silence() -> None:
    sender, published = talking()
    feed(sender, published, np.zeros(48_000 * 2, np.int16), speaking=False)
    sender.end()
    assert sender.on_block(np.zeros(BLOCK, np.int16)) is False
    assert published.sent[-1][1].end
