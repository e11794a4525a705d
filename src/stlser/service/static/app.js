// stlser web page: upload a file or record the microphone, show class probabilities as bars and,
// for long audio, a timeline of segments coloured by emotion. No build step, no external assets.
//
// Browsers record compressed audio (webm/opus) that the server's decoder may not read, so the
// microphone is captured as raw PCM (AudioWorklet, ScriptProcessor fallback), resampled to
// 16 kHz with an OfflineAudioContext and encoded as a 16-bit PCM WAV here before upload.
"use strict";

const TARGET_RATE = 16000;
const AUTO_SEGMENTS_SECONDS = 10;
const KNOWN_COLOURS = {
  angry: "#d64545", anger: "#d64545", happy: "#e0a100", happiness: "#e0a100", joy: "#e0a100",
  neutral: "#8a94a6", sad: "#3a6fd8", sadness: "#3a6fd8", fear: "#8e5bd0", fearful: "#8e5bd0",
  disgust: "#4f9a3a", surprise: "#e07b28", surprised: "#e07b28", calm: "#2aa198",
  boredom: "#9b8b6e", excited: "#ff6fa0", frustrated: "#b5532f",
};
const PALETTE = ["#d64545", "#e0a100", "#8a94a6", "#3a6fd8", "#8e5bd0", "#4f9a3a", "#e07b28",
  "#2aa198", "#ff6fa0", "#9b8b6e"];

const state = { labels: [], maxBytes: 20 * 1024 * 1024, maxSeconds: 600, busy: false, rec: null,
  speaker: null, minClips: 2, minSeconds: 3 };
const $ = (id) => document.getElementById(id);

