// vaak browser client: wire protocol v1 (docs/protocol.md) over one WebSocket at /ws.
// Plain modern JavaScript, no build step. The audio runs in worklets.js.

const VERSION = 1;
const T = {
  HELLO: 0x01,
  WELCOME: 0x02,
  AUDIO: 0x10,
  CONTROL: 0x20,
  META: 0x30,
  ERROR: 0x40,
  PING: 0x50,
  PONG: 0x51,
};
const HEADER = 14;
const RATE = 16000;
const MAX_LATENCIES = 200;

/** Counters read by the headless browser test; the keys are fixed by the protocol spec. */
window.vaakStats = {
  state: "idle",
  framesSent: 0,
  framesReceived: 0,
  bytesReceived: 0,
  turns: 0,
  flushes: 0,
  lastLatencyMs: null,
  latenciesMs: [],
  errors: [],
};
/** Extra diagnostics (not part of the fixed `vaakStats` shape). */
window.vaakDebug = {
  underruns: 0,
  droppedPlaybackMs: 0,
  staleFramesDropped: 0,
  seqGaps: 0,
  queuedMs: 0,
  micLevel: 0,
  micPeak: 0,
  vadChanges: 0,
  session: null,
  welcome: null,
};

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const stats = window.vaakStats;
const debug = window.vaakDebug;
const enc = new TextEncoder();
const dec = new TextDecoder();

let ws = null;
let ctx = null;
let micStream = null;
let captureNode = null;
let playbackNode = null;
let sendSeq = 0;
let recvSeq = -1;
let flushedTurn = -1; // AUDIO of turns <= this is stale and dropped
let replyRate = RATE;
const pendingLatency = new Map(); // turn -> {speechEndUs, stages, endpointMs}
const startedAt = new Map(); // turn -> performance.now() ms of its first played sample
const turnsSeen = new Set();

function nowUs() {
  return Math.round(performance.now() * 1000);
}

function setState(s) {
  stats.state = s;
  $("state").textContent = s;
}

function showError(msg) {
  stats.errors.push(String(msg));
  const el = $("error");
  el.textContent = String(msg);
  el.hidden = false;
}

function frame(type, payload) {
  const body = payload || new Uint8Array(0);
  const buf = new ArrayBuffer(HEADER + body.byteLength);
  const dv = new DataView(buf);
  dv.setUint8(0, VERSION);
  dv.setUint8(1, type);
  dv.setUint32(2, sendSeq >>> 0, true);
  dv.setBigUint64(6, BigInt(nowUs()), true);
  new Uint8Array(buf, HEADER).set(new Uint8Array(body.buffer || body, body.byteOffset || 0, body.byteLength));
  sendSeq = (sendSeq + 1) >>> 0;
  return buf;
}

function send(type, payload) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(frame(type, payload));
  return true;
}

function sendJson(type, obj) {
  return send(type, enc.encode(JSON.stringify(obj)));
}

function control(op, extra) {
  return sendJson(T.CONTROL, Object.assign({ op }, extra || {}));
}

function sendAudio(pcmBuffer) {
  const pcm = new Uint8Array(pcmBuffer);
  const payload = new Uint8Array(4 + pcm.byteLength);
  // c->s `turn` is ignored by the server: always 0.
  payload.set(pcm, 4);
  if (send(T.AUDIO, payload)) stats.framesSent++;
}

