// The latent explorer: runs the exported models (models.json and the .onnx files beside it) with onnxruntime-web.
// Everything it loads lies in this folder; window.explorer reports the check against Python's outputs.
import * as ort from './ort.wasm.min.mjs';
import { portableNormal, portableStream, portableUniform } from './portable.js';

ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server does not give
ort.env.wasm.wasmPaths = new URL('./', import.meta.url).href;

const GRID = 8; // the sample grid is GRID × GRID
const STEPS = 8; // images along an interpolation
const SLIDERS = 8; // latent coordinates with a slider
const state = { done: false, ok: false, errors: [], files: {}, latentError: null, maxError: null, interpolations: 0 };
window.explorer = state;

const sessions = new Map();
function session(file) {
  if (!sessions.has(file)) {
    sessions.set(file, fetch(file).then((r) => {
      if (!r.ok) throw new Error(`${file}: HTTP ${r.status}`);
      return r.arrayBuffer();
    }).then((buffer) => ort.InferenceSession.create(new Uint8Array(buffer))));
  }
  return sessions.get(file);
}

function tensor({ dtype, shape, data }) {
  const values = dtype === 'int64' ? BigInt64Array.from(data, (v) => BigInt(v)) : Float32Array.from(data);
  return new ort.Tensor(dtype, values, shape);
}

function labelTensor(labels) {
  return new ort.Tensor('int64', BigInt64Array.from(labels, (v) => BigInt(v)), [labels.length]);
}