function colourOf(label) {
  const known = KNOWN_COLOURS[String(label).toLowerCase()];
  if (known) return known;
  const i = state.labels.indexOf(label);
  return PALETTE[(i >= 0 ? i : state.labels.length) % PALETTE.length];
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function setBusy(busy, note) {
  state.busy = busy;
  document.body.setAttribute("aria-busy", busy ? "true" : "false");
  $("predict").disabled = busy || !$("file").files.length;
  $("record").disabled = busy || state.rec !== null;
  if (note !== undefined) $("rec-status").textContent = note;
}

function fmtTime(s) {
  const m = Math.floor(s / 60);
  const sec = s - 60 * m;
  return m > 0 ? `${m}:${sec.toFixed(1).padStart(4, "0")}` : `${sec.toFixed(1)} s`;
}

// ------------------------------------------------------------------------------ API calls
async function request(path, init) {
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new Error(`cannot reach the server (${e.message})`);
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  if (!resp.ok) {
    const msg = body && body.error ? body.error : `HTTP ${resp.status}`;
    throw new Error(msg);
  }
  return body;
}

async function postAudio(path, blob, name) {
  const form = new FormData();
  form.append("file", blob, name);
  return request(path, { method: "POST", body: form });
}

// --------------------------------------------------------------------- speaker adaptation
// With "same speaker" on, the page asks the server for a speaker token once and sends it with
// every clip: the server keeps that speaker's statistics (never shared with other clients) and,
// from its minimum on, answers with them.
async function predictPath() {
  if (!$("speaker-toggle").checked) return "/predict";
  if (!state.speaker) {
    const t = await request("/speakers", { method: "POST" });
    state.speaker = t.speaker;
    state.minClips = t.min_clips;
    state.minSeconds = t.min_seconds;
    $("speaker-reset").disabled = false;
  }
  return `/predict?speaker=${encodeURIComponent(state.speaker)}`;
}

function showSpeaker(info) {
  const el = $("speaker-status");
  if (!info) return;
  el.dataset.adapted = String(info.adapted);
  el.textContent = info.adapted
    ? `Adapted to this speaker (${info.clips} clips, ${Math.round(info.seconds)} s).`
    : `This speaker so far: ${info.clips} of ${state.minClips} clips, ` +
      `${Math.round(info.seconds)} of ${state.minSeconds} s; general statistics until then.`;
}

async function resetSpeaker() {
  const token = state.speaker;
  state.speaker = null;
  $("speaker-reset").disabled = true;
  $("speaker-status").textContent = "";
  delete $("speaker-status").dataset.adapted;
  if (token) {
    try {
      await request(`/speakers/${encodeURIComponent(token)}`, { method: "DELETE" });
    } catch (e) {
      // already expired on the server: nothing to forget
    }
  }
}

async function analyse(blob, name) {
  showError("");
  if (blob.size === 0) return showError("the file is empty");
  if (blob.size > state.maxBytes) {
    const mb = (state.maxBytes / 1048576).toFixed(1);
    return showError(`the file is larger than the server's limit of ${mb} MB`);
  }
  setBusy(true, "Analysing…");
  $("result").hidden = true; // never leave an older result next to a new error
  $("timeline-card").hidden = true;
  try {
    const pred = await postAudio(await predictPath(), blob, name);
    renderBars(pred, name);
    showSpeaker(pred.speaker);
    const wantSegments = $("segments-toggle").checked || pred.duration > AUTO_SEGMENTS_SECONDS;
    if (wantSegments) {
      const seg = await postAudio("/segments", blob, name);
      renderTimeline(seg);
    } else {
      $("timeline-card").hidden = true;
    }
    setBusy(false, "");
  } catch (e) {
    setBusy(false, "");
    if (e.message.includes("unknown speaker token")) resetSpeaker();
    showError(e.message);
  }
}

// ------------------------------------------------------------------------------- rendering
function renderBars(pred, name) {
  const probs = pred.probabilities || {};
  const entries = Object.entries(probs).sort((a, b) => b[1] - a[1]);
  const bars = $("bars");
  bars.replaceChildren();
  for (const [label, p] of entries) {
    const pct = 100 * p;
    const row = document.createElement("div");
    row.className = "bar" + (label === pred.label ? " top" : "");
    row.setAttribute("role", "listitem");
    row.dataset.label = label;
    row.dataset.prob = String(p);
    row.setAttribute("aria-label", `${label}: ${pct.toFixed(1)} percent`);

    const lab = document.createElement("span");
    lab.className = "bar-label";
    lab.textContent = label;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0, Math.min(100, pct)).toFixed(2)}%`;
    fill.style.backgroundColor = colourOf(label);
    track.appendChild(fill);
    const val = document.createElement("span");
    val.className = "bar-value";
    val.textContent = `${pct.toFixed(1)} %`;
    row.append(lab, track, val);
    bars.appendChild(row);
  }
  const dur = typeof pred.duration === "number" ? `, ${fmtTime(pred.duration)}` : "";
  const summary = $("summary");
  summary.replaceChildren();
  const strong = document.createElement("strong");
  strong.id = "top-label";
  strong.textContent = pred.label;
  strong.style.color = colourOf(pred.label);
  summary.append("Most likely: ", strong, ` (${(100 * (probs[pred.label] || 0)).toFixed(1)} %)`);
  if (pred.unsure) {
    const note = document.createElement("span");
    note.id = "unsure";
    note.textContent = " · unsure: no emotion stands out in this clip";
    summary.append(note);
  }
  summary.append(document.createTextNode(` · ${name}${dur}`));
  $("result").hidden = false;
}

function renderTimeline(res) {
  const segs = res.segments || [];
  const total = res.duration || (segs.length ? segs[segs.length - 1].end : 0);
  const tl = $("timeline");
  tl.replaceChildren();
  for (const s of segs) {
    const el = document.createElement("div");
    el.className = "segment";
    el.setAttribute("role", "listitem");
    el.dataset.label = s.label;
    el.dataset.start = String(s.start);
    el.dataset.end = String(s.end);
    const p = s.probabilities && s.probabilities[s.label];
    const pct = typeof p === "number" ? ` (${(100 * p).toFixed(0)} %)` : "";
    const text = `${fmtTime(s.start)}–${fmtTime(s.end)}: ${s.label}${pct}`;
    el.title = text;
    el.setAttribute("aria-label", text);
    el.style.left = `${(100 * s.start) / total}%`;
    el.style.width = `${(100 * (s.end - s.start)) / total}%`;
    el.style.backgroundColor = colourOf(s.label);
    tl.appendChild(el);
  }
  if (!segs.length) {
    const none = document.createElement("p");
    none.className = "muted";
    none.textContent = "No voiced segments found.";
    tl.appendChild(none);
  }
  const axis = $("axis");
  axis.replaceChildren();
  const ticks = 5;
  for (let i = 0; i <= ticks; i++) {
    const t = document.createElement("span");
    t.textContent = fmtTime((total * i) / ticks);
    t.style.left = `${(100 * i) / ticks}%`;
    axis.appendChild(t);
  }
  const legend = $("legend");
  legend.replaceChildren();
  for (const label of state.labels) {
    const item = document.createElement("span");
    item.className = "legend-item";
    const sw = document.createElement("span");
    sw.className = "swatch";
    sw.style.backgroundColor = colourOf(label);
    item.append(sw, label);
    legend.appendChild(item);
  }
  $("timeline-card").hidden = false;
}

// ------------------------------------------------------------------------------ recording
function encodeWav(samples, rate) {
  const buf = new ArrayBuffer(44 + 2 * samples.length);
  const v = new DataView(buf);
  const str = (off, s) => { for (let i = 0; i < s.length; i++) v.setUint8(off + i, s.charCodeAt(i)); };
  str(0, "RIFF"); v.setUint32(4, 36 + 2 * samples.length, true); str(8, "WAVE");
  str(12, "fmt "); v.setUint32(16, 16, true); v.setUint16(20, 1, true); v.setUint16(22, 1, true);
  v.setUint32(24, rate, true); v.setUint32(28, 2 * rate, true); v.setUint16(32, 2, true);
  v.setUint16(34, 16, true); str(36, "data"); v.setUint32(40, 2 * samples.length, true);
  for (let i = 0; i < samples.length; i++) {
    const x = Math.max(-1, Math.min(1, samples[i]));
    v.setInt16(44 + 2 * i, x < 0 ? x * 0x8000 : x * 0x7fff, true);
  }
  return new Blob([buf], { type: "audio/wav" });
}

async function resampleTo(samples, rate, target) {
  if (rate === target || samples.length === 0) return samples;
  const length = Math.max(1, Math.round((samples.length * target) / rate));
  const ctx = new OfflineAudioContext(1, length, target);
  const buffer = ctx.createBuffer(1, samples.length, rate);
  buffer.copyToChannel(samples, 0);
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  src.connect(ctx.destination);
  src.start();
  const out = await ctx.startRendering();
  return out.getChannelData(0);
}

async function startRecording() {
  showError("");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return showError("microphone not available: open the page over https or from localhost");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    return showError(`microphone not available (${e.name || e.message})`);
  }
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const mute = ctx.createGain();
  mute.gain.value = 0;
  mute.connect(ctx.destination);
  const chunks = [];
  let node;
  const onBlock = (block) => chunks.push(block);
  if (ctx.audioWorklet && window.AudioWorkletNode) {
    await ctx.audioWorklet.addModule("/static/recorder-worklet.js");
    node = new AudioWorkletNode(ctx, "stlser-capture");
    node.port.onmessage = (ev) => onBlock(ev.data);
  } else {
    node = ctx.createScriptProcessor(4096, 1, 1);
    node.onaudioprocess = (ev) => onBlock(new Float32Array(ev.inputBuffer.getChannelData(0)));
  }
  source.connect(node);
  node.connect(mute);
  // Stop by itself before the server's limits: 16-bit mono at 16 kHz is 32 kB per second.
  const limitSeconds = Math.min(state.maxSeconds, (state.maxBytes - 1024) / (2 * TARGET_RATE));
  const started = performance.now();
  const timer = setInterval(() => {
    const s = (performance.now() - started) / 1000;
    $("rec-status").textContent = `Recording… ${s.toFixed(1)} s`;
    if (s >= limitSeconds) stopRecording();
  }, 200);
  state.rec = { stream, ctx, node, chunks, timer };
  $("record").disabled = true;
  $("stop").disabled = false;
  $("record").classList.add("recording");
  $("rec-status").textContent = "Recording…";
}

async function stopRecording() {
  const rec = state.rec;
  if (!rec) return;
  state.rec = null;
  clearInterval(rec.timer);
  $("stop").disabled = true;
  $("record").classList.remove("recording");
  rec.stream.getTracks().forEach((t) => t.stop());
  rec.node.disconnect();
  const rate = rec.ctx.sampleRate;
  await rec.ctx.close();
  let n = 0;
  for (const c of rec.chunks) n += c.length;
  const all = new Float32Array(n);
  let off = 0;
  for (const c of rec.chunks) { all.set(c, off); off += c.length; }
  if (n < 0.3 * rate) {
    setBusy(false, "");
    return showError("the recording is too short: record at least half a second");
  }
  const pcm = await resampleTo(all, rate, TARGET_RATE);
  const wav = encodeWav(pcm, TARGET_RATE);
  const player = $("playback");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(wav);
  player.hidden = false;
  await analyse(wav, "recording.wav");
}

// ------------------------------------------------------------------------------- start-up
async function init() {
  $("file").addEventListener("change", () => setBusy(state.busy));
  $("predict").addEventListener("click", () => {
    const f = $("file").files[0];
    if (f) analyse(f, f.name);
  });
  $("record").addEventListener("click", () => startRecording().catch((e) => showError(e.message)));
  $("stop").addEventListener("click", () => stopRecording().catch((e) => showError(e.message)));
  $("speaker-reset").addEventListener("click", () => resetSpeaker());
  $("speaker-toggle").addEventListener("change", () => {
    if (!$("speaker-toggle").checked) resetSpeaker();
  });
  try {
    const resp = await fetch("/health");
    const h = await resp.json();
    state.labels = h.labels || [];
    state.maxBytes = Math.floor((h.max_mb || 20) * 1024 * 1024);
    state.maxSeconds = h.max_seconds || 600;
    $("status").textContent = `Model ready · classes: ${state.labels.join(", ")} · ` +
      `limits: ${h.max_mb} MB, ${Math.round(state.maxSeconds)} s`;
    $("version").textContent = `stlser ${h.version}`;
    $("speaker-row").hidden = !h.adaptable;
    document.body.dataset.ready = "true";
  } catch (e) {
    $("status").textContent = "";
    showError(`cannot reach the server (${e.message})`);
  }
  setBusy(false);
}

document.addEventListener("DOMContentLoaded", init);
