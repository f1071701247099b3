// Fused CPU kernels for banded TMAF, registered as PyTorch operators (torch.ops.tmafbench.*).
//
// Operators: tmaf (forward with its backward registered in C++, so that a call costs no Python),
// and its two halves tmaf_forward / tmaf_backward, which write into tensors the caller provides.
// Their schemas are declared once, in tmafbench_register() at the end; PyTorch checks them against
// the C++ signatures when the library registers and against every call's arguments, and the
// TORCH_CHECKs below check shapes and dtypes. Every allocation raises a Python error when memory
// runs out: tensors through PyTorch's allocator, the small per-thread scratch through zeros().
//
// Exact semantics (DESIGN.md section 3; reference.py computes the same bits with PyTorch ops):
// - Interval index of v on diagonal d: q = #{k : thr[d][k] < v} (NaN: q = m). thr holds the
//   shifted breakpoints fl64(s_k + shift_d) rounded down to the input dtype, which makes this
//   comparison exact for real numbers: v <= thr exactly when v <= s_k + shift_d.
// - Output row i = sum over diagonals d of D_d[j](v_j) v_j with j = i - rows[d], in diagonal
//   order; the main diagonal comes first and maps a zero input to itself (like relu).
// - grad_x[j] = sum over d (in order) of D_d[j](v_j) grad[j + rows[d]]; diagonals that point
//   outside [0, C) contribute nothing.
// - The values' gradient, and the relaxed breakpoint gradient, are sums in double of per-element
//   terms in a fixed order that does not depend on the thread count: the samples are cut into
//   chunks of `chunk` samples; inside a chunk, element (n, c, s) goes to lane (c*S + s) % LANES,
//   and each lane sums its terms over the diagonals, then the samples, channels and positions, in
//   order; a chunk's sum is the lanes added in order, and the chunks are added in order.
//   Accumulators start at +0.0 and never become -0.0, so adding an empty lane (+0.0) is exact.
//
// Layouts: x, out, grad are contiguous [N, C, S]. "Plane" mode (S > 1) works on whole channel
// planes; "rows" mode (S == 1) on runs of rows, where the column of element e is e mod C.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <new>
#include <vector>

// Vectorised loops get an AVX-512 and an AVX2 clone on x86-64, chosen at load time by the CPU's
// features (native.py adds -mtune=haswell there: GCC's generic tuning emulates table gathers with
// scalar loads); elsewhere (arm64: NEON is the baseline) the default vectorisation applies.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TMAF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#elif defined(__x86_64__) && defined(__clang__)
#define TMAF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define TMAF_CLONES
#endif
#define TMAF_INLINE inline __attribute__((always_inline))

using at::Tensor;

namespace {

constexpr int64_t BLOCK = 512;             // elements per inner block: its scratch stays in L1
constexpr int32_t LANES = 8;               // partial sums per gradient entry (spec.LANES)
constexpr int64_t PARALLEL_MIN = 1 << 16;  // below this many elements one thread is faster

// ---- interval index --------------------------------------------------------------------------

// q = #{k < m : thr[k] < v}; NaN counts as above every breakpoint (as torch.bucketize does).
template <typename T>
TMAF_INLINE int32_t search(T v, const T* thr, int32_t m) {
  if (v != v) return m;
  int32_t lo = 0, n = m;
  while (n > 0) {
    int32_t half = n >> 1;
    if (thr[lo + half] < v) {
      lo += half + 1;
      n -= half + 1;
    } else {
      n = half;
    }
  }
  return lo;
}

// The loops below are written for the vectoriser: restrict pointers, int32 indices, selects.

// The same count for L inputs at once, branch-free (the bucket index's fallback): every lane takes
// the same ceil(log2(m)) + 1 steps (each a gathered comparison), so the loop over the inputs vectorises. thr[rowoff[e] + k]
// is input e's threshold k (rowoff null: one row for all). Khuong and Morin's layout-free
// lower bound: the count stays within [base, base + n] while n halves.
template <typename T>
TMAF_INLINE void search_body(const T* __restrict x, int32_t* __restrict q, int64_t L, const T* __restrict thr,
                             const int32_t* __restrict rowoff, int32_t m) {
  for (int64_t e = 0; e < L; e++) q[e] = rowoff ? rowoff[e] : 0;
  for (int32_t n = m; n > 1;) {
    const int32_t half = n >> 1;
    for (int64_t e = 0; e < L; e++) {
      const int32_t b = q[e];
      q[e] = thr[b + half] < x[e] ? b + half : b;
    }
    n -= half;
  }
  for (int64_t e = 0; e < L; e++) {
    const int32_t b = q[e];
    const int32_t k = b - (rowoff ? rowoff[e] : 0) + (thr[b] < x[e]);
    q[e] = x[e] != x[e] ? m : k;
  }
}

// Other grids (explicit or trainable breakpoints): a bucket table first. A diagonal's rows share
// one scale: the bucket of v is b(v) = floor(clamp((v - lo) * inv_w, -1, B)) + 1, in 0..B+1,
// computed in T; it never decreases as v grows (every step rounds monotonically), whatever lo and
// inv_w > 0 are. So every threshold t with b(t) < b(v) lies below v and every one with b(t) > b(v)
// above it, and when at most one threshold of the row shares v's bucket, q = e + [thr[e] < v] with
// e = #{t : b(t) < b(v)}, the row's table entry (the row's next threshold, or +inf, when none
// shares it). Entries of buckets that hold two or more thresholds are -1: the block then takes
// the search. Two table reads per input instead of the search's ceil(log2 m) + 1.
constexpr int32_t BUCKETS_PER_INTERVAL = 2;

template <typename T>
TMAF_INLINE int32_t bucket_of(T v, T lo, T inv_w, T top) {
  T u = (v - lo) * inv_w;
  u = u >= T(-1) ? u : T(-1);  // (NaN -> -1: a valid bucket; NaN is handled by the caller)
  u = u <= top ? u : top;
  return (int32_t)std::floor(u) + 1;
}

// thr: the padded threshold row (index 0 is -inf), bk: the row's B + 2 bucket entries; throff and
// bkoff (null: one row for all) move them to each input's own row. Returns nonzero when some
// input's bucket holds several thresholds (its q is then -1).
template <typename T>
TMAF_INLINE int32_t bucket_index_body(const T* __restrict x, int32_t* __restrict q, int64_t L,
                                      const T* __restrict thr, const int32_t* __restrict throff,
                                      const int32_t* __restrict bk, const int32_t* __restrict bkoff, int32_t m,
                                      T lo, T inv_w, T top) {
  int32_t multi = 0;
  for (int64_t e = 0; e < L; e++) {
    const T v = x[e];
    const int32_t k = bk[(bkoff ? bkoff[e] : 0) + bucket_of(v, lo, inv_w, top)];
    const int32_t many = k < 0;
    const int32_t kk = many ? 0 : k;
    int32_t r = kk + (thr[(throff ? throff[e] : 0) + kk + 1] < v);
    r = v != v ? m : r;
    q[e] = many ? -1 : r;
    multi |= many;
  }
  return multi;
}

// Uniform grids: the interval index is ceil(u) clamped to [0, m], with u = (v - lo) / h evaluated
// in T and clamped to [-1/2, m + 1/2], wherever u is farther than tol(u) = tol0 + tol1 (u + 1/2)
// from an integer (spec.grid_tensors proves the estimate exact there: tol bounds the rounding of u
// plus the distance of the float64 breakpoints from lo + k h). `Uniform` holds one diagonal's lo
// and 1/h in T and a single bound tlo >= tol(u) for every u of the range, with thi <= 1 - tlo:
// an input is `far` when tlo < ceil(u) - u < thi. The others (and NaN) take the search, so the
// result is exact either way; with tol0 + tol1 (m + 1) < 1/4 they are a tiny fraction.
template <typename T>
struct Uniform {
  T lo, inv_h, top, mf, tlo, thi;
};

template <typename T>
TMAF_INLINE int32_t uniform_index(T v, const Uniform<T>& g, int32_t& far) {
  T u = (v - g.lo) * g.inv_h;
  u = u <= T(-0.5) ? T(-0.5) : u;  // clamp to [-1/2, m + 1/2]; NaN stays NaN
  u = u >= g.top ? g.top : u;
  T c = std::ceil(u);
  const T frac = c - u;  // exact
  far = (frac > g.tlo) & (frac < g.thi);  // false for NaN
  // Clamp to [0, m] without `far`, so that the table read depends on nothing but the index
  // (GCC otherwise turns it into a masked gather that it cannot vectorise); NaN gives 0.
  c = c >= T(0) ? c : T(0);
  c = c < g.mf ? c : g.mf;
  return (int32_t)c;
}

// ---- forward passes over one block ------------------------------------------------------------
// cb[e]: the offset of element e's table row (column * K for per-feature tables in rows mode, else
// 0: the table pointer is then the plane's own row); col[e]: its column. A column j is valid when
// 0 <= j < C. The *_u loops compute the index themselves (uniform grids): entries that need the
// search get q[e] = -1 and keep their previous output; the others get their index. They return
// nonzero when some entry needs the search.

// Main diagonal: o = t[q] v, with +0 for 0 * negative and a zero input passed through.
template <typename T>
TMAF_INLINE T main_term(T v, T a) {
  T y = a * v + T(0);
  return v == T(0) ? v : y;
}

template <typename T>
TMAF_INLINE void fwd_main_body(const T* __restrict x, T* __restrict o, const T* __restrict t,
                               const int32_t* __restrict cb, const int32_t* __restrict q, int64_t L) {
  for (int64_t e = 0; e < L; e++) o[e] = main_term(x[e], t[cb[e] + q[e]]);
}

template <typename T>
TMAF_INLINE int32_t fwd_main_u_body(const T* __restrict x, T* __restrict o, const T* __restrict t,
                                    const int32_t* __restrict cb, int32_t* __restrict q, int64_t L, Uniform<T> g) {
  int32_t near = 0;
  for (int64_t e = 0; e < L; e++) {
    int32_t far;
    const int32_t k = uniform_index(x[e], g, far);
    o[e] = main_term(x[e], t[cb[e] + k]);
    q[e] = k | (far - 1);
    near |= far ^ 1;
  }
  return near;
}

// Off-diagonal, output-aligned: xa[e] is the input of column col[e] + shift, which feeds o[e].
template <typename T>
TMAF_INLINE void fwd_off_body(const T* __restrict xa, T* __restrict o, const T* __restrict t,
                              const int32_t* __restrict col, int32_t shift, int32_t C, int32_t cstride,
                              const int32_t* __restrict q, int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    int32_t j = col[e] + shift;
    int32_t ok = (j >= 0) & (j < C);
    T add = t[(j & -ok) * cstride + q[e]] * xa[e];
    T cur = o[e];
    T sum = cur + add;
    o[e] = ok ? sum : cur;
  }
}

