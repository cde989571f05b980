/* The multipliers' full-size work in one pass per matrix (issue 15): lrm_mup/core/_fused.py builds this file with the
 * system C compiler on first use and calls it through ctypes; lrm_mup/core/multipliers.py falls back to eager torch
 * ops wherever it is not built or not usable.
 *
 * For W = a · r ⊙ W̃ ⊙ c (a = fixed_mult · s) and the gradient G of W, row-major:
 *   map:     out = (G ⊙ a·r) ⊙ c = dW̃,  hc_i = Σ_j (G⊙W̃)_ij c_j,  hr_j = Σ_i (G⊙W̃)_ij r_i, and from these
 *            dr = a·hc, dc = a·hr, ds = fixed_mult · rᵀ hc
 *            (read G and W̃, write out: 3 streams, against 9 for eager torch ops; out may be G itself)
 *   rebuild: out = (W̃ ⊙ a·r) ⊙ c
 *            (read W̃, write out: 2 streams, against 4)
 * The products are taken in eager torch's order (rows first, then columns), so dW̃ and W equal its results bit for
 * bit; the sums equal torch's up to the order of summation. Absent multipliers are passed as ones (exact). The caller
 * passes the vectors of the matrix's own dtype: this file is compiled for float and double.
 *
 * One call takes a whole model's matrices (an array of `layer_` records): the per-matrix work of Python and of the
 * eager ops' dispatch (~100 µs a matrix, 7 % of a step of the width-64 proxy) becomes a loop here.
 *
 * Threads: a matrix's rows are split into blocks, each on its own POSIX thread (the caller's block on the caller's
 * thread), each with its own hr row; threads live only for the call, so a process may fork at any time. SIMD:
 * `omp simd` (-fopenmp-simd: no OpenMP runtime) and, on x86-64, one clone per ISA level chosen when the library
 * loads, so the built file runs on any x86-64 CPU.
 *
 * Streaming stores (x86-64 with AVX): the rebuild writes matrices of `stream_bytes` or more with non-temporal
 * stores, which skip reading each cache line before overwriting it (3 transfers per element become 2; measured
 * 6.5 → 4.5–5.4 ms per step for the width-512 proxy's 15 matrices). The caller sets it past a core's L2 cache: the
 * next forward reads the matrix back from memory either way. */
#ifndef REAL

#include <pthread.h>
#include <stdlib.h>

#if defined(__x86_64__) && !defined(LRM_MUP_NO_CLONES)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

/* out[j] = (w[j] · ar) · c[j] for j < n with non-temporal stores where the CPU has them; returns 0 if it did not
 * write (no AVX: the caller writes the row). The same products in the same order as the plain loop. */
#if defined(__x86_64__) && !defined(LRM_MUP_NO_CLONES)
#include <immintrin.h>
#include <stdint.h>
#define STREAM_ROW(T, SUF, V, WIDTH, SET1, LOAD, MUL, STREAM, ISA)                                                  \
    __attribute__((target(ISA))) static int stream_row_##SUF(T *out, const T *w, const T *c, T ar, long n)      \
    {                                                                                                          \
        const V va = SET1(ar);                                                                                 \
        long j = 0;                                                                                            \
        for (; j < n && ((uintptr_t)(out + j) % (WIDTH * sizeof(T))); j++) out[j] = w[j] * ar * c[j];          \
        for (; j + WIDTH <= n; j += WIDTH) STREAM(out + j, MUL(MUL(LOAD(w + j), va), LOAD(c + j)));            \
        for (; j < n; j++) out[j] = w[j] * ar * c[j];                                                          \
        return 1;                                                                                              \
    }
STREAM_ROW(float, f32, __m256, 8, _mm256_set1_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_stream_ps, "avx")
STREAM_ROW(double, f64, __m256d, 4, _mm256_set1_pd, _mm256_loadu_pd, _mm256_mul_pd, _mm256_stream_pd, "avx")
static int have_avx(void) { return __builtin_cpu_supports("avx"); }
static void stream_fence(void) { _mm_sfence(); } /* the stores are visible to every thread before the call returns */
#else
static int stream_row_f32(float *o, const float *w, const float *c, float ar, long n) { return 0; }
static int stream_row_f64(double *o, const double *w, const double *c, double ar, long n) { return 0; }
static int have_avx(void) { return 0; }
static void stream_fence(void) {}
#endif

