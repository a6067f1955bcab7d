// A wait-free single-producer single-consumer ring of float samples (the pattern of
// ringbuf.js): the decoder side writes, the AudioWorklet reads, neither ever waits
// or allocates. Over a SharedArrayBuffer when the page is cross-origin isolated;
// over a plain buffer inside the worklet otherwise (then the samples come by message).

const READ = 0;
const WRITE = 1;

export class Ring {
  /** Storage for `capacity` samples: {indices, data} over one buffer. */
  static storage(capacity, shared) {
    const bytes = 8 + capacity * 4;
    const buffer = shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
    return { buffer, capacity };
  }

  constructor({ buffer, capacity }) {
    this.capacity = capacity;
    this.indices = new Int32Array(buffer, 0, 2);
    this.data = new Float32Array(buffer, 8, capacity);
  }

  /** Samples ready to read. */
  available() {
    const read = Atomics.load(this.indices, READ);
    const write = Atomics.load(this.indices, WRITE);
    return (write - read + 2 * this.capacity) % (2 * this.capacity) ;
  }

  /** Append up to samples.length samples; returns how many fitted. */
  push(samples) {
    const read = Atomics.load(this.indices, READ);
    const write = Atomics.load(this.indices, WRITE);
    const used = (write - read + 2 * this.capacity) % (2 * this.capacity);
    const count = Math.min(samples.length, this.capacity - used);
    const at = write % this.capacity;
    const first = Math.min(count, this.capacity - at);
    this.data.set(samples.subarray(0, first), at);
    if (count > first) this.data.set(samples.subarray(first, count), 0);
    Atomics.store(this.indices, WRITE, (write + count) % (2 * this.capacity));
    return count;
  }

  /** Add up to `count` samples into out[offset...] (mixing); returns how many. */
  mixInto(out, offset, count, gain = 1) {
    const read = Atomics.load(this.indices, READ);
    const n = Math.min(count, this.available());
    let at = read % this.capacity;
    for (let i = 0; i < n; i += 1) {
      out[offset + i] += this.data[at] * gain;
      at = at + 1 === this.capacity ? 0 : at + 1;
    }
    Atomics.store(this.indices, READ, (read + n) % (2 * this.capacity));
    return n;
  }

  /** Drop up to `count` samples; returns how many. */
  skip(count) {
    const read = Atomics.load(this.indices, READ);
    const n = Math.min(count, this.available());
    Atomics.store(this.indices, READ, (read + n) % (2 * this.capacity));
    return n;
  }
}