template <typename T>
TMAF_INLINE int32_t fwd_off_u_body(const T* __restrict xa, T* __restrict o, const T* __restrict t,
                                   const int32_t* __restrict col, int32_t shift, int32_t C, int32_t cstride,
                                   int32_t* __restrict q, int64_t L, Uniform<T> g) {
  int32_t near = 0;
  for (int64_t e = 0; e < L; e++) {
    int32_t j = col[e] + shift;
    int32_t ok = (j >= 0) & (j < C);
    int32_t far;
    const int32_t k = uniform_index(xa[e], g, far);
    T add = t[(j & -ok) * cstride + k] * xa[e];
    T cur = o[e];
    T sum = cur + add;
    o[e] = (ok & far) ? sum : cur;
    q[e] = (k | (far - 1)) & -ok;  // -1 only for valid entries that need the search
    near |= ok & (far ^ 1);
  }
  return near;
}

// ---- backward passes over one block -----------------------------------------------------------
// One vectorised pass computes grad_x, the terms p = grad * x (double) and each element's
// accumulator index ab[e] - abase + q (ab[e] = column * astride + lane * lstride), or `trash` when
// the element's row does not exist; a scalar pass then adds the terms (acc[idx] += p).

template <typename T>
TMAF_INLINE void gx_main_body(const T* __restrict x, const T* __restrict g, T* __restrict gx,
                              const T* __restrict t, const int32_t* __restrict cb, const int32_t* __restrict q,
                              const int32_t* __restrict ab, int32_t abase, double* __restrict p,
                              int32_t* __restrict idx, int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    T w = g[e];
    int32_t k = q[e];
    gx[e] = t[cb[e] + k] * w;
    p[e] = (double)w * (double)x[e];
    idx[e] = ab[e] - abase + k;
  }
}

template <typename T>
TMAF_INLINE int32_t gx_main_u_body(const T* __restrict x, const T* __restrict g, T* __restrict gx,
                                   const T* __restrict t, const int32_t* __restrict cb, int32_t* __restrict q,
                                   const int32_t* __restrict ab, int32_t abase, double* __restrict p,
                                   int32_t* __restrict idx, int64_t L, Uniform<T> gr) {
  int32_t near = 0;
  for (int64_t e = 0; e < L; e++) {
    T v = x[e], w = g[e];
    int32_t far;
    const int32_t k = uniform_index(v, gr, far);
    gx[e] = t[cb[e] + k] * w;
    p[e] = (double)w * (double)v;
    idx[e] = ab[e] - abase + k;
    q[e] = k | (far - 1);
    near |= far ^ 1;
  }
  return near;
}

// Off-diagonal, input-aligned: ga[e] is the gradient of row col[e] + r.
template <typename T>
TMAF_INLINE void gx_off_body(const T* __restrict x, const T* __restrict ga, T* __restrict gx,
                             const T* __restrict t, const int32_t* __restrict cb, const int32_t* __restrict col,
                             const int32_t* __restrict q, const int32_t* __restrict ab, int32_t abase,
                             double* __restrict p, int32_t* __restrict idx, int32_t r, int32_t C, int32_t trash,
                             int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    T w = ga[e];
    int32_t j = col[e], k = q[e];
    int32_t ok = (j + r >= 0) & (j + r < C);
    T cur = gx[e];
    T sum = cur + t[cb[e] + k] * w;
    gx[e] = ok ? sum : cur;
    p[e] = (double)w * (double)x[e];
    int32_t at = ab[e] - abase + k;
    idx[e] = trash + ((at - trash) & -ok);
  }
}

template <typename T>
TMAF_INLINE int32_t gx_off_u_body(const T* __restrict x, const T* __restrict ga, T* __restrict gx,
                                  const T* __restrict t, const int32_t* __restrict cb, const int32_t* __restrict col,
                                  int32_t* __restrict q, const int32_t* __restrict ab, int32_t abase,
                                  double* __restrict p, int32_t* __restrict idx, int32_t r, int32_t C, int32_t trash,
                                  int64_t L, Uniform<T> gr) {
  int32_t near = 0;
  for (int64_t e = 0; e < L; e++) {
    T v = x[e], w = ga[e];
    int32_t j = col[e];
    int32_t ok = (j + r >= 0) & (j + r < C);
    int32_t far;
    const int32_t k = uniform_index(v, gr, far);
    T cur = gx[e];
    T sum = cur + t[cb[e] + k] * w;
    gx[e] = (ok & far) ? sum : cur;
    p[e] = (double)w * (double)v;
    int32_t at = ab[e] - abase + k;
    idx[e] = trash + ((at - trash) & -ok);
    q[e] = (k | (far - 1)) & -ok;  // -1 only for valid entries that need the search
    near |= ok & (far ^ 1);
  }
  return near;
}

// The relaxed breakpoint gradient (tmaf.py): the term of one element for breakpoint k at
// position pos: -(g x) (t_{k+1} - t_k) kernel(v - pos), kernel(u) = kc (1 - (u/a)^2)^2 on |u| < a.
TMAF_INLINE double bump(double u, double inv_a, double kc) {
  double z = u * inv_a;
  double w = 1.0 - z * z;
  return std::fabs(z) < 1.0 ? (kc * w) * w : 0.0;
}

