// The page's pure modules under Node's own test runner (no browser needed):
// node --test web/test/   (tests/web/test_page_units.py runs it with the rest).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { durationMs, hasFec } from '../js/opus.js';
import { Ring } from '../js/ring.js';
import { RoomModel } from '../js/room.js';
import { seqDelta, Sequencer } from '../js/sequencer.js';

const frame = (seq, streamId = 1) => ({ seq, streamId, timestamp: seq * 960, duration: 20, opus: new Uint8Array([0x78]) });
const played = (actions) => actions.map((a) => (a.decode ? a.decode.seq : `gap${a.conceal}`));

test('packets in order are decoded at once', () => {
  const s = new Sequencer();
  assert.deepEqual(played(s.push(frame(10), 0)), [10]);
  assert.deepEqual(played(s.push(frame(11), 20)), [11]);
});

test('a reordered packet waits for the one before it', () => {
  const s = new Sequencer();
  s.push(frame(1), 0);
  assert.deepEqual(played(s.push(frame(3), 20)), []);
  assert.deepEqual(played(s.push(frame(2), 25)), [2, 3]);
  assert.equal(s.stats.lost, 0);
});

test('a gap is concealed after the hold time, or when too many wait', () => {
  const s = new Sequencer({ holdMs: 60, maxHeld: 3 });
  s.push(frame(1), 0);
  s.push(frame(3), 20);
  assert.deepEqual(played(s.poll(50)), []);
  assert.deepEqual(played(s.poll(80)), ['gap960', 3]);
  s.push(frame(5), 100);
  s.push(frame(6), 101);
  s.push(frame(7), 102);
  assert.deepEqual(played(s.push(frame(8), 103)), ['gap960', 5, 6, 7, 8]);
  assert.equal(s.stats.lost, 2);
});

test('late and repeated packets are dropped', () => {
  const s = new Sequencer();
  s.push(frame(5), 0);
  s.push(frame(6), 20);
  assert.deepEqual(played(s.push(frame(5), 30)), []);
  s.push(frame(8), 40);
  assert.deepEqual(played(s.push(frame(8), 41)), []);
  assert.equal(s.stats.late, 1);
  assert.equal(s.stats.duplicate, 1);
});

test('a new stream that does not follow on re-synchronises, without a loss', () => {
  const s = new Sequencer();
  s.push(frame(100, 1), 0);
  assert.deepEqual(played(s.push(frame(7, 2), 500)), [7]);
  assert.equal(s.stats.lost, 0);
  assert.equal(s.stats.resync, 1);
  assert.deepEqual(played(s.push(frame(8, 3), 520)), [8]); // a new id that follows on
});

test('sequence numbers wrap', () => {
  assert.equal(seqDelta(0, 0xffff), 1);
  assert.equal(seqDelta(0xffff, 0), -1);
  const s = new Sequencer();
  s.push(frame(0xffff), 0);
  assert.deepEqual(played(s.push({ ...frame(0), timestamp: 0 }, 20)), [0]);
});

test('the ring wraps around and never overfills', () => {
  const ring = new Ring(Ring.storage(8, false));
  assert.equal(ring.push(Float32Array.from([1, 2, 3, 4, 5, 6])), 6);
  const out = new Float32Array(4);
  assert.equal(ring.mixInto(out, 0, 4), 4);
  assert.deepEqual([...out], [1, 2, 3, 4]);
  assert.equal(ring.push(Float32Array.from([7, 8, 9, 10, 11, 12, 13])), 6); // 2 held + 6
  assert.equal(ring.available(), 8);
  assert.equal(ring.skip(3), 3);
  const rest = new Float32Array(5);
  ring.mixInto(rest, 0, 5);
  assert.deepEqual([...rest], [8, 9, 10, 11, 12]);
});

test('Opus durations and the FEC flag come from the packet bytes', () => {
  assert.equal(durationMs(Uint8Array.of(0x78)), 20); // hybrid FB 20 ms
  assert.equal(durationMs(Uint8Array.of(0x10, 0x00)), 40); // SILK NB 40 ms
  assert.equal(durationMs(Uint8Array.of(0x7b, 0x03)), 60); // code 3, three 20 ms frames
  assert.equal(hasFec(Uint8Array.of(0x48, 0b0100_0000)), true); // SILK WB 20 ms: VAD, LBRR
  assert.equal(hasFec(Uint8Array.of(0x48, 0b1000_0000)), false);
  assert.equal(hasFec(Uint8Array.of(0xf8, 0xff)), false); // CELT never carries FEC
});

test('the room model: roles from the seats, listeners from the attendees, hands first', () => {
  const room = new RoomModel('me', 'r1');
  const seat = (user_id, role, mic_on) => ({ user_id, name: user_id, role, mic_on, hand_raised: false, joined_at: 1 });
  assert.equal(room.adopt({ room_id: 'r1', version: 3, subject: 's', host_id: 'h', max_seats: 8,
    seats: [seat('h', 'host', true), seat('s', 'speaker', false)], raised_hands: [{ user_id: 'b', name: 'b' }],
    raised_hand_count: 1, member_count: 4, closed: false }), true);
  assert.equal(room.adopt({ room_id: 'r1', version: 2 }), false); // older: ignored
  room.setAttendees([seat('h', 'host', true), seat('a', 'listener', false), seat('b', 'listener', false), seat('me', 'listener', false)]);
  assert.deepEqual(room.members().map((m) => [m.user_id, m.role, m.hand_raised]),
    [['h', 'host', false], ['s', 'speaker', false], ['b', 'listener', true], ['a', 'listener', false], ['me', 'listener', false]]);
  assert.deepEqual([...room.heard()], ['h']);
  assert.equal(room.myRole, 'listener');
  assert.equal(room.canSpeak, false);
});