#define REAL float
#define SUF f32
#include __FILE__
#undef REAL
#undef SUF
#define REAL double
#define SUF f64
#include __FILE__

#else /* the body, once per REAL */

/* One matrix of a call, row-major as walked (the caller swaps r and c, dr and dc, for a column-major one). */
typedef struct {
    REAL *out;                 /* map: dW̃ (may be g itself); rebuild: W */
    const REAL *g, *w, *r, *c; /* r and c: ones where the multiplier is absent (exact), never NULL */
    const REAL *s;             /* the scalar multiplier, NULL where absent: a = fixed · s[0], else fixed */
    double fixed;
    long n_rows, n_cols;
    REAL *dr, *dc, *ds;        /* map: the multipliers' gradients, NULL where absent */
} CAT(layer_, SUF);

typedef struct {
    const CAT(layer_, SUF) *m;
    REAL a;
    long i0, i1;
    REAL *hc, *hr;             /* map: H c over the block's rows, Hᵀ r of the block's rows (NULL: no sums) */
    int stream;
} CAT(job_, SUF);

/* a = fixed_mult · s as the eager ops take it: s · fixed in REAL (torch: a tensor times a Python float) */
static REAL CAT(scale_of_, SUF)(const CAT(layer_, SUF) *m) { return m->s ? m->s[0] * (REAL)m->fixed : (REAL)m->fixed; }

CLONES static void CAT(map_rows_, SUF)(const CAT(job_, SUF) *job)
{
    const CAT(layer_, SUF) *m = job->m;
    const long n = m->n_cols;
    const REAL *c = m->c;
    for (long i = job->i0; i < job->i1; i++) {
        const REAL *gi = m->g + i * n, *wi = m->w + i * n;
        REAL *oi = m->out + i * n, *hr = job->hr;
        const REAL ri = m->r[i], ar = ri * job->a;
        if (hr) {
            REAL acc = 0;
#pragma omp simd reduction(+ : acc)
            for (long j = 0; j < n; j++) {
                const REAL gij = gi[j], h = gij * wi[j];
                acc += h * c[j];
                hr[j] += h * ri;
                oi[j] = gij * ar * c[j];
            }
            job->hc[i] = acc;
        } else {
#pragma omp simd
            for (long j = 0; j < n; j++)
                oi[j] = gi[j] * ar * c[j];
        }
    }
}

CLONES static void CAT(rebuild_rows_, SUF)(const CAT(job_, SUF) *job)
{
    const CAT(layer_, SUF) *m = job->m;
    const long n = m->n_cols;
    const REAL *c = m->c;
    for (long i = job->i0; i < job->i1; i++) {
        const REAL *wi = m->w + i * n;
        REAL *oi = m->out + i * n;
        const REAL ar = m->r[i] * job->a;
        if (job->stream && CAT(stream_row_, SUF)(oi, wi, c, ar, n))
            continue;
#pragma omp simd
        for (long j = 0; j < n; j++)
            oi[j] = wi[j] * ar * c[j];
    }
    if (job->stream)
        stream_fence();
}

static void *CAT(map_thread_, SUF)(void *job) { CAT(map_rows_, SUF)(job); return 0; }
static void *CAT(rebuild_thread_, SUF)(void *job) { CAT(rebuild_rows_, SUF)(job); return 0; }

/* Rows split in n_threads blocks; block t adds into hr + t·n_cols (zeroed by the caller). A thread that cannot be
 * started runs its block on the caller's thread: the result is the same. */
