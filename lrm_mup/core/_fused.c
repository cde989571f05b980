/* The multipliers' full-size work in one pass per matrix (issue 15): lrm_mup/core/_fused.py builds this file with the
 * system C compiler on first use and calls it through ctypes; lrm_mup/core/multipliers.py falls back to eager torch
 * ops wherever it is not built or not usable.
 *
 * For W = a · r ⊙ W̃ ⊙ c (a = fixed_mult · s) and the gradient G of W, over rows [i0, i1) of a row-major matrix:
 *   map:     out = (G ⊙ a·r) ⊙ c = dW̃,  hc_i = Σ_j (G⊙W̃)_ij c_j,  hr_j += Σ_i (G⊙W̃)_ij r_i
 *            (read G and W̃, write out: 3 streams, against 9 for eager torch ops; out may be G itself)
 *   rebuild: out = (W̃ ⊙ a·r) ⊙ c
 *            (read W̃, write out: 2 streams, against 4)
 * The products are taken in eager torch's order (rows first, then columns), so dW̃ and W equal its results bit for
 * bit; hc and hr are sums, equal to torch's up to the order of summation. Absent multipliers are passed as ones
 * (exact). The caller passes the vectors of the matrix's own dtype: this file is compiled for float and double.
 *
 * Threads: rows are split into n_threads blocks, each on its own POSIX thread (the caller's block on the caller's
 * thread), each with its own hr row (the caller sums them); threads live only for the call, so a process may fork
 * at any time. SIMD: `omp simd` (-fopenmp-simd: no OpenMP runtime) and, on x86-64, one clone per ISA level chosen
 * when the library loads, so the built file runs on any x86-64 CPU.
 *
 * Streaming stores (x86-64 with AVX): a rebuild with `stream` set writes W with non-temporal stores, which skip
 * reading each cache line before overwriting it (3 transfers per element become 2; measured 6.5 → 4.5–5.4 ms per step
 * for the width-512 proxy's 15 matrices). The caller sets it for matrices larger than a core's L2 cache, which
 * the next forward reads back from memory either way. */
#ifndef REAL

#include <pthread.h>

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

typedef struct {
    REAL *out;
    const REAL *g, *w, *r, *c;
    REAL a;
    long n_cols, i0, i1;
    REAL *hc, *hr;
    int stream;
} CAT(job_, SUF);

CLONES static void CAT(map_rows_, SUF)(const CAT(job_, SUF) *job)
{
    const long n = job->n_cols;
    const REAL *c = job->c;
    for (long i = job->i0; i < job->i1; i++) {
        const REAL *gi = job->g + i * n, *wi = job->w + i * n;
        REAL *oi = job->out + i * n, *hr = job->hr;
        const REAL ri = job->r[i], ar = ri * job->a;
        if (job->hc) {
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
    const long n = job->n_cols;
    const REAL *c = job->c;
    for (long i = job->i0; i < job->i1; i++) {
        const REAL *wi = job->w + i * n;
        REAL *oi = job->out + i * n;
        const REAL ar = job->r[i] * job->a;
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
static void CAT(run_, SUF)(void *(*thread)(void *), CAT(job_, SUF) base, long n_rows, int n_threads)
{
    enum { MAX_THREADS = 64 };
    CAT(job_, SUF) jobs[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS];
    if (n_threads < 1) n_threads = 1;
    if (n_threads > MAX_THREADS) n_threads = MAX_THREADS;
    if (n_threads > n_rows) n_threads = (int)(n_rows > 0 ? n_rows : 1);
    for (int t = 0; t < n_threads; t++) {
        jobs[t] = base;
        jobs[t].i0 = n_rows * t / n_threads;
        jobs[t].i1 = n_rows * (t + 1) / n_threads;
        if (base.hr) jobs[t].hr = base.hr + (long)t * base.n_cols;
        started[t] = t < n_threads - 1 && pthread_create(&ids[t], 0, thread, &jobs[t]) == 0;
    }
    for (int t = 0; t < n_threads; t++)
        if (!started[t]) thread(&jobs[t]);
    for (int t = 0; t < n_threads; t++)
        if (started[t]) pthread_join(ids[t], 0);
}

void CAT(lrm_mup_map_, SUF)(REAL *out, const REAL *g, const REAL *w, const REAL *r, const REAL *c, double a,
                            long n_rows, long n_cols, REAL *hc, REAL *hr, int n_threads)
{
    CAT(job_, SUF) job = {out, g, w, r, c, (REAL)a, n_cols, 0, 0, hc, hr, 0};
    CAT(run_, SUF)(CAT(map_thread_, SUF), job, n_rows, n_threads);
}

void CAT(lrm_mup_rebuild_, SUF)(REAL *out, const REAL *w, const REAL *r, const REAL *c, double a, long n_rows,
                                long n_cols, int n_threads, int stream)
{
    CAT(job_, SUF) job = {out, 0, w, r, c, (REAL)a, n_cols, 0, 0, 0, 0, stream && have_avx()};
    CAT(run_, SUF)(CAT(rebuild_thread_, SUF), job, n_rows, n_threads);
}

#endif
