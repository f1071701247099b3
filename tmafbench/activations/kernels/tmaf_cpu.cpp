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

// Uniform grids: q = ceil(u) clamped to [0, m], with u = (v - lo) / h evaluated in T. Where u
// lies within tol(u) = tol0 + tol1 (u + 1/2) of an integer, rounding could put v on the wrong side of a
// breakpoint: those entries (and NaN) get q = -1, the function returns false and the caller
// searches them. tol (spec.grid_tensors) bounds the rounding of u plus the distance of the float64
// breakpoints from lo + k h, so every other entry is exact without reading the thresholds.
template <typename T>
TMAF_INLINE bool estimate_body(const T* __restrict x, int32_t* __restrict q, int64_t L, int32_t m, T lo, T inv_h,
                               T tol0, T tol1) {
  // (Written so that GCC vectorises it: one comparison per condition, selects and bit tricks.)
  int32_t bad = 0;
  const T top = T(m) + T(0.5);
  for (int64_t e = 0; e < L; e++) {
    T u = (x[e] - lo) * inv_h;
    u = u <= T(-0.5) ? T(-0.5) : u;  // clamp to [-0.5, m + 0.5]; NaN stays NaN
    u = u >= top ? top : u;
    T dist = u - (T)(int32_t)(u + T(0.5));  // to the nearest integer
    T tol = tol0 + tol1 * (u + T(0.5));
    int32_t far = dist * dist > tol * tol;  // false for NaN
    T uf = far ? u : T(0);
    uf = uf < T(m) ? uf : T(m);
    int32_t j = (int32_t)uf;
    j += (T)j < uf;               // ceil
    q[e] = j | (far - 1);         // -1 where not far
    bad |= far ^ 1;
  }
  return bad == 0;
}

// ---- forward passes over one block ------------------------------------------------------------
// col[e]: the column (feature) of element e in rows mode; all zeros in plane mode (the table
// pointer is then the plane's own row). A column j is valid when 0 <= j < C.

// Main diagonal: o = t[q] v, with +0 for 0 * negative and a zero input passed through.
template <typename T>
TMAF_INLINE void fwd_main_body(const T* __restrict x, T* __restrict o, const T* __restrict t,
                               const int32_t* __restrict col, int32_t cstride, const int32_t* __restrict q,
                               int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    T v = x[e];
    T y = t[col[e] * cstride + q[e]] * v + T(0);
    o[e] = v == T(0) ? v : y;
  }
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

// ---- backward passes over one block -----------------------------------------------------------
// One vectorised pass computes grad_x, the terms p = grad * x (double) and each element's
// accumulator index (j - cbase) * astride + lane[e] * lstride + q, or `trash` when the element's
// row does not exist; a scalar pass then adds the terms (acc[idx] += p).

template <typename T>
TMAF_INLINE void gx_main_body(const T* __restrict x, const T* __restrict g, T* __restrict gx,
                              const T* __restrict t, const int32_t* __restrict col, int32_t cstride,
                              const int32_t* __restrict q, const int32_t* __restrict lane, int32_t cbase,
                              int32_t astride, int32_t lstride, double* __restrict p, int32_t* __restrict idx,
                              int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    T w = g[e];
    int32_t j = col[e], k = q[e];
    gx[e] = t[j * cstride + k] * w;
    p[e] = (double)w * (double)x[e];
    idx[e] = (j - cbase) * astride + lane[e] * lstride + k;
  }
}

