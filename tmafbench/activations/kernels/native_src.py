"""C source of the fused CPU kernels for banded TMAF (the diagonal TMAF is bandwidth 0).

One pass over memory each way: forward reads x and writes out; backward reads x and grad, writes
grad_x and accumulates the values' gradient in small per-thread tables (doubles), merged at the end.
No index tensor is stored: the interval index is recomputed from x, which is cheaper than moving it.

Layout: x, out, grad are contiguous [N, C, S] (S = 1 for [N, C]; S = H*W for images).
Diagonal d has row offset rows[d]: column j of the matrix contributes to output row j + rows[d].
Its grid is the base grid shifted by shifts[d]; tables are [D, Cf, K] with K = m + 1 values and
Cf = C (per feature) or 1 (shared, cstride = 0); breakpoints are padded with -inf and +inf,
[Cb, m + 2] (bstride = m + 2 or 0), so that the bucket index is corrected without branches.
Work is split over samples n (one OpenMP chunk of rows each), which never race on outputs.
"""

SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Interval index j of v: sp[j] < v + ... <= sp[j+1] with sp = [-inf, s_1..s_m, +inf] + shift. */
static inline int bucket_uniform(double v, const double *sp, double shift, int m, double lo, double inv_h) {
    double u = (v - shift - lo) * inv_h;
    u = u > 0.0 ? u : 0.0;                 /* NaN -> 0; compiles to max/min, no branches */
    u = u < (double)m ? u : (double)m;
    int j = (int)u;
    j += (double)j < u;                    /* ceil: the intervals are closed on the right */
    /* Rounding can put v one interval off next to a breakpoint; exact compares fix it. */
    j -= v <= sp[j] + shift;
    j += v > sp[j + 1] + shift;
    return j;
}

static inline int bucket_search(double v, const double *sp, double shift, int m) {
    const double *s = sp + 1, *base = s;   /* count of breakpoints below v (branch-free search) */
    int n = m;
    while (n > 1) { int half = n >> 1; base = (base[half] + shift < v) ? base + half : base; n -= half; }
    return (int)(base - s) + (base[0] + shift < v);
}

#define BUCKET(v, sp, sh) (uniform ? bucket_uniform((v), (sp), (sh), m, lo, inv_h) : bucket_search((v), (sp), (sh), m))

/* d sigmoid(u / tau) / du: the narrow kernel that stands in for the delta of a jump. */
static inline double bump(double u, double inv_tau) {
    double e = exp(-fabs(u) * inv_tau);
    return e / ((1.0 + e) * (1.0 + e)) * inv_tau;
}


/* Fast path for uniform shared grids, written so that the compiler vectorises it (AVX2 gathers via
   target_clones; the default clone runs anywhere). thr = breakpoints + shift in T, rounded down so
   that for every T value v: v <= thr[j] exactly when v <= s_j + shift. t advances by tstep per
   element: the feature's row for [N, C] spans, 0 within one channel of an image. */
#define DEFINE_SPANS(T, SUF)                                                                    \
__attribute__((target_clones("avx2", "default")))                                              \
void span_forward_##SUF(const T *x, T *o, const T *t, long tstep, long L, const T *thr,       \
                        T lo, T inv_h, int m, int assign) {                                    \
    for (long e = 0; e < L; e++) {                                                             \
        T v = x[e];                                                                            \
        T u = (v - lo) * inv_h;                                                                \
        u = u > (T)0 ? u : (T)0;                                                               \
        u = u < (T)m ? u : (T)m;                                                               \
        int j = (int)u;                                                                        \
        j += (T)j < u;                                                                         \
        j -= v <= thr[j];                                                                      \
        j += v > thr[j + 1];                                                                   \
        T y = t[e * tstep + j] * v;                                                            \
        if (assign) o[e] = v == (T)0 ? v : y + (T)0;                                           \
        else o[e] += y;                                                                        \
    }                                                                                          \
}                                                                                              \
__attribute__((target_clones("avx2", "default")))                                              \
void span_index_##SUF(const T *x, int *q, long L, const T *thr, T lo, T inv_h, int m) {        \
    for (long e = 0; e < L; e++) {                                                             \
        T v = x[e];                                                                            \
        T u = (v - lo) * inv_h;                                                                \
        u = u > (T)0 ? u : (T)0;                                                               \
        u = u < (T)m ? u : (T)m;                                                               \
        int j = (int)u;                                                                        \
        j += (T)j < u;                                                                         \
        j -= v <= thr[j];                                                                      \
        j += v > thr[j + 1];                                                                   \
        q[e] = j;                                                                              \
    }                                                                                          \
}
DEFINE_SPANS(float, f32)
DEFINE_SPANS(double, f64)
#define CHUNK 512

