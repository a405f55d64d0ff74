/* log p(x|z) of an MLP decoder, its last two layers and the density fused into one pass: the logits never
 * leave the vector registers.
 *
 *   v = W2 relu(W1 u + b1) + b2            (v = W2 u + b2 for a decoder without a hidden layer)
 *   Bernoulli (11.2-11.3): out[r] = Σ_d x_d v_d - softplus(v_d)
 *   Gaussian  (11.4):      out[r] = offset - ½ Σ_d ((x_d - sigmoid(v_d)) inv_std_d)²,  offset = -Σ_d log s_d - D/2 log 2π
 *
 * for each row u = inputs[r] (a latent, or an earlier layer's activations), with image x = x[r % images].
 *
 * Products run on tiles of MR = 6 output units × NR = two vectors of rows: per step of the inner product two
 * vector loads of activations, six broadcast weights and twelve fused multiply-adds into twelve accumulators,
 * which with the loads fit the 16 vector registers of AVX2 (and of SSE; AVX-512 and NEON have 32). So that a row
 * is a vector lane, a panel of NR rows is transposed once (activations[k][lane]), the hidden layer writes its
 * output in that layout, and weights are packed once per model into panels of MR output units (pack_weight).
 * A thread takes PANELS_PER_TASK panels at a time; their hidden activations stay in the L2 cache while each
 * packed panel of W2 is reused across them.
 *
 * Each tile's six pixels are added into its rows at once: a float32 sum of six terms per lane, accumulated in
 * double, so a row agrees with a double-precision evaluation to float32 rounding (tests/test_kernels.py holds it
 * to that). Both densities need e^{-|v|} per pixel: Cephes' expf polynomial (about 1 ulp). softplus(v) =
 * max(v, 0) + log(1 + e^{-|v|}), and the logs are what torch pays per pixel: here the factors 1 + e^{-|v|}, each
 * in [1, 2], are multiplied per lane, the product's exponent bits moved into an integer count after every tile,
 * and one log taken per row. sigmoid(v) = 1 / (1 + e^{-v}) for v >= 0, e^{v} / (1 + e^{v}) below. Written with
 * GCC/Clang vector extensions of the machine's vector width: AVX-512, AVX2, SSE or NEON.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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
typedef double vd __attribute__((vector_size(LANES * sizeof(double))));

#define MR 6                /* output units per tile */
#define NR (2 * LANES)      /* rows per tile */
#define PANELS_PER_TASK 6   /* panels of NR rows a thread takes at a time: on AMD Zen 3 1-2% ahead of 4 and 8 */
#define LN2 0.69314718055994530942

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* An initializer, not 0 + s: GCC keeps the addition (for -0) and broadcasts its result, an extra step per weight. */
static inline vf broadcast(float s) {
#if LANES == 16
    return (vf){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#elif LANES == 8
    return (vf){s, s, s, s, s, s, s, s};
#else
    return (vf){s, s, s, s};
#endif
}

/* Lanes of a where mask is set, of b elsewhere. */
static inline vf lanes_where(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

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
    return exp_nonpositive(lanes_where(minus_abs < floor, floor, minus_abs));
}

typedef struct {
    vf c[MR][2];
} tile_t;

/* c[i] = Σ_k weights[k][i] activations[k][:] for a packed panel of MR output units and a panel of NR rows. */
static inline tile_t tile(const float *restrict weights, const float *restrict activations, long depth) {
    vf c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    vf c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
    for (long k = 0; k < depth; k++) {
        const float *w = weights + k * MR;
        vf a0 = load(activations + k * NR), a1 = load(activations + k * NR + LANES), s;
        s = broadcast(w[0]), c00 += s * a0, c01 += s * a1;
        s = broadcast(w[1]), c10 += s * a0, c11 += s * a1;
        s = broadcast(w[2]), c20 += s * a0, c21 += s * a1;
        s = broadcast(w[3]), c30 += s * a0, c31 += s * a1;
        s = broadcast(w[4]), c40 += s * a0, c41 += s * a1;
        s = broadcast(w[5]), c50 += s * a0, c51 += s * a1;
    }
    return (tile_t){{{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}}};
}

/* The vector width this build runs at, in floats. */
int vector_lanes(void) { return LANES; }

/* Floats of pack_weight's output for an out×in weight. */
long packed_weight_floats(long out, long in) { return (out + MR - 1) / MR * MR * in; }

/* An out×in weight (nn.Linear's layout) in panels of MR output units: packed[o / MR][k][o % MR] = weight[o][k],
 * zero for the units past out in the last panel (the tiles compute them; nothing reads them). */
void pack_weight(const float *weight, float *packed, long out, long in) {
    for (long o = 0; o < (out + MR - 1) / MR * MR; o++)
        for (long k = 0; k < in; k++)
            packed[(o / MR * in + k) * MR + o % MR] = o < out ? weight[o * in + k] : 0.0f;
}

/* h[j][:] = relu(Σ_k weight[j][k] u[k][:] + bias[j]), NaN kept, for a panel of rows transposed into u. */
static void hidden_layer(const float *u, float *h, const float *weight, const float *bias, long in, long hidden) {
    for (long j = 0; j < hidden; j += MR) {
        tile_t t = tile(weight + j * in, u, in);
        for (int i = 0; i < MR && j + i < hidden; i++)
            for (int v = 0; v < 2; v++) {
                vf a = t.c[i][v] + broadcast(bias[j + i]);
                store(h + (j + i) * NR + v * LANES, lanes_where(a < 0.0f, broadcast(0.0f), a));
            }
    }
}

/* Per panel of rows, what its lanes have summed so far. */
typedef struct {
    vd sum[2];      /* Bernoulli: Σ x v - max(v, 0); Gaussian: Σ residual² */
    vf product[2];  /* Bernoulli: Π (1 + e^{-|v|}) / 2^exponents, in [1, 2) */
    vi exponents[2];
} row_sums;

/* The output layer of `count` panels of rows (activations h[s], x panels xs[s]) and the density of its logits,
 * into sums[s]. gaussian is a constant at each call, so each density gets a loop of its own. */
static inline void output_layer(float *const *h, float *const *xs, long count, row_sums *sums, const float *weight,
                                const float *bias, const float *inv_std, long depth, long pixels, int gaussian) {
    for (long p = 0; p < pixels; p += MR)
        for (long s = 0; s < count; s++) {
            tile_t t = tile(weight + p * depth, h[s], depth);
            for (int v = 0; v < 2; v++) {
                vf sum = {0}, product = sums[s].product[v];
                for (int i = 0; i < MR && p + i < pixels; i++) {
                    long d = p + i;
                    vf a = t.c[i][v] + broadcast(bias[d]), x = load(xs[s] + d * NR + v * LANES);
                    if (gaussian) {
                        vf e = exp_minus_abs(a);
                        vf mean = lanes_where(a >= 0.0f, broadcast(1.0f), e) / (1.0f + e);
                        vf residual = (x - mean) * broadcast(inv_std[d]);
                        sum += residual * residual;
                    } else {
                        product *= 1.0f + exp_minus_abs(a);
                        sum += x * a - (vf)((vi)a & (a > 0.0f));
                    }
                }
                if (!gaussian) {
                    vi bits = (vi)product;
                    sums[s].exponents[v] += (bits >> 23) - 127;
                    sums[s].product[v] = (vf)((bits & 0x007FFFFF) | 0x3F800000);
                }
                sums[s].sum[v] += __builtin_convertvector(sum, vd);
            }
        }
}

/* out[r] as above for rows × in inputs. hidden_weight (hidden × in) and output_weight (pixels × hidden, or
 * pixels × in when hidden_weight is NULL) packed by pack_weight; inv_std NULL for the Bernoulli density.
 * Returns 0, or -1 when a thread's scratch (a few tiles of rows: under 1 MB for MNIST) could not be allocated. */
int mlp_log_likelihood(const float *inputs, long rows, long in, const float *hidden_weight, const float *hidden_bias,
                       long hidden, const float *output_weight, const float *output_bias, long pixels, const float *x,
                       long images, const float *inv_std, double offset, float *out, int threads) {
    long depth = hidden_weight ? hidden : in;
    long panels = (rows + NR - 1) / NR, tasks = (panels + PANELS_PER_TASK - 1) / PANELS_PER_TASK;
    size_t activations = (size_t)(in + (hidden_weight ? hidden : 0)) * NR, x_panel = (size_t)pixels * NR;
    int failed = 0;
    (void)threads; /* used by the OpenMP pragma; a build without OpenMP runs on the calling thread */
#pragma omp parallel num_threads(threads)
    {
        float *buffer = aligned_alloc(64, (PANELS_PER_TASK * (activations + x_panel) * sizeof(float) + 63) / 64 * 64);
        float *u[PANELS_PER_TASK], *h[PANELS_PER_TASK], *xs[PANELS_PER_TASK], *x_pool[PANELS_PER_TASK];
        /* x_pool[j] holds x[(x_phase[j] + lane) % images] in lane order: the same for every panel whose first row
         * is x_phase[j] modulo the images, so the evaluation's few phases are gathered once per call */
        long x_phase[PANELS_PER_TASK];
        for (int s = 0; s < PANELS_PER_TASK && buffer; s++) {
            u[s] = buffer + s * activations;
            h[s] = hidden_weight ? u[s] + in * NR : u[s];
            x_pool[s] = buffer + PANELS_PER_TASK * activations + s * x_panel;
            x_phase[s] = -1;
        }
#pragma omp for schedule(static)
        for (long task = 0; task < tasks; task++) {
            if (!buffer) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            long first = task * PANELS_PER_TASK * NR;
            long count = panels - task * PANELS_PER_TASK < PANELS_PER_TASK ? panels - task * PANELS_PER_TASK
                                                                           : PANELS_PER_TASK;
            row_sums sums[PANELS_PER_TASK];
            unsigned taken = 0; /* bit j: x_pool[j] serves a panel of this task */
            for (long s = 0; s < count; s++) {
                long start = first + s * NR, phase = start % images;
                for (int lane = 0; lane < NR; lane++)
                    for (long k = 0; k < in; k++)
                        u[s][k * NR + lane] = start + lane < rows ? inputs[(start + lane) * in + k] : 0.0f;
                int j = 0;
                while (j < PANELS_PER_TASK && x_phase[j] != phase)
                    j++;
                if (j == PANELS_PER_TASK) {
                    for (j = 0; taken >> j & 1; j++)
                        ;
                    x_phase[j] = phase;
                    for (int lane = 0; lane < NR; lane++) {
                        const float *image = x + (phase + lane) % images * pixels;
                        for (long d = 0; d < pixels; d++)
                            x_pool[j][d * NR + lane] = image[d];
                    }
                }
                taken |= 1u << j;
                xs[s] = x_pool[j];
                if (hidden_weight)
                    hidden_layer(u[s], h[s], hidden_weight, hidden_bias, in, hidden);
                for (int v = 0; v < 2; v++) {
                    sums[s].sum[v] = (vd){0};
                    sums[s].product[v] = broadcast(1.0f);
                    sums[s].exponents[v] = (vi){0};
                }
            }
            if (inv_std)
                output_layer(h, xs, count, sums, output_weight, output_bias, inv_std, depth, pixels, 1);
            else
                output_layer(h, xs, count, sums, output_weight, output_bias, NULL, depth, pixels, 0);
            for (long s = 0; s < count; s++)
                for (int lane = 0; lane < NR && first + s * NR + lane < rows; lane++) {
                    int v = lane / LANES, l = lane % LANES;
                    double total = sums[s].sum[v][l];
                    if (inv_std)
                        total = offset - 0.5 * total;
                    else
                        total -= log(sums[s].product[v][l]) + sums[s].exponents[v][l] * LN2;
                    out[first + s * NR + lane] = (float)total;
                }
        }
        free(buffer);
    }
    return failed ? -1 : 0;
}