// Off-diagonal, input-aligned: ga[e] is the gradient of row col[e] + r.
template <typename T>
TMAF_INLINE void gx_off_body(const T* __restrict x, const T* __restrict ga, T* __restrict gx,
                             const T* __restrict t, const int32_t* __restrict col, int32_t cstride,
                             const int32_t* __restrict q, const int32_t* __restrict lane, int32_t cbase,
                             int32_t astride, int32_t lstride, double* __restrict p, int32_t* __restrict idx,
                             int32_t r, int32_t C, int32_t trash, int64_t L) {
  for (int64_t e = 0; e < L; e++) {
    T w = ga[e];
    int32_t j = col[e], k = q[e];
    int32_t ok = (j + r >= 0) & (j + r < C);
    T cur = gx[e];
    T sum = cur + t[j * cstride + k] * w;
    gx[e] = ok ? sum : cur;
    p[e] = (double)w * (double)x[e];
    int32_t at = (j - cbase) * astride + lane[e] * lstride + k;
    idx[e] = trash + ((at - trash) & -ok);
  }
}

// Not inlined: as a function of its own the pointers stay in registers (inlined, GCC reloaded them
// from the stack on every element for fear of aliasing).
__attribute__((noinline)) void accumulate(double* __restrict acc, const int32_t* __restrict idx,
                                          const double* __restrict p, int64_t L) {
  for (int64_t e = 0; e < L; e++) acc[idx[e]] += p[e];
}

}  // namespace

// Non-template entry points, so that each can carry target_clones, and Loops<T> naming them.
namespace {
template <typename T>
struct Loops;
}  // namespace

