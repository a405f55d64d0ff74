/* log p(x|z) of decoder outputs, fused: one pass over the logits instead of torch's bias copy, elementwise terms,
 * products and sums, each a pass of its own. Row r of the logits is a decoded sample for image r % images.
 *
 *   Bernoulli (11.2-11.3): out[r] = Σ_d x_d v_d - softplus(v_d)
 *   Gaussian  (11.4):      out[r] = offset - ½ Σ_d ((x_d - sigmoid(v_d)) / s_d)²,   offset = -Σ_d log s_d - D/2 log 2π
 *
 * with v = logits[r] + bias. Both need e^{-|v|} per pixel: Cephes' expf polynomial (about 1 ulp).
 * softplus(v) = max(v, 0) + log(1 + e^{-|v|}). The logs are the cost torch pays per pixel; here the factors
 * 1 + e^{-|v|}, each in [1, 2], are multiplied per SIMD lane and the log is taken of the product, so a row of
 * 784 pixels takes one log instead of 784. sigmoid(v) = 1 / (1 + e^{-v}) for v >= 0, e^{v} / (1 + e^{v}) below.
 * Sums run per lane in float32 and across lanes in double, so a row agrees with a double-precision evaluation to
 * float32 rounding (relative error about 1e-7; tests/test_kernels.py holds it to that), as torch's float32 path
 * does. Written with GCC/Clang vector extensions of the machine's vector width: AVX-512, AVX2, SSE or NEON.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Vectors of the machine's own width: GCC splits wider ones and then turns their comparisons and selects into
 * scalar code (16 lanes on an AVX2-only CPU, AMD Zen 3: 3x slower). */
#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX2__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float vf __attribute__((vector_size(LANES * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(LANES * sizeof(float))));
/* Chunks of LANES pixels between two logs: the per-lane product of as many factors in [1, 2) stays below 2^96. */
#define CHUNKS_PER_LOG 96

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline vf broadcast(float s) {
    vf v = {0};
    return v + s;
}

/* Lanes of a where mask is set, of b elsewhere. */
static inline vf select(vi mask, vf a, vf b) {
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* e^a for a in [-87, 0]: a = n ln 2 + r with |r| <= ln 2 / 2, e^r by Cephes' degree-6 polynomial, 2^n in the
 * exponent bits. Rounding to n adds 1.5 * 2^23 so the integer lands in the low mantissa bits of t. */
static inline vf exp_nonpositive(vf a) {
    vf t = a * 1.44269504088896341f + 12582912.0f;
    vf n = t - 12582912.0f;
    vf r = a - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vi two_to_n = ((vi)t - (0x4B400000 - 127)) << 23;
    return p * (vf)two_to_n;
}

/* e^{-|v|}, flushed to e^-87 below that: 1 + e^-87 is 1 in float32, as is 1 + anything smaller. NaN stays NaN. */
static inline vf exp_minus_abs(vf v) {
    const vf floor = broadcast(-87.0f);
    vf minus_abs = (vf)((vi)v | (int32_t)0x80000000);
    return exp_nonpositive(select(minus_abs < floor, floor, minus_abs));
}

/* Σ_j log(prod_j) over the lanes with one log: each lane is mantissa × 2^exponent, the mantissas (in [1, 2))
 * are multiplied in double and the exponents summed. */
static double sum_of_lane_logs(vf prod) {
    vi bits = (vi)prod;
    vi exponent = (bits >> 23) - 127;
    vf mantissa = (vf)((bits & 0x007FFFFF) | 0x3F800000);
    double product = 1.0;
    long exponents = 0;
    for (int j = 0; j < LANES; j++) {
        product *= mantissa[j];
        exponents += exponent[j];
    }
    return log(product) + exponents * 0.69314718055994530942;
}

static double lane_sum(vf v) {
    double total = 0.0;
    for (int j = 0; j < LANES; j++)
        total += v[j];
    return total;
}

static double bernoulli_row(const float *logits, const float *bias, const float *x, long pixels) {
    vf prod = broadcast(1.0f), positive = broadcast(0.0f), x_dot_v = broadcast(0.0f);
    double total = 0.0;
    long d = 0, chunks = 0;
    for (; d + LANES <= pixels; d += LANES) {
        vf v = load(logits + d) + load(bias + d);
        prod *= 1.0f + exp_minus_abs(v);
        positive += (vf)((vi)v & (v > 0.0f));
        x_dot_v += load(x + d) * v;
        if (++chunks == CHUNKS_PER_LOG) {
            total -= sum_of_lane_logs(prod);
            prod = broadcast(1.0f);
            chunks = 0;
        }
    }
    total += lane_sum(x_dot_v) - lane_sum(positive) - sum_of_lane_logs(prod);
    for (; d < pixels; d++) {
        float v = logits[d] + bias[d];
        total += (double)x[d] * v - (fmaxf(v, 0.0f) + log1pf(expf(-fabsf(v))));
    }
    return total;
}

static double gaussian_row(const float *logits, const float *bias, const float *x, const float *inv_std,
                           long pixels) {
    const vf one = broadcast(1.0f);
    vf squares = broadcast(0.0f);
    long d = 0;
    for (; d + LANES <= pixels; d += LANES) {
        vf v = load(logits + d) + load(bias + d);
        vf e = exp_minus_abs(v);
        vf residual = (load(x + d) - select(v >= 0.0f, one, e) / (1.0f + e)) * load(inv_std + d);
        squares += residual * residual;
    }
    double total = lane_sum(squares);
    for (; d < pixels; d++) {
        float v = logits[d] + bias[d], e = expf(-fabsf(v));
        float residual = (x[d] - (v >= 0.0f ? 1.0f : e) / (1.0f + e)) * inv_std[d];
        total += (double)residual * residual;
    }
    return -0.5 * total;
}

/* The vector width this build runs at, in floats. */
int vector_lanes(void) { return LANES; }

void bernoulli_log_likelihood(const float *logits, const float *bias, const float *x, float *out, long rows,
                              long images, long pixels, int threads) {
    (void)threads; /* used by the OpenMP pragma; a build without OpenMP runs on the calling thread */
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < rows; r++)
        out[r] = (float)bernoulli_row(logits + r * pixels, bias, x + (r % images) * pixels, pixels);
}

void gaussian_log_likelihood(const float *logits, const float *bias, const float *x, const float *inv_std,
                             float *out, long rows, long images, long pixels, double offset, int threads) {
    (void)threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long r = 0; r < rows; r++)
        out[r] = (float)(offset + gaussian_row(logits + r * pixels, bias, x + (r % images) * pixels, inv_std, pixels));
}
