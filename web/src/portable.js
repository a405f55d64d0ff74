// Seeded random numbers that Python reproduces exactly (pipeline.runtime.portable_uniform / portable_normal):
// Mulberry32 uniforms in (0, 1) (32-bit integer arithmetic) and Box-Muller normals.
export function portableUniform(seed, count) {
  let s = seed >>> 0;
  const out = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), s | 1) >>> 0;
    t = (((t + (Math.imul(t ^ (t >>> 7), t | 61) >>> 0)) >>> 0) ^ t) >>> 0;
    out[i] = (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  }
  return out;
}

export function portableNormal(seed, count) {
  const u = portableUniform(seed, count + (count % 2));
  const out = new Float32Array(count);
  for (let i = 0; 2 * i < count; i++) {
    const r = Math.sqrt(-2 * Math.log(u[2 * i]));
    const a = 2 * Math.PI * u[2 * i + 1];
    out[2 * i] = r * Math.cos(a);
    if (2 * i + 1 < count) out[2 * i + 1] = r * Math.sin(a);
  }
  return out;
}