// Both breakpoint terms of every element (left: breakpoint q - 1, right: breakpoint q), without
// their sign; entries without such a breakpoint get a term they never use. pr[e] is the element's
// row of float64 positions (its offset into pos).
template <typename T>
TMAF_INLINE void bump_body(const T* __restrict x, const T* __restrict t, const int32_t* __restrict cb,
                           const int32_t* __restrict q, const double* __restrict p, const double* __restrict pos,
                           const int32_t* __restrict prow, int32_t m, double inv_a, double kc,
                           double* __restrict left, double* __restrict right, int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    const int32_t k = q[e];
    const int32_t kl = k > 0 ? k - 1 : 0, kr = k < m ? k : m - 1, kn = k < m ? k + 1 : m;
    const int32_t tb = cb[e], pb = prow[e];
    const double v = (double)x[e], pe = p[e];
    const T here = t[tb + k];
    const double jl = (double)(here - t[tb + kl]), jr = (double)(t[tb + kn] - here);
    left[e] = (pe * jl) * bump(v - pos[pb + kl], inv_a, kc);
    right[e] = (pe * jr) * bump(v - pos[pb + kr], inv_a, kc);
  }
}

// Not inlined: as a function of its own the pointers stay in registers (inlined, GCC reloaded them
// from the stack on every element for fear of aliasing).
__attribute__((noinline)) void accumulate(double* __restrict acc, const int32_t* __restrict idx,
                                          const double* __restrict p, int64_t L) {
  for (int64_t e = 0; e < L; e++) acc[idx[e]] += p[e];
}

// `accumulate`, and the breakpoint terms into bacc[bb[e] - bbase + k]: left (k = q - 1) then right
// (k = q), each where that breakpoint exists, for the entries whose row exists (idx != trash); in
// element order (the two arrays are apart, so each keeps the order of its own sums).
__attribute__((noinline)) void accumulate_both(double* __restrict acc, const int32_t* __restrict idx,
                                               const double* __restrict p, double* __restrict bacc,
                                               const int32_t* __restrict bb, int32_t bbase, const int32_t* __restrict q,
                                               int32_t trash, int32_t m, const double* __restrict left,
                                               const double* __restrict right, int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    acc[idx[e]] += p[e];
    if (idx[e] == trash) continue;
    const int32_t k = q[e];
    double* b = bacc + bb[e] - bbase;
    if (k > 0) b[k - 1] -= left[e];
    if (k < m) b[k] -= right[e];
  }
}

}  // namespace

// Non-template entry points, so that each can carry target_clones, and Loops<T> naming them.
namespace {
template <typename T>
struct Loops;
}  // namespace

#define TMAF_DEFINE_LOOPS(T, SUF)                                                                          \
  TMAF_CLONES void tmaf_search_##SUF(const T* x, int32_t* q, int64_t L, const T* thr, const int32_t* rowoff, \
                                     int32_t m) {                                                          \
    search_body<T>(x, q, L, thr, rowoff, m);                                                               \
  }                                                                                                        \
  TMAF_CLONES int32_t tmaf_bucket_##SUF(const T* x, int32_t* q, int64_t L, const T* thr, const int32_t* throff, \
                                        const int32_t* bk, const int32_t* bkoff, int32_t m, T lo, T inv_w, T top) { \
    return bucket_index_body<T>(x, q, L, thr, throff, bk, bkoff, m, lo, inv_w, top);                      \
  }                                                                                                        \
  TMAF_CLONES void tmaf_fwd_main_##SUF(const T* x, T* o, const T* t, const int32_t* cb, const int32_t* q,  \
                                       int64_t L) {                                                        \
    fwd_main_body<T>(x, o, t, cb, q, L);                                                                   \
  }                                                                                                        \
  TMAF_CLONES int32_t tmaf_fwd_main_u_##SUF(const T* x, T* o, const T* t, const int32_t* cb, int32_t* q,  \
                                            int64_t L, Uniform<T> g) {                                     \
    return fwd_main_u_body<T>(x, o, t, cb, q, L, g);                                                       \
  }                                                                                                        \
  TMAF_CLONES void tmaf_fwd_off_##SUF(const T* xa, T* o, const T* t, const int32_t* col, int32_t shift,    \
                                      int32_t C, int32_t cstride, const int32_t* q, int64_t L) {           \
    fwd_off_body<T>(xa, o, t, col, shift, C, cstride, q, L);                                               \
  }                                                                                                        \
  TMAF_CLONES int32_t tmaf_fwd_off_u_##SUF(const T* xa, T* o, const T* t, const int32_t* col, int32_t shift, \
                                           int32_t C, int32_t cstride, int32_t* q, int64_t L, Uniform<T> g) { \
    return fwd_off_u_body<T>(xa, o, t, col, shift, C, cstride, q, L, g);                                   \
  }                                                                                                        \
  TMAF_CLONES void tmaf_gx_main_##SUF(const T* x, const T* g, T* gx, const T* t, const int32_t* cb,        \
                                      const int32_t* q, const int32_t* ab, int32_t abase, double* p,       \
                                      int32_t* idx, int64_t L) {                                           \
    gx_main_body<T>(x, g, gx, t, cb, q, ab, abase, p, idx, L);                                             \
  }                                                                                                        \
  TMAF_CLONES int32_t tmaf_gx_main_u_##SUF(const T* x, const T* g, T* gx, const T* t, const int32_t* cb,   \
                                           int32_t* q, const int32_t* ab, int32_t abase, double* p,        \
                                           int32_t* idx, int64_t L, Uniform<T> gr) {                       \
    return gx_main_u_body<T>(x, g, gx, t, cb, q, ab, abase, p, idx, L, gr);                                \
  }                                                                                                        \
  TMAF_CLONES void tmaf_gx_off_##SUF(const T* x, const T* ga, T* gx, const T* t, const int32_t* cb,        \
                                     const int32_t* col, const int32_t* q, const int32_t* ab, int32_t abase, \
                                     double* p, int32_t* idx, int32_t r, int32_t C, int32_t trash, int64_t L) { \
    gx_off_body<T>(x, ga, gx, t, cb, col, q, ab, abase, p, idx, r, C, trash, L);                           \
  }                                                                                                        \
  TMAF_CLONES int32_t tmaf_gx_off_u_##SUF(const T* x, const T* ga, T* gx, const T* t, const int32_t* cb,   \
                                          const int32_t* col, int32_t* q, const int32_t* ab, int32_t abase, \
                                          double* p, int32_t* idx, int32_t r, int32_t C, int32_t trash,    \
                                          int64_t L, Uniform<T> gr) {                                      \
    return gx_off_u_body<T>(x, ga, gx, t, cb, col, q, ab, abase, p, idx, r, C, trash, L, gr);              \
  }                                                                                                        \
  TMAF_CLONES void tmaf_bump_##SUF(const T* x, const T* t, const int32_t* cb, const int32_t* q,             \
                                   const double* p, const double* pos, const int32_t* prow, int32_t m,     \
                                   double inv_a, double kc, double* left, double* right, int64_t L) {      \
    bump_body<T>(x, t, cb, q, p, pos, prow, m, inv_a, kc, left, right, L);                                 \
  }                                                                                                        \
  namespace {                                                                                              \
  template <>                                                                                              \
  struct Loops<T> {                                                                                        \
    static constexpr auto search = tmaf_search_##SUF;                                                      \
    static constexpr auto bucket = tmaf_bucket_##SUF;                                                      \
    static constexpr auto fwd_main = tmaf_fwd_main_##SUF;                                                  \
    static constexpr auto fwd_main_u = tmaf_fwd_main_u_##SUF;                                              \
    static constexpr auto fwd_off = tmaf_fwd_off_##SUF;                                                    \
    static constexpr auto fwd_off_u = tmaf_fwd_off_u_##SUF;                                                \
    static constexpr auto gx_main = tmaf_gx_main_##SUF;                                                    \
    static constexpr auto gx_main_u = tmaf_gx_main_u_##SUF;                                                \
    static constexpr auto gx_off = tmaf_gx_off_##SUF;                                                      \
    static constexpr auto gx_off_u = tmaf_gx_off_u_##SUF;                                                  \
    static constexpr auto bump = tmaf_bump_##SUF;                                                          \
  };                                                                                                       \
  }  // namespace

