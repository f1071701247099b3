"""C source of the fused CPU kernels for banded TMAF (the diagonal TMAF is bandwidth 0).

One pass over memory each way: forward reads x and writes out; backward reads x and grad, writes
grad_x and accumulates the values' gradient in small per-thread tables (doubles), merged at the end.
No index tensor is stored: the interval index is recomputed from x, which is cheaper than moving it.

Layout: x, out, grad are contiguous [N, C, S] (S = 1 for [N, C]; S = H*W for images).
Diagonal d has row offset rows[d]: column j of the matrix contributes to output row j + rows[d].
Its grid is the base grid shifted by shifts[d]; tables are [D, Cf, K] with K = m + 1 values and
Cf = C (per feature) or 1 (shared, cstride = 0); breakpoints are padded with -inf and +inf,
[Cb, m + 2] (bstride = m + 2 or 0).

Two paths. Uniform shared grids (the common case) compute the index arithmetically,
ceil((x - lo) / h) clamped, then fix rounding next to a breakpoint with two exact compares against
thresholds in the input dtype; these loops are vectorised (AVX2 clone via target_clones), and the
backward's histogram of grad * x is a scalar sweep over the computed indices. Other grids
(explicit or trainable breakpoints, per feature) use a branch-free binary search in double.
Work is split over blocks of samples (or sample-channel pairs), which never race on outputs.
"""

SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Interval index j of v on a general grid: sp[j] + shift < v <= sp[j+1] + shift, where
   sp = [-inf, s_1..s_m, +inf]; the count of breakpoints below v, by a branch-free search. */
static inline int bucket_search(double v, const double *sp, double shift, int m) {
    const double *s = sp + 1, *base = s;
    int n = m;
    while (n > 1) { int half = n >> 1; base = (base[half] + shift < v) ? base + half : base; n -= half; }
    return (int)(base - s) + (base[0] + shift < v);
}

#define BUCKET(v, sp, sh) bucket_search((v), (sp), (sh), m)

/* d sigmoid(u / tau) / du: the narrow kernel that stands in for the delta of a jump. */
static inline double bump(double u, double inv_tau) {
    double e = exp(-fabs(u) * inv_tau);
    return e / ((1.0 + e) * (1.0 + e)) * inv_tau;
}


/* Fast path for uniform shared grids, written so that the compiler vectorises it (AVX2 gathers via
   target_clones; the default clone runs anywhere). thr = breakpoints + shift in T, rounded down so
   that for every T value v: v <= thr[j] exactly when v <= s_j + shift. t advances by tstep per
   element: the feature's row for [N, C] spans, 0 within one channel of an image. */
#define BUCKET_T(T, v, thr, lo, inv_h, m, j)                                                 \
    do {                                                                                       \
        T u_ = ((v) - (lo)) * (inv_h);                                                         \
        u_ = u_ > (T)0 ? u_ : (T)0;                                                            \
        u_ = u_ < (T)(m) ? u_ : (T)(m);                                                        \
        j = (int)u_;                                                                           \
        j += (T)j < u_;                                                                        \
        j -= (v) <= (thr)[j];                                                                  \
        j += (v) > (thr)[j + 1];                                                               \
    } while (0)

