"""The page's sealed voice frames are docs/protocol.md 7.1 byte for byte: it reproduces
the worked example (7.2), a frame it seals opens in Python (appliance/protocol/voice.py)
and one Python seals opens in the page, superseded keys open for 5 s and no longer; and
a page that is not a member of a room hears nothing of it, even when it listens in."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np

from appliance.audio.opus import Encoder
from appliance.audio.tone import ToneGenerator
from appliance.protocol import topics, voice
from testbed.daemons import InProcessDaemon
from testbed.web import PageUser

ROOM = "k3Jx9TqLw2Vb8NcZ"
WORKED_FRAME = bytes.fromhex(
    "02010102000003c0000000071a2b3c4d2ce9e1fa2c31c6203106b58bb5d9b2cd6b387fd30e725ff9"
)

# In the page: the page's own module, with its bytes passed as arrays of numbers.
SEAL = """async ([key, user, epoch, packets, topic]) => {
    const v = await import('/js/voicecrypto.js');
    const sealer = new v.Sealer(topic, { drawStreamId: () => 0x1a2b3c4d });
    await sealer.setKey(epoch, new Uint8Array(key));
    const out = [];
    for (const [i, p] of packets.entries()) out.push(Array.from(await sealer.seal(7 + i, 960 * i, new Uint8Array(p), { end: i === packets.length - 1 })));
    return out;
}"""
OPEN = """async ([keys, frames, topic]) => {
    const v = await import('/js/voicecrypto.js');
    let now = 0;
    const opener = new v.Opener({ clock: () => now });
    for (const [epoch, key] of keys) opener.addKey(epoch, new Uint8Array(key));
    const out = [];
    for (const [at, frame] of frames) {
        now = at;
        try { const f = await opener.open(new Uint8Array(frame), topic); out.push({ opus: Array.from(f.opus), seq: f.seq, end: f.end, epoch: f.epoch }); }
        catch (error) { out.push({ refused: error.counter }); }
    }
    return out;
}"""


def opus_packets(count: int) -> list[bytes]:
    tone, encoder = ToneGenerator(440, 48_000), Encoder(frame_ms=20)
    return [encoder.encode(tone.read(960)) for _ in range(count)]


def test_the_page_reproduces_the_worked_example(people: Callable[..., PageUser]) -> None:
    page = people(login=False)
    frame = page.page.evaluate(
        """async () => {
            const v = await import('/js/voicecrypto.js');
            const key = await v.senderKey(Uint8Array.from({ length: 32 }, (_, i) => i), 'pi-kitchen');
            const opus = Uint8Array.of(0x78, 1, 2, 3, 4, 5, 6, 7);
            const fields = { flags: v.FLAG_FEC, seq: 0x0102, timestamp: 960, epoch: 7, streamId: 0x1a2b3c4d };
            return Array.from(await v.seal(key, fields, opus, 'gochat/v1/room/k3Jx9TqLw2Vb8NcZ/audio/pi-kitchen'));
        }"""
    )
    assert bytes(frame) == WORKED_FRAME


def test_frames_sealed_by_the_page_open_in_python_and_the_other_way(
    people: Callable[..., PageUser],
) -> None:
    page = people(login=False)
    key, topic = secrets.token_bytes(32), topics.audio(ROOM, "web-7")
    packets = opus_packets(5)
    sealed = page.page.evaluate(SEAL, [list(key), "web-7", 3, [list(p) for p in packets], topic])
    opener = voice.Opener()
    opener.add_key(3, key)
    opened = [opener.open(bytes(frame), topic) for frame in sealed]
    assert [f.opus for f in opened] == packets
    assert [f.seq for f in opened] == [7, 8, 9, 10, 11] and opened[-1].end
    assert {f.stream_id for f in opened} == {0x1A2B3C4D} and {f.epoch for f in opened} == {3}

    sealer = voice.Sealer(topics.audio(ROOM, "pi-host"))
    sealer.set_key(3, key)
    frames = [sealer.seal(100 + i, 960 * i, p, end=i == 4) for i, p in enumerate(packets)]
    back = page.page.evaluate(
        OPEN, [[[3, list(key)]], [[0, list(f)] for f in frames], sealer.topic]
    )
    assert [bytes(f["opus"]) for f in back] == packets
    assert back[-1]["end"] and not back[0]["end"]
    # Bound to its topic: the same frame on another speaker's topic is refused.
    moved = page.page.evaluate(
        OPEN, [[[3, list(key)]], [[0, list(frames[0])]], topics.audio(ROOM, "pi-hall")]
    )
    assert moved == [{"refused": "frames_rejected"}]


def test_the_page_keeps_a_superseded_key_for_five_seconds_only(
    people: Callable[..., PageUser],
) -> None:
    page = people(login=False)
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    sealer = voice.Sealer(topics.audio(ROOM, "pi-host"))
    sealer.set_key(1, old)
    late = sealer.seal(1, 960, opus_packets(1)[0])
    # Epoch 2 arrives at t=0: epoch 1's packets still open at 4.9 s, not at 5 s.
    result = page.page.evaluate(
        OPEN,
        [
            [[1, list(old)], [2, list(new)]],
            [[4_900, list(late)], [5_000, list(late)]],
            sealer.topic,
        ],
    )
    assert "opus" in result[0] and result[1] == {"refused": "frames_rejected"}
    junk = page.page.evaluate(
        OPEN,
        [
            [[1, list(old)]],
            [
                [0, [1, 0, 0, 0] + [0] * 40],
                [0, [2] + [0] * 10],
                [0, [*list(late[:-1]), late[-1] ^ 1]],
            ],
            sealer.topic,
        ],
    )
    assert junk == [
        {"refused": "frames_v1_dropped"},
        {"refused": "frames_malformed"},
        {"refused": "frames_rejected"},
    ]


def test_a_page_that_is_not_a_member_hears_nothing_even_listening_in(
    people: Callable[..., PageUser], appliances: Callable[..., InProcessDaemon]
) -> None:
    host = appliances("pi-host", mode="host", subject="Private", audio={"mock_input": "tone:440"})
    room_id = host.status["room_id"]
    snoop = people("web-snoop")
    # The broker lets anyone subscribe to a room's audio (docs/protocol.md 2.3): the
    # page does, and plays whatever it can open, as if the host were heard.
    snoop.page.evaluate(
        """async ([roomId, hostId]) => {
            const app = window.gochat;
            const audio = await app.audio;
            await app.ctx.resume();  // outside a room the page's audio sleeps: wake it
            audio.playout.setRoom(roomId, app.user);
            audio.playout.setHeard(new Set([hostId]));
            app.link.subscribe(`gochat/v1/room/${roomId}/audio/+`, { qos: 0 });
            app.link.addEventListener('message', (e) => audio.playout.onMessage(e.topic, e.payload, e.retain));
        }""",
        [room_id, host.user],
    )
    stats: dict[str, Any] = snoop.wait_stats(
        lambda s: s["playout"]["opener"].get("frames_rejected", 0) >= 25, what="frames refused"
    )
    assert stats["playout"]["frames_decoded"] == 0 and stats["playout"]["frames_received"] == 0
    assert np.max(np.abs(snoop.record(0.5))) == 0.0