TMAF_DEFINE_LOOPS(float, f32)
TMAF_DEFINE_LOOPS(double, f64)

namespace {

// n doubles set to +0; an allocation failure raises a Python RuntimeError.
std::vector<double> zeros(int64_t n) {
  std::vector<double> v;
  try {
    v.assign((size_t)n, 0.0);
  } catch (const std::bad_alloc&) {
    TORCH_CHECK(false, "tmaf: out of memory allocating ", n * 8, " bytes of kernel scratch");
  }
  return v;
}

void run_tasks(int64_t ntasks, int64_t numel, const std::function<void(int64_t, int64_t)>& f) {
  if (numel < PARALLEL_MIN || ntasks <= 1) {
    f(0, ntasks);
  } else {
    at::parallel_for(0, ntasks, 1, f);
  }
}

// ---- the call's geometry and grids -------------------------------------------------------------

// The largest T <= v and the smallest T >= v (v a double).
template <typename T>
T round_down(double v) {
  T f = (T)v;
  return (double)f > v ? std::nextafter(f, -std::numeric_limits<T>::infinity()) : f;
}
template <typename T>
T round_up(double v) {
  T f = (T)v;
  return (double)f < v ? std::nextafter(f, std::numeric_limits<T>::infinity()) : f;
}

template <typename T>
struct Call {
  int64_t N, C, S, D, Cf, K, Cb;
  int32_t m;
  const T* tab;          // [D, Cf, K]
  const T* thr;          // [D, Cb, m + 2], padded with -inf and +inf
  const int64_t* rows;   // [D]
  std::vector<Uniform<T>> uniform;  // [D] (uniform grids) or empty
  // Per-element patterns, read from an offset (see col/lane below): column, lane, table row offset
  // (column * K for per-feature tables in rows mode, else 0) and threshold row offset (rows mode
  // with per-feature breakpoints: column * (m + 2)).
  std::vector<int32_t> colpat, lanepat, cbpat, rowpat;
  // Other grids: B buckets per row, the table [D, Cb, B + 2], each diagonal's (lo, inv_w), and in
  // rows mode with per-feature breakpoints the per-element row offset into the table.
  int32_t B = 0;
  std::vector<int32_t> buckets, bkpat;
  std::vector<T> bscale;

  bool plane() const { return S > 1; }
  int32_t cstride() const { return Cf > 1 && !plane() ? (int32_t)K : 0; }
  const T* table(int64_t d) const { return tab + d * Cf * K; }
  const T* padded(int64_t d, int64_t row) const { return thr + (d * Cb + row) * (m + 2); }
  // The patterns for a block starting at global element e (rows mode) or at plane position e.
  int64_t col_at(int64_t e) const { return plane() ? 0 : e % C; }
  int64_t lane_at(int64_t e) const { return plane() ? e % LANES : e % C; }
  const int32_t* col(int64_t e) const { return colpat.data() + col_at(e); }
  const int32_t* lane(int64_t e) const { return lanepat.data() + lane_at(e); }
  const int32_t* cb(int64_t e) const { return cbpat.data() + col_at(e); }

  // q for L inputs of diagonal d by search (any grid). bp_row: the breakpoint row for all of them,
  // or -1 when it is each element's own column (per-feature breakpoints in rows mode; the block
  // then starts at the element whose column pattern starts at `e`).
  void index(int64_t d, const T* x, int32_t* q, int64_t L, int64_t bp_row, int64_t e) const {
    const int64_t row = bp_row >= 0 ? bp_row : 0;
    const int32_t* throff = bp_row >= 0 ? nullptr : rowpat.data() + col_at(e);
    const int32_t* bk = buckets.data() + (d * Cb + row) * (B + 2);
    if (Loops<T>::bucket(x, q, L, padded(d, row), throff, bk, bp_row >= 0 ? nullptr : bkpat.data() + col_at(e), m,
                         bscale[2 * d], bscale[2 * d + 1], T(B)))
      Loops<T>::search(x, q, L, padded(d, row) + 1, throff, m);
  }

  // The bucket tables of every row (see bucket_index_body).
  void build_buckets() {
    B = BUCKETS_PER_INTERVAL * (m + 1);
    buckets.assign(D * Cb * (B + 2), 0);
    bscale.resize(2 * D);
    std::vector<int32_t> count(B + 2);
    for (int64_t d = 0; d < D; d++) {
      double lo = std::numeric_limits<double>::infinity(), hi = -lo;
      for (int64_t row = 0; row < Cb; row++) {
        const T* t = padded(d, row) + 1;
        if (std::isfinite((double)t[0])) lo = std::min(lo, (double)t[0]);
        if (std::isfinite((double)t[m - 1])) hi = std::max(hi, (double)t[m - 1]);
      }
      const T lo_t = std::isfinite(lo) ? (T)lo : T(0);
      const double scale = hi > lo ? B / (hi - lo) : 1.0;
      const T inv_w = std::isfinite((T)scale) && (T)scale > T(0) ? (T)scale : T(1);
      bscale[2 * d] = lo_t, bscale[2 * d + 1] = inv_w;
      for (int64_t row = 0; row < Cb; row++) {
        const T* t = padded(d, row) + 1;
        std::fill(count.begin(), count.end(), 0);
        for (int32_t k = 0; k < m; k++) count[bucket_of(t[k], lo_t, inv_w, T(B))]++;
        int32_t* entry = buckets.data() + (d * Cb + row) * (B + 2);
        for (int32_t b = 0, below = 0; b < B + 2; below += count[b], b++) entry[b] = count[b] >= 2 ? -1 : below;
      }
    }
  }

