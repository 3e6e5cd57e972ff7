// EvoTok web page: plain JS over the public API (GET /info, POST /encode, POST /decode). No build step.
// A built-in sample photo (GET /web/sample.jpg) can be tried with one click.
// Codes from /encode JSON are nested lists [h][w][depth] (uint16 values); depth d = the first d codes per position.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, file: null, encodeJson: null, codes: null, reconBlob: null };

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function apiError(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return new Error(`${resp.status} ${body.error.code}: ${body.error.message}`);
  } catch (_) { /* not JSON */ }
  return new Error(`HTTP ${resp.status}`);
}

async function timed(url, opts) {
  const t0 = performance.now();
  const resp = await fetch(url, opts);
  if (!resp.ok) throw await apiError(resp);
  return { resp, ms: performance.now() - t0 };
}

// ---- model card -------------------------------------------------------------------------------------
async function loadInfo() {
  const { resp } = await timed("/info", { headers: headers() });
  const info = await resp.json();
  state.info = info;
  $("model").textContent =
    `${info.name} · ${info.image_size}px → ${info.grid}×${info.grid} × ${info.num_depths} depths · ` +
    `K=${info.codebook_size} · pixel depth ${info.pixel_depth} · ${info.backend}/${info.precision} · ` +
    `weights ${String(info.weights_hash).slice(0, 12)}`;
  drawCurve(info.semantic_by_depth || [], info.pixel_depth);
  const patch = Math.round(info.image_size / info.grid);
  $("grids-legend").dataset.grid = String(info.grid);
  $("grids-legend").insertAdjacentText("beforeend", ` This model: ${info.grid}×${info.grid} tokens of ` +
    `${patch}×${patch} pixels, ${info.num_depths} depths, ${info.codebook_size} codes per depth.`);
}

function drawCurve(values, pixelDepth) {
  const svg = $("curve");
  const W = 520, H = 220, L = 44, R = 14, T = 12, B = 32;
  const ns = "http://www.w3.org/2000/svg";
  svg.innerHTML = "";
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.appendChild(el);
    return el;
  };
  if (!values.length) { add("text", { x: L, y: H / 2 }, "the model card has no semantic_by_depth curve"); return; }
  const lo = Math.min(0, ...values), hi = Math.max(1, ...values);
  const x = (i) => L + (values.length === 1 ? 0 : (i * (W - L - R)) / (values.length - 1));
  const y = (v) => T + ((hi - v) * (H - T - B)) / (hi - lo);
  add("line", { x1: L, y1: y(lo), x2: W - R, y2: y(lo), stroke: "#999" });
  add("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#999" });
  for (const v of [lo, (lo + hi) / 2, hi]) add("text", { x: 4, y: y(v) + 4 }, v.toFixed(2));
  values.forEach((_, i) => add("text", { x: x(i) - 4, y: H - B + 16 }, String(i + 1)));
  add("text", { x: W / 2 - 20, y: H - 4 }, "depth d");
  if (pixelDepth >= 1 && pixelDepth <= values.length) {
    add("line", { x1: x(pixelDepth - 1), y1: T, x2: x(pixelDepth - 1), y2: H - B, stroke: "#e0a040", "stroke-dasharray": "4 3" });
    add("text", { x: x(pixelDepth - 1) + 4, y: T + 10 }, "pixel depth");
  }
  add("polyline", { points: values.map((v, i) => `${x(i)},${y(v)}`).join(" "), fill: "none", stroke: "#2b6cb0", "stroke-width": 2 });
  values.forEach((v, i) => add("circle", { cx: x(i), cy: y(v), r: 3, fill: "#2b6cb0" }).appendChild(
    Object.assign(document.createElementNS(ns, "title"), { textContent: `d=${i + 1}: ${v.toFixed(4)}` })));
}

// ---- one image ------------------------------------------------------------------------------------
// The same geometry as the server: scale the shorter side to image_size, then take the centre square.
async function drawOriginal(file, size) {
  const c = $("original");
  c.width = size; c.height = size;
  const ctx = c.getContext("2d");
  let bmp;
  try {
    bmp = await createImageBitmap(file);
  } catch (_) { // TIFF, HEIC, ...: the server reads them, this browser cannot preview them
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
    ctx.fillStyle = "#777"; ctx.font = "13px system-ui"; ctx.fillText("no preview of this format here", 12, size / 2);
    return;
  }
  const side = Math.min(bmp.width, bmp.height);
  const sx = Math.floor((bmp.width - side) / 2), sy = Math.floor((bmp.height - side) / 2);
  ctx.drawImage(bmp, sx, sy, side, side, 0, 0, size, size);
}

// The image goes as a multipart file: the server sniffs the bytes, whatever type (if any) the browser gives.
function imageForm(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  return form;
}

function prefix(codes, d) {
  return codes.map((row) => row.map((cell) => cell.slice(0, d)));
}

async function decodeDepth(codes, d) {
  const { resp, ms } = await timed("/decode", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", "Accept": "image/png" }),
    body: JSON.stringify({ codes: prefix(codes, d) }),
  });
  return { blob: await resp.blob(), ms };
}

function loadImg(img, blob) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the server's PNG did not load"));
    img.src = URL.createObjectURL(blob);
  });
}

