// Sealed voice frames, version 2 (docs/protocol.md section 7), with WebCrypto:
//
//   0      version = 2
//   1      flags: bit 0 FEC for the previous packet, bit 1 end of talk spurt
//   2-3    sequence number, uint16 big-endian
//   4-7    timestamp in 48 kHz samples, uint32 big-endian
//   8-11   key epoch, uint32 big-endian
//   12-15  stream id, uint32 big-endian
//   16-    AES-256-GCM(Opus packet) || 16-byte tag
//
// sender key = HKDF-SHA256(ikm = room voice key, salt = empty,
//                          info = "gochat/v1 voice " || user id, 32 bytes)
// nonce = stream id || timestamp || 4 zero bytes; AAD = header || topic (UTF-8).
// The same bytes as appliance/protocol/voice.py (tests/web/test_page_voice_keys.py).

import { checkPacket, OpusPacketError } from './opus.js';
import { parseAudioTopic } from './protocol.js';

export const VERSION = 2;
export const LEGACY_VERSION = 1;
export const HEADER_BYTES = 16;
export const TAG_BYTES = 16;
export const KEY_BYTES = 32;
export const MIN_FRAME_BYTES = HEADER_BYTES + 1 + TAG_BYTES;
export const MAX_FRAME_BYTES = HEADER_BYTES + 1275 + TAG_BYTES;
export const FLAG_FEC = 0x01;
export const FLAG_END = 0x02;
export const GRACE_MS = 5000; // a superseded epoch still opens packets this long
const KNOWN_FLAGS = FLAG_FEC | FLAG_END;
const U32 = 0x100000000;
const INFO_PREFIX = 'gochat/v1 voice ';
const utf8 = new TextEncoder();

/** A payload that cannot be played: dropped and counted under `counter`. */
export class VoiceError extends Error {
  constructor(counter, message) {
    super(message);
    this.counter = counter;
  }
}

/** Header bytes 0-15 of a frame. */
export function packHeader({ flags = 0, seq, timestamp, epoch, streamId }) {
  const header = new Uint8Array(HEADER_BYTES);
  const view = new DataView(header.buffer);
  view.setUint8(0, VERSION);
  view.setUint8(1, flags);
  view.setUint16(2, seq & 0xffff);
  view.setUint32(4, timestamp >>> 0);
  view.setUint32(8, epoch >>> 0);
  view.setUint32(12, streamId >>> 0);
  return header;
}

/** The header of a version 2 frame, not yet authenticated; throws VoiceError. */
export function parseHeader(data) {
  if (data.length >= 1 && data[0] === LEGACY_VERSION) {
    throw new VoiceError('frames_v1_dropped', 'version 1 (plaintext) frame');
  }
  if (data.length < MIN_FRAME_BYTES || data.length > MAX_FRAME_BYTES) {
    throw new VoiceError('frames_malformed', `frame of ${data.length} bytes`);
  }
  const view = new DataView(data.buffer, data.byteOffset, HEADER_BYTES);
  if (view.getUint8(0) !== VERSION) throw new VoiceError('frames_malformed', 'unknown frame version');
  const flags = view.getUint8(1);
  if (flags & ~KNOWN_FLAGS) throw new VoiceError('frames_malformed', 'reserved flag bits set');
  return {
    flags,
    seq: view.getUint16(2),
    timestamp: view.getUint32(4),
    epoch: view.getUint32(8),
    streamId: view.getUint32(12),
  };
}

/** The 12-byte GCM nonce: stream id || timestamp || 4 zero bytes. */
export function nonce(streamId, timestamp) {
  const bytes = new Uint8Array(12);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, streamId >>> 0);
  view.setUint32(4, timestamp >>> 0);
  return bytes;
}

/** The AES-256-GCM key `userId` seals with under the 32-byte room voice key. */
export async function senderKey(roomKey, userId) {
  if (roomKey.length !== KEY_BYTES) throw new Error(`a voice key is ${KEY_BYTES} bytes`);
  const ikm = await crypto.subtle.importKey('raw', roomKey, 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(0), info: utf8.encode(INFO_PREFIX + userId) },
    ikm,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

/** The wire bytes of one packet sealed with a sender key for `topic`. */
export async function seal(key, fields, opus, topic) {
  checkPacket(opus);
  const header = packHeader(fields);
  const sealed = await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv: nonce(fields.streamId, fields.timestamp), additionalData: concat(header, utf8.encode(topic)) },
    key,
    opus,
  );
  return concat(header, new Uint8Array(sealed));
}

/** Authenticate and decrypt a frame whose header is parsed; throws VoiceError. */
export async function openParsed(key, header, data, topic) {
  let opus;
  try {
    const plain = await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: nonce(header.streamId, header.timestamp), additionalData: concat(data.subarray(0, HEADER_BYTES), utf8.encode(topic)) },
      key,
      data.subarray(HEADER_BYTES),
    );
    opus = new Uint8Array(plain);
  } catch {
    throw new VoiceError('frames_rejected', 'authentication failed');
  }
  try {
    checkPacket(opus);
  } catch (error) {
    if (error instanceof OpusPacketError) throw new VoiceError('frames_malformed', error.message);
    throw error;
  }
  return {
    ...header,
    opus,
    fec: Boolean(header.flags & FLAG_FEC),
    end: Boolean(header.flags & FLAG_END),
  };
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

export function randomU32() {
  return crypto.getRandomValues(new Uint32Array(1))[0];
}

/**
 * One speaker's sealing for one audio topic, always with the newest epoch it holds.
 * (stream id, timestamp) never repeats under one key: the timestamp rises within a
 * stream, and a stream id is drawn anew on every epoch, capture start and wrap.
 */