#define DEFINE_KERNELS(T, SUF)                                                                  \
void tmaf_forward_##SUF(const T *x, T *out, const T *tab, long cstride, long dstride,         \
                        const double *bp, long bstride, int m, int uniform, double lo,         \
                        double inv_h, const double *shifts, const int *rows, int D,            \
                        long N, long C, long S, const T *thr, int nthreads) {                  \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads)")                        \
    for (long n = 0; n < N; n++) {                                                             \
        const T *xn = x + n * C * S;                                                           \
        T *on = out + n * C * S;                                                               \
        for (int d = 0; d < D; d++) {                                                          \
            long r = rows[d], j0 = r < 0 ? -r : 0, j1 = r > 0 ? C - r : C;                    \
            double sh = shifts[d];                                                             \
            if (uniform && S == 1) {   /* [N, C]: one span over the features of sample n */    \
                span_forward_##SUF(xn + j0, on + j0 + r, tab + d * dstride + j0 * cstride,    \
                                   cstride, j1 - j0, thr + d * (m + 2), (T)(lo + sh),          \
                                   (T)inv_h, m, d == 0);                                       \
                continue;                                                                      \
            }                                                                                  \
            for (long j = j0; j < j1; j++) {       /* column j feeds row j + r */             \
                const T *xr = xn + j * S, *t = tab + d * dstride + j * cstride;                \
                if (uniform) {         /* one span per channel: a fixed table row */           \
                    span_forward_##SUF(xr, on + (j + r) * S, t, 0, S, thr + d * (m + 2),      \
                                       (T)(lo + sh), (T)inv_h, m, d == 0);                     \
                    continue;                                                                  \
                }                                                                              \
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
    long K = m + 1, ntab = (long)D * Cf * K, nbp = Cb * m;                                     \
    _Pragma("omp parallel num_threads(nthreads)")                                             \
    {                                                                                          \
        double *lt = (double *)calloc(ntab, sizeof(double));  /* this thread's partial sums */ \
        double *lb = gbp ? (double *)calloc(nbp, sizeof(double)) : NULL;                       \
        int q[CHUNK];                                                                          \
        _Pragma("omp for schedule(static)")                                                    \
        for (long n = 0; n < N; n++) {                                                         \
            const T *xn = x + n * C * S, *gn = grad + n * C * S;                               \
            T *gxn = gx ? gx + n * C * S : NULL;                                               \
            for (int d = 0; d < D; d++) {                                                      \
                long r = rows[d], j0 = r < 0 ? -r : 0, j1 = r > 0 ? C - r : C;                \
                double sh = shifts[d];                                                         \
                if (uniform && !lb) {  /* indices by the vectorised span, then a scalar sweep */\
                    long span = S == 1 ? j1 - j0 : S, rowsn = S == 1 ? 1 : j1 - j0;            \
                    for (long a = 0; a < rowsn; a++) {                                         \
                        long jr = j0 + a;            /* first column of this span */           \
                        const T *xr = xn + jr * S, *go = gn + (jr + r) * S;                    \
                        T *gr = gxn ? gxn + jr * S : NULL;                                     \
                        const T *t = tab + d * dstride + jr * cstride;                         \
                        double *acc = lt + d * Cf * K + jr * (cstride ? K : 0);                \
                        long step = S == 1 ? cstride : 0, astep = S == 1 && cstride ? K : 0;   \
                        for (long b0 = 0; b0 < span; b0 += CHUNK) {                            \
                            long L = span - b0 < CHUNK ? span - b0 : CHUNK;                    \
                            span_index_##SUF(xr + b0, q, L, thr + d * (m + 2), (T)(lo + sh),   \
                                             (T)inv_h, m);                                     \
                            for (long e = 0; e < L; e++) {                                     \
                                long f = b0 + e;                                               \
                                T v = xr[f], w = go[f];                                        \
                                T tv = t[f * step + q[e]];                                     \
                                if (gr) { if (d == 0) gr[f] = tv * w; else gr[f] += tv * w; }  \
                                acc[f * astep + q[e]] += (double)w * (double)v;                \
                            }                                                                  \
                        }                                                                      \
                    }                                                                          \
                    continue;                                                                  \
                }                                                                              \
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

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
"""