// Categorical colours: the golden-ratio hue walk keeps neighbouring indices apart.
function indexColour(idx, K) {
  if (idx >= K) return [0, 0, 0]; // null code
  const h = (idx * 0.6180339887) % 1, s = 0.65, l = 0.35 + 0.3 * ((idx * 7 % 11) / 10);
  const f = (n) => { const k = (n + h * 12) % 12; return l - s * Math.min(l, 1 - l) * Math.max(-1, Math.min(k - 3, 9 - k, 1)); };
  return [f(0) * 255, f(8) * 255, f(4) * 255];
}

function drawGrids(codes, K) {
  const host = $("grids");
  host.innerHTML = "";
  const h = codes.length, w = codes[0].length, D = codes[0][0].length;
  for (let d = 0; d < D; d++) {
    const c = document.createElement("canvas");
    c.width = w; c.height = h; c.dataset.depth = String(d + 1);
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) {
      const [r, g, b] = indexColour(codes[i][j][d], K);
      const o = 4 * (i * w + j);
      img.data[o] = r; img.data[o + 1] = g; img.data[o + 2] = b; img.data[o + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    const fig = document.createElement("figure");
    fig.appendChild(c);
    fig.appendChild(Object.assign(document.createElement("figcaption"), { textContent: `depth ${d + 1}` }));
    host.appendChild(fig);
  }
}

function showLatency(rows) {
  $("latency").innerHTML = rows.map(([k, ms]) => `<tr><td>${k}</td><td>${ms.toFixed(1)} ms</td></tr>`).join("");
}

async function run(file) {
  if (!state.info) await loadInfo();
  const info = state.info;
  state.file = file;
  setStatus(`Encoding ${file.name}…`, "busy");
  $("results").hidden = false;
  for (const b of ["dl-npy", "dl-json", "dl-png"]) $(b).disabled = true;

  const t0 = performance.now();
  const enc = await timed("/encode", {
    method: "POST",
    headers: headers({ "Accept": "application/json" }),
    body: imageForm(file),
  });
  state.encodeJson = await enc.resp.text();
  const body = JSON.parse(state.encodeJson);
  state.codes = body.codes;
  await drawOriginal(file, info.image_size); // after /encode: the server's verdict on the bytes comes first
  drawGrids(state.codes, info.codebook_size);
  setStatus("Decoding each prefix depth…", "busy");

  const depths = Array.from({ length: info.pixel_depth }, (_, i) => i + 1);
  const decoded = await Promise.all(depths.map((d) => decodeDepth(state.codes, d)));
  const strip = $("prefixes");
  strip.innerHTML = "";
  for (const [i, { blob }] of decoded.entries()) {
    const img = document.createElement("img");
    img.dataset.depth = String(depths[i]);
    img.alt = `reconstruction from depths 1..${depths[i]}`;
    const fig = document.createElement("figure");
    fig.appendChild(img);
    fig.appendChild(Object.assign(document.createElement("figcaption"), { textContent: `d = ${depths[i]}` }));
    strip.appendChild(fig);
    await loadImg(img, blob);
  }
  const full = decoded[decoded.length - 1];
  state.reconBlob = full.blob;
  await loadImg($("recon"), full.blob);
  $("recon-caption").textContent = `reconstruction (pixel depth ${info.pixel_depth})`;

  showLatency([
    ["encode", enc.ms],
    ...decoded.map(({ ms }, i) => [`decode d=${depths[i]}`, ms]),
    ["total", performance.now() - t0],
  ]);
  for (const b of ["dl-npy", "dl-json", "dl-png"]) $(b).disabled = false;
  setStatus(`${file.name}: ${body.shape.join("×")} codes (model ${body.model ? body.model.name : "?"})`, "done");
}

// ---- downloads --------------------------------------------------------------------------------------
function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
}

function stem() { return (state.file ? state.file.name.replace(/\.[^.]*$/, "") : "image"); }

$("dl-npy").onclick = async () => {
  try {
    const { resp } = await timed("/encode", {
      method: "POST",
      headers: headers({ "Accept": "application/x-npy" }),
      body: imageForm(state.file),
    });
    save(await resp.blob(), `${stem()}.codes.npy`);
  } catch (e) { setStatus(String(e.message || e), "error"); }
};
$("dl-json").onclick = () => save(new Blob([state.encodeJson], { type: "application/json" }), `${stem()}.codes.json`);
$("dl-png").onclick = () => save(state.reconBlob, `${stem()}.recon.png`);

// ---- input --------------------------------------------------------------------------------------------
function start(file) {
  if (!file) return;
  run(file).catch((e) => setStatus(String(e.message || e), "error"));
}

$("file").addEventListener("change", (e) => start(e.target.files[0]));
// The built-in sample photo (service/static/sample.jpg), served by the page itself: one click, no upload.
$("sample").addEventListener("click", async () => {
  try {
    const resp = await fetch("/web/sample.jpg");
    if (!resp.ok) throw new Error(`sample photo: HTTP ${resp.status}`);
    start(new File([await resp.blob()], "sample.jpg", { type: "image/jpeg" }));
  } catch (e) { setStatus(String(e.message || e), "error"); }
});
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); start(e.dataTransfer.files[0]); });
$("apikey").value = localStorage.getItem("evotok.apikey") || "";
$("apikey").addEventListener("change", () => { localStorage.setItem("evotok.apikey", $("apikey").value); loadInfo().catch(() => {}); });
loadInfo().catch((e) => setStatus(`GET /info failed: ${e.message || e}`, "error"));