function fillSelect(id, values, current) {
  const sel = $(id);
  if (!Array.isArray(values) || values.length === 0) return;
  const keep = current != null ? current : sel.value;
  sel.replaceChildren();
  if (id === "voice") sel.append(new Option("default", ""));
  for (const v of values) sel.append(new Option(String(v), String(v)));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

function onWelcome(w) {
  debug.welcome = w;
  debug.session = w.session;
  replyRate = w.sample_rate || RATE;
  fillSelect("mode", w.modes);
  fillSelect("turn_mode", w.turn_modes);
  fillSelect("voice", w.voices);
  fillSelect("emotion", w.emotions);
  fillSelect("lang", w.languages);
  setState("running");
  setButtons(true);
}

function pcm16ToFloat(bytes, offset) {
  const n = (bytes.byteLength - offset) >> 1;
  const dv = new DataView(bytes.buffer, bytes.byteOffset + offset, n * 2);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = dv.getInt16(i * 2, true) / 32768;
  if (replyRate === ctx.sampleRate) return out;
  // Linear resampling to the context's rate (only when the browser refused 16 kHz).
  const ratio = replyRate / ctx.sampleRate;
  const m = Math.floor(n / ratio);
  const res = new Float32Array(m);
  for (let i = 0; i < m; i++) {
    const p = i * ratio;
    const j = Math.floor(p);
    const f = p - j;
    res[i] = out[j] * (1 - f) + (j + 1 < n ? out[j + 1] : out[j]) * f;
  }
  return res;
}

function onAudio(bytes) {
  if (bytes.byteLength < 4) return;
  const turn = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
  if (turn <= flushedTurn) {
    debug.staleFramesDropped++;
    return;
  }
  const samples = pcm16ToFloat(bytes, 4);
  playbackNode.port.postMessage({ type: "audio", turn, samples }, [samples.buffer]);
}

function recordLatency(turn) {
  const meta = pendingLatency.get(turn);
  const t = startedAt.get(turn);
  if (meta == null || t == null) return;
  pendingLatency.delete(turn);
  startedAt.delete(turn);
  // The first sample leaves the speaker `outputLatency` after the worklet wrote it.
  const playoutMs = t + (ctx && ctx.outputLatency ? ctx.outputLatency * 1000 : 0);
  const ms = Math.round(playoutMs - meta.speechEndUs / 1000);
  stats.lastLatencyMs = ms;
  stats.latenciesMs.push(ms);
  if (stats.latenciesMs.length > MAX_LATENCIES) stats.latenciesMs.shift();
  $("latency").textContent = `${ms} ms (endpoint silence ${fmt(meta.endpointMs)} ms)`;
  const s = meta.stages || {};
  $("stages").textContent = Object.keys(s)
    .map((k) => `${k} ${fmt(s[k])}`)
    .join(" · ");
  const li = document.createElement("li");
  li.textContent = `turn ${turn}: ${ms} ms`;
  $("turns").prepend(li);
  while ($("turns").children.length > 20) $("turns").lastChild.remove();
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(0) : "–";
}

function onControl(m) {
  switch (m.op) {
    case "turn_started":
      $("turn").textContent = String(m.turn);
      break;
    case "flush":
      stats.flushes++;
      flushedTurn = Math.max(flushedTurn, m.turn);
      playbackNode.port.postMessage({ type: "flush", turn: m.turn });
      for (const k of [...pendingLatency.keys()]) if (k <= m.turn) pendingLatency.delete(k);
      break;
    case "turn_ended":
      playbackNode.port.postMessage({ type: "drain", turn: m.turn });
      break;
    case "closing":
      setState("closing");
      break;
    default:
      break;
  }
}

function onMeta(m) {
  if (m.kind === "vad") {
    debug.vadChanges++;
    $("vad").textContent = m.speaking ? "speaking" : "silent";
  } else if (m.kind === "latency") {
    pendingLatency.set(m.turn, {
      speechEndUs: Number(m.speech_end_t_us),
      endpointMs: m.endpoint_ms,
      stages: m.stages_ms,
    });
    recordLatency(m.turn);
  } else if (m.kind === "transcript") {
    $("transcript").textContent = m.text || "(nothing heard)";
  } else if (m.kind === "reply") {
    $("reply").textContent = m.text;
  }
}

function onMessage(ev) {
  if (!(ev.data instanceof ArrayBuffer)) {
    showError("text frame from the server (protocol v1 is binary only)");
    return;
  }
  const bytes = new Uint8Array(ev.data);
  if (bytes.byteLength < HEADER) {
    showError(`short frame (${bytes.byteLength} bytes)`);
    return;
  }
  const dv = new DataView(ev.data);
  if (dv.getUint8(0) !== VERSION) {
    showError(`server protocol version ${dv.getUint8(0)}`);
    return;
  }
  const type = dv.getUint8(1);
  const seq = dv.getUint32(2, true);
  if (recvSeq >= 0 && seq !== ((recvSeq + 1) >>> 0)) debug.seqGaps += (seq - recvSeq - 1) >>> 0;
  recvSeq = seq;
  stats.framesReceived++;
  stats.bytesReceived += bytes.byteLength;
  const payload = bytes.subarray(HEADER);
  const json = () => JSON.parse(dec.decode(payload));
  try {
    switch (type) {
      case T.WELCOME:
        onWelcome(json());
        break;
      case T.AUDIO:
        onAudio(payload);
        break;
      case T.CONTROL:
        onControl(json());
        break;
      case T.META:
        onMeta(json());
        break;
      case T.ERROR: {
        const e = json();
        showError(`${e.code}: ${e.message}`);
        if (e.fatal) setState("error");
        break;
      }
      case T.PING:
        send(T.PONG, payload);
        break;
      case T.PONG:
        break;
      default:
        showError(`unknown frame type 0x${type.toString(16)}`);
    }
  } catch (err) {
    showError(`bad payload in frame type 0x${type.toString(16)}: ${err}`);
  }
}

function setButtons(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  $("end_turn").disabled = !running;
  $("interrupt").disabled = !running;
}

async function startAudio() {
  ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("worklets.js");
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: {
      echoCancellation: true,
      noiseSuppression: true,
      autoGainControl: true,
      channelCount: 1,
    },
  });
  const src = ctx.createMediaStreamSource(micStream);
  captureNode = new AudioWorkletNode(ctx, "vaak-capture", {
    numberOfInputs: 1,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { targetRate: RATE, frameSamples: RATE / 50 },
  });
  captureNode.port.onmessage = (e) => {
    if (e.data.type !== "frame") return;
    debug.micLevel = e.data.level;
    debug.micPeak = Math.max(debug.micPeak, e.data.level);
    $("level").value = Math.min(1, e.data.level * 4);
    if (stats.state === "running") sendAudio(e.data.pcm);
  };
  src.connect(captureNode);
  // The capture node outputs silence; connecting it keeps it pulled by the graph.
  const mute = new GainNode(ctx, { gain: 0 });
  captureNode.connect(mute).connect(ctx.destination);

  const targetMs = Number(params.get("jitter_ms")) || 80;
  const maxMs = Number(params.get("max_buffer_ms")) || 500;
  playbackNode = new AudioWorkletNode(ctx, "vaak-playback", {
    numberOfInputs: 0,
    numberOfOutputs: 1,
    outputChannelCount: [1],
    processorOptions: { targetMs, maxMs },
  });
  playbackNode.port.onmessage = (e) => {
    const m = e.data;
    if (m.type === "started") {
      if (!turnsSeen.has(m.turn)) {
        turnsSeen.add(m.turn);
        stats.turns++;
      }
      startedAt.set(m.turn, performance.now());
      recordLatency(m.turn);
    } else if (m.type === "stats") {
      debug.underruns = m.underruns;
      debug.droppedPlaybackMs = m.droppedMs;
      debug.queuedMs = m.queuedMs;
      $("buffer").value = m.queuedMs;
      $("buffer_ms").textContent = `${m.queuedMs.toFixed(0)} ms`;
    }
    $("frames").textContent = `${stats.framesSent} / ${stats.framesReceived}`;
    $("counts").textContent = `${stats.turns} / ${stats.flushes} / ${debug.underruns}`;
  };
  playbackNode.connect(ctx.destination);
  if (ctx.state === "suspended") await ctx.resume();
}