  // Entries of a uniform pass that need the search (q < 0): their index.
  void research(int64_t d, const T* x, int32_t* q, int64_t L) const {
    const T* t = padded(d, 0) + 1;
    for (int64_t e = 0; e < L; e++)
      if (q[e] < 0) q[e] = search(x[e], t, m);
  }
};

template <typename T>
Call<T> make_call(const Tensor& x, const Tensor& tables, const Tensor& thresholds, c10::ArrayRef<double> lows,
                  c10::ArrayRef<double> tols, double inv_h, c10::ArrayRef<int64_t> rows) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "tmaf: x must be a contiguous CPU [N, C, S] tensor");
  TORCH_CHECK(tables.dim() == 3 && tables.is_contiguous() && tables.scalar_type() == x.scalar_type(),
              "tmaf: tables must be contiguous [D, Cf, K] in x's dtype");
  TORCH_CHECK(thresholds.dim() == 3 && thresholds.is_contiguous() && thresholds.scalar_type() == x.scalar_type(),
              "tmaf: thresholds must be contiguous [D, Cb, m + 2] in x's dtype");
  Call<T> c;
  c.N = x.size(0), c.C = x.size(1), c.S = x.size(2);
  c.D = tables.size(0), c.Cf = tables.size(1), c.K = tables.size(2), c.Cb = thresholds.size(1);
  c.m = (int32_t)(c.K - 1);
  TORCH_CHECK(c.K >= 2 && c.K < (int64_t(1) << 30), "tmaf: tables need between 2 and 2^30 values per row");
  TORCH_CHECK(thresholds.size(0) == c.D && thresholds.size(2) == c.m + 2, "tmaf: thresholds must be [D, Cb, K + 1]");
  TORCH_CHECK(c.Cf == 1 || c.Cf == c.C, "tmaf: tables must have 1 or C rows");
  TORCH_CHECK(c.Cb == 1 || c.Cb == c.C, "tmaf: thresholds must have 1 or C rows");
  TORCH_CHECK(c.C * c.K * c.D * LANES < (int64_t(1) << 31) && c.Cb * (c.m + 2) < (int64_t(1) << 31),
              "tmaf: too many channels times values (the kernel indexes tables with 32-bit integers)");
  TORCH_CHECK((int64_t)rows.size() == c.D && c.D >= 1 && rows[0] == 0, "tmaf: rows must list D offsets, main diagonal first");
  TORCH_CHECK(lows.empty() || ((int64_t)lows.size() == c.D && tols.size() == lows.size() && c.Cb == 1),
              "tmaf: lows and tols must be empty or one per diagonal (shared grid)");
  c.tab = tables.data_ptr<T>();
  c.thr = thresholds.data_ptr<T>();
  c.rows = rows.data();
  // tol(u) <= tol0 + tol1 (m + 1) on the whole clamped range: one bound per diagonal, rounded
  // outwards to T (a larger bound only sends more entries to the search).
  constexpr T tol1 = 4 * std::numeric_limits<T>::epsilon();  // 8 units of rounding
  for (size_t d = 0; d < lows.size(); d++) {
    const double bound = tols[d] + (double)tol1 * (double)(c.m + 1);
    c.uniform.push_back(Uniform<T>{(T)lows[d], (T)inv_h, T(c.m) + T(0.5), T(c.m), round_up<T>(bound),
                                   round_down<T>(1.0 - bound)});
  }
  const int64_t span = (c.plane() ? LANES : c.C) + BLOCK;
  const int32_t cs = c.cstride();
  c.colpat.assign(span, 0);
  c.cbpat.assign(span, 0);
  c.lanepat.resize(span);
  if (c.uniform.empty()) c.build_buckets();
  if (!c.plane() && c.Cb > 1) c.rowpat.resize(span), c.bkpat.resize(span);
  for (int64_t i = 0, col = 0; i < span; i++) {  // (no division: this runs on every call)
    if (!c.plane()) c.colpat[i] = (int32_t)col, c.cbpat[i] = (int32_t)col * cs;
    if (!c.rowpat.empty()) c.rowpat[i] = (int32_t)(col * (c.m + 2)), c.bkpat[i] = (int32_t)(col * (c.B + 2));
    c.lanepat[i] = (int32_t)((c.plane() ? i : col) & (LANES - 1));
    if (++col == c.C) col = 0;
  }
  return c;
}

// ---- forward -----------------------------------------------------------------------------------

// Diagonal d's contribution to L outputs o: main diagonal (shift 0), or off-diagonal whose output e
// reads input xa[e] of column col[e] + shift. bp_row as in Call::index; e0: the block's first
// element, for the per-element patterns (rows mode) or the plane's (plane mode: col and cb all 0).
template <typename T>
void forward_block(const Call<T>& c, int64_t d, const T* xa, T* o, const T* t, int64_t L, int64_t e0,
                   int32_t shift, int32_t C, int64_t bp_row, int64_t bp_e, int32_t* q) {
  const int32_t cs = c.cstride();
  const int32_t* col = c.col(e0);
  const int32_t* cb = c.cb(e0);
  if (!c.uniform.empty()) {
    if (d == 0) {
      if (Loops<T>::fwd_main_u(xa, o, t, cb, q, L, c.uniform[d])) {
        for (int64_t e = 0; e < L; e++)
          if (q[e] < 0) o[e] = main_term(xa[e], t[cb[e] + search(xa[e], c.padded(d, 0) + 1, c.m)]);
      }
    } else if (Loops<T>::fwd_off_u(xa, o, t, col, shift, C, cs, q, L, c.uniform[d])) {
      for (int64_t e = 0; e < L; e++)
        if (q[e] < 0) o[e] = o[e] + t[(col[e] + shift) * cs + search(xa[e], c.padded(d, 0) + 1, c.m)] * xa[e];
    }
    return;
  }
  c.index(d, xa, q, L, bp_row, bp_e);
  if (d == 0) Loops<T>::fwd_main(xa, o, t, cb, q, L);
  else Loops<T>::fwd_off(xa, o, t, col, shift, C, cs, q, L);
}

template <typename T>
void forward_impl(const Tensor& x, const Tensor& tables, const Tensor& thresholds, c10::ArrayRef<double> lows,
                  c10::ArrayRef<double> tols, double inv_h, c10::ArrayRef<int64_t> rows, Tensor& out) {
  Call<T> c = make_call<T>(x, tables, thresholds, lows, tols, inv_h, rows);
  TORCH_CHECK(out.sizes() == x.sizes() && out.is_contiguous() && out.scalar_type() == x.scalar_type(),
              "tmaf: out must be a contiguous tensor like x");
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t C = c.C, S = c.S, NC = c.N * c.C;
  if (c.plane()) {
    // Task (n, i): output plane i of sample n, diagonal by diagonal.
    run_tasks(NC, x.numel(), [&](int64_t t0, int64_t t1) {
      int32_t q[BLOCK];
      for (int64_t task = t0; task < t1; task++) {
        const int64_t n = task / C, i = task % C;
        for (int64_t d = 0; d < c.D; d++) {
          const int64_t j = i - c.rows[d];
          if (j < 0 || j >= C) continue;
          const T* xs = xp + (n * C + j) * S;
          T* os = op + task * S;
          const T* t = c.table(d) + (c.Cf > 1 ? j * c.K : 0);
          for (int64_t s0 = 0; s0 < S; s0 += BLOCK)
            forward_block(c, d, xs + s0, os + s0, t, std::min(BLOCK, S - s0), 0, 0, 1, c.Cb > 1 ? j : 0, 0, q);
        }
      }
    });
    return;
  }
  // Rows mode: tasks are runs of whole rows; element e of the run is output e, column e mod C.
  const int64_t rows_per_task = std::max<int64_t>(1, 8192 / C);
  const int64_t ntasks = (c.N + rows_per_task - 1) / rows_per_task;
  run_tasks(ntasks, x.numel(), [&](int64_t t0, int64_t t1) {
    int32_t q[BLOCK];
    for (int64_t task = t0; task < t1; task++) {
      const int64_t a = task * rows_per_task * C, b = std::min(NC, a + rows_per_task * C);
      for (int64_t d = 0; d < c.D; d++) {
        const int64_t r = c.rows[d];
        // Output e reads input e - r; outside [0, NC) every such output is an invalid column.
        const int64_t lo = std::max(a, r), hi = std::min(b, NC + r);
        for (int64_t e = lo; e < hi; e += BLOCK) {
          // Input e - r; with per-feature breakpoints its row is its own column.
          forward_block(c, d, xp + e - r, op + e, c.table(d), std::min(BLOCK, hi - e), e, (int32_t)-r, (int32_t)C,
                        c.Cb > 1 ? -1 : 0, e - r, q);
        }
      }
    }
  });
}

void tmaf_forward(const Tensor& x, const Tensor& tables, const Tensor& thresholds, c10::ArrayRef<double> lows,
                  c10::ArrayRef<double> tols, double inv_h, c10::ArrayRef<int64_t> rows, Tensor& out) {
  if (x.scalar_type() == at::kFloat) return forward_impl<float>(x, tables, thresholds, lows, tols, inv_h, rows, out);
  TORCH_CHECK(x.scalar_type() == at::kDouble, "tmaf: x must be float32 or float64");
  forward_impl<double>(x, tables, thresholds, lows, tols, inv_h, rows, out);
}

// ---- backward ----------------------------------------------------------------------------------

// Where a task keeps its sums: entry (column j, lane, interval k) of diagonal d is
// d * per_d + (j - cbase) * astride + lane * lstride + k; the last element is the trash slot.
struct Layout {
  int32_t cbase, astride, lstride;
  int64_t per_d, size;
};