#define TMAF_DEFINE_LOOPS(T, SUF)                                                                        \
  TMAF_CLONES bool tmaf_estimate_##SUF(const T* x, int32_t* q, int64_t L, int32_t m, T lo, T inv_h,     \
                                       T tol0, T tol1) {                                                \
    return estimate_body<T>(x, q, L, m, lo, inv_h, tol0, tol1);                                         \
  }                                                                                                     \
  TMAF_CLONES void tmaf_fwd_main_##SUF(const T* x, T* o, const T* t, const int32_t* col, int32_t cstride, \
                                       const int32_t* q, int64_t L) {                                   \
    fwd_main_body<T>(x, o, t, col, cstride, q, L);                                                      \
  }                                                                                                     \
  TMAF_CLONES void tmaf_fwd_off_##SUF(const T* xa, T* o, const T* t, const int32_t* col, int32_t shift,   \
                                      int32_t C, int32_t cstride, const int32_t* q, int64_t L) {         \
    fwd_off_body<T>(xa, o, t, col, shift, C, cstride, q, L);                                            \
  }                                                                                                     \
  TMAF_CLONES void tmaf_gx_main_##SUF(const T* x, const T* g, T* gx, const T* t, const int32_t* col,     \
                                      int32_t cstride, const int32_t* q, const int32_t* lane,            \
                                      int32_t cbase, int32_t astride, int32_t lstride, double* p,        \
                                      int32_t* idx, int64_t L) {                                         \
    gx_main_body<T>(x, g, gx, t, col, cstride, q, lane, cbase, astride, lstride, p, idx, L);             \
  }                                                                                                     \
  TMAF_CLONES void tmaf_gx_off_##SUF(const T* x, const T* ga, T* gx, const T* t, const int32_t* col,     \
                                     int32_t cstride, const int32_t* q, const int32_t* lane, int32_t cbase, \
                                     int32_t astride, int32_t lstride, double* p, int32_t* idx, int32_t r, \
                                     int32_t C, int32_t trash, int64_t L) {                              \
    gx_off_body<T>(x, ga, gx, t, col, cstride, q, lane, cbase, astride, lstride, p, idx, r, C, trash, L); \
  } \
  namespace {                                                                                           \
  template <>                                                                                           \
  struct Loops<T> {                                                                                     \
    static constexpr auto estimate = tmaf_estimate_##SUF;                                               \
    static constexpr auto fwd_main = tmaf_fwd_main_##SUF;                                               \
    static constexpr auto fwd_off = tmaf_fwd_off_##SUF;                                                 \
    static constexpr auto gx_main = tmaf_gx_main_##SUF;                                                 \
    static constexpr auto gx_off = tmaf_gx_off_##SUF;                                                   \
  };                                                                                                    \
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

template <typename T>
struct Call {
  int64_t N, C, S, D, Cf, K, Cb;
  int32_t m;
  const T* tab;          // [D, Cf, K]
  const T* thr;          // [D, Cb, m + 2], padded with -inf and +inf
  const int64_t* rows;   // [D]
  std::vector<T> lows, tols;  // [D] each (uniform grids: lo + shift_d and tol0) or empty
  T inv_h;
  // Per-element patterns, read from an offset: rows mode: column e mod C and its lane (e mod C) %
  // LANES; plane mode: columns all 0, lanes e % LANES.
  std::vector<int32_t> colpat, lanepat;

  bool plane() const { return S > 1; }
  int32_t cstride() const { return Cf > 1 && !plane() ? (int32_t)K : 0; }
  const T* table(int64_t d) const { return tab + d * Cf * K; }
  const T* padded(int64_t d, int64_t row) const { return thr + (d * Cb + row) * (m + 2); }
  // The patterns for a block starting at global element e (rows mode) or at plane position e.
  const int32_t* col(int64_t e) const { return colpat.data() + (plane() ? 0 : e % C); }
  const int32_t* lane(int64_t e) const { return lanepat.data() + (plane() ? e % LANES : e % C); }

  // q for L inputs of diagonal d. bp_row: the breakpoint row for all of them, or -1 when it is
  // each element's own column (per-feature breakpoints in rows mode).
  void index(int64_t d, const T* x, int32_t* q, int64_t L, int64_t bp_row, const int32_t* colp) const {
    if (!lows.empty()) {
      constexpr T tol1 = 4 * std::numeric_limits<T>::epsilon();  // 8 units of rounding
      if (Loops<T>::estimate(x, q, L, m, lows[d], inv_h, tols[d], tol1)) return;
      const T* thr = padded(d, 0) + 1;
      for (int64_t e = 0; e < L; e++)
        if (q[e] < 0) q[e] = search(x[e], thr, m);
      return;
    }
    for (int64_t e = 0; e < L; e++) q[e] = search(x[e], padded(d, bp_row >= 0 ? bp_row : colp[e]) + 1, m);
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
  for (double lo : lows) c.lows.push_back((T)lo);
  for (double tol : tols) c.tols.push_back((T)tol);
  c.inv_h = (T)inv_h;
  const int64_t span = (c.plane() ? LANES : c.C) + BLOCK;
  c.colpat.assign(span, 0);
  c.lanepat.resize(span);
  for (int64_t i = 0, col = 0; i < span; i++) {  // (no division: this runs on every call)
    if (!c.plane()) c.colpat[i] = (int32_t)col;
    c.lanepat[i] = (int32_t)((c.plane() ? i : col) & (LANES - 1));
    if (++col == c.C) col = 0;
  }
  return c;
}

// ---- forward -----------------------------------------------------------------------------------

template <typename T>
void forward_impl(const Tensor& x, const Tensor& tables, const Tensor& thresholds, c10::ArrayRef<double> lows,
                  c10::ArrayRef<double> tols, double inv_h, c10::ArrayRef<int64_t> rows, Tensor& out) {
  Call<T> c = make_call<T>(x, tables, thresholds, lows, tols, inv_h, rows);
  TORCH_CHECK(out.sizes() == x.sizes() && out.is_contiguous() && out.scalar_type() == x.scalar_type(),
              "tmaf: out must be a contiguous tensor like x");
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t C = c.C, S = c.S, NC = c.N * c.C;
  const int32_t cs = c.cstride();
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
          const int64_t bp_row = c.Cb > 1 ? j : 0;
          for (int64_t s0 = 0; s0 < S; s0 += BLOCK) {
            const int64_t L = std::min(BLOCK, S - s0);
            c.index(d, xs + s0, q, L, bp_row, nullptr);
            if (d == 0) Loops<T>::fwd_main(xs + s0, os + s0, t, c.col(0), 0, q, L);
            else Loops<T>::fwd_off(xs + s0, os + s0, t, c.col(0), 0, 1, 0, q, L);
          }
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
          const int64_t L = std::min(BLOCK, hi - e);
          const int32_t* col = c.col(e);
          if (d == 0) {
            c.index(0, xp + e, q, L, c.Cb > 1 ? -1 : 0, col);
            Loops<T>::fwd_main(xp + e, op + e, c.table(0), col, cs, q, L);
          } else {
            // Input e - r >= 0; with per-feature breakpoints its row is its own column.
            c.index(d, xp + e - r, q, L, c.Cb > 1 ? -1 : 0, c.col(e - r));
            Loops<T>::fwd_off(xp + e - r, op + e, c.table(d), col, (int32_t)-r, (int32_t)C, cs, q, L);
          }
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

// The relaxed breakpoint gradient (tmaf.py): the term of one element for breakpoint k at
// position pos: -(g x) (t_{k+1} - t_k) kernel(v - pos), kernel(u) = kc (1 - (u/a)^2)^2 on |u| < a.
struct Bump {
  double inv_a, kc;
  TMAF_INLINE double operator()(double u) const {
    double z = u * inv_a;
    double w = 1.0 - z * z;
    return std::fabs(z) < 1.0 ? (kc * w) * w : 0.0;
  }
};

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
  Bump bump;
  double* partial_bp;    // [nchunks, Cb * m]

  int64_t entries() const { return c.D * c.Cf * c.K; }

  // Per-thread scratch, reused by every task of a thread's range.
  struct Scratch {
    std::vector<double> acc, bacc;
    int32_t q[BLOCK], idx[BLOCK];
    double p[BLOCK];
  };

  // One block of L inputs of diagonal d, input-aligned at global element e0, whose gradients start
  // at ga0; `lay` and `blay` place its sums in s.acc and s.bacc; r and Cv decide which rows exist.
  void block(int64_t d, int64_t e0, int64_t ga0, int64_t L, const int32_t* col, const int32_t* lane, int64_t bp_row,
             const T* t, int32_t r, int32_t Cv, const Layout& lay, const Layout& blay, Scratch& s) const {
    const T* x = xp + e0;
    const T* ga = gp + ga0;
    c.index(d, x, s.q, L, bp_row, col);
    const int32_t cs = c.cstride();
    double* acc = s.acc.data() + d * lay.per_d;
    const int32_t trash = (int32_t)(lay.size - 1 - d * lay.per_d);
    if (d == 0)
      Loops<T>::gx_main(x, ga, gxp + e0, t, col, cs, s.q, lane, lay.cbase, lay.astride, lay.lstride, s.p, s.idx, L);
    else
      Loops<T>::gx_off(x, ga, gxp + e0, t, col, cs, s.q, lane, lay.cbase, lay.astride, lay.lstride, s.p, s.idx,
                       r, Cv, trash, L);
    accumulate(acc, s.idx, s.p, L);
    if (pos) breakpoint_terms(d, x, L, col, lane, bp_row, t, trash, blay, s);
  }

  // The relaxed gradient of the two breakpoints around each input (scalar; trainable grids only).
  void breakpoint_terms(int64_t d, const T* x, int64_t L, const int32_t* col, const int32_t* lane, int64_t bp_row,
                        const T* t, int32_t trash, const Layout& blay, Scratch& s) const {
    const int32_t m = c.m, cs = c.cstride();
    double* bacc = s.bacc.data();
    for (int64_t e = 0; e < L; e++) {
      if (s.idx[e] == trash) continue;
      const int32_t k = s.q[e], row = bp_row >= 0 ? (int32_t)bp_row : col[e];
      const double v = (double)x[e], p = s.p[e];
      const T* tr = t + col[e] * cs;
      const double* pr = pos + (d * c.Cb + row) * m;
      double* b = bacc + (row - blay.cbase) * blay.astride + lane[e] * blay.lstride;
      if (k > 0) b[k - 1] -= (p * (double)(tr[k] - tr[k - 1])) * bump(v - pr[k - 1]);
      if (k < m) b[k] -= (p * (double)(tr[k + 1] - tr[k])) * bump(v - pr[k]);
    }
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
    const Layout lay{0, 0, (int32_t)K, LANES * K, c.D * LANES * K + 1};
    const Layout blay{c.Cb > 1 ? (int32_t)j0 : 0, 0, (int32_t)m, 0, LANES * m + 1};
    prepare(s, lay, blay);
    for (int64_t d = 0; d < c.D; d++) {
      const int64_t r = c.rows[d];
      for (int64_t n = n0; n < n1; n++) {
        for (int64_t j = j0; j < j1; j++) {
          if (j + r < 0 || j + r >= C) continue;
          const T* t = c.table(d) + (c.Cf > 1 ? j * K : 0);
          const int64_t base = (n * C + j) * S;
          for (int64_t s0 = 0; s0 < S; s0 += BLOCK) {
            const int64_t L = std::min(BLOCK, S - s0);
            block(d, base + s0, base + r * S + s0, L, c.col(0), c.lane(j * S + s0), c.Cb > 1 ? j : 0, t, 0, 1,
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
    const Layout lay = per_feature ? Layout{(int32_t)c0, (int32_t)K, 0, W * K, c.D * W * K + 1}
                                   : Layout{0, 0, (int32_t)K, LANES * K, c.D * LANES * K + 1};
    const Layout blay = per_feature ? Layout{(int32_t)c0, (int32_t)m, 0, 0, W * m + 1}
                                    : Layout{0, 0, (int32_t)m, 0, LANES * m + 1};
    prepare(s, lay, blay);
    const bool whole_rows = c0 == 0 && c1 == C;
    for (int64_t d = 0; d < c.D; d++) {
      const int64_t r = c.rows[d];
      for (int64_t n = n0; n < n1; n += whole_rows ? n1 - n0 : 1) {
        // Input e's gradient sits at e + r; keep e + r inside [0, NC).
        const int64_t a = n * C + c0, b = whole_rows ? n1 * C : n * C + c1;
        const int64_t lo = std::max(a, -r), hi = std::min(b, NC - r);
        for (int64_t e = lo; e < hi; e += BLOCK) {
          block(d, e, e + r, std::min(BLOCK, hi - e), c.col(e), c.lane(e), c.Cb > 1 ? -1 : 0, c.table(d),
                (int32_t)r, (int32_t)C, lay, blay, s);
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
    TORCH_CHECK(c.lows.empty(), "tmaf: breakpoint gradients need the general (non-uniform) path");
    TORCH_CHECK(c.Cb == c.Cf, "tmaf: trainable breakpoints must be shared exactly like the tables");
    TORCH_CHECK(positions.is_contiguous() && positions.scalar_type() == at::kDouble && positions.dim() == 3 &&
                    positions.size(0) == c.D && positions.size(1) == c.Cb && positions.size(2) == c.m,
                "tmaf: positions must be [D, Cb, m] float64");
    TORCH_CHECK(grad_bp.is_contiguous() && grad_bp.scalar_type() == at::kDouble && grad_bp.dim() == 2 &&
                    grad_bp.size(0) == c.Cb && grad_bp.size(1) == c.m, "tmaf: grad_bp must be [Cb, m] float64");
    TORCH_CHECK(partial_bp.is_contiguous() && partial_bp.scalar_type() == at::kDouble &&
                    partial_bp.numel() == nchunks * c.Cb * c.m, "tmaf: partial_bp must hold [chunks, Cb * m] float64");
  }
  Backward<T> b{c, x.data_ptr<T>(), grad.data_ptr<T>(), grad_x.data_ptr<T>(), chunk, partial.data_ptr<double>(),
                want_bp ? positions.data_ptr<double>() : nullptr, Bump{inv_a, kc},
                want_bp ? partial_bp.data_ptr<double>() : nullptr};
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
