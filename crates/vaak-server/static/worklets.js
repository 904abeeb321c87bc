// vaak audio worklets: microphone capture in 20 ms PCM16 frames, and a playback jitter buffer.
// Loaded with `audioContext.audioWorklet.addModule("worklets.js")`; both run on the audio thread.

/**
 * Capture: collects the microphone into frames of `frameSamples` samples at `targetRate`
 * (linear resampling when the context runs at another rate), converts them to PCM16 and posts
 * `{type: "frame", pcm: ArrayBuffer, level}` where `level` is the frame's RMS in [0, 1].
 */
class VaakCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.targetRate = o.targetRate || 16000;
    this.frameSamples = o.frameSamples || Math.round(this.targetRate / 50);
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.pos = 0; // fractional read position into `this.carry`
    this.carry = new Float32Array(0);
    this.frame = new Float32Array(this.frameSamples);
    this.fill = 0;
    this.enabled = true;
    this.port.onmessage = (e) => {
      if (e.data && e.data.type === "enable") this.enabled = !!e.data.on;
    };
  }

  push(sample) {
    this.frame[this.fill++] = sample;
    if (this.fill < this.frameSamples) return;
    const pcm = new Int16Array(this.frameSamples);
    let sum = 0;
    for (let i = 0; i < this.frameSamples; i++) {
      const s = Math.max(-1, Math.min(1, this.frame[i]));
      sum += s * s;
      pcm[i] = s < 0 ? Math.round(s * 32768) : Math.round(s * 32767);
    }
    const level = Math.sqrt(sum / this.frameSamples);
    this.fill = 0;
    this.port.postMessage({ type: "frame", pcm: pcm.buffer, level }, [pcm.buffer]);
  }

  process(inputs) {
    const input = inputs[0];
    if (!this.enabled || !input || input.length === 0 || !input[0]) return true;
    const ch = input[0]; // mono: the first channel (getUserMedia gives mono with AEC)
    if (this.step === 1) {
      for (let i = 0; i < ch.length; i++) this.push(ch[i]);
      return true;
    }
    // Linear resampling across block boundaries: keep the last input sample as `carry`.
    const buf = new Float32Array(this.carry.length + ch.length);
    buf.set(this.carry, 0);
    buf.set(ch, this.carry.length);
    while (this.pos + 1 < buf.length) {
      const i = Math.floor(this.pos);
      const f = this.pos - i;
      this.push(buf[i] * (1 - f) + buf[i + 1] * f);
      this.pos += this.step;
    }
    const keep = Math.floor(this.pos);
    this.carry = buf.slice(keep);
    this.pos -= keep;
    return true;
  }
}

/**
 * Playback jitter buffer. Messages in:
 *  - `{type: "audio", turn, samples: Float32Array}`: queue a chunk of the reply of `turn`;
 *  - `{type: "flush", turn}`: drop every queued or playing sample of turns <= `turn`, now;
 *  - `{type: "drain", turn}`: the reply of `turn` is complete: play what is left even if it is
 *    below the target depth (so the tail of a turn is never held back);
 *  - `{type: "config", targetMs, maxMs}`.
 * It waits until `targetMs` of audio is queued before it starts (or restarts after an underrun),
 * and drops the oldest audio when more than `maxMs` is queued. Messages out:
 *  - `{type: "started", turn}` when the first sample of a turn is written to the output;
 *  - `{type: "stats", queuedMs, underruns, droppedMs, playing}` about every 50 ms.
 */
class VaakPlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.targetSamples = Math.round(((o.targetMs || 80) * sampleRate) / 1000);
    this.maxSamples = Math.round(((o.maxMs || 500) * sampleRate) / 1000);
    this.queue = []; // [{turn, samples, off}]
    this.queued = 0;
    this.playing = false;
    this.drainTurn = -1; // turns <= drainTurn are complete
    this.startedTurn = -1; // last turn whose first sample was played
    this.underruns = 0;
    this.dryTurn = -1; // the turn that ran dry before its end, if any
    this.droppedSamples = 0;
    this.sinceStats = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    if (!m) return;
    if (m.type === "audio") {
      const samples = m.samples;
      if (m.turn === this.dryTurn) {
        // More audio of a turn that ran dry: the gap was audible, an underrun.
        this.underruns++;
        this.dryTurn = -1;
      }
      this.queue.push({ turn: m.turn, samples, off: 0 });
      this.queued += samples.length;
      while (this.queued > this.maxSamples && this.queue.length > 0) {
        // Overflow: drop the oldest audio (never let the latency grow).
        const head = this.queue[0];
        const left = head.samples.length - head.off;
        const excess = this.queued - this.maxSamples;
        if (left <= excess) {
          this.queue.shift();
          this.queued -= left;
          this.droppedSamples += left;
        } else {
          head.off += excess;
          this.queued -= excess;
          this.droppedSamples += excess;
        }
      }
    } else if (m.type === "flush") {
      const kept = [];
      let n = 0;
      for (const c of this.queue) {
        if (c.turn > m.turn) {
          kept.push(c);
          n += c.samples.length - c.off;
        }
      }
      this.queue = kept;
      this.queued = n;
      if (n === 0) this.playing = false;
      if (this.dryTurn <= m.turn) this.dryTurn = -1;
    } else if (m.type === "drain") {
      this.drainTurn = Math.max(this.drainTurn, m.turn);
      if (this.dryTurn <= this.drainTurn) this.dryTurn = -1;
    } else if (m.type === "config") {
      if (m.targetMs) this.targetSamples = Math.round((m.targetMs * sampleRate) / 1000);
      if (m.maxMs) this.maxSamples = Math.round((m.maxMs * sampleRate) / 1000);
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const ch0 = out[0];
    const n = ch0.length;
    let w = 0;
    if (!this.playing && this.queue.length > 0) {
      const lastTurn = this.queue[this.queue.length - 1].turn;
      if (this.queued >= this.targetSamples || lastTurn <= this.drainTurn) this.playing = true;
    }
    if (this.playing) {
      while (w < n && this.queue.length > 0) {
        const c = this.queue[0];
        if (c.turn > this.startedTurn) {
          this.startedTurn = c.turn;
          this.port.postMessage({ type: "started", turn: c.turn, frame: currentFrame + w });
        }
        const take = Math.min(n - w, c.samples.length - c.off);
        ch0.set(c.samples.subarray(c.off, c.off + take), w);
        c.off += take;
        w += take;
        this.queued -= take;
        if (c.off >= c.samples.length) this.queue.shift();
      }
      if (this.queue.length === 0) {
        this.playing = false;
        // Running dry before the reply's end: an underrun if more of that turn arrives.
        if (this.startedTurn > this.drainTurn) this.dryTurn = this.startedTurn;
      }
    }
    for (let i = w; i < n; i++) ch0[i] = 0;
    for (let c = 1; c < out.length; c++) out[c].set(ch0);
    this.sinceStats += n;
    if (this.sinceStats >= sampleRate / 20) {
      this.sinceStats = 0;
      this.port.postMessage({
        type: "stats",
        queuedMs: (this.queued * 1000) / sampleRate,
        underruns: this.underruns,
        droppedMs: (this.droppedSamples * 1000) / sampleRate,
        playing: this.playing,
      });
    }
    return true;
  }
}

registerProcessor("vaak-capture", VaakCapture);
registerProcessor("vaak-playback", VaakPlayback);
