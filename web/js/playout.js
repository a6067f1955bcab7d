// Voice out of the room and into the speakers: open -> order -> decode -> ring -> worklet.
//
// Every frame on the room's audio topics is checked against the room (only members
// seated with the microphone on are heard; docs/protocol.md 7), opened with the room's
// keys (voicecrypto.js), put in order per speaker (sequencer.js) and decoded by that
// speaker's WebCodecs AudioDecoder (Opus, 48 kHz mono); the PCM goes into the speaker's
// ring, which the gochat-playout AudioWorklet mixes and plays. Anything dropped is
// counted in `counters`.

import { durationMs } from './opus.js';
import { Ring } from './ring.js';
import { Sequencer } from './sequencer.js';
import { parseAudioTopic } from './protocol.js';
import { VoiceError } from './voicecrypto.js';

const RING_SAMPLES = 48_000; // 1 s per speaker: far more than the jitter buffer holds
const POLL_MS = 20;
const SPEAKING_RMS = 0.006; // about -44 dBFS: above comfort noise, below quiet speech
// The jitter buffer's margin: how long after the first samples of a spurt a speaker
// starts playing, from the interarrival jitter J (RFC 3550) of consecutive packets
// (silences between spurts do not count): MARGIN_MS + 3 J, at most MAX_MARGIN_MS.
const MARGIN_MS = 6;
const MAX_MARGIN_MS = 120;

export class Playout {
  /** Load the worklet and start the playout node on `ctx` (an AudioContext at 48 kHz). */
  static async create(ctx, opener, { clock = () => performance.now() } = {}) {
    await ctx.audioWorklet.addModule(new URL('./worklets.js', import.meta.url));
    const node = new AudioWorkletNode(ctx, 'gochat-playout', { numberOfInputs: 0, outputChannelCount: [1] });
    node.connect(ctx.destination);
    return new Playout(ctx, node, opener, clock);
  }

  constructor(ctx, node, opener, clock) {
    this.ctx = ctx;
    this.node = node;
    this.opener = opener;
    this.clock = clock;
    this.shared = globalThis.crossOriginIsolated === true;
    this.roomId = null;
    this.me = null;
    this.heard = new Set();
    this.speakers = new Map(); // user id -> {id, sequencer, decoder, ring}
    this.levels = new Map(); // user id -> rms of the last 100 ms
    this.buffers = new Map(); // user id -> worklet stream figures
    this.counters = { frames_received: 0, frames_dropped_unheard: 0, frames_decoded: 0, frames_concealed: 0, decode_errors: 0 };
    this._nextId = 1;
    this._recordings = [];
    this._poll = setInterval(() => this._pollAll(), POLL_MS);
    node.port.onmessage = (event) => this._onWorklet(event.data);
  }

  /** The room the page listens to (null: none) and who is heard in it. */
  setRoom(roomId, me) {
    if (roomId !== this.roomId) {
      for (const userId of [...this.speakers.keys()]) this._removeSpeaker(userId);
    }
    this.roomId = roomId;
    this.me = me;
  }

  setHeard(heard) {
    this.heard = heard;
    for (const userId of [...this.speakers.keys()]) if (!heard.has(userId)) this._removeSpeaker(userId);
  }

  /** A message on an audio topic (raw bytes). */
  async onMessage(topic, payload, retain) {
    const parsed = parseAudioTopic(topic);
    if (retain || !parsed || parsed.roomId !== this.roomId || parsed.userId === this.me || !this.heard.has(parsed.userId)) {
      this.counters.frames_dropped_unheard += 1;
      return;
    }
    let frame;
    try {
      frame = await this.opener.open(payload, topic);
    } catch (error) {
      if (error instanceof VoiceError) return; // counted by the opener
      throw error;
    }
    if (!this.heard.has(parsed.userId) || parsed.roomId !== this.roomId) return; // left while opening
    this.counters.frames_received += 1;
    frame.duration = durationMs(frame.opus);
    frame.arrivedAt = this.clock();
    const speaker = this._speaker(parsed.userId);
    this._measureJitter(speaker, frame, this.clock());
    this._play(speaker, speaker.sequencer.push(frame, this.clock()));
  }

  /** Whether `userId`'s decoded voice is above the noise now. */
  speaking(userId) {
    return (this.levels.get(userId) ?? 0) > SPEAKING_RMS;
  }

  /** The next `seconds` of what the page plays, and the context time it started at. */
  record(seconds) {
    return new Promise((resolve) => {
      this._recordings.push(resolve);
      this.node.port.postMessage({ type: 'record', frames: Math.round(seconds * this.ctx.sampleRate) });
    });
  }

