// The qvimclap page: record (Web Audio, WAV in the browser) or choose a file, search, play, generate.
// Plain JavaScript, no dependencies: it talks to the JSON API of the same server.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");
const state = { query: null, queryName: null, limits: { max_record_s: 10 }, recorder: null, generation: false };

// ------------------------------------------------------------------ API
function withToken(url) {
  return TOKEN ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : url;
}

async function api(path, options = {}) {
  const headers = TOKEN ? { Authorization: "Bearer " + TOKEN } : {};
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new Error("The qvimclap server cannot be reached. Is `qvimclap serve` still running?");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `The server answered ${response.status}.`);
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// ------------------------------------------------------------------ start-up
async function start() {
  try {
    const [health, listing] = await Promise.all([api("/api/health"), api("/api/indexes")]);
    state.limits = health.limits;
    state.generation = health.generation.available;
    for (const index of listing.indexes) {
      const option = new Option(`${index.name} (${index.num_items} sounds)`, index.name);
      $("index").append(option);
    }
    const total = listing.indexes.reduce((n, index) => n + index.num_items, 0);
    $("server-status").textContent =
      `qvimclap ${health.version}: ${listing.indexes.length} ${listing.indexes.length === 1 ? "library" : "libraries"}, ` +
      `${total} sounds, ` +
      (state.generation ? "generation on." : "generation off.");
    $("generate-form").hidden = !state.generation;
    $("generate-off").hidden = state.generation;
    $("generate-off").textContent = health.generation.hint || "";
    $("timer").textContent = `up to ${state.limits.max_record_s} s`;
  } catch (err) {
    $("server-status").textContent = "Not connected.";
    showError(err.message);
  }
}

// ------------------------------------------------------------------ recording
class Recorder {
  async start(onLevel, onStop) {
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      throw new Error("This browser allows the microphone only on https:// or http://localhost pages; " +
        "choose a file instead, or open the page as http://127.0.0.1.");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule("/static/recorder-worklet.js");
    const source = this.context.createMediaStreamSource(this.stream);
    const node = new AudioWorkletNode(this.context, "qvimclap-recorder");
    const mute = this.context.createGain();
    mute.gain.value = 0;  // keep the node pulled by the graph without echoing the microphone
    source.connect(node).connect(mute).connect(this.context.destination);
    this.chunks = [];
    this.length = 0;
    const maxSamples = state.limits.max_record_s * this.context.sampleRate;
    node.port.onmessage = (event) => {
      if (!this.context) return;
      const chunk = event.data;
      this.chunks.push(chunk);
      this.length += chunk.length;
      let peak = 0;
      for (const x of chunk) peak = Math.max(peak, Math.abs(x));
      onLevel(peak, this.length / this.context.sampleRate);
      if (this.length >= maxSamples) onStop();
    };
  }

  async stop() {
    const rate = this.context.sampleRate;
    this.stream.getTracks().forEach((track) => track.stop());
    await this.context.close();
    this.context = null;
    const samples = new Float32Array(this.length);
    let offset = 0;
    for (const chunk of this.chunks) { samples.set(chunk, offset); offset += chunk.length; }
    return encodeWav(samples.subarray(0, Math.min(samples.length, state.limits.max_record_s * rate)), rate);
  }
}

function encodeWav(samples, rate) {
  // 16-bit PCM mono WAV: what libsndfile (the server's audio loader) reads everywhere.
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((c, i) => view.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + i * 2, Math.max(-1, Math.min(1, x)) * 0x7fff, true));
  return new Blob([buffer], { type: "audio/wav" });
}

async function toggleRecording() {
  showError("");
  const button = $("record");
  if (state.recorder) {
    const recorder = state.recorder;
    state.recorder = null;
    button.textContent = "● Record";
    button.classList.remove("recording");
    $("level").style.width = "0";
    const wav = await recorder.stop();
    await useQuery(wav, "recording.wav");
    return;
  }
  const recorder = new Recorder();
  try {
    await recorder.start(
      (peak, seconds) => {
        $("level").style.width = `${Math.min(100, 100 * Math.sqrt(peak))}%`;
        $("timer").textContent = `${seconds.toFixed(1)} / ${state.limits.max_record_s} s`;
      },
      () => { if (state.recorder === recorder) toggleRecording(); },
    );
  } catch (err) {
    showError(err.name === "NotAllowedError" ? "The browser was not allowed to use the microphone." : err.message);
    return;
  }
  state.recorder = recorder;
  button.textContent = "■ Stop";
  button.classList.add("recording");
}

// ------------------------------------------------------------------ the query and the search
async function useQuery(blob, name) {
  state.query = blob;
  state.queryName = name;
  const player = $("query-audio");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  drawWave($("query-wave"), blob);
  $("search").disabled = false;
  $("generate-button").disabled = !state.generation;
  await search();
}