function maxAbs(a, b) {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return a.length === b.length ? m : Infinity;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

// images: float32 N×C×H×W in [0, 1], drawn as tiles, `cols` to a row, one grey pixel between tiles
function draw(canvas, images, n, [c, h, w], cols) {
  const rows = Math.ceil(n / cols);
  canvas.width = cols * (w + 1) - 1;
  canvas.height = rows * (h + 1) - 1;
  const ctx = canvas.getContext('2d');
  const pixels = ctx.createImageData(canvas.width, canvas.height);
  pixels.data.fill(128); // grey, opaque gaps
  for (let i = 3; i < pixels.data.length; i += 4) pixels.data[i] = 255;
  for (let k = 0; k < n; k++) {
    const x0 = (k % cols) * (w + 1), y0 = Math.floor(k / cols) * (h + 1);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const at = 4 * ((y0 + y) * canvas.width + x0 + x);
        for (let ch = 0; ch < 3; ch++) {
          const v = images[((k * c + (c === 3 ? ch : 0)) * h + y) * w + x];
          pixels.data[at + ch] = Math.round(255 * Math.min(1, Math.max(0, v)));
        }
      }
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

// InfoGAN: the code input's width, K one-hot categories then C continuous codes (0 for other models)
const codeSizes = (meta) => [meta.code_categories ?? 0, meta.code_continuous ?? 0];

// codes[i] = [one_hot(categories[i], K), continuous[i]], float32 N×(K + C)
function makeCodes(meta, categories, continuous) {
  const [k, c] = codeSizes(meta);
  const codes = new Float32Array(categories.length * (k + c));
  categories.forEach((category, i) => {
    if (k) codes[i * (k + c) + category] = 1;
    for (let j = 0; j < c; j++) codes[i * (k + c) + k + j] = continuous[i * c + j];
  });
  return codes;
}

// n codes from their prior under `seed`: categories from uniforms (or the chosen one), continuous codes 2u - 1
function sampleCodes(meta, seed, n, chosen) {
  const [k, c] = codeSizes(meta);
  const u = portableUniform(portableStream(seed, 'category'), n);
  const categories = Array.from({ length: n }, (_, i) => (chosen >= 0 ? chosen : Math.min(k - 1, Math.floor(u[i] * k))));
  return { categories, continuous: Float32Array.from(portableUniform(portableStream(seed, 'continuous'), n * c), (v) => 2 * v - 1) };
}

async function decode(entry, z, n, labels, codes = null) {
  const meta = entry.metadata;
  const feeds = { z: new ort.Tensor('float32', z, [n, meta.latent_dim]) };
  if (meta.conditional) feeds.label = labelTensor(labels);
  const [k, c] = codeSizes(meta);
  if (k + c) feeds.code = new ort.Tensor('float32', codes, [n, k + c]);
  const out = await (await session(entry.file)).run(feeds);
  return out.image.data;
}

// n latents from the model's prior under `seed`: N(0, T² I), or the prior sampler's map of that noise
async function sampleLatents(entry, prior, seed, n, temperature) {
  const d = entry.metadata.latent_dim;
  const noise = portableNormal(portableStream(seed, 'noise'), n * d).map((v) => v * temperature);
  if (!prior) return noise;
  const u = Float32Array.from(portableUniform(portableStream(seed, 'u'), n));
  const out = await (await session(prior.file)).run({
    noise: new ort.Tensor('float32', noise, [n, d]),
    u: new ort.Tensor('float32', u, [n]),
  });
  return out.z.data;
}

function classPicker(meta, onchange) {
  const select = el('select', { 'aria-label': 'class', onchange });
  select.append(el('option', { value: '-1' }, 'every class in turn'));
  meta.class_names.forEach((name, k) => select.append(el('option', { value: String(k) }, `${k}: ${name}`)));
  return select;
}

function codeCategoryPicker(k, onchange) {
  const select = el('select', { 'aria-label': 'code category', onchange });
  select.append(el('option', { value: '-1' }, 'drawn at random'));
  for (let j = 0; j < k; j++) select.append(el('option', { value: String(j) }, `category ${j}`));
  return select;
}

function labelsFor(select, n, k) {
  const chosen = select ? Number(select.value) : -1;
  return Array.from({ length: n }, (_, i) => (chosen >= 0 ? chosen : i % k));
}

function modelSection(entry, manifest, reference) {
  const meta = entry.metadata;
  const shape = meta.image_shape;
  const float32 = (kind) => manifest.models.find((m) => m.kind === kind && m.variant === 'float32');
  const prior = entry.prior.sampler ? manifest.models.find((m) => m.file === entry.prior.sampler) : null;
  const section = el('section', { class: 'model', id: entry.kind });
  section.append(el('h2', {}, `${entry.kind === 'gan_generator' ? 'GAN generator' : 'VAE decoder'} — ${meta.dataset}`),
    el('p', {}, `latent ${meta.latent_dim}, prior ${entry.prior.kind} (${entry.prior.how}), image ${shape.join('×')}, ` +
      `likelihood ${meta.likelihood}`));

  const seed = el('input', { type: 'number', value: '0', min: '0', step: '1', 'aria-label': 'seed' });
  const temperature = el('input', { type: 'range', min: '0.2', max: '1.5', step: '0.05', value: '1', 'aria-label': 'temperature' });
  const picker = meta.conditional ? classPicker(meta, () => refresh()) : null;
  const [k, c] = codeSizes(meta);
  const category = k ? codeCategoryPicker(k, () => refresh()) : null;
  const grid = el('canvas', { class: 'grid', 'data-role': 'grid' });
  const big = el('canvas', { class: 'big', 'data-role': 'slider-image' });
  const sliders = el('div', { class: 'sliders' });
  const sweep = el('canvas', { class: 'sweep', 'data-role': 'code-sweep' });
  let base = null;
  let baseCode = null; // the first sample's category and continuous codes

  async function redrawSlider() {
    const labels = meta.conditional ? labelsFor(picker, 1, meta.num_classes) : null;
    const code = k + c ? makeCodes(meta, [baseCode.category], baseCode.continuous) : null;
    draw(big, await decode(entry, base, 1, labels, code), 1, shape, 1);
    if (k + c) await redrawSweep(labels);
  }

  // InfoGAN (Chen et al. 2016, fig. 2): the first sample with one code varied at a time, the rest fixed: a row over
  // the categories, then a row per continuous code from -1 to 1
  async function redrawSweep(labels) {
    const columns = Math.max(k, STEPS);
    const rows = [];
    if (k) rows.push(Array.from({ length: columns }, (_, j) => ({ category: j % k, continuous: baseCode.continuous })));
    for (let d = 0; d < c; d++) {
      rows.push(Array.from({ length: columns }, (_, j) => {
        const continuous = Float32Array.from(baseCode.continuous);
        continuous[d] = -1 + (2 * j) / (columns - 1);
        return { category: baseCode.category, continuous };
      }));
    }
    const items = rows.flat();
    const n = items.length;
    const z = new Float32Array(n * meta.latent_dim);
    for (let i = 0; i < n; i++) z.set(base, i * meta.latent_dim);
    const codes = makeCodes(meta, items.map((it) => it.category), Float32Array.from(items.flatMap((it) => [...it.continuous])));
    draw(sweep, await decode(entry, z, n, labels && Array(n).fill(labels[0]), codes), n, shape, columns);
  }

  async function refresh() {
    const n = GRID * GRID;
    const drawn = Number(seed.value) >>> 0;
    const z = await sampleLatents(entry, prior, drawn, n, Number(temperature.value));
    const labels = meta.conditional ? labelsFor(picker, n, meta.num_classes) : null;
    let codes = null;
    if (k + c) {
      const { categories, continuous } = sampleCodes(meta, drawn, n, category ? Number(category.value) : -1);
      codes = makeCodes(meta, categories, continuous);
      baseCode = { category: categories[0], continuous: continuous.slice(0, c) };
    }
    draw(grid, await decode(entry, z, n, labels, codes), n, shape, GRID);
    base = Float32Array.from(z.subarray(0, meta.latent_dim));
    sliders.replaceChildren();
    for (let d = 0; d < Math.min(SLIDERS, meta.latent_dim); d++) {
      const value = el('span', {}, base[d].toFixed(2));
      const slider = el('input', {
        type: 'range', min: '-3', max: '3', step: '0.05', value: String(base[d]), 'aria-label': `z${d}`,
        oninput: (event) => { base[d] = Number(event.target.value); value.textContent = base[d].toFixed(2); redrawSlider(); },
      });
      sliders.append(el('label', {}, `z[${d}]`), slider, value);
    }
    for (let d = 0; d < c; d++) {
      const value = el('span', {}, baseCode.continuous[d].toFixed(2));
      const slider = el('input', {
        type: 'range', min: '-1', max: '1', step: '0.05', value: String(baseCode.continuous[d]), 'aria-label': `c${d}`,
        oninput: (event) => {
          baseCode.continuous[d] = Number(event.target.value);
          value.textContent = baseCode.continuous[d].toFixed(2);
          redrawSlider();
        },
      });
      sliders.append(el('label', {}, `code c[${d}]`), slider, value);
    }
    await redrawSlider();
  }

  const nextSeed = () => { seed.value = String(((Number(seed.value) >>> 0) + 1) >>> 0); return refresh(); };
  const resample = el('button', { onclick: nextSeed }, 'Resample');  // the next seed: new samples
  seed.addEventListener('change', () => refresh());
  temperature.addEventListener('change', () => refresh());
  section.append(el('div', { class: 'controls' }, el('label', {}, 'seed ', seed), el('label', {}, 'temperature ', temperature),
    ...(picker ? [el('label', {}, 'class ', picker)] : []), ...(category ? [el('label', {}, 'code category ', category)] : []),
    resample));
  section.append(el('div', { class: 'row' }, el('div', {}, el('h3', {}, 'Samples'), grid),
    el('div', {}, el('h3', {}, 'Along latent coordinates (first sample)'), sliders, big)));
  if (k + c) {
    section.append(el('div', {}, el('h3', {}, `InfoGAN codes, one at a time (first sample): ${k ? `the ${k} categories, then ` : ''}` +
      `${c} continuous code${c === 1 ? '' : 's'} from -1 to 1`), sweep));
  }

  if (entry.kind === 'vae_decoder') section.append(interpolation(entry, float32('vae_encoder'), reference, picker));
  return { section, refresh };
}

function interpolation(decoder, encoder, reference, picker) {
  const meta = decoder.metadata;
  const [c, h, w] = meta.image_shape;
  const box = el('div', {}, el('h3', {}, 'Interpolation between two encoded images'));
  if (!encoder) {
    box.append(el('p', {}, `The encoder is ${meta.encoder}.`));
    return box;
  }
  const thumbs = el('div', { class: 'controls' });
  const strip = el('canvas', { class: 'strip', 'data-role': 'interpolation' });
  const note = el('p', { class: 'note', 'data-role': 'interpolation-note' }, '');
  const picked = [];
  const images = [];

  function addImage(pixels, label) {
    const index = images.length;
    images.push({ pixels, label });
    const canvas = el('canvas', { class: 'thumb', 'data-index': String(index), title: 'pick two images' });
    draw(canvas, pixels, 1, meta.image_shape, 1);
    canvas.addEventListener('click', () => pick(index, canvas).catch((err) => { note.textContent = `✗ ${err.message ?? err}`; }));
    thumbs.append(canvas);
    return canvas;
  }

  async function pick(index, canvas) {
    picked.push({ index, canvas });
    canvas.classList.add('picked');
    if (picked.length > 2) picked.shift().canvas.classList.remove('picked');
    if (picked.length < 2) return;
    const x = new Float32Array(2 * c * h * w);
    picked.forEach(({ index: i }, k) => x.set(images[i].pixels, k * c * h * w));
    // a conditional model encodes and decodes under a class: the shipped images' own, or for an image of your own
    // the class chosen in the picker (none is chosen while it says "every class in turn")
    const chosen = picker && Number(picker.value) >= 0 ? Number(picker.value) : null;
    const labels = picked.map(({ index: i }) => images[i].label ?? chosen);
    if (meta.conditional && labels.includes(null)) {
      strip.width = 0; // the last pair's interpolation would read as this pair's
      note.textContent = 'Your own image has no class: choose its class in the class picker above, then pick the two images again.';
      return;
    }
    note.textContent = '';
    const feeds = { image: new ort.Tensor('float32', x, [2, c, h, w]) };
    if (meta.conditional) feeds.label = labelTensor(labels);
    const { mu } = await (await session(encoder.file)).run(feeds);
    const d = meta.latent_dim;
    const z = new Float32Array(STEPS * d);
    for (let s = 0; s < STEPS; s++) {
      const t = s / (STEPS - 1);
      for (let j = 0; j < d; j++) z[s * d + j] = (1 - t) * mu.data[j] + t * mu.data[d + j];
    }
    const stepLabels = Array.from({ length: STEPS }, (_, s) => labels[s < STEPS / 2 ? 0 : 1]);
    draw(strip, await decode(decoder, z, STEPS, stepLabels), STEPS, meta.image_shape, STEPS);
    state.interpolations += 1;
  }

  // a dropped or chosen picture prepared as training prepares image folders (pipeline/data/formats.py read_image):
  // upright by its EXIF orientation, transparent parts over white, centre-cropped to a square, resized to the
  // model's H×W, grey by ITU-R 601 luma when C = 1 (Pillow's "L")
  async function addFile(file) {
    const bitmap = await createImageBitmap(file).catch(() => { // upright by its EXIF orientation (the default)
      throw new Error(`${file.name}: not an image this browser can decode; drop a PNG, JPEG, GIF, WebP or BMP`);
    });
    const side = Math.min(bitmap.width, bitmap.height);
    const canvas = new OffscreenCanvas(w, h);
    const ctx = canvas.getContext('2d');
    ctx.fillStyle = 'white';
    ctx.fillRect(0, 0, w, h);
    ctx.imageSmoothingQuality = 'high';
    const [left, top] = [Math.floor((bitmap.width - side) / 2), Math.floor((bitmap.height - side) / 2)];
    ctx.drawImage(bitmap, left, top, side, side, 0, 0, w, h);
    bitmap.close();
    const rgba = ctx.getImageData(0, 0, w, h).data;
    const pixels = new Float32Array(c * h * w);
    for (let i = 0; i < h * w; i++) {
      const [r, g, b] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2]];
      if (c === 1) pixels[i] = ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) / 255;
      else [r, g, b].forEach((v, ch) => { pixels[ch * h * w + i] = v / 255; });
    }
    addImage(pixels, null);
  }

  const shipped = reference.images;
  if (shipped) {
    const size = c * h * w;
    for (let k = 0; k < shipped.shape[0]; k++) {
      const pixels = Float32Array.from(shipped.data.slice(k * size, (k + 1) * size), (v) => v / 255);
      addImage(pixels, shipped.labels ? shipped.labels[k] : null);
    }
  }
  // a file the browser cannot decode as an image is named on the page, not only in the console
  const addFiles = (files) => [...files].forEach((file) => addFile(file).catch((err) => {
    note.textContent = `✗ ${err.message ?? err}`;
  }));
  const input = el('input', { type: 'file', accept: 'image/*', onchange: (e) => addFiles(e.target.files) });
  const drop = el('div', { class: 'drop' }, 'Drop an image here, or ', input);
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => { e.preventDefault(); drop.classList.remove('over'); addFiles(e.dataTransfer.files); });
  box.append(el('p', {}, 'Click two images: their posterior means are interpolated and decoded.'), thumbs, drop, strip, note);
  return box;
}

