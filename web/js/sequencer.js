// Per-speaker packet order (pure; the clock is passed in): what to decode next.
//
// Packets are played in sequence order. One that arrives after its turn is late and
// dropped; a repeat is dropped. A gap waits for the missing packet while the later
// ones are held, at most `holdMs` or `maxHeld` packets, then the missing ones are
// declared lost and concealed. A new stream id whose sequence number does not follow on
// re-synchronises on it (docs/protocol.md 7, receiver rules). Silence between talk
// spurts (DTX) is a timestamp gap without a sequence gap: nothing to conceal.

export const SAMPLES_PER_MS = 48;

export function seqDelta(a, b) {
  return ((a - b + 0x8000) & 0xffff) - 0x8000;
}

export class Sequencer {
  constructor({ holdMs = 60, maxHeld = 3 } = {}) {
    this.holdMs = holdMs;
    this.maxHeld = maxHeld;
    this.next = null; // the sequence number due
    this.streamId = null;
    this.held = new Map(); // seq -> {frame, at}
    this.stats = { decoded: 0, lost: 0, late: 0, duplicate: 0, resync: 0 };
  }

  /**
   * A packet opened at time `now` (ms). Returns the actions in play order:
   * {decode: frame} or {conceal: samples}.
   */
  push(frame, now) {
    const actions = [];
    if (this.next === null || (frame.streamId !== this.streamId && seqDelta(frame.seq, this.next) !== 0)) {
      if (this.next !== null) this.stats.resync += 1;
      this._flushHeld(actions);
      this.next = frame.seq;
    }
    this.streamId = frame.streamId;
    const delta = seqDelta(frame.seq, this.next);
    if (delta < 0) {
      this.stats.late += 1;
      return actions;
    }
    if (delta > 0) {
      if (this.held.has(frame.seq)) this.stats.duplicate += 1;
      else this.held.set(frame.seq, { frame, at: now });
      this._giveUp(now, actions);
      return actions;
    }
    this._emit(frame, actions);
    this._drain(actions);
    return actions;
  }

  /** Time passes: a gap waited on long enough is declared lost. */
  poll(now) {
    const actions = [];
    this._giveUp(now, actions);
    return actions;
  }

  _giveUp(now, actions) {
    while (this.held.size > 0) {
      const oldest = Math.min(...[...this.held.values()].map((h) => h.at));
      if (this.held.size <= this.maxHeld && now - oldest < this.holdMs) return;
      const first = this._firstHeld();
      const missing = seqDelta(first.seq, this.next);
      const samples = first.duration * SAMPLES_PER_MS;
      for (let i = 0; i < missing; i += 1) actions.push({ conceal: samples });
      this.stats.lost += missing;
      this.next = first.seq;
      this._drain(actions);
    }
  }

  _firstHeld() {
    let best = null;
    for (const { frame } of this.held.values()) {
      if (best === null || seqDelta(frame.seq, best.seq) < 0) best = frame;
    }
    return best;
  }

  _drain(actions) {
    while (this.held.has(this.next)) {
      const { frame } = this.held.get(this.next);
      this.held.delete(this.next);
      this._emit(frame, actions);
    }
  }

  _flushHeld(actions) {
    const frames = [...this.held.values()].map((h) => h.frame);
    frames.sort((a, b) => seqDelta(a.seq, b.seq));
    this.held.clear();
    for (const frame of frames) this._emit(frame, actions);
  }

  _emit(frame, actions) {
    actions.push({ decode: frame });
    this.stats.decoded += 1;
    this.next = (frame.seq + 1) & 0xffff;
  }
}