function wsUrl() {
  const u = new URL("ws", location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const key = $("api_key").value || params.get("api_key");
  if (key) u.searchParams.set("api_key", key);
  return u.toString();
}

async function start() {
  if (ws) return;
  $("error").hidden = true;
  setState("connecting");
  setButtons(true);
  try {
    if (!ctx) await startAudio();
  } catch (err) {
    setState("error");
    setButtons(false);
    showError(`audio: ${err && err.message ? err.message : err}`);
    return;
  }
  sendSeq = 0;
  recvSeq = -1;
  flushedTurn = -1;
  ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    sendJson(T.HELLO, {
      mode: $("mode").value,
      turn_mode: $("turn_mode").value,
      audio: "pcm16",
      sample_rate: RATE,
      voice: $("voice").value || null,
      emotion: $("emotion").value,
      lang: $("lang").value,
    });
  };
  ws.onmessage = onMessage;
  ws.onerror = () => showError("WebSocket error");
  ws.onclose = (ev) => {
    ws = null;
    if (stats.state !== "error") setState("closed");
    if (ev.code !== 1000 && ev.code !== 1005 && ev.reason) showError(`closed: ${ev.code} ${ev.reason}`);
    setButtons(false);
  };
}

function stop() {
  if (!ws) return;
  control("close");
  ws.close(1000, "bye");
}

function bindSetter(id, key) {
  $(id).addEventListener("change", () => {
    if (stats.state === "running") control("set", { [key]: $(id).value || null });
  });
}

function init() {
  for (const k of ["mode", "turn_mode", "voice", "emotion", "lang"]) {
    const v = params.get(k);
    if (v != null) {
      const sel = $(k);
      if (![...sel.options].some((o) => o.value === v)) sel.append(new Option(v, v));
      sel.value = v;
    }
    bindSetter(k, k);
  }
  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("end_turn").addEventListener("click", () => control("end_of_turn"));
  $("interrupt").addEventListener("click", () => {
    control("interrupt");
  });
  document.addEventListener("keydown", (e) => {
    // Space ends the turn (push-to-talk), Escape interrupts the reply.
    if (stats.state !== "running" || e.target instanceof HTMLInputElement) return;
    if (e.code === "Space" && !(e.target instanceof HTMLButtonElement)) {
      e.preventDefault();
      control("end_of_turn");
    } else if (e.code === "Escape") {
      control("interrupt");
    }
  });
  setInterval(() => {
    if (ws && ws.readyState === WebSocket.OPEN) send(T.PING, enc.encode(String(nowUs())));
  }, 10000);
  if (params.get("autostart") === "1") start();
}

init();