template <typename T>
struct Backward {
  const Call<T>& c;
  const T* xp;
  const T* gp;
  T* gxp;
  int64_t chunk;
  double* partial;       // [nchunks, D * Cf * K]
  const double* pos;     // [D, Cb, m] or null (no breakpoint gradient)
  double inv_a, kc;      // the breakpoint kernel's 1 / a and 15 / (16 a)
  double* partial_bp;    // [nchunks, Cb * m]
  // Per-element patterns, indexed like Call::lanepat: the offset column * astride + lane * lstride
  // of an element's sums (values: ab; breakpoints: bb), and of its row of positions (pb).
  std::vector<int32_t> abpat, bbpat, pbpat;

  Backward(const Call<T>& call, const T* x, const T* g, T* gx, int64_t chunk_, double* partial_, const double* pos_,
           double inv_a_, double kc_, double* partial_bp_)
      : c(call), xp(x), gp(g), gxp(gx), chunk(chunk_), partial(partial_), pos(pos_), inv_a(inv_a_), kc(kc_),
        partial_bp(partial_bp_) {
    const Layout a = layout(0, 1), b = bump_layout(0, 1);
    const int64_t span = (int64_t)c.lanepat.size();
    abpat.resize(span);
    if (pos) bbpat.resize(span), pbpat.resize(span);
    for (int64_t i = 0; i < span; i++) {
      abpat[i] = c.colpat[i] * a.astride + c.lanepat[i] * a.lstride;
      if (pos) {
        bbpat[i] = c.colpat[i] * b.astride + c.lanepat[i] * b.lstride;
        pbpat[i] = c.Cb > 1 ? c.colpat[i] * c.m : 0;  // (plane mode: columns are all 0)
      }
    }
  }

  int64_t entries() const { return c.D * c.Cf * c.K; }

  // The sums of a task over columns c0..c0+W-1: per-feature tables in rows mode give each entry
  // one lane (its column's); shared tables and plane mode keep LANES partial sums per entry.
  Layout layout(int64_t c0, int64_t W) const {
    const int32_t K = (int32_t)c.K;
    if (c.Cf > 1 && !c.plane()) return Layout{(int32_t)c0, K, 0, W * K, c.D * W * K + 1};
    return Layout{0, 0, K, LANES * K, c.D * LANES * K + 1};
  }
  Layout bump_layout(int64_t c0, int64_t W) const {
    const int32_t m = c.m;
    if (c.Cb > 1 && !c.plane()) return Layout{(int32_t)c0, m, 0, 0, W * m + 1};
    return Layout{c.plane() && c.Cb > 1 ? (int32_t)c0 : 0, 0, m, 0, LANES * m + 1};
  }

  // Per-thread scratch, reused by every task of a thread's range.
  struct Scratch {
    std::vector<double> acc, bacc;
    int32_t q[BLOCK], idx[BLOCK];
    double p[BLOCK], left[BLOCK], right[BLOCK];
  };

  // One block of L inputs of diagonal d, input-aligned at global element e0, whose gradients start
  // at ga0; pe: the element the patterns start at (rows mode: e0; plane mode: its position in the
  // channel-major order, for the lanes); `lay` and `blay` place its sums in s.acc and s.bacc; r and
  // Cv decide which rows exist.
  void block(int64_t d, int64_t e0, int64_t ga0, int64_t L, int64_t pe, int64_t bp_row, const T* t, int32_t r,
             int32_t Cv, const Layout& lay, const Layout& blay, Scratch& s) const {
    const T* x = xp + e0;
    const T* ga = gp + ga0;
    T* gx = gxp + e0;
    const int32_t* cb = c.cb(pe);
    const int32_t* col = c.col(pe);
    const int32_t* ab = abpat.data() + c.lane_at(pe);
    const int32_t abase = lay.cbase * lay.astride;
    double* acc = s.acc.data() + d * lay.per_d;
    const int32_t trash = (int32_t)(lay.size - 1 - d * lay.per_d);
    if (!c.uniform.empty()) {  // (never with a breakpoint gradient: that needs the general path)
      const T* thr = c.padded(d, 0) + 1;
      if (d == 0) {
        if (Loops<T>::gx_main_u(x, ga, gx, t, cb, s.q, ab, abase, s.p, s.idx, L, c.uniform[d])) {
          for (int64_t e = 0; e < L; e++) {
            if (s.q[e] >= 0) continue;
            const int32_t k = search(x[e], thr, c.m);
            gx[e] = t[cb[e] + k] * ga[e];
            s.idx[e] = ab[e] - abase + k;
          }
        }
      } else if (Loops<T>::gx_off_u(x, ga, gx, t, cb, col, s.q, ab, abase, s.p, s.idx, r, Cv, trash, L,
                                    c.uniform[d])) {
        for (int64_t e = 0; e < L; e++) {
          if (s.q[e] >= 0) continue;
          const int32_t k = search(x[e], thr, c.m);
          gx[e] = gx[e] + t[cb[e] + k] * ga[e];
          s.idx[e] = ab[e] - abase + k;
        }
      }
      accumulate(acc, s.idx, s.p, L);
      return;
    }
    c.index(d, x, s.q, L, bp_row, pe);
    if (d == 0) Loops<T>::gx_main(x, ga, gx, t, cb, s.q, ab, abase, s.p, s.idx, L);
    else Loops<T>::gx_off(x, ga, gx, t, cb, col, s.q, ab, abase, s.p, s.idx, r, Cv, trash, L);
    if (!pos) {
      accumulate(acc, s.idx, s.p, L);
      return;
    }
    // The relaxed gradient of the two breakpoints around each input (trainable grids only): its terms
    // come from the same block, and one scalar pass adds them with the values' terms.
    const double* pd = pos + (d * c.Cb + (bp_row >= 0 ? bp_row : 0)) * c.m;
    Loops<T>::bump(x, t, cb, s.q, s.p, pd, pbpat.data() + c.col_at(pe), c.m, inv_a, kc, s.left, s.right, L);
    accumulate_both(acc, s.idx, s.p, s.bacc.data(), bbpat.data() + c.lane_at(pe), blay.cbase * blay.astride, s.q,
                    trash, c.m, s.left, s.right, L);
  }

  // this chunk's partial sums of `count` entries: the lanes of each added in order.
  static void fold_lanes(const double* lanes, int64_t count, int64_t lstride, double* out) {
    for (int64_t k = 0; k < count; k++) {
      double sum = lanes[k];
      for (int32_t l = 1; l < LANES; l++) sum += lanes[l * lstride + k];
      out[k] = sum;
    }
  }

  void prepare(Scratch& s, const Layout& lay, const Layout& blay) const {
    if ((int64_t)s.acc.size() < lay.size) s.acc = zeros(lay.size);
    std::fill(s.acc.begin(), s.acc.begin() + lay.size, 0.0);
    if (pos) {
      if ((int64_t)s.bacc.size() < blay.size) s.bacc = zeros(blay.size);
      std::fill(s.bacc.begin(), s.bacc.begin() + blay.size, 0.0);
    }
  }

  // Plane mode: task (chunk, column j) for per-feature tables, or (chunk, all columns) for a shared one.
  void plane_task(int64_t ch, int64_t j0, int64_t j1, Scratch& s) const {
    const int64_t C = c.C, S = c.S, K = c.K, m = c.m;
    const int64_t n0 = ch * chunk, n1 = std::min(c.N, n0 + chunk);
    const Layout lay = layout(j0, j1 - j0), blay = bump_layout(j0, j1 - j0);
    prepare(s, lay, blay);
    for (int64_t d = 0; d < c.D; d++) {
      const int64_t r = c.rows[d];
      for (int64_t n = n0; n < n1; n++) {
        for (int64_t j = j0; j < j1; j++) {
          if (j + r < 0 || j + r >= C) continue;
          const T* t = c.table(d) + (c.Cf > 1 ? j * K : 0);
          const int64_t base = (n * C + j) * S;
          for (int64_t s0 = 0; s0 < S; s0 += BLOCK) {
            block(d, base + s0, base + r * S + s0, std::min(BLOCK, S - s0), j * S + s0, c.Cb > 1 ? j : 0, t, 0, 1,
                  lay, blay, s);
          }
        }
      }
    }
    double* out = partial + ch * entries() + (c.Cf > 1 ? j0 * K : 0);
    for (int64_t d = 0; d < c.D; d++) fold_lanes(s.acc.data() + d * LANES * K, K, K, out + d * c.Cf * K);
    if (pos) fold_lanes(s.bacc.data(), m, m, partial_bp + ch * c.Cb * m + (c.Cb > 1 ? j0 * m : 0));
  }