// every model of the manifest run on the shipped inputs, against the outputs Python's onnxruntime gave
async function checkAgainstPython(manifest, reference) {
  let worst = 0;
  for (const [file, { inputs, outputs }] of Object.entries(reference.cases)) {
    const feeds = Object.fromEntries(Object.entries(inputs).map(([name, t]) => [name, tensor(t)]));
    const got = await (await session(file)).run(feeds);
    const error = Math.max(...Object.entries(outputs).map(([name, t]) => maxAbs(got[name].data, t.data)));
    state.files[file] = error;
    worst = Math.max(worst, error);
  }
  // the page's own draw from the reference seed equals the latents Python shipped
  let latent = 0;
  for (const { inputs } of Object.values(reference.cases)) {
    const drawn = inputs.z ?? inputs.noise;
    if (drawn && !inputs.u && !inputs.image) latent = Math.max(latent, maxAbs(portableNormal(portableStream(reference.seed, 'noise'), drawn.data.length), drawn.data));
  }
  state.latentError = latent;
  state.maxError = worst;
  state.ok = worst <= reference.tolerance && latent <= reference.tolerance;
  const line = document.getElementById('check');
  line.textContent = `${state.ok ? '✓' : '✗'} ${Object.keys(state.files).length} models match Python's onnxruntime on the ` +
    `shipped inputs: max |Δ| ${worst.toExponential(2)}, latents from seed ${reference.seed}: max |Δ| ${latent.toExponential(2)} ` +
    `(tolerance ${reference.tolerance})`;
  line.className = `check ${state.ok ? 'ok' : 'bad'}`;
}

async function main() {
  const [manifest, reference] = await Promise.all(['models.json', 'reference.json'].map((f) => fetch(f).then((r) => {
    if (!r.ok) throw new Error(`${f}: HTTP ${r.status}`);
    return r.json();
  })));
  const generative = manifest.models.filter((m) => m.variant === 'float32' && ['vae_decoder', 'gan_generator'].includes(m.kind));
  document.getElementById('summary').textContent = `${manifest.models.length} exported models (${manifest.exporter}); ` +
    `running on onnxruntime-web ${ort.env.versions.web} (wasm).`;
  const main = document.getElementById('models');
  for (const entry of generative) {
    const { section, refresh } = modelSection(entry, manifest, reference);
    main.append(section);
    await refresh();
  }
  await checkAgainstPython(manifest, reference);
}

// a failure is shown on the page, not only in the console: the check line says what failed and what to do
main().catch((err) => {
  state.errors.push(String(err));
  console.error(err);
  const line = document.getElementById('check');
  line.textContent = `✗ ${err.message ?? err}: the page could not finish; re-run the export stage and reload`;
  line.className = 'check bad';
}).finally(() => { state.done = true; });