#define DEFINE_SPANS(T, SUF)                                                                    \
__attribute__((target_clones("avx2", "default")))                                              \
void span_forward_##SUF(const T *restrict x, T *restrict o, const T *restrict t,               \
                        const int *restrict offs,                                              \
                        long L, const T *restrict thr, T lo, T inv_h, int m, int assign) {     \
    if (assign) {                                                                              \
        for (int e = 0; e < (int)L; e++) {                                                     \
            T v = x[e];                                                                        \
            int j;                                                                             \
            BUCKET_T(T, v, thr, lo, inv_h, m, j);                                              \
            T y = t[offs[e] + j] * v + (T)0;                                                   \
            o[e] = v == (T)0 ? v : y;                                                          \
        }                                                                                      \
    } else {                                                                                   \
        for (int e = 0; e < (int)L; e++) {                                                     \
            T v = x[e];                                                                        \
            int j;                                                                             \
            BUCKET_T(T, v, thr, lo, inv_h, m, j);                                              \
            o[e] += t[offs[e] + j] * v;                                                        \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
__attribute__((target_clones("avx2", "default")))                                              \
void span_index_##SUF(const T *restrict x, int *restrict q, long L, const T *restrict thr,     \
                      T lo, T inv_h, int m) {                                                  \
    for (int e = 0; e < (int)L; e++) {                                                         \
        T v = x[e];                                                                            \
        int j;                                                                                 \
        BUCKET_T(T, v, thr, lo, inv_h, m, j);                                                  \
        q[e] = j;                                                                              \
    }                                                                                          \
}
DEFINE_SPANS(float, f32)
DEFINE_SPANS(double, f64)
#define CHUNK 512

/* Uniform shared grids. Work comes in blocks: for [N, C] a block is R whole samples (R*C >= 1024
   elements), so the vectorised span is long even when C is small; offs[e] is the table offset of
   element e (its feature's row), aoffs[e] the same for the K-wide gradient accumulators. For images
   a block is one channel of one sample, with all offsets 0. */
static int *feature_offsets(long C, long R, long S, long step) {
    long len = S == 1 ? R * C : S;
    int *o = (int *)malloc(len * sizeof(int));
    for (long e = 0; e < len; e++) o[e] = S == 1 ? (int)((e % C) * step) : 0;
    return o;
}

#define DEFINE_UNIFORM(T, SUF)                                                                  \
static void uniform_forward_##SUF(const T *x, T *out, const T *tab, long cstride, long dstride,\
                                  int m, double lo, double inv_h, const double *shifts,        \
                                  const int *rows, int D, long N, long C, long S, const T *thr,\
                                  int nthreads) {                                              \
    long R = S == 1 ? (C >= 1024 ? 1 : 1024 / C) : 1;                                          \
    long nb = S == 1 ? (N + R - 1) / R : N * C;                                                \
    int *offs = feature_offsets(C, R, S, cstride);                                             \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                        \
    for (long b = 0; b < nb; b++) {                                                            \
        for (int d = 0; d < D; d++) {                                                          \
            long r = rows[d], j0 = r < 0 ? -r : 0, j1 = r > 0 ? C - r : C;                    \
            const T *th = thr + d * (m + 2), *td = tab + d * dstride;                          \
            T l = (T)(lo + shifts[d]), ih = (T)inv_h;                                          \
            if (S == 1) {                                                                      \
                long n0 = b * R, nr = N - n0 < R ? N - n0 : R;                                 \
                if (d == 0) { span_forward_##SUF(x + n0 * C, out + n0 * C, td, offs, nr * C,  \
                                                 th, l, ih, m, 1); continue; }                 \
                for (long n = n0; n < n0 + nr; n++)                                            \
                    span_forward_##SUF(x + n * C + j0, out + n * C + j0 + r, td, offs + j0,    \
                                       j1 - j0, th, l, ih, m, 0);                              \
            } else {               /* block b = (sample n, output channel i) */                \
                long n = b / C, i = b % C, j = i - r;                                          \
                if (j < 0 || j >= C) continue;                                                 \
                span_forward_##SUF(x + (n * C + j) * S, out + (n * C + i) * S,                 \
                                   td + j * cstride, offs, S, th, l, ih, m, d == 0);           \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    free(offs);                                                                                \
}                                                                                              \
/* Scalar sweep of one span after its indices q are known: grad_x and the values' gradient. */ \
static inline void sweep_##SUF(const T *xr, const T *go, T *gr, const T *t, const int *offs,   \
                               double *acc, const int *aoffs, const int *q, long L, int first) {\
    for (long e = 0; e < L; e++) {                                                             \
        T v = xr[e], w = go[e];                                                                \
        if (gr) { T g = t[offs[e] + q[e]] * w; gr[e] = first ? g : gr[e] + g; }                \
        acc[aoffs[e] + q[e]] += (double)w * (double)v;                                         \
    }                                                                                          \
}                                                                                              \
static void uniform_backward_##SUF(const T *x, const T *grad, T *gx, const T *tab,             \
                                   long cstride, long dstride, int m, double lo, double inv_h, \
                                   const double *shifts, const int *rows, int D, long N,       \
                                   long C, long S, long Cf, double *gtab, const T *thr,        \
                                   int nthreads) {                                             \
    long K = m + 1, ntab = (long)D * Cf * K;                                                   \
    long R = S == 1 ? (C >= 1024 ? 1 : 1024 / C) : 1;                                          \
    long nb = S == 1 ? (N + R - 1) / R : N * C;                                                \
    int *offs = feature_offsets(C, R, S, cstride);                                             \
    int *aoffs = feature_offsets(C, R, S, cstride ? K : 0);                                    \
    _Pragma("omp parallel num_threads(nthreads)")                                             \
    {                                                                                          \
        double *lt = (double *)calloc(ntab, sizeof(double));  /* this thread's partial sums */ \
        int q[CHUNK];                                                                          \
        _Pragma("omp for schedule(static)")                                                    \
        for (long b = 0; b < nb; b++) {                                                        \
            for (int d = 0; d < D; d++) {                                                      \
                long r = rows[d], j0 = r < 0 ? -r : 0, j1 = r > 0 ? C - r : C;                \
                const T *th = thr + d * (m + 2), *td = tab + d * dstride;                      \
                double *ad = lt + d * Cf * K;                                                  \
                T l = (T)(lo + shifts[d]), ih = (T)inv_h;                                      \
                /* spans: (input start, grad start, length, offsets start, channel j) */       \
                long n0 = S == 1 ? b * R : b / C, nr = S == 1 ? (N - n0 < R ? N - n0 : R) : 1; \
                long nspan = S == 1 ? (d == 0 ? 1 : nr) : 1;                                   \
                for (long a = 0; a < nspan; a++) {                                             \
                    long xs, gs, L, os, jc = 0;                                                \
                    if (S == 1 && d == 0) { xs = n0 * C; gs = xs; L = nr * C; os = 0; }        \
                    else if (S == 1) { xs = (n0 + a) * C + j0; gs = xs + r; L = j1 - j0; os = j0; }\
                    else { jc = b % C; if (jc < j0 || jc >= j1) break;                         \
                           xs = (n0 * C + jc) * S; gs = xs + r * S; L = S; os = 0; }           \
                    const T *tt = S == 1 ? td : td + jc * cstride;                             \
                    double *aa = S == 1 ? ad : ad + (cstride ? jc * K : 0);                    \
                    for (long c0 = 0; c0 < L; c0 += CHUNK) {                                   \
                        long n = L - c0 < CHUNK ? L - c0 : CHUNK;                              \
                        span_index_##SUF(x + xs + c0, q, n, th, l, ih, m);                     \
                        sweep_##SUF(x + xs + c0, grad + gs + c0, gx ? gx + xs + c0 : NULL, tt, \
                                    offs + os + (S == 1 ? c0 : 0), aa, aoffs + os + (S == 1 ? c0 : 0),\
                                    q, n, d == 0);                                             \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        _Pragma("omp critical")                                                                \
        for (long k = 0; k < ntab; k++) gtab[k] += lt[k];                                      \
        free(lt);                                                                              \
    }                                                                                          \
    free(offs);                                                                                \
    free(aoffs);                                                                               \
}

#define DEFINE_KERNELS(T, SUF)                                                                  \
void tmaf_forward_##SUF(const T *x, T *out, const T *tab, long cstride, long dstride,         \
                        const double *bp, long bstride, int m, int uniform, double lo,         \
                        double inv_h, const double *shifts, const int *rows, int D,            \
                        long N, long C, long S, const T *thr, int nthreads) {                  \
    if (uniform) { uniform_forward_##SUF(x, out, tab, cstride, dstride, m, lo, inv_h, shifts,   \
                                         rows, D, N, C, S, thr, nthreads); return; }           \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                        \
    for (long n = 0; n < N; n++) {                                                             \
        const T *xn = x + n * C * S;                                                           \
        T *on = out + n * C * S;                                                               \
        for (int d = 0; d < D; d++) {                                                          \
            long r = rows[d], j0 = r < 0 ? -r : 0, j1 = r > 0 ? C - r : C;                    \
            double sh = shifts[d];                                                             \
            for (long j = j0; j < j1; j++) {       /* column j feeds row j + r */             \
                const T *xr = xn + j * S, *t = tab + d * dstride + j * cstride;                \
                const double *sp = bp + j * bstride;                                           \
                T *o = on + (j + r) * S;                                                       \
                if (d == 0) { /* main diagonal first: assign. Like relu: 0 * (x < 0) gives */ \
                    for (long k = 0; k < S; k++) {          /* +0, and a zero x passes as is */\
                        T v = xr[k];                                                           \
                        T y = t[BUCKET((double)v, sp, sh)] * v + (T)0;                         \
                        o[k] = v == (T)0 ? v : y;                                              \
                    }                                                                          \
                } else {                                                                       \
                    for (long k = 0; k < S; k++) {                                             \
                        T v = xr[k];                                                           \
                        o[k] += t[BUCKET((double)v, sp, sh)] * v;                              \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* gtab: [D, Cf, K] doubles, gbp: [Cb, m] doubles (or NULL); both zeroed by the caller. */      \
void tmaf_backward_##SUF(const T *x, const T *grad, T *gx, const T *tab, long cstride,        \
                         long dstride, const double *bp, long bstride, int m, int uniform,     \
                         double lo, double inv_h, const double *shifts, const int *rows,       \
                         int D, long N, long C, long S, long Cf, double *gtab, double *gbp,    \
                         long Cb, double inv_tau, const T *thr, int nthreads) {                \
    if (uniform && !gbp) { uniform_backward_##SUF(x, grad, gx, tab, cstride, dstride, m, lo,    \
                               inv_h, shifts, rows, D, N, C, S, Cf, gtab, thr, nthreads); return; }\
    long K = m + 1, ntab = (long)D * Cf * K, nbp = Cb * m;                                     \
    _Pragma("omp parallel num_threads(nthreads)")                                             \
    {                                                                                          \
        double *lt = (double *)calloc(ntab, sizeof(double));  /* this thread's partial sums */ \
        double *lb = gbp ? (double *)calloc(nbp, sizeof(double)) : NULL;                       \
        _Pragma("omp for schedule(static)")                                                    \
        for (long n = 0; n < N; n++) {                                                         \
            const T *xn = x + n * C * S, *gn = grad + n * C * S;                               \
            T *gxn = gx ? gx + n * C * S : NULL;                                               \
            for (int d = 0; d < D; d++) {                                                      \
                long r = rows[d], j0 = r < 0 ? -r : 0, j1 = r > 0 ? C - r : C;                \
                double sh = shifts[d];                                                         \
                for (long j = j0; j < j1; j++) {                                               \
                    const T *xr = xn + j * S, *go = gn + (j + r) * S;                          \
                    const T *t = tab + d * dstride + j * cstride;                              \
                    const double *sp = bp + j * bstride;                                       \
                    double *acc = lt + d * Cf * K + (cstride ? j * K : 0);                     \
                    T *gr = gxn ? gxn + j * S : NULL;                                          \
                    double *lbr = lb ? lb + (bstride ? j * m : 0) : NULL;                      \
                    for (long k = 0; k < S; k++) {                                             \
                        T v = xr[k], w = go[k];                                                \
                        int q = BUCKET((double)v, sp, sh);                                     \
                        if (gr) { if (d == 0) gr[k] = t[q] * w; else gr[k] += t[q] * w; }     \
                        double gv = (double)w * (double)v;                                     \
                        acc[q] += gv;                                                          \
                        if (lbr) { /* relaxed jumps at the two breakpoints around v */       \
                            if (q > 0) lbr[q - 1] -= gv * (double)(t[q] - t[q - 1])            \
                                                    * bump((double)v - (sp[q] + sh), inv_tau); \
                            if (q < m) lbr[q] -= gv * (double)(t[q + 1] - t[q])                \
                                                 * bump((double)v - (sp[q + 1] + sh), inv_tau); \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        _Pragma("omp critical")                                                                \
        {                                                                                      \
            for (long k = 0; k < ntab; k++) gtab[k] += lt[k];                                  \
            if (lb) for (long k = 0; k < nbp; k++) gbp[k] += lb[k];                            \
        }                                                                                      \
        free(lt);                                                                              \
        free(lb);                                                                              \
    }                                                                                          \
}

DEFINE_UNIFORM(float, f32)
DEFINE_UNIFORM(double, f64)
DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
"""