  stats() {
    const sequencers = {};
    for (const [userId, speaker] of this.speakers) {
      sequencers[userId] = { ...speaker.sequencer.stats, jitter_ms: speaker.jitterMs, margin_ms: speaker.marginFrames / 48 };
    }
    return { ...this.counters, opener: { ...this.opener.counters }, speakers: sequencers, worklet: Object.fromEntries(this.buffers) };
  }

  _speaker(userId) {
    let speaker = this.speakers.get(userId);
    if (speaker) return speaker;
    const id = this._nextId;
    this._nextId += 1;
    const storage = Ring.storage(RING_SAMPLES, this.shared);
    const ring = this.shared ? new Ring(storage) : null;
    const decoder = new AudioDecoder({
      output: (data) => this._decoded(speaker, data),
      error: () => { this.counters.decode_errors += 1; },
    });
    decoder.configure({ codec: 'opus', sampleRate: 48_000, numberOfChannels: 1 });
    speaker = { id, userId, ring, decoder, sequencer: new Sequencer(), pts: 0, jitterMs: 0, marginFrames: 0, last: null, arrivals: new Map() };
    this.speakers.set(userId, speaker);
    this.node.port.postMessage({ type: 'add', id, storage });
    return speaker;
  }

  _removeSpeaker(userId) {
    const speaker = this.speakers.get(userId);
    if (!speaker) return;
    this.speakers.delete(userId);
    this.levels.delete(userId);
    if (speaker.decoder.state !== 'closed') speaker.decoder.close();
    this.node.port.postMessage({ type: 'remove', id: speaker.id });
  }

  _measureJitter(speaker, frame, now) {
    const last = speaker.last;
    speaker.last = { seq: frame.seq, timestamp: frame.timestamp, at: now };
    if (!last || frame.seq !== ((last.seq + 1) & 0xffff) || frame.timestamp !== ((last.timestamp + frame.duration * 48) >>> 0)) return;
    const deviation = Math.abs(now - last.at - frame.duration);
    speaker.jitterMs += (deviation - speaker.jitterMs) / 16;
    const frames = Math.round(Math.min(MARGIN_MS + 3 * speaker.jitterMs, MAX_MARGIN_MS) * 48);
    if (Math.abs(frames - speaker.marginFrames) >= 48) {
      speaker.marginFrames = frames;
      this.node.port.postMessage({ type: 'target', id: speaker.id, frames });
    }
  }

  _play(speaker, actions) {
    for (const action of actions) {
      if (action.conceal) {
        this.counters.frames_concealed += 1;
        this._write(speaker, new Float32Array(action.conceal));
        continue;
      }
      const frame = action.decode;
      if (speaker.decoder.state !== 'configured') return;
      speaker.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: speaker.pts, data: frame.opus }));
      if (this.onDecoded) speaker.arrivals.set(speaker.pts, frame.arrivedAt);
      speaker.pts += frame.duration * 1000;
      if (frame.end) speaker.endAfter = speaker.pts;
    }
  }

  _decoded(speaker, data) {
    const samples = new Float32Array(data.numberOfFrames);
    data.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
    const start = data.timestamp;
    const end = start + data.duration;
    data.close();
    if (this.speakers.get(speaker.userId) !== speaker) return;
    this.counters.frames_decoded += 1;
    if (this.onDecoded) {
      // Benchmarks: when the frame holding these samples arrived, and how loud they are.
      let arrivedAt;
      for (const [pts, at] of speaker.arrivals) { // in decode order; outputs may be split
        if (pts > start) break;
        arrivedAt = at;
        speaker.arrivals.delete(pts);
      }
      if (arrivedAt !== undefined) this.onDecoded(speaker.userId, samples, arrivedAt);
    }
    this._write(speaker, samples);
    if (speaker.endAfter !== undefined && end >= speaker.endAfter) {
      speaker.endAfter = undefined;
      this.node.port.postMessage({ type: 'end', id: speaker.id });
    }
  }

  _write(speaker, samples) {
    if (speaker.ring) speaker.ring.push(samples);
    else this.node.port.postMessage({ type: 'push', id: speaker.id, samples }, [samples.buffer]);
  }

  _pollAll() {
    const now = this.clock();
    for (const speaker of this.speakers.values()) this._play(speaker, speaker.sequencer.poll(now));
  }

  _onWorklet(message) {
    if (message.type === 'levels') {
      for (const speaker of this.speakers.values()) {
        const figures = message.levels[speaker.id];
        if (!figures) continue;
        this.levels.set(speaker.userId, figures.rms);
        this.buffers.set(speaker.userId, figures);
      }
      this.onLevels?.();
    } else if (message.type === 'recorded') {
      this._recordings.shift()?.({ samples: message.samples, startFrame: message.start });
    }
  }

  close() {
    clearInterval(this._poll);
    for (const userId of [...this.speakers.keys()]) this._removeSpeaker(userId);
    this.node.disconnect();
  }
}
