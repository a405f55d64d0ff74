// Seeded random numbers that Python reproduces exactly (pipeline.runtime.portable_uniform / portable_normal):
// Mulberry32 uniforms in (0, 1) (32-bit integer arithmetic) and Box-Muller normals.

// The page's random streams under one seed (pipeline.runtime.PORTABLE_STREAMS): Mulberry32 seeded with
// 8 seed + index, so one seed's streams and those of the next seed (Resample) never share numbers.
export const STREAMS = { noise: 0, u: 1, category: 2, continuous: 3, image: 4 };

export function portableStream(seed, stream) {
  return (8 * seed + STREAMS[stream]) >>> 0;
}
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
