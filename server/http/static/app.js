// The emotion2vec page: files -> POST /v1/recognize, microphone -> WebSocket /v1/stream.
// Hand-written, no libraries, nothing loaded from another origin (the server's CSP forbids it anyway).
"use strict";
(() => {
  // matplotlib's tab10, indexed by the label's model index: the colours of `emotion-client plot`.
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const FORMATS = ["wav", "mp3", "m4a", "flac", "ogg", "opus", "oga"];
  const CONCURRENCY = 2;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    token: sessionStorage.getItem("emotion2vec-token") || "",
    model: null,
    labels: [],        // [{index, name, name_zh, enabled}] in model order
    queue: [],
    running: 0,
    waitingForToken: [],
  };

  const $ = (sel, root = document) => root.querySelector(sel);

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
    return node;
  }

  const colourOf = (name) => {
    const label = state.labels.find((l) => l.name === name);
    if (label) return COLOURS[label.index % COLOURS.length];
    let hash = 0;  // no model card (yet): a stable colour per name
    for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
    return COLOURS[hash % COLOURS.length];
  };
  const zhOf = (name) => {
    const label = state.labels.find((l) => l.name === name);
    return label ? label.name_zh : "";
  };
  const pct = (x) => `${(100 * x).toFixed(1)} %`;
  const secs = (x) => `${x.toFixed(2)} s`;

  // ------------------------------------------------------------------------------------ the server

  function authHeaders() {
    return state.token ? { Authorization: `Bearer ${state.token}` } : {};
  }

  async function readError(response) {
    let message = "";
    try {
      const body = await response.json();
      message = body && typeof body.error === "string" ? body.error : "";
    } catch (_) {
      message = "";
    }
    const retryS = Number(response.headers.get("Retry-After")) || 0;
    return { status: response.status, message, retryS };
  }

  // A sentence a person understands, for an HTTP error on a file.
  function explain(err) {
    const detail = err.message ? ` (${err.message})` : "";
    const wait = err.retryS ? ` Try again in ${err.retryS} s.` : " Try again in a moment.";
    switch (err.status) {
      case 0:
        return "Could not reach the server. Check the connection and try again.";
      case 400:
        if (/too long|longer than|exceeds|at most/i.test(err.message)) {
          return `This recording is too long for this server${detail}.`;
        }
        if (/too short|shorter than/i.test(err.message)) {
          return `This recording is too short for this server${detail}.`;
        }
        return `The server could not use this file${detail}.`;
      case 401:
        return "Not authorised: this server needs an access token. Paste it in the box at the top.";
      case 413:
        return `The file is too large for this server${detail}.`;
      case 429:
        return `The server is busy right now and turned this file away.${wait}`;
      case 503:
        return `The server is not available right now (it may be restarting).${wait}`;
      case 504:
        return `The server took too long to answer${detail}.${wait}`;
      default:
        return `The server answered with an error (HTTP ${err.status})${detail}.`;
    }
  }

  function showAuth(message) {
    const box = $("#auth");
    box.hidden = false;
    if (message) $("label", box).textContent = message;
    $("#token").focus();
  }

  async function loadModel() {
    let response;
    try {
      response = await fetch("/v1/model", { headers: authHeaders() });
    } catch (_) {
      $("#model-card").textContent = "The server cannot be reached.";
      return;
    }
    if (response.status === 401) {
      $("#model-card").textContent = "Model card: needs an access token.";
      showAuth(state.token ? "That token was not accepted. Paste a valid bearer token:" : null);
      return;
    }
    if (!response.ok) {
      const err = await readError(response);
      $("#model-card").textContent = `Model card unavailable: ${explain(err)}`;
      return;
    }
    const card = await response.json();
    state.model = card;
    state.labels = card.labels;
    const m = card.model;
    const node = $("#model-card");
    node.replaceChildren(
      "Model ", el("b", { text: m.name, class: "model-name" }),
      ` ${m.version} · ${m.precision} · ${card.engine} on ${card.execution_provider}`,
      card.max_audio_s > 0 ? ` · recordings up to ${card.max_audio_s} s` : " · recordings of any length",
    );
    node.dataset.model = m.name;
    node.dataset.precision = m.precision;
    node.dataset.provider = card.execution_provider;
    node.dataset.untrained = String(m.untrained);
    $("#demo-banner").hidden = !m.untrained;
    // What the server says to know before trusting the answers (e.g. a model enabling only 5 of its 9
    // emotions): one line each, shown above everything else.
    const warnings = Array.isArray(card.warnings) ? card.warnings : [];
    const box = $("#model-warnings");
    box.replaceChildren(...warnings.map(
      (text) => el("p", { class: "model-warning", text: `Model warning: ${text}` })));
    box.hidden = warnings.length === 0;
    node.dataset.warnings = String(warnings.length);
  }

  // ------------------------------------------------------------------------------------ files

  function extension(name) {
    const dot = name.lastIndexOf(".");
    return dot < 0 ? "" : name.slice(dot + 1).toLowerCase();
  }

  function currentOptions() {
    return {
      granularity: $("input[name=granularity]:checked").value,
      embedding: $("#embedding").checked,
      smoothing: Math.max(0, Math.floor(Number($("#smoothing").value) || 0)),
      split: $("#split-channels").checked,
    };
  }

  function newCard(name) {
    const card = $("#result-template").content.firstElementChild.cloneNode(true);
    $(".name", card).textContent = name;
    card.dataset.file = name;
    card.dataset.state = "queued";
    $(".state", card).textContent = "queued";
    $("#results").prepend(card);
    return card;
  }

  function addFiles(files) {
    for (const file of files) {
      const card = newCard(file.name);
      const ext = extension(file.name);
      if (!FORMATS.includes(ext)) {
        showError(card, { status: -1 },
          `Unsupported file type${ext ? ` ".${ext}"` : ""}: use WAV, MP3, M4A, FLAC or OGG.`, null);
        continue;
      }
      if (state.model && file.size > state.model.max_upload_bytes) {
        showError(card, { status: 413 },
          `The file is too large for this server (${(file.size / 1048576).toFixed(1)} MiB; the limit is ` +
          `${(state.model.max_upload_bytes / 1048576).toFixed(1)} MiB).`, null);
        continue;
      }
      enqueue({ file, card, options: currentOptions() });
    }
    pump();
  }

  function enqueue(job) {
    job.card.dataset.state = "queued";
    $(".state", job.card).textContent = "queued";
    state.queue.push(job);
  }

  function pump() {
    while (state.running < CONCURRENCY && state.queue.length > 0) {
      const job = state.queue.shift();
      state.running += 1;
      runJob(job).finally(() => {
        state.running -= 1;
        pump();
      });
    }
  }

  async function runJob(job) {
    const { file, card, options } = job;
    card.dataset.state = "running";
    $(".state", card).textContent = "analysing…";
    $(".error", card).hidden = true;
    $(".retry", card).hidden = true;
    const form = new FormData();
    form.append("file", file, file.name);
    form.append("granularity", options.granularity);
    form.append("embedding", options.embedding ? "true" : "false");
    form.append("smoothing", String(options.smoothing));
    if (options.split) form.append("channels", "split");
    let response;
    const started = performance.now();
    try {
      response = await fetch("/v1/recognize", { method: "POST", body: form, headers: authHeaders() });
    } catch (_) {
      showError(card, { status: 0 }, explain({ status: 0 }), job);
      return;
    }
    if (!response.ok) {
      const err = await readError(response);
      if (err.status === 401) {
        state.waitingForToken.push(job);
        showAuth(state.token ? "That token was not accepted. Paste a valid bearer token:" : null);
      }
      // Retrying helps when the server was busy, restarting or slow; not for a file it cannot use.
      const retryable = [429, 503, 504].includes(err.status) || err.status >= 500;
      showError(card, err, explain(err), retryable ? job : null);
      return;
    }
    const result = await response.json();
    render(card, result, file.name, performance.now() - started);
  }

  function showError(card, err, text, job) {
    card.dataset.state = "error";
    card.dataset.status = String(err.status);
    $(".state", card).textContent = "failed";
    const box = $(".error", card);
    box.textContent = text;
    box.hidden = false;
    $(".body", card).hidden = true;
    const retry = $(".retry", card);
    retry.hidden = !job;
    if (job) {
      $(".retry-button", card).onclick = () => {
        enqueue(job);
        pump();
      };
    }
  }

  function barsTable(tbody, scores, topName) {
    tbody.replaceChildren();
    const known = new Map(state.labels.map((l) => [l.name, l]));
    for (const [name, value] of Object.entries(scores)) {
      const label = known.get(name);
      const fill = el("div", { class: "fill" });
      fill.style.width = `${Math.max(0, Math.min(1, value)) * 100}%`;
      fill.style.background = colourOf(name);
      const row = el("tr", { data: { label: name, score: String(value) } },
        el("td", { class: "en", text: name }),
        el("td", { class: "zh", text: label ? label.name_zh : "", lang: "zh" }),
        el("td", { class: "bar" }, el("div", { class: "track" }, fill)),
        el("td", { class: "value", text: value.toFixed(3) }));
      if (name === topName) row.classList.add("top");
      if (label && !label.enabled) row.classList.add("disabled");
      tbody.append(row);
    }
  }

  // channels=split: one row per channel (its own label, scores, frame curve and long-recording timeline).
  function renderChannels(card, result) {
    const box = $(".channels", card);
    box.replaceChildren();
    box.hidden = false;
    card.dataset.channels = String(result.channels.length);
    for (const ch of result.channels) {
      const title = ch.name ? `${ch.name} (channel ${ch.channel + 1})` : `channel ${ch.channel + 1}`;
      const tbody = el("tbody");
      const chart = el("div", { class: "chart" });
      const timeline = el("div", { class: "timeline" });
      const row = el("section", { class: "channel", data: { channel: String(ch.channel), emotion: ch.emotion,
                                                             confidence: String(ch.confidence) } },
        el("h3", { text: `${title}: ${ch.emotion} · ${ch.emotion_zh} ${pct(ch.confidence)}` }),
        el("table", { class: "bars" }, tbody), chart, timeline);
      box.append(row);
      barsTable(tbody, ch.scores, ch.emotion);
      chart.hidden = !(ch.frames && ch.frames.length);
      if (!chart.hidden) drawChart(chart, ch.frames, Object.keys(ch.scores));
      timeline.hidden = !(ch.segments && ch.segments.length);
      if (!timeline.hidden) drawTimeline(timeline, ch.segments, ch.duration_s);
    }
  }

  function render(card, result, fileName, wallMs) {
    if (result.channel_mode === "split") {
      renderSplit(card, result, fileName, wallMs);
      return;
    }
    $(".channels", card).hidden = true;
    delete card.dataset.channels;
    card.dataset.state = "done";
    card.dataset.emotion = result.emotion;
    card.dataset.confidence = String(result.confidence);
    card.dataset.granularity = result.granularity;
    delete card.dataset.status;
    $(".state", card).textContent = `done in ${(wallMs / 1000).toFixed(2)} s`;
    $(".error", card).hidden = true;
    $(".retry", card).hidden = true;
    $(".body", card).hidden = false;
    $(".top-label", card).textContent = `${result.emotion} · ${result.emotion_zh}`;
    $(".top-confidence", card).textContent = pct(result.confidence);
    barsTable($(".bars tbody", card), result.scores, result.emotion);
    const t = result.timing;
    $(".meta", card).textContent =
      `${secs(result.duration_s)} of audio · server ${t.total_ms.toFixed(0)} ms ` +
      `(decode ${t.decode_ms.toFixed(0)}, queue ${t.queue_ms.toFixed(0)}, ` +
      `inference ${t.inference_ms.toFixed(0)} ms, batch of ${t.batch_size}) · ` +
      `${result.model.name} ${result.model.precision}${result.model.untrained ? " (untrained demo)" : ""}`;
    const chart = $(".chart", card);
    chart.replaceChildren();
    chart.hidden = !(result.frames && result.frames.length);
    if (!chart.hidden) drawChart(chart, result.frames, Object.keys(result.scores));
    const timeline = $(".timeline", card);
    timeline.replaceChildren();
    timeline.hidden = !(result.segments && result.segments.length);
    if (!timeline.hidden) drawTimeline(timeline, result.segments, result.duration_s);

    // result.json: exactly what `emotion-client recognize` writes (the embedding goes to embedding.npy).
    const saved = Object.assign({}, result);
    delete saved.embedding;
    saved.input = fileName;
    $(".dl-json", card).onclick = () => download("result.json",
      new Blob([JSON.stringify(saved, null, 2) + "\n"], { type: "application/json" }));
    const npyButton = $(".dl-npy", card);
    npyButton.hidden = !Array.isArray(result.embedding);
    if (!npyButton.hidden) {
      card.dataset.embeddingDim = String(result.embedding.length);
      npyButton.onclick = () => download("embedding.npy",
        new Blob([npy(result.embedding)], { type: "application/octet-stream" }));
    }
  }

  function renderSplit(card, result, fileName, wallMs) {
    card.dataset.state = "done";
    card.dataset.granularity = result.granularity;
    delete card.dataset.status;
    delete card.dataset.emotion;
    $(".state", card).textContent = `done in ${(wallMs / 1000).toFixed(2)} s`;
    $(".error", card).hidden = true;
    $(".retry", card).hidden = true;
    $(".body", card).hidden = false;
    $(".top-label", card).textContent = `${result.channels.length} channel(s)`;
    $(".top-confidence", card).textContent = "";
    $(".bars tbody", card).replaceChildren();
    $(".chart", card).hidden = true;
    $(".timeline", card).hidden = true;
    $(".meta", card).textContent = `${secs(result.duration_s)} of audio · ` +
      `${result.model.name} ${result.model.precision}${result.model.untrained ? " (untrained demo)" : ""}`;
    renderChannels(card, result);
    const saved = Object.assign({}, result, { input: fileName });
    saved.channels = result.channels.map((ch) => { const c = Object.assign({}, ch); delete c.embedding; return c; });
    $(".dl-json", card).onclick = () => download("result.json",
      new Blob([JSON.stringify(saved, null, 2) + "\n"], { type: "application/json" }));
    $(".dl-npy", card).hidden = true;
  }

  // A float32 vector as a NumPy .npy file (format version 1.0): magic, header dict padded so the data
  // starts at a multiple of 64 bytes, then little-endian float32 values.
  function npy(values) {
    let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${values.length},), }`;
    const unpadded = 10 + header.length + 1;
    header += " ".repeat((64 - (unpadded % 64)) % 64) + "\n";
    const buffer = new ArrayBuffer(10 + header.length + 4 * values.length);
    const bytes = new Uint8Array(buffer);
    bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]); // \x93NUMPY v1.0
    const view = new DataView(buffer);
    view.setUint16(8, header.length, true);
    for (let i = 0; i < header.length; i++) bytes[10 + i] = header.charCodeAt(i);
    const offset = 10 + header.length;
    values.forEach((v, i) => view.setFloat32(offset + 4 * i, v, true));
    return buffer;
  }

  function download(name, blob) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 30000);
  }

  // ------------------------------------------------------------------------------------ charts

  function niceStep(span, target) {
    const raw = span / target;
    const mag = 10 ** Math.floor(Math.log10(raw));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
    return 10 * mag;
  }

  // One line per emotion over time (like `emotion-client plot`), with a hover tooltip.
  function drawChart(container, frames, labels) {
    const W = 900, H = 260, L = 40, R = 12, T = 10, B = 28;
    const t0 = frames[0].start_s, t1 = frames[frames.length - 1].end_s || t0 + 1;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (p) => T + (1 - p) * (H - T - B);
    const mids = frames.map((f) => (f.start_s + f.end_s) / 2);
    const shown = labels.filter((name) => frames.some((f) => f.scores[name] > 0));
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img",
                               "aria-label": "emotion scores over time", class: "curve-chart" });
    chart.dataset.frames = String(frames.length);
    for (const p of [0, 0.25, 0.5, 0.75, 1]) {
      chart.append(svg("line", { x1: L, x2: W - R, y1: y(p), y2: y(p), stroke: "#e3e7ee" }));
      const text = svg("text", { x: L - 6, y: y(p) + 4, "text-anchor": "end", "font-size": 11, fill: "#5d6577" });
      text.textContent = p.toFixed(2).replace(/0$/, "");
      chart.append(text);
    }
    const step = niceStep(t1 - t0, 8);
    for (let t = Math.ceil(t0 / step) * step; t <= t1 + 1e-9; t += step) {
      chart.append(svg("line", { x1: x(t), x2: x(t), y1: T, y2: H - B, stroke: "#eef1f5" }));
      const text = svg("text", { x: x(t), y: H - B + 16, "text-anchor": "middle", "font-size": 11,
                                 fill: "#5d6577" });
      text.textContent = `${+t.toFixed(2)} s`;
      chart.append(text);
    }
    for (const name of shown) {
      const points = frames.map((f, i) => `${x(mids[i]).toFixed(1)},${y(f.scores[name]).toFixed(1)}`);
      const line = svg("polyline", { points: points.join(" "), fill: "none", stroke: colourOf(name),
                                     "stroke-width": 1.6, "stroke-linejoin": "round", class: "curve" });
      line.dataset.label = name;
      chart.append(line);
    }
    const cursor = svg("line", { y1: T, y2: H - B, stroke: "#1d2330", "stroke-dasharray": "3 3",
                                 visibility: "hidden" });
    const overlay = svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "transparent",
                                  class: "hover-area" });
    chart.append(cursor, overlay);
    const tip = el("div", { class: "tooltip", role: "status" });
    tip.hidden = true;
    const legend = el("div", { class: "legend" });
    for (const name of shown) {
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = colourOf(name);
      legend.append(el("span", {}, swatch, `${name} ${zhOf(name)}`));
    }
    container.append(chart, tip, legend);

    overlay.addEventListener("mousemove", (event) => {
      const box = chart.getBoundingClientRect();
      const sx = ((event.clientX - box.left) / box.width) * W;
      const t = t0 + ((sx - L) / (W - L - R)) * (t1 - t0);
      let i = 0;
      while (i < frames.length - 1 && mids[i + 1] <= t) i++;
      if (i < frames.length - 1 && Math.abs(mids[i + 1] - t) < Math.abs(mids[i] - t)) i++;
      const f = frames[i];
      cursor.setAttribute("x1", x(mids[i]));
      cursor.setAttribute("x2", x(mids[i]));
      cursor.setAttribute("visibility", "visible");
      const rows = shown.map((name) => [name, f.scores[name]]).sort((a, b) => b[1] - a[1]);
      tip.replaceChildren(el("div", { text: `${f.start_s.toFixed(2)}–${f.end_s.toFixed(2)} s: ${f.emotion}` }));
      for (const [name, value] of rows) {
        const swatch = el("span", { class: "swatch" });
        swatch.style.background = colourOf(name);
        tip.append(el("div", {}, swatch, `${name} ${value.toFixed(3)}`));
      }
      tip.dataset.frame = String(i);
      tip.hidden = false;
      const px = (x(mids[i]) / W) * box.width;
      tip.style.left = `${Math.min(px + 12, box.width - 170)}px`;
      tip.style.top = "8px";
    });
    overlay.addEventListener("mouseleave", () => {
      tip.hidden = true;
      cursor.setAttribute("visibility", "hidden");
    });
  }

  // Long recordings: one coloured block per segment, its top emotion on hover.
  function drawTimeline(container, segments, duration) {
    const W = 900, H = 34;
    const end = Math.max(duration, ...segments.map((s) => s.end_s)) || 1;
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "segments" });
    chart.append(svg("rect", { x: 0, y: 4, width: W, height: H - 8, fill: "#edf0f5", rx: 3 }));
    segments.forEach((s, i) => {
      const rect = svg("rect", { x: (s.start_s / end) * W, y: 4, height: H - 8, rx: 2,
                                 width: Math.max(1, ((s.end_s - s.start_s) / end) * W),
                                 fill: colourOf(s.emotion), class: "segment" });
      rect.dataset.index = String(i);
      const title = svg("title");
      title.textContent = `${s.start_s.toFixed(2)}–${s.end_s.toFixed(2)} s: ${s.emotion} ${s.emotion_zh || ""} ` +
                          `${pct(s.confidence)}`;
      rect.append(title);
      chart.append(rect);
    });
    container.append(el("h3", { text: `${segments.length} segments` }), chart);
  }

  // ------------------------------------------------------------------------------------ live

  const live = { ws: null, ctx: null, stream: null, node: null, pending: [], pendingLen: 0, segments: [],
                 rate: 48000, done: false, failed: false };

  function liveStatus(text) {
    $("#live-status").textContent = text;
  }

  function liveError(text) {
    const box = $("#live-error");
    box.textContent = text;
    box.hidden = false;
    $("#panel-live").dataset.state = "error";
  }

  async function liveStart() {
    $("#live-error").hidden = true;
    $("#live-segments").replaceChildren();
    $("#live-summary").replaceChildren();
    $("#live-summary-kind").textContent = "(running)";
    Object.assign(live, { pending: [], pendingLen: 0, segments: [], done: false, failed: false });
    $("#panel-live").dataset.state = "starting";
    $("#live-start").disabled = true;
    try {
      live.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (err) {
      $("#live-start").disabled = false;
      liveError(`The microphone is not available: ${err.message || err.name}.`);
      return;
    }
    live.ctx = new AudioContext();
    live.rate = live.ctx.sampleRate;
    await live.ctx.audioWorklet.addModule("/static/worklet.js");
    const source = live.ctx.createMediaStreamSource(live.stream);
    live.node = new AudioWorkletNode(live.ctx, "capture-processor");
    const mute = live.ctx.createGain();
    mute.gain.value = 0;
    source.connect(live.node).connect(mute).connect(live.ctx.destination);

    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/v1/stream`, ["emotion.v1"]);
    ws.binaryType = "arraybuffer";
    live.ws = ws;
    ws.onopen = () => {
      const config = { encoding: "f32le", sample_rate_hz: live.rate, channels: 1,
                       segmentation: { mode: "energy" } };
      // Segments at most 10 s, or the server's limit when lower.
      if (state.model) config.segmentation.max_segment_s = Math.min(10, state.model.max_duration_s);
      if (state.token) config.token = state.token;
      ws.send(JSON.stringify(config));
      liveStatus("connecting…");
    };
    ws.onmessage = (event) => onLiveMessage(JSON.parse(event.data));
    ws.onerror = () => {
      if (!live.done && !live.failed) liveError("The connection to the server failed.");
    };
    ws.onclose = () => {
      stopCapture();
      $("#live-start").disabled = false;
      $("#live-stop").disabled = true;
      if (!live.done && !live.failed) liveStatus("connection closed");
    };
    live.node.port.onmessage = (event) => {
      if (live.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
      live.pending.push(event.data);
      live.pendingLen += event.data.length;
      if (live.pendingLen >= live.rate / 10) flush();  // ~100 ms chunks
    };
    $("#live-stop").disabled = false;
  }

  function flush() {
    if (!live.pendingLen || !live.ws || live.ws.readyState !== WebSocket.OPEN) return;
    const buffer = new ArrayBuffer(4 * live.pendingLen);
    const view = new DataView(buffer);
    let offset = 0;
    for (const block of live.pending) {
      for (let i = 0; i < block.length; i++, offset += 4) view.setFloat32(offset, block[i], true);
    }
    live.pending = [];
    live.pendingLen = 0;
    live.ws.send(buffer);
  }

  function stopCapture() {
    if (live.stream) live.stream.getTracks().forEach((track) => track.stop());
    if (live.ctx && live.ctx.state !== "closed") live.ctx.close();
    live.stream = null;
    live.ctx = null;
  }

  function liveStop() {
    $("#live-stop").disabled = true;
    flush();
    stopCapture();
    if (live.ws && live.ws.readyState === WebSocket.OPEN) {
      live.ws.send(JSON.stringify({ end: true }));
      liveStatus("finishing…");
    }
  }

  function onLiveMessage(msg) {
    if (msg.type === "started") {
      $("#panel-live").dataset.state = "listening";
      liveStatus("listening: speak now");
    } else if (msg.type === "segment") {
      live.segments.push(msg);
      const li = el("li", { class: "segment", data: { emotion: msg.emotion, start: String(msg.start_s),
                                                      end: String(msg.end_s), confidence: String(msg.confidence) } },
        el("span", { class: "time", text: `${msg.start_s.toFixed(2)}–${msg.end_s.toFixed(2)} s ` }),
        el("b", { text: `${msg.emotion} · ${msg.emotion_zh}` }), ` ${pct(msg.confidence)}`);
      $("#live-segments").append(li);
      renderSummary(runningSummary(), false);
    } else if (msg.type === "summary") {
      live.done = true;
      $("#panel-live").dataset.state = "done";
      renderSummary(msg, true);
      liveStatus(`done: ${msg.segments} segments`);
    } else if (msg.type === "error") {
      live.failed = true;
      stopCapture();
      if (msg.status === 401) {
        showAuth(state.token ? "That token was not accepted. Paste a valid bearer token:" : null);
        liveError("Not authorised: paste an access token in the box at the top, then start again.");
      } else if (msg.status === 429) {
        liveError("The server is busy (too many live streams). Try again in a moment.");
      } else if (msg.status === 503) {
        liveError("The server is not available right now (it may be restarting). Try again in a moment.");
      } else {
        liveError(`The server stopped the stream: ${msg.error}`);
      }
      liveStatus("stopped");
    }
  }

  // The summary so far: duration-weighted mean scores and seconds per top label, as the server computes.
  function runningSummary() {
    const scores = {};
    const seconds = {};
    let voiced = 0;
    for (const s of live.segments) {
      const d = s.end_s - s.start_s;
      voiced += d;
      seconds[s.emotion] = (seconds[s.emotion] || 0) + d;
      for (const [name, value] of Object.entries(s.scores)) scores[name] = (scores[name] || 0) + d * value;
    }
    for (const name of Object.keys(scores)) scores[name] = voiced > 0 ? scores[name] / voiced : 0;
    let top = "", best = -1;
    for (const [name, value] of Object.entries(scores)) if (value > best) [top, best] = [name, value];
    return { segments: live.segments.length, voiced_s: voiced, scores, label_seconds: seconds, emotion: top,
             confidence: Math.max(best, 0),
             duration_s: live.segments.length ? live.segments[live.segments.length - 1].end_s : 0 };
  }

  function renderSummary(summary, final) {
    $("#live-summary-kind").textContent = final ? "(final)" : "(running)";
    const box = $("#live-summary");
    box.dataset.final = String(final);
    box.dataset.segments = String(summary.segments);
    box.dataset.emotion = summary.emotion || "";
    const shares = Object.entries(summary.label_seconds).filter(([, v]) => v > 0)
      .map(([name, v]) => `${name} ${v.toFixed(1)} s`).join(", ");
    const table = el("table", { class: "bars" }, el("tbody"));
    barsTable($("tbody", table), summary.scores, summary.emotion);
    box.replaceChildren(
      el("p", { class: "top" }, el("span", { class: "top-label",
        text: summary.emotion ? `${summary.emotion} · ${zhOf(summary.emotion)}` : "no speech yet" }),
      " ", el("span", { class: "top-confidence", text: summary.emotion ? pct(summary.confidence) : "" })),
      table,
      el("p", { class: "meta", text: `${summary.segments} segments, ${secs(summary.voiced_s)} voiced of ` +
                                      `${secs(summary.duration_s)}${shares ? ` · ${shares}` : ""}` }));
  }

  // ------------------------------------------------------------------------------------ wiring

  function selectTab(button) {
    for (const tab of document.querySelectorAll(".tabs button")) {
      const on = tab === button;
      tab.setAttribute("aria-selected", String(on));
      $(`#${tab.dataset.panel}`).hidden = !on;
    }
  }

  async function loadExample() {
    const button = $("#example");
    button.disabled = true;
    try {
      const response = await fetch("/static/example.ogg");
      const blob = await response.blob();
      addFiles([new File([blob], "example.ogg", { type: "audio/ogg" })]);
    } finally {
      button.disabled = false;
    }
  }

  function init() {
    const drop = $("#drop");
    const input = $("#files");
    input.addEventListener("change", () => {
      addFiles(Array.from(input.files));
      input.value = "";
    });
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      addFiles(Array.from(event.dataTransfer.files));
    });
    $("#example").addEventListener("click", loadExample);
    $("#clear").addEventListener("click", () => $("#results").replaceChildren());
    for (const tab of document.querySelectorAll(".tabs button")) {
      tab.addEventListener("click", () => selectTab(tab));
    }
    $("#auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("#token").value.trim();
      sessionStorage.setItem("emotion2vec-token", state.token);
      $("#auth").hidden = true;
      loadModel();
      const jobs = state.waitingForToken.splice(0);
      jobs.forEach(enqueue);
      pump();
    });
    $("#live-start").addEventListener("click", () => {
      liveStart().catch((err) => {
        stopCapture();
        $("#live-start").disabled = false;
        liveError(`Live mode could not start: ${err.message || err}`);
      });
    });
    $("#live-stop").addEventListener("click", liveStop);
    loadModel();
  }

  init();
})();
