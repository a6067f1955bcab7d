// Voice from the microphone into the room: getUserMedia (with the browser's own echo
// cancellation, noise suppression and gain control) -> the gochat-capture AudioWorklet
// (20 ms blocks at 48 kHz) -> WebCodecs AudioEncoder (Opus, VoIP, in-band FEC, DTX)
// -> Sealer (voicecrypto.js) -> one QoS 0 message per packet.
//
// The sender rules of docs/protocol.md 7: sequence number and timestamp start at random
// values; the timestamp advances by 960 per block, also for blocks DTX leaves unsent and
// across the pause between talk spurts; a new stream id on every capture start and key
// epoch; the last packet of a spurt carries the end flag. Nothing is captured, encoded or
// sent while the microphone is off: the track is stopped.

import { DTX_BYTES, hasFec } from './opus.js';
import { Sealer, randomU32 } from './voicecrypto.js';

const BLOCK = 960;
const BLOCK_US = 20_000;
const BITRATE = 32_000;
const SPEAKING_RMS = 0.01;

export const MIC_CONSTRAINTS = {
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
  channelCount: 1,
};

export const ENCODER_CONFIG = {
  codec: 'opus',
  sampleRate: 48_000,
  numberOfChannels: 1,
  bitrate: BITRATE,
  opus: { frameDuration: BLOCK_US, complexity: 5, usedtx: true, useinbandfec: true, packetlossperc: 10 },
};

export class Capture {
  /**
   * @param {AudioContext} ctx the page's context (48 kHz; its worklet module is loaded)
   * @param {(topic: string, bytes: Uint8Array) => boolean} publish
   */
  constructor(ctx, publish, { clock = () => performance.now(), media = navigator.mediaDevices } = {}) {
    this.ctx = ctx;
    this.publish = publish;
    this.clock = clock;
    this.media = media;
    this.sealer = null;
    this.topic = null;
    this.active = false;
    this.level = 0;
    this.counters = { blocks: 0, frames_sent: 0, dtx_skipped: 0, encode_errors: 0 };
    this._seq = randomU32() & 0xffff;
    this._ts = randomU32();
    this._stoppedAt = null;
    this._stream = null;
    this._source = null;
    this._node = null;
    this._encoder = null;
    this._blockIndex = 0;
    this._sending = Promise.resolve();
    this._startTs = 0;
    this._opening = null;
    this.tap = null; // (samples, receivedAt) of every block: benchmarks time the mouth here
  }

  /** Send into the audio `topic` (a room and this user): keys come through setKey. */
  setTopic(topic) {
    if (topic === this.topic) return;
    this.topic = topic;
    this.sealer = topic ? new Sealer(topic) : null;
  }

  /** The room's newest voice key (the sealer keeps the newest it was given). */
  setKey(epoch, roomKey) {
    return this.sealer?.setKey(epoch, roomKey);
  }

  /** Open the microphone and send; resolves once capture runs. Throws if the mic is refused. */
  async start() {
    if (this.active) return;
    this.active = true;
    this._opening = this._open();
    try {
      await this._opening;
    } catch (error) {
      this.active = false;
      throw error;
    } finally {
      this._opening = null;
    }
  }

  async _open() {
    const stream = await this.media.getUserMedia({ audio: MIC_CONSTRAINTS });
    if (!this.active) {
      for (const track of stream.getTracks()) track.stop();
      return;
    }
    if (this._stoppedAt !== null) {
      // The pause since the last spurt advances the timestamp, in whole packets.
      const blocks = Math.round((this.clock() - this._stoppedAt) / 20);
      this._ts = (this._ts + blocks * BLOCK) >>> 0;
    }
    this.sealer?.openCapture();
    this._stream = stream;
    this._encoder = new AudioEncoder({
      output: (chunk) => this._encoded(chunk),
      error: () => { this.counters.encode_errors += 1; },
    });
    this._encoder.configure(ENCODER_CONFIG);
    this._blockIndex = 0;
    this._startTs = this._ts;
    this._source = this.ctx.createMediaStreamSource(stream);
    this._node = new AudioWorkletNode(this.ctx, 'gochat-capture', { numberOfOutputs: 0, channelCount: 1, channelCountMode: 'explicit' });
    this._node.port.onmessage = (event) => this._block(event.data.samples);
    this._source.connect(this._node);
  }

  /** Stop capture: the last packet goes out with the end-of-spurt flag. */
  async stop() {
    if (!this.active) return;
    this.active = false;
    await this._opening?.catch(() => {});
    const encoder = this._encoder;
    if (this._node) {
      this._node.port.onmessage = null;
      this._source.disconnect();
      this._node = null;
      this._source = null;
    }
    for (const track of this._stream?.getTracks() ?? []) track.stop();
    this._stream = null;
    this.level = 0;
    if (encoder && encoder.state === 'configured') {
      this._ending = true;
      this._encode(encoder, new Float32Array(BLOCK)); // a silent block carries the end flag
      await encoder.flush().catch(() => {});
      encoder.close();
    }
    this._ending = false;
    this._encoder = null;
    await this._sending;
    this._stoppedAt = this.clock();
  }

  _block(samples) {
    if (!this.active || !this._encoder) return;
    this.tap?.(samples, performance.now());
    let energy = 0;
    for (let i = 0; i < samples.length; i += 1) energy += samples[i] * samples[i];
    this.level = Math.sqrt(energy / samples.length);
    this._encode(this._encoder, samples);
  }

  _encode(encoder, samples) {
    this.counters.blocks += 1;
    const data = new AudioData({
      format: 'f32-planar', sampleRate: 48_000, numberOfFrames: BLOCK, numberOfChannels: 1,
      timestamp: this._blockIndex * BLOCK_US, data: samples,
    });
    this._blockIndex += 1;
    encoder.encode(data);
    data.close();
  }

  get speaking() {
    return this.active && this.level > SPEAKING_RMS;
  }

  _encoded(chunk) {
    const packet = new Uint8Array(chunk.byteLength);
    chunk.copyTo(packet);
    const block = Math.round(chunk.timestamp / BLOCK_US);
    const timestamp = (this._startTs + block * BLOCK) >>> 0;
    this._ts = (timestamp + BLOCK) >>> 0;
    const end = this._ending && block === this._blockIndex - 1;
    if (packet.length <= DTX_BYTES && !end) {
      this.counters.dtx_skipped += 1; // silence: nothing to send, the timestamp moves on
      return;
    }
    const { sealer, topic } = this;
    if (!sealer || sealer.epoch === null) return;
    const seq = this._seq;
    this._seq = (this._seq + 1) & 0xffff;
    this._sending = this._sending
      .then(() => sealer.seal(seq, timestamp, packet, { fec: hasFec(packet), end }))
      .then((bytes) => {
        if (this.publish(topic, bytes)) this.counters.frames_sent += 1;
      })
      .catch(() => { this.counters.encode_errors += 1; });
  }
}
