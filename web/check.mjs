// node web/check.mjs [export/web]: every model of the bundle's models.json run by onnxruntime-node on the shipped
// inputs of reference.json, against the outputs Python's onnxruntime gave; the seeded latents redrawn here too.
// Prints one JSON line; exits 1 if any model or latent differs by more than the reference's tolerance, and 2 with
// one line on stderr if the bundle cannot be read (a wrong folder, a missing or damaged file).
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import * as ort from 'onnxruntime-node';
import { portableNormal, portableStream } from './src/portable.js';

const dir = process.argv[2] ?? 'export/web';
const load = async (name) => JSON.parse(await readFile(path.join(dir, name), 'utf8'));
const maxAbs = (a, b) => (a.length === b.length ? a.reduce((m, v, i) => Math.max(m, Math.abs(v - b[i])), 0) : Infinity);
const files = {};
let reference;
try {
  const manifest = await load('models.json');
  reference = await load('reference.json');
  for (const entry of manifest.models) {
    const cases = reference.cases[entry.file];
    if (!cases) throw new Error(`${entry.file}: listed in models.json but has no reference case`);
    const session = await ort.InferenceSession.create(path.join(dir, entry.file));
    const feeds = Object.fromEntries(Object.entries(cases.inputs).map(([name, { dtype, shape, data }]) => [name,
      new ort.Tensor(dtype, dtype === 'int64' ? BigInt64Array.from(data, BigInt) : Float32Array.from(data), shape)]));
    const got = await session.run(feeds);
    files[entry.file] = Math.max(...Object.entries(cases.outputs).map(([name, t]) => maxAbs(got[name].data, t.data)));
    const drawn = cases.inputs.z ?? cases.inputs.noise;
    if (drawn) files[`${entry.file} latents`] = maxAbs(portableNormal(portableStream(reference.seed, 'noise'), drawn.data.length), drawn.data);
  }
} catch (err) {
  console.error(`${dir}: ${err.message}; pass the explorer folder an export wrote (export/web), or re-run the export stage`);
  process.exit(2);
}
const worst = Math.max(...Object.values(files));
const ok = worst <= reference.tolerance;
console.log(JSON.stringify({ ok, onnxruntime: ort.env.versions.node ?? null, tolerance: reference.tolerance, max_abs_error: worst, files }));
process.exit(ok ? 0 : 1);
