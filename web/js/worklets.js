// The page's two AudioWorklet processors (the audio rendering thread).
//
// gochat-capture: gathers the microphone into 20 ms blocks (960 samples at 48 kHz)
//   and hands each to the main thread, which encodes it.
// gochat-playout: one ring per speaker (ring.js), filled by the decoders on the main
//   thread; each render quantum mixes the speakers whose ring has reached its
//   playout target (the jitter buffer's depth), and posts each speaker's level ten
//   times a second (the page's "speaking" marks). A ring that runs dry re-buffers to
//   its target; one that runs dry mid-spurt raises its target by 10 ms (up to 120 ms),
//   and one that holds more than its target plus 60 ms is trimmed back to it.

import { Ring } from './ring.js';

const BLOCK = 960;
const QUANTUM = 128;
const LEVEL_EVERY = 4800; // frames: 100 ms
const TARGET_MIN = 1920; // 40 ms
const TARGET_STEP = 480;
const TARGET_MAX = 5760;
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
          ring: new Ring(message.storage), playing: false, draining: false, target: TARGET_MIN,
          energy: 0, rebuffers: 0, trimmed: 0,
        });
        break;
      case 'push': // no SharedArrayBuffer: the samples come by message
        this.streams.get(message.id)?.ring.push(message.samples);
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
    if (!stream.playing) {
      if (ring.available() < stream.target && !(stream.draining && ring.available() > 0)) return;
      stream.playing = true;
    }
    if (ring.available() > stream.target + EXCESS) {
      stream.trimmed += ring.skip(ring.available() - stream.target);
    }
    const mine = this.scratch.fill(0);
    const got = ring.mixInto(mine, 0, out.length);
    for (let i = 0; i < got; i += 1) {
      out[i] += mine[i];
      stream.energy += mine[i] * mine[i];
    }
    if (got < out.length) {
      stream.playing = false;
      if (stream.draining) {
        stream.draining = false; // the end of a talk spurt: no more to come
      } else {
        stream.rebuffers += 1;
        stream.target = Math.min(stream.target + TARGET_STEP, TARGET_MAX);
      }
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