static void CAT(run_, SUF)(void *(*thread)(void *), CAT(job_, SUF) base, int n_threads)
{
    enum { MAX_THREADS = 64 };
    CAT(job_, SUF) jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    const long n_rows = base.m->n_rows;
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = base;
        jobs[t].i0 = n_rows * t / n_threads;
        jobs[t].i1 = n_rows * (t + 1) / n_threads;
        if (base.hr) jobs[t].hr = base.hr + (long)t * base.m->n_cols;
        started[t] = t < n_threads - 1 && pthread_create(&ids[t], 0, thread, &jobs[t]) == 0;
    }
    for (int t = 0; t < n_threads; t++)
        if (!started[t]) thread(&jobs[t]);
    for (int t = 0; t < n_threads; t++)
        if (started[t]) pthread_join(ids[t], 0);
}

/* Threads for one matrix: at most max_threads (and 64), one per min_per_thread elements, one per row. */
static int CAT(threads_for_, SUF)(const CAT(layer_, SUF) *m, int max_threads, long min_per_thread)
{
    long t = m->n_rows * m->n_cols / (min_per_thread > 0 ? min_per_thread : 1);
    if (t > max_threads) t = max_threads;
    if (t > 64) t = 64;
    if (t > m->n_rows) t = m->n_rows;
    return t < 1 ? 1 : (int)t;
}

/* For each of the n matrices: out = (G ⊙ a·r) ⊙ c = dW̃, and where present dr = a · H c, dc = a · Hᵀ r,
 * ds = fixed · rᵀ H c (H = G ⊙ W̃), from the sums taken on the same pass. Returns 0, or -1 if scratch memory
 * could not be had (the matrices before the failing one are written, it and those after are not; the caller raises
 * MemoryError). */
int CAT(lrm_mup_map_, SUF)(const CAT(layer_, SUF) *layers, long n, int max_threads, long min_per_thread)
{
    for (long k = 0; k < n; k++) {
        const CAT(layer_, SUF) *m = &layers[k];
        if (!m->g)
            continue; /* a matrix without a gradient this step */
        const int threads = CAT(threads_for_, SUF)(m, max_threads, min_per_thread);
        const int sums = m->dr || m->dc || m->ds;
        REAL *hc = 0, *hr = 0;
        if (sums && (!(hc = malloc(sizeof(REAL) * m->n_rows)) ||
                     !(hr = calloc((size_t)threads * m->n_cols, sizeof(REAL))))) {
            free(hc);
            return -1;
        }
        const CAT(job_, SUF) job = {m, CAT(scale_of_, SUF)(m), 0, 0, hc, hr, 0};
        CAT(run_, SUF)(CAT(map_thread_, SUF), job, threads);
        if (!sums)
            continue;
        for (int t = 1; t < threads; t++)
            for (long j = 0; j < m->n_cols; j++)
                hr[j] += hr[(long)t * m->n_cols + j];
        if (m->dr)
            for (long i = 0; i < m->n_rows; i++) m->dr[i] = hc[i] * job.a;
        if (m->dc)
            for (long j = 0; j < m->n_cols; j++) m->dc[j] = hr[j] * job.a;
        if (m->ds) {
            double dot = 0;
            for (long i = 0; i < m->n_rows; i++) dot += (double)m->r[i] * hc[i];
            m->ds[0] = (REAL)dot * (REAL)m->fixed;
        }
        free(hc);
        free(hr);
    }
    return 0;
}

/* For each of the n matrices: out = (W̃ ⊙ a·r) ⊙ c, with streaming stores for matrices of stream_bytes or more
 * (0: every matrix). */
void CAT(lrm_mup_rebuild_, SUF)(const CAT(layer_, SUF) *layers, long n, int max_threads, long min_per_thread,
                                long stream_bytes)
{
    const int avx = have_avx();
    for (long k = 0; k < n; k++) {
        const CAT(layer_, SUF) *m = &layers[k];
        const long bytes = m->n_rows * m->n_cols * (long)sizeof(REAL);
        const int stream = avx && bytes >= stream_bytes;
        const CAT(job_, SUF) job = {m, CAT(scale_of_, SUF)(m), 0, 0, 0, 0, stream};
        CAT(run_, SUF)(CAT(rebuild_thread_, SUF), job, CAT(threads_for_, SUF)(m, max_threads, min_per_thread));
    }
}

#endif
