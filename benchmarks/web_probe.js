// Measurements the page benchmark takes inside the page (added as a script tag; it
// only reads the page's own objects, through window.gochat).

window.gochatProbe = {
  // Every capture block the page encodes -> click onsets (epoch ms): a sample over
  // `onset` after `quietMs` without one. The block was handed over at `receivedAt`;
  // sample i of it came in (length - i) / 48 ms before that.
  tapMouths(onset, quietMs) {
    const capture = window.gochat._audioNow.capture;
    this.mouths = [];
    let lastLoud = -1e9;
    capture.tap = (samples, receivedAt) => {
      for (let i = 0; i < samples.length; i += 1) {
        if (Math.abs(samples[i]) < onset) continue;
        const at = receivedAt - (samples.length - i) / 48;
        if (at - lastLoud > quietMs) this.mouths.push(performance.timeOrigin + at);
        lastLoud = at;
      }
    };
  },

  // When each loud decoded frame had reached the page (epoch ms).
  async trackArrivals(loud) {
    this.arrivals = [];
    const { playout } = await window.gochat.audio;
    playout.onDecoded = (_user, samples, arrivedAt) => {
      let peak = 0;
      for (const x of samples) peak = Math.max(peak, Math.abs(x));
      if (peak > loud) this.arrivals.push(performance.timeOrigin + arrivedAt);
    };
  },

  // The next `seconds` the page plays: base64 int16, the epoch ms its first frame
  // leaves the output (getOutputTimestamp), and the context's latencies.
  async record(seconds) {
    const ctx = window.gochat.ctx;
    const { playout } = await window.gochat.audio;
    const { samples, startFrame } = await playout.record(seconds);
    const stamp = ctx.getOutputTimestamp();
    const startMs = stamp.performanceTime + (startFrame / ctx.sampleRate - stamp.contextTime) * 1000;
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i += 1) {
      pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
    }
    const bytes = new Uint8Array(pcm.buffer);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return {
      pcm: btoa(text),
      epochMs: performance.timeOrigin + startMs,
      baseLatency: ctx.baseLatency,
      outputLatency: ctx.outputLatency,
    };
  },
};