  // Rows mode: task (chunk, columns c0..c1-1) for per-feature tables, whose entries each get one
  // lane (their column's), or (chunk, all columns) for a shared table.
  void rows_task(int64_t ch, int64_t c0, int64_t c1, Scratch& s) const {
    const int64_t C = c.C, K = c.K, m = c.m, NC = c.N * C, W = c1 - c0;
    const int64_t n0 = ch * chunk, n1 = std::min(c.N, n0 + chunk);
    const bool per_feature = c.Cf > 1;
    const Layout lay = layout(c0, W), blay = bump_layout(c0, W);
    prepare(s, lay, blay);
    const bool whole_rows = c0 == 0 && c1 == C;
    for (int64_t d = 0; d < c.D; d++) {
      const int64_t r = c.rows[d];
      for (int64_t n = n0; n < n1; n += whole_rows ? n1 - n0 : 1) {
        // Input e's gradient sits at e + r; keep e + r inside [0, NC).
        const int64_t a = n * C + c0, b = whole_rows ? n1 * C : n * C + c1;
        const int64_t lo = std::max(a, -r), hi = std::min(b, NC - r);
        for (int64_t e = lo; e < hi; e += BLOCK) {
          block(d, e, e + r, std::min(BLOCK, hi - e), e, c.Cb > 1 ? -1 : 0, c.table(d), (int32_t)r, (int32_t)C, lay,
                blay, s);
        }
      }
    }
    double* out = partial + ch * entries();
    double* bout = pos ? partial_bp + ch * c.Cb * m : nullptr;
    if (per_feature) {  // one lane per entry: the sums are the partial sums
      for (int64_t d = 0; d < c.D; d++)
        std::copy(s.acc.data() + d * W * K, s.acc.data() + (d + 1) * W * K, out + (d * C + c0) * K);
      if (pos) std::copy(s.bacc.data(), s.bacc.data() + W * m, bout + c0 * m);
    } else {
      for (int64_t d = 0; d < c.D; d++) fold_lanes(s.acc.data() + d * LANES * K, K, K, out + d * K);
      if (pos) fold_lanes(s.bacc.data(), m, m, bout);
    }
  }
};

// out[e] = sum over chunks, in order, of partial[chunk, e], rounded to U.
template <typename U>
void reduce_chunks(const double* partial, int64_t nchunks, int64_t E, U* out) {
  run_tasks(E, nchunks * E, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; e++) {
      double s = 0.0;
      for (int64_t i = 0; i < nchunks; i++) s += partial[i * E + e];
      out[e] = (U)s;
    }
  });
}

template <typename T>
void backward_impl(const Tensor& x, const Tensor& grad, const Tensor& tables, const Tensor& thresholds,
                   c10::ArrayRef<double> lows, c10::ArrayRef<double> tols, double inv_h, c10::ArrayRef<int64_t> rows,
                   int64_t chunk,
                   Tensor& grad_x, Tensor& grad_tables, Tensor& partial, const Tensor& positions, double inv_a,
                   double kc, Tensor& grad_bp, Tensor& partial_bp) {
  Call<T> c = make_call<T>(x, tables, thresholds, lows, tols, inv_h, rows);
  for (const Tensor* t : {&grad, static_cast<const Tensor*>(&grad_x)})
    TORCH_CHECK(t->sizes() == x.sizes() && t->is_contiguous() && t->scalar_type() == x.scalar_type(),
                "tmaf: grad and grad_x must be contiguous tensors like x");
  TORCH_CHECK(grad_tables.sizes() == tables.sizes() && grad_tables.is_contiguous() &&
                  grad_tables.scalar_type() == x.scalar_type(), "tmaf: grad_tables must be like tables");
  TORCH_CHECK(chunk >= 1, "tmaf: chunk must be >= 1");
  const int64_t nchunks = (c.N + chunk - 1) / chunk, E = c.D * c.Cf * c.K;
  TORCH_CHECK(partial.is_contiguous() && partial.scalar_type() == at::kDouble && partial.dim() == 2 &&
                  partial.size(0) == nchunks && partial.size(1) == E, "tmaf: partial must be [chunks, D * Cf * K] float64");
  const bool want_bp = grad_bp.numel() > 0;
  if (want_bp) {
    TORCH_CHECK(c.uniform.empty(), "tmaf: breakpoint gradients need the general (non-uniform) path");
    TORCH_CHECK(c.Cb == c.Cf, "tmaf: trainable breakpoints must be shared exactly like the tables");
    TORCH_CHECK(positions.is_contiguous() && positions.scalar_type() == at::kDouble && positions.dim() == 3 &&
                    positions.size(0) == c.D && positions.size(1) == c.Cb && positions.size(2) == c.m,
                "tmaf: positions must be [D, Cb, m] float64");
    TORCH_CHECK(grad_bp.is_contiguous() && grad_bp.scalar_type() == at::kDouble && grad_bp.dim() == 2 &&
                    grad_bp.size(0) == c.Cb && grad_bp.size(1) == c.m, "tmaf: grad_bp must be [Cb, m] float64");
    TORCH_CHECK(partial_bp.is_contiguous() && partial_bp.scalar_type() == at::kDouble &&
                    partial_bp.numel() == nchunks * c.Cb * c.m, "tmaf: partial_bp must hold [chunks, Cb * m] float64");
  }
  Backward<T> b(c, x.data_ptr<T>(), grad.data_ptr<T>(), grad_x.data_ptr<T>(), chunk, partial.data_ptr<double>(),
                 want_bp ? positions.data_ptr<double>() : nullptr, inv_a, kc,
                 want_bp ? partial_bp.data_ptr<double>() : nullptr);
  // Tasks per chunk: one per column (plane mode) or per block of columns (rows mode) when each
  // entry belongs to one column; blocks change no sum (so they may depend on the thread count),
  // they only add parallelism where there are few chunks. Shared tables: one task per chunk.
  int64_t width = c.C;
  if (c.Cf > 1 && c.plane()) width = 1;
  if (c.Cf > 1 && !c.plane() && x.numel() >= PARALLEL_MIN) {
    const int64_t wanted = (4 * at::get_num_threads() + nchunks - 1) / nchunks;  // blocks per chunk
    width = std::max<int64_t>(std::min<int64_t>(c.C, 256), (c.C + wanted - 1) / wanted);
  }
  const int64_t per = (c.C + width - 1) / width;
  run_tasks(nchunks * per, x.numel(), [&](int64_t t0, int64_t t1) {
    typename Backward<T>::Scratch s;
    for (int64_t task = t0; task < t1; task++) {
      const int64_t ch = task / per, c0 = (task % per) * width, c1 = std::min(c.C, c0 + width);
      if (c.plane()) b.plane_task(ch, c0, c1, s);
      else b.rows_task(ch, c0, c1, s);
    }
  });
  reduce_chunks<T>(b.partial, nchunks, E, grad_tables.data_ptr<T>());
  if (want_bp) reduce_chunks<double>(b.partial_bp, nchunks, c.Cb * c.m, grad_bp.data_ptr<double>());
}

