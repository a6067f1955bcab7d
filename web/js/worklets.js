// The page's two AudioWorklet processors (the audio rendering thread).
//
// gochat-capture: gathers the microphone into 20 ms blocks (960 samples at 48 kHz)
//   and hands each to the main thread, which encodes it.
// gochat-playout: one ring per speaker (ring.js), filled by the decoders on the main
//   thread; each render quantum mixes the speakers that are playing, and posts each
//   speaker's level ten times a second (the page's "speaking" marks). A speaker starts
//   playing its ring `target` frames after the first samples of a talk spurt arrived
//   (the jitter buffer's margin, which the main thread sets from the measured arrival
//   jitter); a ring that runs dry waits for the next samples and starts again the
//   same way, and one that holds more than a packet and 60 ms beyond its margin is
//   trimmed back (latency never creeps up).

import { Ring } from './ring.js';

const BLOCK = 960;
const QUANTUM = 128;
const LEVEL_EVERY = 4800; // frames: 100 ms
const TARGET_FIRST = 480; // 10 ms, until the main thread has measured the jitter
const PACKET = 960;
const EXCESS = 2880;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(BLOCK);
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0]?.[0];
    if (!input) return true;
    let at = 0;
    while (at < input.length) {
      const n = Math.min(input.length - at, BLOCK - this.filled);
      this.block.set(input.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === BLOCK) {
        // currentFrame counts from the context's start: the block's end, in frames.
        this.port.postMessage({ samples: this.block, end: currentFrame + at }, [this.block.buffer]);
        this.block = new Float32Array(BLOCK);
        this.filled = 0;
      }
    }
    return true;
  }
}

class PlayoutProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.streams = new Map(); // id -> stream
    this.sinceLevels = 0;
    this.recording = null;
    this.scratch = new Float32Array(QUANTUM);
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    switch (message.type) {
      case 'add':
        this.streams.set(message.id, {
          ring: new Ring(message.storage), state: 'idle', startAt: 0, draining: false,
          target: TARGET_FIRST, energy: 0, rebuffers: 0, trimmed: 0,
        });
        break;
      case 'push': // no SharedArrayBuffer: the samples come by message
        this.streams.get(message.id)?.ring.push(message.samples);
        break;
      case 'target':
        if (this.streams.has(message.id)) this.streams.get(message.id).target = message.frames;
        break;
      case 'end':
        if (this.streams.has(message.id)) this.streams.get(message.id).draining = true;
        break;
      case 'remove':
        this.streams.delete(message.id);
        break;
      case 'record': // tests and benchmarks: the next `frames` of the mix, with their frame time
        this.recording = { samples: new Float32Array(message.frames), filled: 0, start: null };
        break;
      default:
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (const stream of this.streams.values()) this.render(stream, out);
    this.record(out);
    this.sinceLevels += out.length;
    if (this.sinceLevels >= LEVEL_EVERY) this.postLevels();
    return true;
  }

  render(stream, out) {
    const { ring } = stream;
    if (stream.state === 'idle') {
      if (ring.available() === 0) return;
      stream.state = 'waiting';
      stream.startAt = currentFrame + stream.target;
    }
    if (stream.state === 'waiting') {
      if (currentFrame < stream.startAt && !stream.draining) return;
      stream.state = 'playing';
    }
    const keep = stream.target + PACKET;
    if (ring.available() > keep + EXCESS) stream.trimmed += ring.skip(ring.available() - keep);
    const mine = this.scratch.fill(0);
    const got = ring.mixInto(mine, 0, out.length);
    for (let i = 0; i < got; i += 1) {
      out[i] += mine[i];
      stream.energy += mine[i] * mine[i];
    }
    if (got < out.length) {
      stream.state = 'idle';
      if (stream.draining) stream.draining = false; // the end of a talk spurt
      else stream.rebuffers += 1; // ran dry: jitter, loss or a silence (DTX)
    }
  }

  record(out) {
    const rec = this.recording;
    if (rec === null) return;
    if (rec.start === null) rec.start = currentFrame;
    const n = Math.min(out.length, rec.samples.length - rec.filled);
    rec.samples.set(out.subarray(0, n), rec.filled);
    rec.filled += n;
    if (rec.filled === rec.samples.length) {
      this.port.postMessage({ type: 'recorded', samples: rec.samples, start: rec.start }, [rec.samples.buffer]);
      this.recording = null;
    }
  }

  postLevels() {
    const levels = {};
    for (const [id, stream] of this.streams) {
      levels[id] = {
        rms: Math.sqrt(stream.energy / this.sinceLevels),
        target: stream.target, rebuffers: stream.rebuffers, trimmed: stream.trimmed,
        buffered: stream.ring.available(),
      };
      stream.energy = 0;
    }
    this.sinceLevels = 0;
    this.port.postMessage({ type: 'levels', levels, frame: currentFrame });
  }
}

registerProcessor('gochat-capture', CaptureProcessor);
registerProcessor('gochat-playout', PlayoutProcessor);
