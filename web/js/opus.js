// What the page needs to know about an Opus packet (RFC 6716) without decoding it:
// its duration from the TOC byte, and whether it carries in-band FEC (LBRR) for the
// packet before it. The same checks as the appliance's appliance/protocol/frames.py and
// appliance/audio/opus.py, so both sides refuse and flag the same packets.

export const MAX_OPUS_BYTES = 1275;
export const ALLOWED_DURATIONS_MS = [10, 20, 40, 60];
export const DTX_BYTES = 2; // libopus: a packet this short carries no audio (DTX)

// Frame size of each TOC configuration in half milliseconds (RFC 6716 table 2).
const SILK = [20, 40, 80, 120];
const HYBRID = [20, 40];
const CELT = [5, 10, 20, 40];
const FRAME_HALF_MS = [...SILK, ...SILK, ...SILK, ...HYBRID, ...HYBRID, ...CELT, ...CELT, ...CELT, ...CELT];
const CELT_FIRST_CONFIG = 16;

export class OpusPacketError extends Error {}

/** Duration of an Opus packet in whole milliseconds; throws OpusPacketError. */
export function durationMs(packet) {
  if (packet.length === 0) throw new OpusPacketError('empty Opus packet');
  const toc = packet[0];
  const halfMs = FRAME_HALF_MS[toc >> 3];
  const code = toc & 0x03;
  let frames = code === 0 ? 1 : 2;
  if (code === 3) {
    if (packet.length < 2) throw new OpusPacketError('Opus code-3 packet without a frame count');
    frames = packet[1] & 0x3f;
    if (frames === 0) throw new OpusPacketError('Opus code-3 packet with no frames');
  }
  const total = halfMs * frames;
  if (total % 2) throw new OpusPacketError('Opus packet of a fractional duration');
  return total / 2;
}

/** Throws OpusPacketError unless the packet is one Opus packet the protocol allows. */
export function checkPacket(packet) {
  if (packet.length > MAX_OPUS_BYTES) throw new OpusPacketError(`Opus packet too long: ${packet.length} bytes`);
  const ms = durationMs(packet);
  if (!ALLOWED_DURATIONS_MS.includes(ms)) throw new OpusPacketError(`Opus packet of ${ms} ms`);
}

/**
 * Whether the packet carries in-band FEC for its predecessor: libopus 1.5's
 * opus_packet_has_lbrr. The first SILK frame starts with one VAD flag per 20 ms SILK
 * frame and then the LBRR flag, each coded with probability 1/2, so they are the top
 * bits of the first payload byte. CELT-only packets never carry FEC.
 */
export function hasFec(packet) {
  if (packet.length < 2 || packet[0] >> 3 >= CELT_FIRST_CONFIG) return false;
  const first = firstFrameByte(packet);
  if (first === null) return false;
  const samples48k = FRAME_HALF_MS[packet[0] >> 3] * 24;
  const silkFrames = Math.max(1, Math.floor(samples48k / 960));
  let lbrr = (first >> (7 - silkFrames)) & 1;
  if (packet[0] & 0x04) lbrr |= (first >> (6 - 2 * silkFrames)) & 1; // stereo side channel
  return lbrr === 1;
}

function firstFrameByte(packet) {
  const code = packet[0] & 0x03;
  if (code < 2) return packet[1];
  if (code === 2) return packet[1 + frameLengthBytes(packet, 1)] ?? null;
  // Code 3: frame count byte, optional padding, then (if VBR) the frame lengths.
  if (packet.length < 3) return null;
  const count = packet[1] & 0x3f;
  let at = 2;
  if (packet[1] & 0x40) { // padding lengths: 255 means 254 more and another byte
    while (at < packet.length && packet[at] === 255) at += 1;
    at += 1;
  }
  if (packet[1] & 0x80) {
    for (let i = 0; i < count - 1; i += 1) at += frameLengthBytes(packet, at);
  }
  return at < packet.length ? packet[at] : null;
}

function frameLengthBytes(packet, at) {
  return packet[at] >= 252 ? 2 : 1;
}
