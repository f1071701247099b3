"""C source of the fused CPU kernels for banded TMAF (the diagonal TMAF is bandwidth 0).

One pass over memory each way: forward reads x and writes out; backward reads x and grad, writes
grad_x and accumulates the values' gradient in small per-thread tables (doubles), merged at the end.
No index tensor is stored: the interval index is recomputed from x, which is cheaper than moving it.

Layout: x, out, grad are contiguous [N, C, S] (S = 1 for [N, C]; S = H*W for images).
Diagonal d has row offset rows[d]: column j of the matrix contributes to output row j + rows[d].
Its grid is the base grid shifted by shifts[d]; tables are [D, Cf, K] with K = m + 1 values and
Cf = C (per feature) or 1 (shared, cstride = 0); breakpoints are [Cb, m] (bstride = m or 0).
"""

SOURCE = r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

typedef struct {
    const double *bp;   /* [Cb, m] base breakpoints (double: comparisons are exact) */
    long bstride;       /* m, or 0 when the grid is shared */
    int m;
    int uniform;        /* 1: bp[k] = lo + k h (shared), bucket estimated by arithmetic */
    double lo, inv_h;
} grid_t;

/* Interval index j of v on grid row `s` shifted by `shift`: s[j-1] < v <= s[j] (right-closed). */
static inline int bucket(double v, const double *s, double shift, const grid_t *g) {
    int m = g->m;
    if (g->uniform) {
        double u = (v - shift - g->lo) * g->inv_h;
        int j;
        if (!(u > 0.0)) j = 0;                 /* also NaN */
        else if (u >= (double)m) j = m;
        else { j = (int)u; if ((double)j < u) j++; }   /* ceil on (0, m) */
        /* Rounding can put v one interval off next to a breakpoint: fix with exact compares. */
        if (j > 0 && v <= s[j - 1] + shift) j--;
        else if (j < m && v > s[j] + shift) j++;
        return j;
    }
    int a = 0, b = m;                          /* first k with v <= s[k]+shift, else m */
    while (a < b) { int c = (a + b) >> 1; if (s[c] + shift < v) a = c + 1; else b = c; }
    return a;
}

/* d sigmoid(u / tau) / du: the narrow kernel that stands in for the delta of a jump. */
static inline double bump(double u, double inv_tau) {
    double e = exp(-fabs(u) * inv_tau);
    return e / ((1.0 + e) * (1.0 + e)) * inv_tau;
}

#define DEFINE_KERNELS(T, SUF)                                                                  \
void tmaf_forward_##SUF(const T *x, T *out, const T *tab, long cstride, long dstride,         \
                        const double *bp, long bstride, int m, int uniform, double lo,         \
                        double inv_h, const double *shifts, const int *rows, int D,            \
                        long N, long C, long S, int nthreads) {                                \
    grid_t g = {bp, bstride, m, uniform, lo, inv_h};                                           \
    long K = m + 1;                                                                            \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(nthreads)")            \
    for (long n = 0; n < N; n++)                                                               \
        for (long i = 0; i < C; i++) {                                                         \
            T *o = out + (n * C + i) * S;                                                      \
            for (int d = 0; d < D; d++) {                                                      \
                long j = i - rows[d];              /* the column feeding row i */             \
                if (j < 0 || j >= C) continue;                                                 \
                const T *xr = x + (n * C + j) * S;                                             \
                const T *t = tab + d * dstride + j * cstride;                                  \
                const double *s = bp + j * bstride;                                            \
                double sh = shifts[d];                                                         \
                if (d == 0) { /* main diagonal first: assign; + 0 turns -0 into +0 like relu */\
                    for (long k = 0; k < S; k++) {                                             \
                        T v = xr[k];                                                           \
                        o[k] = t[bucket((double)v, s, sh, &g)] * v + (T)0;                     \
                    }                                                                          \
                } else {                                                                       \
                    for (long k = 0; k < S; k++) {                                             \
                        T v = xr[k];                                                           \
                        o[k] += t[bucket((double)v, s, sh, &g)] * v;                           \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    (void)K;                                                                                   \
}                                                                                              \
                                                                                               \
/* gtab: [D, Cf, K] doubles, gbp: [Cb, m] doubles (or NULL); both zeroed by the caller. */      \
void tmaf_backward_##SUF(const T *x, const T *grad, T *gx, const T *tab, long cstride,        \
                         long dstride, const double *bp, long bstride, int m, int uniform,     \
                         double lo, double inv_h, const double *shifts, const int *rows,       \
                         int D, long N, long C, long S, long Cf, double *gtab, double *gbp,    \
                         long Cb, double inv_tau, int nthreads) {                              \
    grid_t g = {bp, bstride, m, uniform, lo, inv_h};                                           \
    long K = m + 1;                                                                            \
    long ntab = (long)D * Cf * K, nbp = Cb * m;                                                \
    _Pragma("omp parallel num_threads(nthreads)")                                             \
    {                                                                                          \
        double *lt = (double *)calloc(ntab, sizeof(double));                                   \
        double *lb = gbp ? (double *)calloc(nbp, sizeof(double)) : NULL;                       \
        _Pragma("omp for collapse(2) schedule(static)")                                        \
        for (long n = 0; n < N; n++)                                                           \
            for (long j = 0; j < C; j++) {                                                     \
                const T *xr = x + (n * C + j) * S;                                             \
                T *gr = gx ? gx + (n * C + j) * S : NULL;                                      \
                const double *s = bp + j * bstride;                                            \
                double *lbr = lb ? lb + (bstride ? j * m : 0) : NULL;                             \
                for (int d = 0; d < D; d++) {                                                  \
                    long i = j + rows[d];          /* the row that column j feeds */          \
                    if (i < 0 || i >= C) continue;                                             \
                    const T *go = grad + (n * C + i) * S;                                      \
                    const T *t = tab + d * dstride + j * cstride;                              \
                    double *acc = lt + d * Cf * K + (cstride ? j * K : 0);                     \
                    double sh = shifts[d];                                                     \
                    for (long k = 0; k < S; k++) {                                             \
                        T v = xr[k], w = go[k];                                                \
                        int q = bucket((double)v, s, sh, &g);                                  \
                        if (gr) { if (d == 0) gr[k] = t[q] * w; else gr[k] += t[q] * w; }     \
                        double gv = (double)w * (double)v;                                     \
                        acc[q] += gv;                                                          \
                        if (lbr) { /* relaxed jumps at the two breakpoints around v */       \
                            if (q > 0) lbr[q - 1] -= gv * (double)(t[q] - t[q - 1])            \
                                                    * bump((double)v - (s[q - 1] + sh), inv_tau); \
                            if (q < m) lbr[q] -= gv * (double)(t[q + 1] - t[q])                \
                                                 * bump((double)v - (s[q] + sh), inv_tau);    \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
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
