"""Room voice keys end to end (PROTOCOL.md 7 and 7.1): a real broker, the real server,
appliance daemons speaking a tone, and frames captured off the broker by a tap.

The tap (:class:`testbed.voice.AudioTap`) is any authenticated client: the ACL lets
every client read every room's audio, so confidentiality rests on who gets keys. Each
test opens the captured frames with exactly the keys a given party was handed.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.client import GoChatClient
from appliance.protocol import models as m
from appliance.protocol import topics, voice
from appliance.server.rules import RoomService
from testbed import Broker, MqttClientFactory
from testbed.daemons import CoapClient, InProcessDaemon, wait_until
from testbed.server import OffsetClock, RunningServer, connect
from testbed.voice import AudioTap, Captured, decode_key, keyring, media_key_pushes, opens

TONE = {"mock_input": "tone:440"}


@pytest.fixture
def clients(broker: Broker) -> Iterator[Callable[[str], GoChatClient]]:
    """Factory of connected, logged-in GoChat clients (closed after the test)."""
    made: list[GoChatClient] = []

    def make(user: str) -> GoChatClient:
        made.append(connect(broker, user))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def taps(broker: Broker, mqtt_client: MqttClientFactory) -> Callable[..., AudioTap]:
    """Factory of audio taps: ``taps(*room_ids, clock=...)``, each its own account."""
    count = iter(range(1, 100))

    def make(*room_ids: str, clock: Callable[[], float] = time.monotonic) -> AudioTap:
        return AudioTap(mqtt_client(broker, f"pi-tap{next(count)}"), *room_ids, clock=clock)

    return make


class RestartableServer:
    """The server on its own database file, stopped and started again on demand."""

    def __init__(self, broker: Broker, db: Path) -> None:
        self.broker, self.db = broker, db
        self.clock = OffsetClock()  # one clock across restarts
        self.running = RunningServer(broker, db, self.clock).start()

    @property
    def service(self) -> RoomService:
        assert self.running.server is not None
        return self.running.server.service

    def stop(self) -> None:
        self.running.stop()

    def start(self) -> None:
        self.running = RunningServer(self.broker, self.db, self.clock).start()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def restartable(broker: Broker, tmp_path: Path) -> Iterator[RestartableServer]:
    server = RestartableServer(broker, tmp_path / "voice.db")
    yield server
    with contextlib.suppress(RuntimeError):  # already stopped by a failed test
        server.running.stop()


def of_epochs(
    frames: list[Captured], epochs: set[int], speaker: str | None = None
) -> list[Captured]:
    return [f for f in frames if f.epoch in epochs and (speaker is None or f.speaker == speaker)]


# ---------------------------------------------------------------- 1. outsiders


def test_a_non_member_receives_the_frames_but_opens_none(
    gochat_server: RunningServer,
    daemons: Callable[..., InProcessDaemon],
    taps: Callable[..., AudioTap],
    clients: Callable[[str], GoChatClient],
) -> None:
    host = daemons("pi-host", mode="host", subject="Secret", audio=TONE)
    room_id = host.status["room_id"]
    eve = taps(room_id)  # never joins anything
    ann = clients("ann")
    media = ann.call("login_room", room_id=room_id)["media"]
    epoch = media["epoch"]
    # Until the host seals with ann's epoch (a join may rotate), older frames go by.
    frames = eve.wait(lambda fs: len(of_epochs(fs, {epoch})) >= 50)
    assert all(f.topic == topics.audio(room_id, "pi-host") for f in frames)

    # The eavesdropper, with no key: every frame is sealed under an epoch it lacks.
    no_key = voice.Opener()
    for frame in frames:
        with pytest.raises(voice.UnknownEpochError):
            no_key.open(frame.payload, frame.topic)
    # With guessed keys filed under every epoch it saw: every frame fails its tag.
    seen = {f.epoch for f in frames}
    for guess in (bytes(32), hashlib.sha256(room_id.encode()).digest(), b"\xff" * 32):
        guessed = voice.Opener()
        for e in sorted(seen):
            guessed.add_key(e, guess)
        for frame in frames:
            with pytest.raises(voice.AuthenticationError):
                guessed.open(frame.payload, frame.topic)
        assert guessed.counters["frames_rejected"] == len(frames)

    # The member opens every frame of its epoch (and open checks the Opus TOC).
    member = keyring([media, *media_key_pushes(ann, room_id)])
    mine = of_epochs(frames, {epoch})
    assert len(mine) >= 50
    for frame in mine:
        opened = member.open(frame.payload, frame.topic)
        assert opened.epoch == epoch and len(opened.opus) >= 1


# ---------------------------------------------------------------- 2. departures


def test_a_listener_who_quits_cannot_open_new_frames_within_3_s(
    gochat_server: RunningServer,
    daemons: Callable[..., InProcessDaemon],
    taps: Callable[..., AudioTap],
    clients: Callable[[str], GoChatClient],
) -> None:
    host = daemons("pi-host", mode="host", subject="Leaving", audio=TONE)
    room_id = host.status["room_id"]
    tap = taps(room_id)
    bob, ann = clients("bob"), clients("ann")
    # The worst case: ann quits right after a rotation, so the departure's rotation
    # is deferred to that epoch's 2 s mark. bob's join into an old epoch rotates.
    gochat_server.clock.advance(2.5)
    bob_media = bob.call("login_room", room_id=room_id)["media"]
    ann_media = ann.call("login_room", room_id=room_id)["media"]
    assert ann_media == bob_media  # a join within 2 s shares the epoch
    epoch = ann_media["epoch"]
    tap.wait(lambda fs: len(of_epochs(fs, {epoch})) >= 5)  # ann hears the host now

    quit_at = time.monotonic()
    ann.call("quit_room", room_id=room_id)
    rotation = bob.next_inbox("media_key", timeout_s=5)
    while isinstance(rotation, m.MediaKeyPush) and rotation.epoch <= epoch:
        rotation = bob.next_inbox("media_key", timeout_s=5)  # bob's own join's push
    assert isinstance(rotation, m.MediaKeyPush) and rotation.epoch == epoch + 1
    assert time.monotonic() - quit_at <= 3.0
    # Frames keep coming; collect those that arrive 3 s after the quit and a bit more.
    frames = tap.wait(lambda fs: sum(f.at > quit_at + 3.0 for f in fs) >= 10)

    # Every key ann was ever handed (its join's and every push, read only now).
    ann_pushes = media_key_pushes(ann, room_id)
    assert all(p.epoch <= epoch for p in ann_pushes)  # no key after the departure
    ann_keys = keyring([ann_media, *ann_pushes])
    bob_keys = keyring([bob_media, *media_key_pushes(bob, room_id), rotation])
    late = [f for f in frames if f.at > quit_at + 3.0]
    assert all(f.epoch == epoch + 1 for f in late)
    for frame in late:
        assert not opens(ann_keys, frame)
        assert opens(bob_keys, frame)
    # Everything sealed after the post-departure rotation is closed to ann, and the
    # first such frame reached the broker within 3 s of the quit.
    sealed_after = of_epochs(frames, {epoch + 1})
    assert sealed_after[0].at - quit_at <= 3.0
    assert not any(opens(ann_keys, f) for f in sealed_after)
    # Until then ann could still listen (no key is taken back): the rotation is the cut.
    before = [f for f in frames if f.epoch == epoch and f.at < quit_at]
    assert before and all(opens(ann_keys, f) for f in before)


# ---------------------------------------------------------------- 3. joins


def test_a_joiner_opens_no_frame_sealed_more_than_2_s_before_it_joined(
    gochat_server: RunningServer,
    daemons: Callable[..., InProcessDaemon],
    taps: Callable[..., AudioTap],
    clients: Callable[[str], GoChatClient],
) -> None:
    clock = gochat_server.clock  # the tap stamps arrivals on the server's clock
    host = daemons("pi-host", mode="host", subject="Joining", audio=TONE)
    room_id = host.status["room_id"]
    tap = taps(room_id, clock=clock)
    ann, bob = clients("ann"), clients("bob")
    tap.wait(lambda fs: len(fs) >= 25)  # half a second of the host's voice
    clock.advance(2.5)  # ... which is now more than 2 s old, on the server's clock
    tap.wait(lambda fs: sum(f.at > fs[0].at + 2.5 for f in fs) >= 10)  # and some younger

    ann_at = clock()
    ann_media = ann.call("login_room", room_id=room_id)["media"]
    assert ann_media["epoch"] == 2  # a join into an epoch older than 2 s rotates
    ann_epoch = {ann_media["epoch"]}
    tap.wait(lambda fs: len(of_epochs(fs, ann_epoch)) >= 25)  # half a second of epoch 2

    bob_at = clock()  # bob joins within 2 s of the rotation: he shares epoch 2
    bob_media = bob.call("login_room", room_id=room_id)["media"]
    assert bob_media == ann_media
    frames = tap.wait(lambda fs: sum(f.at > bob_at for f in fs) >= 10)

    ann_keys = keyring([ann_media, *media_key_pushes(ann, room_id)])
    bob_keys = keyring([bob_media, *media_key_pushes(bob, room_id)])
    for keys, joined_at in ((ann_keys, ann_at), (bob_keys, bob_at)):
        old = [f for f in frames if f.at < joined_at - 2.0]
        assert len(old) >= 25
        assert not any(opens(keys, f) for f in old)
        # Whatever a joiner opens was sealed under an epoch that began at most 2 s
        # before it joined: it reached the broker no earlier than that.
        assert all(f.at >= joined_at - 2.0 for f in frames if opens(keys, f))
    # ann opens nothing from before her join; bob opens the up to 2 s before his.
    assert not any(opens(ann_keys, f) for f in frames if f.at < ann_at)
    assert sum(opens(bob_keys, f) for f in frames if f.at < bob_at) >= 25
    # And both open what the host says after they joined.
    assert all(opens(ann_keys, f) and opens(bob_keys, f) for f in of_epochs(frames, ann_epoch))


# ---------------------------------------------------------------- 4. tampering


def test_tampering_with_any_header_byte_or_the_topic_fails(
    gochat_server: RunningServer,
    daemons: Callable[..., InProcessDaemon],
    taps: Callable[..., AudioTap],
    clients: Callable[[str], GoChatClient],
) -> None:
    host = daemons("pi-host", mode="host", subject="Tamper", audio=TONE)
    room_id = host.status["room_id"]
    other_room = "zzzzzzzzzzzzzzzz"
    tap = taps(room_id, other_room)
    mallory = clients("mallory")  # a member: holds the key, yet cannot forge
    media = mallory.call("login_room", room_id=room_id)["media"]
    room_key, epoch = decode_key(media["key"]), media["epoch"]
    frames = tap.wait(lambda fs: len(of_epochs(fs, {epoch}, "pi-host")) >= 5)
    frame = of_epochs(frames, {epoch}, "pi-host")[-1]
    assert keyring([media]).open(frame.payload, frame.topic).epoch == epoch  # intact: opens

    def holding(e: int) -> voice.Opener:
        """A keyring with the room key filed under epoch ``e`` too: the header's epoch
        then finds a key, so only the tag can refuse the frame."""
        opener = keyring([media])
        if e != epoch:
            opener.add_key(e, room_key)
        return opener

    for index in range(voice.HEADER_BYTES):
        for bit in range(8):
            tampered = bytearray(frame.payload)
            tampered[index] ^= 1 << bit
            if index == 0 or (index == 1 and bit >= 2):
                expected: type[voice.VoiceError] = voice.MalformedFrameError  # version, reserved
            elif int.from_bytes(tampered[8:12], "big") == 0:
                expected = voice.UnknownEpochError  # epoch 0 is never valid
            else:
                expected = voice.AuthenticationError
            e = int.from_bytes(tampered[8:12], "big") or epoch
            with pytest.raises(expected):
                holding(e).open(bytes(tampered), frame.topic)
            with pytest.raises(voice.VoiceError):  # with the member's keys as they are
                keyring([media]).open(bytes(tampered), frame.topic)

    # Delivered through the broker on another speaker's topic (mallory's own: the ACL
    # lets it publish nowhere else), in this room and in another: the tag fails.
    elsewhere = [topics.audio(room_id, "mallory"), topics.audio(other_room, "mallory")]
    for topic in elsewhere:
        assert mallory.publish_raw(topic, frame.payload) == 0
    relayed = tap.wait(lambda fs: sum(f.topic in elsewhere for f in fs) == 2)
    for copy in (f for f in relayed if f.topic in elsewhere):
        assert copy.payload == frame.payload  # byte for byte what the host sent
        with pytest.raises(voice.AuthenticationError):
            keyring([media]).open(copy.payload, copy.topic)


# ---------------------------------------------------------------- 5. restarts


def test_two_speakers_hear_each_other_across_a_server_restart(
    restartable: RestartableServer,
    daemons: Callable[..., InProcessDaemon],
    taps: Callable[..., AudioTap],
    clients: Callable[[str], GoChatClient],
    coap: CoapClient,
) -> None:
    def audio(device: InProcessDaemon) -> dict[str, Any]:
        body: dict[str, Any] = coap.get(device.coap_port, "/status").body["audio"]
        return body

    def both_hear(more: int = 25) -> None:
        """Each appliance opens at least ``more`` new frames of the other; none refused."""
        for device in (host, ann):
            start = audio(device)["frames_received"]
            wait_until(
                lambda d=device: audio(d),  # type: ignore[misc]
                lambda a, n=start: a["frames_received"] >= n + more,  # type: ignore[misc]
                10,
                f"{device.user} hears the other",
            )
            assert audio(device)["frames_rejected"] == 0

    host = daemons("pi-host", mode="host", subject="Duet", audio=TONE)
    room_id = host.status["room_id"]
    tap = taps(room_id)
    carl = clients("carl")  # a listener who keeps every key it is handed
    carl_keys: list[Any] = [carl.call("login_room", room_id=room_id)["media"]]
    ann = daemons("pi-ann", mode="join", audio={"mock_input": "tone:660"})
    ann.press("raise_hand")
    ann.wait_status(lambda s: s["hand_raised"])
    host.press("accept")  # the invitation; ann's hand was up, so she takes the seat
    ann.wait_status(lambda s: s["role"] == "speaker" and s["mic_on"])
    both_hear()

    before = restartable.service.voice.current(room_id)
    epoch, key = before.epoch, before.key
    restartable.restart()  # a new server on the same database
    restarted_at = time.monotonic()
    after = restartable.service.voice.current(room_id)
    assert (after.epoch, after.key) == (epoch, key)  # the key survived, no rotation
    both_hear()
    # What the two said after the restart opens with the keys carl got before it.
    frames = tap.wait(
        lambda fs: all(
            sum(f.at > restarted_at and f.speaker == who for f in fs) >= 10
            for who in ("pi-host", "pi-ann")
        )
    )
    carl_keys += media_key_pushes(carl, room_id)
    since = [f for f in frames if f.at > restarted_at]
    assert {f.epoch for f in since} == {epoch}
    assert all(opens(keyring(carl_keys), f) for f in since)

    # Epochs continue from the stored one: a join into the old epoch makes epoch + 1,
    # which both speakers seal with and both open (and carl, by its push).
    restartable.clock.advance(2.5)
    dave_media = clients("dave").call("login_room", room_id=room_id)["media"]
    assert dave_media["epoch"] == epoch + 1
    push = carl.next_inbox("media_key")
    assert isinstance(push, m.MediaKeyPush) and push.epoch == epoch + 1
    carl_keys.append(push)
    frames = tap.wait(
        lambda fs: all(len(of_epochs(fs, {epoch + 1}, who)) >= 10 for who in ("pi-host", "pi-ann"))
    )
    both_hear()
    for frame in of_epochs(frames, {epoch + 1}):
        assert opens(keyring(carl_keys), frame) and opens(keyring([dave_media]), frame)


def test_a_departure_just_before_a_server_restart_still_rotates(
    restartable: RestartableServer,
    daemons: Callable[..., InProcessDaemon],
    taps: Callable[..., AudioTap],
    clients: Callable[[str], GoChatClient],
) -> None:
    host = daemons("pi-host", mode="host", subject="Crash", audio=TONE)
    room_id = host.status["room_id"]
    tap = taps(room_id)
    bob, ann = clients("bob"), clients("ann")
    restartable.clock.advance(2.5)
    bob_media = bob.call("login_room", room_id=room_id)["media"]  # rotates: a young epoch
    ann_media = ann.call("login_room", room_id=room_id)["media"]
    epoch = ann_media["epoch"]
    ann.call("quit_room", room_id=room_id)  # its rotation waits for the epoch's 2 s mark
    restartable.stop()
    assert restartable.service.voice.current(room_id).rotate_at is not None  # still pending
    restartable.clock.advance(3.0)  # the rotation fell due while the server was away
    restartable.start()

    rotation = bob.next_inbox("media_key", timeout_s=5)
    while isinstance(rotation, m.MediaKeyPush) and rotation.epoch <= epoch:
        rotation = bob.next_inbox("media_key", timeout_s=5)
    assert isinstance(rotation, m.MediaKeyPush) and rotation.epoch == epoch + 1
    frames = tap.wait(lambda fs: len(of_epochs(fs, {epoch + 1})) >= 10)
    ann_keys = keyring([ann_media, *media_key_pushes(ann, room_id)])
    bob_keys = keyring([bob_media, *media_key_pushes(bob, room_id), rotation])
    for frame in of_epochs(frames, {epoch + 1}):
        assert opens(bob_keys, frame) and not opens(ann_keys, frame)