export class Sealer {
  constructor(topic, { drawStreamId = randomU32 } = {}) {
    const parsed = parseAudioTopic(topic);
    if (!parsed) throw new Error(`not an audio topic: ${topic}`);
    this.topic = topic;
    this.userId = parsed.userId;
    this.epoch = null;
    this.streamId = 0;
    this._key = null;
    this._draw = drawStreamId;
    this._used = new Set();
    this._lastTs = null;
  }

  /** Take the key of `epoch` if newer than the one held; returns whether it was. */
  async setKey(epoch, roomKey) {
    if (this.epoch !== null && epoch <= this.epoch) return false;
    const key = await senderKey(roomKey, this.userId);
    if (this.epoch !== null && epoch <= this.epoch) return false; // a newer one won the race
    this._key = key;
    this.epoch = epoch;
    this._used.clear();
    this._newStream();
    return true;
  }

  /** Capture (re)opens: a new stream begins. */
  openCapture() {
    this._newStream();
  }

  async seal(seq, timestamp, opus, { fec = false, end = false } = {}) {
    if (this._key === null) throw new Error('no voice key yet');
    const ts = timestamp >>> 0;
    if (this._lastTs !== null && ts <= this._lastTs) this._newStream(); // wrapped
    this._lastTs = ts;
    const flags = (fec ? FLAG_FEC : 0) | (end ? FLAG_END : 0);
    return seal(this._key, { flags, seq, timestamp: ts, epoch: this.epoch, streamId: this.streamId }, opus, this.topic);
  }

  _newStream() {
    let id;
    do id = this._draw() >>> 0; while (this._used.has(id));
    this._used.add(id);
    this.streamId = id;
    this._lastTs = null;
  }
}

/**
 * A receiver's keyring for one room: the newest epoch's key and, for GRACE_MS after a
 * newer one arrived, each superseded one (on the injected clock, in ms). Sender keys
 * are derived once per (epoch, sender). Every refusal throws a VoiceError and counts.
 */
export class Opener {
  constructor({ clock = () => performance.now(), graceMs = GRACE_MS } = {}) {
    this.clock = clock;
    this.graceMs = graceMs;
    this.counters = {};
    this._keys = new Map(); // epoch -> {roomKey, expiresAt}
    this._derived = new Map(); // `${epoch} ${user}` -> Promise<CryptoKey>
    this.newest = null;
  }

  /** A key from `media` or a `media_key` push. */
  addKey(epoch, roomKey) {
    if (roomKey.length !== KEY_BYTES) throw new Error(`a voice key is ${KEY_BYTES} bytes`);
    if (!(epoch > 0 && epoch < U32)) throw new Error(`epoch out of range: ${epoch}`);
    const now = this.clock();
    const held = this._keys.get(epoch);
    if (held && sameBytes(held.roomKey, roomKey)) return;
    this._dropDerived(epoch);
    if (this.newest === null || epoch > this.newest) {
      if (this.newest !== null) this._expire(this.newest, now + this.graceMs);
      this._keys.set(epoch, { roomKey, expiresAt: null });
      this.newest = epoch;
    } else if (epoch === this.newest) {
      this._keys.set(epoch, { roomKey, expiresAt: null });
    } else {
      this._keys.set(epoch, { roomKey, expiresAt: now + this.graceMs }); // a late arrival
    }
  }

  /** The epochs that open packets now, oldest first. */
  epochs() {
    this._prune(this.clock());
    return [...this._keys.keys()].sort((a, b) => a - b);
  }

  clear() {
    this._keys.clear();
    this._derived.clear();
    this.newest = null;
  }

  /** Authenticate and decrypt a frame received on the audio `topic`. */
  async open(data, topic) {
    try {
      const header = parseHeader(data);
      const parsed = parseAudioTopic(topic);
      if (!parsed) throw new VoiceError('frames_malformed', 'not an audio topic');
      this._prune(this.clock());
      const entry = this._keys.get(header.epoch);
      if (!entry) throw new VoiceError('frames_rejected', `unknown or expired epoch ${header.epoch}`);
      const key = await this._senderKey(header.epoch, entry, parsed.userId);
      return await openParsed(key, header, data, topic);
    } catch (error) {
      if (error instanceof VoiceError) this.counters[error.counter] = (this.counters[error.counter] ?? 0) + 1;
      throw error;
    }
  }

  _senderKey(epoch, entry, userId) {
    const id = `${epoch} ${userId}`;
    let key = this._derived.get(id);
    if (!key) {
      key = senderKey(entry.roomKey, userId);
      this._derived.set(id, key);
    }
    return key;
  }

  _expire(epoch, when) {
    const entry = this._keys.get(epoch);
    if (entry && (entry.expiresAt === null || when < entry.expiresAt)) entry.expiresAt = when;
  }

  _prune(now) {
    for (const [epoch, entry] of this._keys) {
      if (entry.expiresAt !== null && entry.expiresAt <= now) {
        this._keys.delete(epoch);
        this._dropDerived(epoch);
      }
    }
  }

  _dropDerived(epoch) {
    for (const id of this._derived.keys()) if (id.startsWith(`${epoch} `)) this._derived.delete(id);
  }
}

function sameBytes(a, b) {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/** The 32 bytes of a base64 `key` from `media`/`media_key`; throws on any other length. */
export function decodeKey(base64) {
  const binary = atob(base64);
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (bytes.length !== KEY_BYTES) throw new Error('a voice key must decode to 32 bytes');
  return bytes;
}