void tmaf_backward(const Tensor& x, const Tensor& grad, const Tensor& tables, const Tensor& thresholds,
                   c10::ArrayRef<double> lows, c10::ArrayRef<double> tols, double inv_h, c10::ArrayRef<int64_t> rows,
                   int64_t chunk,
                   Tensor& grad_x, Tensor& grad_tables, Tensor& partial, const Tensor& positions, double inv_a,
                   double kc, Tensor& grad_bp, Tensor& partial_bp) {
  if (x.scalar_type() == at::kFloat)
    return backward_impl<float>(x, grad, tables, thresholds, lows, tols, inv_h, rows, chunk, grad_x, grad_tables,
                                partial, positions, inv_a, kc, grad_bp, partial_bp);
  TORCH_CHECK(x.scalar_type() == at::kDouble, "tmaf: x must be float32 or float64");
  backward_impl<double>(x, grad, tables, thresholds, lows, tols, inv_h, rows, chunk, grad_x, grad_tables, partial,
                        positions, inv_a, kc, grad_bp, partial_bp);
}

// ---- the autograd operator -----------------------------------------------------------------------

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x [N, C, *S] -> (x as contiguous [N, C, S], the tables stacked as [D, Cf, K] in x's dtype).
std::pair<at::Tensor, at::Tensor> flatten(const at::Tensor& x, at::TensorList tables) {
  TORCH_CHECK(x.dim() >= 2 && !tables.empty(), "tmaf: x must be [N, C, ...] and there must be tables");
  at::Tensor x3 = x.reshape({x.size(0), x.size(1), -1}).contiguous();
  at::Tensor tab = tables.size() == 1 ? tables[0].unsqueeze(0) : at::stack(tables);
  return {x3, tab.to(x.scalar_type()).contiguous()};
}

// The forward pass, with or without autograd: x and the tables flattened (kept for backward), and
// the output in x's shape.
struct Forward {
  at::Tensor x3, tab, out;
};

Forward run_forward(const at::Tensor& x, at::TensorList tables, const at::Tensor& thresholds,
                    c10::ArrayRef<double> lows, c10::ArrayRef<double> tols, double inv_h, c10::ArrayRef<int64_t> rows) {
  auto [x3, tab] = flatten(x, tables);
  at::Tensor out = at::empty_like(x3);
  tmaf_forward(x3, tab, thresholds, lows, tols, inv_h, rows, out);
  return {x3, tab, out.view(x.sizes())};
}

// Inputs, in order: x, the D tables, breakpoints, thresholds, positions, then the non-tensor
// arguments; backward returns one gradient (or an undefined tensor) for each.
struct TmafFunction : public torch::autograd::Function<TmafFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::TensorList tables,
                            const at::Tensor& breakpoints, const at::Tensor& thresholds, const at::Tensor& positions,
                            c10::ArrayRef<double> lows, c10::ArrayRef<double> tols, double inv_h,
                            c10::ArrayRef<int64_t> rows, int64_t chunk, double inv_a, double kc) {
    Forward f = run_forward(x, tables, thresholds, lows, tols, inv_h, rows);
    ctx->save_for_backward({f.x3, f.tab, breakpoints, thresholds, positions});
    // Two saved entries: the floats, then the integers.
    std::vector<double> floats{inv_h, inv_a, kc};
    floats.insert(floats.end(), lows.begin(), lows.end());
    floats.insert(floats.end(), tols.begin(), tols.end());
    std::vector<int64_t> ints{chunk};
    for (const at::Tensor& t : tables) ints.push_back(static_cast<int64_t>(t.scalar_type()));  // gradient dtypes
    ints.insert(ints.end(), rows.begin(), rows.end());
    ctx->saved_data["floats"] = std::move(floats);
    ctx->saved_data["ints"] = std::move(ints);
    return f.out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x3 = saved[0], &tab = saved[1], &bp = saved[2], &thresholds = saved[3], &positions = saved[4];
    const int64_t D = tab.size(0), E = tab.numel();
    const std::vector<double> floats = ctx->saved_data["floats"].toDoubleVector();
    const std::vector<int64_t> ints = ctx->saved_data["ints"].toIntVector();
    const double inv_h = floats[0], inv_a = floats[1], kc = floats[2];
    const c10::ArrayRef<double> lows(floats.data() + 3, (floats.size() - 3) / 2), tols(lows.end(), lows.size());
    const int64_t chunk = ints[0];
    const c10::IntArrayRef dtypes(ints.data() + 1, D), rows(dtypes.end(), D);
    const int64_t nchunks = (x3.size(0) + chunk - 1) / chunk;
    at::Tensor grad = grads[0].reshape(x3.sizes()).contiguous();
    at::Tensor gx = at::empty_like(x3), gtab = at::empty_like(tab);
    at::Tensor partial = at::empty({nchunks, E}, x3.options().dtype(at::kDouble));
    const bool want_bp = ctx->needs_input_grad(1 + D) && inv_a > 0;
    at::Tensor none = at::empty({0}, x3.options().dtype(at::kDouble));
    at::Tensor gbp = want_bp ? at::empty(bp.sizes(), none.options()) : none;
    at::Tensor partial_bp = want_bp ? at::empty({nchunks, bp.numel()}, none.options()) : none;
    tmaf_backward(x3, grad, tab, thresholds, lows, tols, inv_h, rows, chunk, gx, gtab, partial,
                  want_bp ? positions : none, inv_a, kc, gbp, partial_bp);
    variable_list out{gx.view(grads[0].sizes())};  // the output's shape, which is x's
    for (int64_t d = 0; d < D; d++) out.push_back(gtab[d].to(static_cast<at::ScalarType>(dtypes[d])));
    out.push_back(want_bp ? gbp.to(bp.scalar_type()) : at::Tensor());
    out.resize(out.size() + 2 + 7);  // thresholds, positions and the 7 non-tensor arguments: no gradient
    return out;
  }
};

at::Tensor tmaf(const at::Tensor& x, at::TensorList tables, const at::Tensor& breakpoints, const at::Tensor& thresholds,
                const at::Tensor& positions, c10::ArrayRef<double> lows, c10::ArrayRef<double> tols, double inv_h,
                c10::ArrayRef<int64_t> rows, int64_t chunk, double inv_a, double kc) {
  bool graph = at::GradMode::is_enabled() && (x.requires_grad() || breakpoints.requires_grad());
  for (const at::Tensor& t : tables) graph = graph || (at::GradMode::is_enabled() && t.requires_grad());
  if (!graph) {  // evaluation (no_grad, inference_mode): no autograd node, nothing saved
    return run_forward(x, tables, thresholds, lows, tols, inv_h, rows).out;
  }
  return TmafFunction::apply(x, tables, breakpoints, thresholds, positions, lows, tols, inv_h, rows, chunk, inv_a, kc);
}

}  // namespace

// Registration is an explicit call (not a static initialiser), so that a failure, such as a schema
// that does not match the C++ signature (PyTorch checks them against each other), becomes an error
// message for the Python loader instead of aborting the process. Returns 0 on success.
extern "C" __attribute__((visibility("default"))) int tmafbench_register(char* error, int64_t size) {
  try {
    static torch::Library lib(torch::Library::DEF, "tmafbench", std::nullopt, __FILE__, __LINE__);
    lib.def("tmaf(Tensor x, Tensor[] tables, Tensor breakpoints, Tensor thresholds, Tensor positions, float[] lows, "
            "float[] tols, float inv_h, int[] rows, int chunk, float inv_a, float kc) -> Tensor", &tmaf);
    lib.def("tmaf_forward(Tensor x, Tensor tables, Tensor thresholds, float[] lows, float[] tols, float inv_h, int[] rows, "
            "Tensor(a!) out) -> ()", &tmaf_forward);
    lib.def("tmaf_backward(Tensor x, Tensor grad, Tensor tables, Tensor thresholds, float[] lows, float[] tols, float inv_h, "
            "int[] rows, int chunk, Tensor(a!) grad_x, Tensor(b!) grad_tables, Tensor(c!) partial, "
            "Tensor positions, float inv_a, float kc, Tensor(d!) grad_bp, Tensor(e!) partial_bp) -> ()",
            &tmaf_backward);
    return 0;
  } catch (const std::exception& exc) {
    std::snprintf(error, (size_t)size, "%s", exc.what());
    return 1;
  }
}