async function search() {
  if (!state.query) return;
  showError("");
  const index = $("index").value;
  const k = $("k").value || 5;
  const form = new FormData();
  form.append("audio", state.query, state.queryName);
  $("results-status").textContent = "Searching…";
  try {
    const started = performance.now();
    const result = await api(`/api/search?index=${encodeURIComponent(index)}&k=${k}`, { method: "POST", body: form });
    showHits(result.hits);
    const ms = Math.round(performance.now() - started);
    $("results-status").textContent = `${result.hits.length} nearest sounds in ${result.index} (${ms} ms).`;
  } catch (err) {
    $("hits").replaceChildren();
    $("results-status").textContent = "No results.";
    showError(err.message);
  }
}

function showHits(hits) {
  const list = $("hits");
  list.replaceChildren();
  for (const hit of hits) {
    const item = document.createElement("li");
    item.className = "hit";
    const name = hit.path ? hit.path.split(/[\\/]/).pop() : hit.id;
    const url = withToken(hit.audio_url);
    item.innerHTML = `<span class="rank"></span><span class="score"></span><span class="name"></span>
      <canvas class="wave" width="280" height="40" aria-hidden="true"></canvas><audio controls preload="none"></audio>`;
    item.querySelector(".rank").textContent = hit.rank;
    item.querySelector(".score").textContent = hit.score.toFixed(3);
    item.querySelector(".score").title = "centred cosine similarity";
    item.querySelector(".name").textContent = name;
    item.querySelector(".name").title = hit.path;
    if (hit.label) {
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = hit.label;
      item.querySelector(".name").append(label);
    }
    const player = item.querySelector("audio");
    player.src = url;
    player.setAttribute("aria-label", `play result ${hit.rank}: ${name}`);
    list.append(item);
    fetch(url).then((r) => (r.ok ? r.blob() : null)).then((blob) => blob && drawWave(item.querySelector("canvas"), blob));
  }
}

async function drawWave(canvas, blob) {
  // A min/max waveform, one column per pixel.
  try {
    const context = new OfflineAudioContext(1, 1, 44100);
    const audio = await context.decodeAudioData(await blob.arrayBuffer());
    const x = audio.getChannelData(0);
    const g = canvas.getContext("2d");
    const { width, height } = canvas;
    g.clearRect(0, 0, width, height);
    g.fillStyle = getComputedStyle(document.documentElement).getPropertyValue("--wave") || "#0b6bcb";
    const step = Math.max(1, Math.floor(x.length / width));
    let peak = 1e-6;
    for (const v of x) peak = Math.max(peak, Math.abs(v));
    for (let col = 0; col < width; col++) {
      let lo = 0, hi = 0;
      for (let i = col * step; i < Math.min(x.length, (col + 1) * step); i++) { lo = Math.min(lo, x[i]); hi = Math.max(hi, x[i]); }
      const top = height / 2 - (hi / peak) * (height / 2 - 1);
      const bottom = height / 2 - (lo / peak) * (height / 2 - 1);
      g.fillRect(col, top, 1, Math.max(1, bottom - top));
    }
  } catch (err) {
    // a format the browser cannot decode still plays where it can; the picture is only a help
  }
}

// ------------------------------------------------------------------ generation
async function generate(event) {
  event.preventDefault();
  if (!state.query) return;
  showError("");
  const params = new URLSearchParams({
    duration_s: $("gen-duration").value, steps: $("gen-steps").value, seed: $("gen-seed").value,
    text_weight: $("gen-text-weight").value,
  });
  if ($("gen-text").value.trim()) params.set("text", $("gen-text").value.trim());
  const form = new FormData();
  form.append("audio", state.query, state.queryName);
  const button = $("generate-button");
  button.disabled = true;
  $("gen-result").hidden = true;
  $("gen-progress").hidden = false;
  try {
    let job = await api(`/api/generate?${params}`, { method: "POST", body: form });
    while (job.status === "queued" || job.status === "running") {
      $("gen-progress").max = job.num_steps;
      $("gen-progress").value = job.step;
      $("gen-status").textContent = job.status === "running"
        ? `denoising step ${job.step} of ${job.num_steps}`
        : job.position > 0 ? `waiting: ${job.position} generation(s) ahead` : "starting…";
      await new Promise((resolve) => setTimeout(resolve, 400));
      job = await api(`/api/jobs/${job.id}`);
    }
    if (job.status === "failed") throw new Error(job.error);
    const url = withToken(job.audio_url);
    $("gen-audio").src = url;
    $("gen-download").href = url;
    $("gen-download").download = `qvimclap-seed${job.seed}.wav`;
    $("gen-result").hidden = false;
    $("gen-status").textContent = `made ${job.duration_s.toFixed(2)} s (seed ${job.seed}).`;
  } catch (err) {
    $("gen-status").textContent = "";
    showError(err.message);
  } finally {
    $("gen-progress").hidden = true;
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ wiring
function wire() {
  $("record").addEventListener("click", toggleRecording);
  $("search").addEventListener("click", search);
  $("index").addEventListener("change", search);
  $("k").addEventListener("change", search);
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) useQuery(file, file.name);
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) useQuery(file, file.name);
  });
  $("generate-form").addEventListener("submit", generate);
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (!typing && (event.key === "r" || event.key === "R") && !event.ctrlKey && !event.metaKey) {
      event.preventDefault();
      toggleRecording();
    }
  });
}

wire();
start();
