// Selective scan (Mamba, Algorithm 2) on CPU: forward and backward.
//
// Semantics are those of genomamba.ops.reference.selective_scan_ref (mamba_ssm's selective_scan_fn):
//   delta' = softplus?(delta + delta_bias)
//   x_t    = exp(delta'_t * A) * x_{t-1} + delta'_t * u_t * B_t        (per channel, vector over n)
//   y_t    = <x_t, C_t>;   out_t = (y_t + D * u_t) * silu(z_t)
//
// Layout contract (the Python launcher guarantees it): every tensor is contiguous and of one dtype
// (float or double); u, delta, z: (b, d, l); A: (d, n); D, delta_bias: (d,); B, C are passed
// *transposed* as (b, g, l, n) so that the n values of one time step are contiguous and the inner
// loops over n vectorise; channel c reads group c / (d / g).
//
// Work split: each (batch, channel) pair is an independent sequential recurrence, so threads take
// blocks of channels (from a shared counter, see run_tasks) and the compiler vectorises over the
// state dimension n.
//
// Memory: time runs in chunks of kChunk steps. The forward keeps, when asked, only the state at the
// start of every chunk (b*d, l/kChunk, n). The backward walks chunks last to first, recomputes the
// chunk's states from that checkpoint into a thread-local (kChunk+1, n) buffer and runs the adjoint
// recurrence through it; the dB/dC partial sums of a span of chunks sit in a scratch of about
// 32 MiB each. Nothing of size (b, d, l, n) ever exists, even at l = 2^20.
//
// Determinism: dB and dC sum contributions of all channels of a group. Channels are cut into fixed
// blocks whose size depends only on the shapes (never on the thread count); a block sums its channels
// in ascending order into its own scratch, and scratches are then summed in ascending block order.
// dA, dD and d(delta_bias) are accumulated per (batch, channel) and summed over batch in order.
// The result is bit-identical from run to run and for any number of threads.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/python.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace genomamba_cpu {

// Time steps per chunk: the per-thread buffers (states, decays, dB/dC scratch; ~4 * kChunk * n
// values) stay in L2, and the checkpoint tensor is 1/kChunk of a (b, d, l, n) tensor.
constexpr int64_t kChunk = 256;

// exp for float in a branch-free form gcc vectorises inside `omp simd` loops (libm's expf is a
// scalar call and would dominate the forward). Cody-Waite reduction x = k*ln2 + r, |r| <= ln2/2,
// then Cephes' degree-6 polynomial for e^r: relative error ~1 ulp over the clamped range.
static inline float exp_vec(float x) {
  constexpr float kHi = 88.3762626647949f;   // above: overflow to +inf
  constexpr float kLo = -87.3365447504f;      // below: flush to 0 (true value is < 1.2e-38)
  float xc = x > kHi ? kHi : x;
  xc = xc < kLo ? kLo : xc;
  // Round to nearest by adding and subtracting 1.5 * 2^23: std::floor would be a libm call here
  // (gcc only inlines it under -fno-trapping-math) and would stop the loop from vectorising.
  const float k = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - k * 0.693359375f;      // ln2 split in two so k*ln2_hi is exact
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // 2^k built from its exponent bits; k is in [-126, 127] thanks to the clamp.
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float res = p * scale;
  res = x < kLo ? 0.0f : res;
  res = x > kHi ? std::numeric_limits<float>::infinity() : res;
  res = x != x ? x : res;  // NaN in, NaN out
  return res;
}

// log(1 + w) for w in [0, 1], branch-free: Cephes' logf polynomial after reducing 1 + w to
// m in [sqrt(1/2), sqrt(2)). f = m - 1 is formed from w itself, never as (1 + w) - 1, so a tiny w
// (softplus of a very negative delta) keeps its full relative precision.
static inline float log1p_unit(float w) {
  const bool big = w > 0.41421356f;
  const float f = big ? 0.5f * (w - 1.0f) : w;
  const float e = big ? 1.0f : 0.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += e * -2.12194440e-4f;
  y += -0.5f * z;
  return f + y + e * 0.693359375f;
}

// The per-step scalar functions below are used inside `omp simd` loops over a chunk of time steps:
// the float versions are built from the branch-free functions above and vectorise; the double versions
// call libm (fp64 is the accuracy path, parity at ~1e-12, not the speed path).
static inline double exp_vec(double x) { return std::exp(x); }

// torch's softplus(beta=1, threshold=20) and its derivative, so parity holds at large inputs too.
static inline float softplus_v(float v) {
  const float a = v < 0.0f ? -v : v;
  const float r = (v > 0.0f ? v : 0.0f) + log1p_unit(exp_vec(-a));  // stable for either sign
  return v > 20.0f ? v : r;
}
static inline double softplus_v(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

static inline float sigmoid_v(float v) { return 1.0f / (1.0f + exp_vec(-v)); }
static inline double sigmoid_v(double v) { return 1.0 / (1.0 + std::exp(-v)); }

template <typename T>
static inline T softplus_grad_v(T v) {
  return v > T(20) ? T(1) : sigmoid_v(v);
}

// Sum of p[0..N) as a pairwise tree, N a power of two. gcc evaluates an `omp simd reduction` over
// a short loop in source order (a chain of N dependent scalar adds per time step, which made the
// recurrence latency-bound); the tree compiles to a handful of vector adds and shuffles.
template <typename T, int64_t N>
static inline T tree_sum(T* p) {
  static_assert(N > 0 && (N & (N - 1)) == 0, "tree_sum: N must be a power of two");
  for (int64_t w = N / 2; w >= 1; w /= 2) {
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) p[j] += p[j + w];
  }
  return p[0];
}

template <typename T>
struct ScanArgs {
  int64_t batch, dim, len, n, groups;
  bool softplus;
  const T* u;      // (b, d, l)
  const T* delta;  // (b, d, l)
  const T* A;      // (d, n)
  const T* B;      // (b, g, l, n)
  const T* C;      // (b, g, l, n)
  const T* D;      // (d,) or null
  const T* z;      // (b, d, l) or null
  const T* bias;   // (d,) or null

  int64_t nchunk() const { return std::max<int64_t>(1, (len + kChunk - 1) / kChunk); }
};

// Pointers of one (batch, channel) pair.
template <typename T>
struct Channel {
  const T *u, *delta, *z, *A, *B, *C;
  T D, bias;
  int64_t index;  // batch * dim + channel

  Channel(const ScanArgs<T>& a, int64_t ch) : index(ch) {
    const int64_t bi = ch / a.dim, di = ch % a.dim, gi = di / (a.dim / a.groups);
    u = a.u + ch * a.len;
    delta = a.delta + ch * a.len;
    z = a.z ? a.z + ch * a.len : nullptr;
    A = a.A + di * a.n;
    B = a.B + (bi * a.groups + gi) * a.len * a.n;
    C = a.C + (bi * a.groups + gi) * a.len * a.n;
    D = a.D ? a.D[di] : T(0);
    bias = a.bias ? a.bias[di] : T(0);
  }
};

// One chunk of one channel, steps [t0, t0 + steps), from the state in row 0 of X: fills delta'_t
// (dt), the decays exp(delta'_t * A) (dA, row per step), the states x_t (X rows 1..steps) and
// y_t = <x_t, C_t>. Forward and backward share it, so the backward's recomputed states are
// bit-identical to the forward's.
template <typename T, int64_t NS>
static void scan_chunk(const ScanArgs<T>& a, const Channel<T>& c, int64_t t0, int64_t steps, T* dt, T* dA,
                       T* X, T* y) {
  const int64_t n = NS > 0 ? NS : a.n;
  const T* delta = c.delta + t0;
  const T bias = c.bias;
  if (a.softplus) {
#pragma omp simd
    for (int64_t i = 0; i < steps; ++i) dt[i] = softplus_v(delta[i] + bias);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < steps; ++i) dt[i] = delta[i] + bias;
  }
  // Decays first, as one pass with no dependency between steps: this is where the exps are, and
  // it vectorises fully; the recurrence below is then one FMA per state per step.
  for (int64_t i = 0; i < steps; ++i) {
    const T d = dt[i];
    T* row = dA + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) row[j] = exp_vec(d * c.A[j]);
  }
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = t0 + i;
    const T dtu = dt[i] * c.u[t];
    const T* Bt = c.B + t * n;
    const T* Ct = c.C + t * n;
    const T* at = dA + i * n;
    const T* xp = X + i * n;
    T* xn = X + (i + 1) * n;
    if constexpr (NS > 0) {
      T p[NS];
#pragma omp simd
      for (int64_t j = 0; j < NS; ++j) {
        xn[j] = at[j] * xp[j] + dtu * Bt[j];
        p[j] = xn[j] * Ct[j];
      }
      y[i] = tree_sum<T, NS>(p);
    } else {
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < n; ++j) {
        xn[j] = at[j] * xp[j] + dtu * Bt[j];
        acc += xn[j] * Ct[j];
      }
      y[i] = acc;
    }
  }
}

// Work sharing for independent tasks: threads take tasks one at a time from a shared counter
// instead of a fixed 1/nthreads share each, so a thread the OS preempts on a busy machine does not
// leave the others idle at the end of the region. `setup()` makes one thread's workspace;
// `body(task, ws)` must give the same result whichever thread runs it (so results stay
// bit-identical for any schedule).
template <typename Setup, typename Body>
static void run_tasks(int64_t ntask, const Setup& setup, const Body& body) {
  if (ntask <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ntask));
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto ws = setup();
    for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < ntask;
         t = next.fetch_add(1, std::memory_order_relaxed)) {
      body(t, ws);
    }
  });
}

// Channels per task: large enough that a task's channels share the B/C chunk in cache (and, in
// the backward, one dB/dC scratch), small enough to leave >= 16 tasks to share out.
static inline int64_t channel_block(int64_t nch, int64_t limit) {
  return std::max<int64_t>(1, std::min<int64_t>({16, limit, nch / 16}));
}

template <typename T>
struct Workspace {  // one thread's buffers for one chunk of one channel
  std::vector<T> dt, dA, X, y, gy, sg, dAc, state;
  Workspace(int64_t n, int64_t nstate)
      : dt(kChunk), dA(kChunk * n), X((kChunk + 1) * n), y(kChunk), gy(kChunk), sg(kChunk), dAc(n),
        state(nstate * n) {}
};

// ------------------------------------------------------------------------------------ forward

// NS > 0: the state size n is the compile-time constant NS (the common d_state = 16), so the inner
// loops over n become straight-line vector code with no trip-count or remainder handling.
template <typename T, int64_t NS>
static void forward_impl(const ScanArgs<T>& a, const T* x0, T* out, T* xlast, T* ckpt) {
  const int64_t n = NS > 0 ? NS : a.n, L = a.len, nchunk = a.nchunk(), nch = a.batch * a.dim;
  const int64_t blk = channel_block(nch, nch);
  run_tasks(
      (nch + blk - 1) / blk, [&] { return Workspace<T>(n, blk); },
      [&](int64_t task, Workspace<T>& ws) {
        const int64_t c0 = task * blk, c1 = std::min(nch, c0 + blk);
        // Chunk-major order: every channel of the task advances one chunk before any goes on, so
        // the chunk of B and C they share stays in cache instead of being streamed from memory
        // once per channel (that dominates at long l). States between chunks live in ws.state.
        T* state = ws.state.data();
        if (x0) {
          std::copy(x0 + c0 * n, x0 + c1 * n, state);
        } else {
          std::fill(state, state + (c1 - c0) * n, T(0));
        }
        for (int64_t k = 0; k < nchunk; ++k) {
          const int64_t t0 = k * kChunk, steps = std::min(kChunk, L - t0);
          for (int64_t ch = c0; ch < c1; ++ch) {
            T* x = state + (ch - c0) * n;
            if (ckpt) std::copy(x, x + n, ckpt + (ch * nchunk + k) * n);
            if (steps <= 0) continue;
            const Channel<T> c(a, ch);
            T* X = ws.X.data();
            T* y = ws.y.data();
            std::copy(x, x + n, X);  // row 0: the state entering the chunk
            scan_chunk<T, NS>(a, c, t0, steps, ws.dt.data(), ws.dA.data(), X, y);
            std::copy(X + steps * n, X + (steps + 1) * n, x);
            const T* u = c.u + t0;
            T* o = out + ch * L + t0;
            const T Dv = c.D;
            if (c.z) {
              const T* z = c.z + t0;
#pragma omp simd
              for (int64_t i = 0; i < steps; ++i) o[i] = (y[i] + Dv * u[i]) * (z[i] * sigmoid_v(z[i]));
            } else {
#pragma omp simd
              for (int64_t i = 0; i < steps; ++i) o[i] = y[i] + Dv * u[i];
            }
          }
        }
        std::copy(state, state + (c1 - c0) * n, xlast + c0 * n);
      });
}

// ----------------------------------------------------------------------------------- backward

struct BackwardSums {  // per (batch, channel) running sums over time, in double
  double* dA;          // (b*d, n)
  double* dD;          // (b*d,)
  double* dbias;       // (b*d,)
};

template <typename T, int64_t NS>
static void backward_impl(const ScanArgs<T>& a, const T* ckpt, const T* dout, const T* dxlast, T* du,
                          T* ddelta, T* dz, T* dB, T* dC, T* dx0, BackwardSums sums) {
  const int64_t n = NS > 0 ? NS : a.n, L = a.len, nchunk = a.nchunk();
  const int64_t nch = a.batch * a.dim, cpg = a.dim / a.groups;
  // Channel block size: a function of the shapes only (see determinism note at the top). The dB/dC
  // scratch traffic is proportional to the number of blocks, so blocks are as large as possible
  // (up to 16 channels) while keeping >= 16 of them for the threads to share.
  const int64_t blk = channel_block(nch, cpg);
  const int64_t nblk_g = (cpg + blk - 1) / blk;  // blocks per (batch, group)
  const int64_t ntask = a.batch * a.groups * nblk_g;

  // Adjoint carried across chunk boundaries: q = a_{t+1} * h_{t+1}, the gradient flowing into x_t
  // from later steps; at the end of the sequence it is the gradient of the final state.
  std::vector<T> carry(nch * n, T(0));
  if (dxlast) std::copy(dxlast, dxlast + nch * n, carry.begin());
  std::fill(sums.dA, sums.dA + nch * n, 0.0);
  std::fill(sums.dD, sums.dD + nch, 0.0);
  std::fill(sums.dbias, sums.dbias + nch, 0.0);
  // Chunks are processed in spans of `span` chunks per parallel region: fewer regions (each one a
  // barrier, which costs a scheduler time slice on a busy machine) at the price of a scratch that
  // holds the whole span. `span` depends on the shapes only, never on the thread count.
  const int64_t per_chunk = ntask * kChunk * n;  // scratch elements per chunk (each of dB, dC)
  const int64_t budget = (int64_t(32) << 20) / static_cast<int64_t>(sizeof(T));  // 32 MiB each
  const int64_t span =
      std::max<int64_t>(1, std::min<int64_t>(nchunk, budget / std::max<int64_t>(1, per_chunk)));
  const int64_t nspan = (nchunk + span - 1) / span;
  std::vector<T> scratchB(span * per_chunk), scratchC(span * per_chunk);

  for (int64_t sp = nspan - 1; sp >= 0; --sp) {
    const int64_t kbeg = sp * span, kend = std::min(nchunk, kbeg + span);
    const int64_t tbeg = kbeg * kChunk, tend = std::min(L, kend * kChunk);
    if (tend <= tbeg) continue;
    run_tasks(ntask, [&] { return Workspace<T>(n, 0); }, [&](int64_t task, Workspace<T>& ws) {
      std::vector<T>&dt = ws.dt, &dA = ws.dA, &X = ws.X, &y = ws.y, &gy = ws.gy, &sg = ws.sg, &dAc = ws.dAc;
      {
        const int64_t bg = task / nblk_g, bi = bg / a.groups, gi = bg % a.groups;
        const int64_t first = gi * cpg + (task % nblk_g) * blk;
        const int64_t last = std::min(first + blk, (gi + 1) * cpg);
        T* sB_task = scratchB.data() + task * span * kChunk * n;
        T* sC_task = scratchC.data() + task * span * kChunk * n;
        std::fill(sB_task, sB_task + span * kChunk * n, T(0));
        std::fill(sC_task, sC_task + span * kChunk * n, T(0));
        for (int64_t di = first; di < last; ++di) {
          const int64_t ch = bi * a.dim + di;
          const Channel<T> c(a, ch);
          for (int64_t k = kend - 1; k >= kbeg; --k) {
            const int64_t t0 = k * kChunk, steps = std::min(kChunk, L - t0);
            T* sB = sB_task + (k - kbeg) * kChunk * n;
            T* sC = sC_task + (k - kbeg) * kChunk * n;
            // Recompute this chunk's states: X row i holds x_{t0+i-1} (row 0 is the checkpoint).
            std::copy(ckpt + (ch * nchunk + k) * n, ckpt + (ch * nchunk + k + 1) * n, X.data());
            scan_chunk<T, NS>(a, c, t0, steps, dt.data(), dA.data(), X.data(), y.data());

            // Per-step scalars, vectorised over the chunk before the sequential part:
            // gy = dL/dy_t (through the gate), dz, and softplus' for delta.
            const T* u = c.u + t0;
            const T* go = dout + ch * L + t0;
            const T Dv = c.D;
            T dD_acc = 0;
            if (c.z) {
              const T* z = c.z + t0;
              T* dzc = dz + ch * L + t0;
#pragma omp simd reduction(+ : dD_acc)
              for (int64_t i = 0; i < steps; ++i) {
                const T s = sigmoid_v(z[i]);
                dzc[i] = go[i] * (y[i] + Dv * u[i]) * s * (T(1) + z[i] * (T(1) - s));
                gy[i] = go[i] * z[i] * s;
                dD_acc += gy[i] * u[i];
              }
            } else {
#pragma omp simd reduction(+ : dD_acc)
              for (int64_t i = 0; i < steps; ++i) {
                gy[i] = go[i];
                dD_acc += gy[i] * u[i];
              }
            }
            if (a.softplus) {
              const T* delta = c.delta + t0;
              const T bias = c.bias;
#pragma omp simd
              for (int64_t i = 0; i < steps; ++i) sg[i] = softplus_grad_v(delta[i] + bias);
            }

            // Adjoint recurrence, last step to first.
            T* q = carry.data() + ch * n;
            T* dAcp = dAc.data();
            std::fill(dAc.begin(), dAc.end(), T(0));
            T dbias_acc = 0;
            const T* Aj = c.A;
            for (int64_t i = steps - 1; i >= 0; --i) {
              const int64_t t = t0 + i;
              const T ut = u[i], d = dt[i], g = gy[i];
              const T* Bt = c.B + t * n;
              const T* Ct = c.C + t * n;
              const T* at = dA.data() + i * n;
              const T* xp = X.data() + i * n;
              const T* xn = X.data() + (i + 1) * n;
              T* sBi = sB + i * n;
              T* sCi = sC + i * n;
              const T du_b = d * ut;
              T hB = 0, wA = 0;  // sum_j h_j B_j and sum_j A_j w_j
              if constexpr (NS > 0) {
                T pb[NS], pw[NS];
#pragma omp simd
                for (int64_t j = 0; j < NS; ++j) {
                  const T h = g * Ct[j] + q[j];   // dL/dx_t
                  const T w = h * at[j] * xp[j];  // dL/d(delta' A) through the decay
                  sCi[j] += g * xn[j];
                  sBi[j] += h * du_b;
                  pb[j] = h * Bt[j];
                  dAcp[j] += d * w;
                  pw[j] = Aj[j] * w;
                  q[j] = at[j] * h;
                }
                hB = tree_sum<T, NS>(pb);
                wA = tree_sum<T, NS>(pw);
              } else {
#pragma omp simd reduction(+ : hB, wA)
                for (int64_t j = 0; j < n; ++j) {
                  const T h = g * Ct[j] + q[j];
                  const T w = h * at[j] * xp[j];
                  sCi[j] += g * xn[j];
                  sBi[j] += h * du_b;
                  hB += h * Bt[j];
                  dAcp[j] += d * w;
                  wA += Aj[j] * w;
                  q[j] = at[j] * h;
                }
              }
              T dd = wA + ut * hB;  // dL/d delta'_t
              if (a.softplus) dd *= sg[i];
              ddelta[ch * L + t] = dd;
              dbias_acc += dd;
              du[ch * L + t] = g * Dv + d * hB;
            }
            double* sA = sums.dA + ch * n;
            for (int64_t j = 0; j < n; ++j) sA[j] += static_cast<double>(dAc[j]);
            sums.dD[ch] += static_cast<double>(dD_acc);
            sums.dbias[ch] += static_cast<double>(dbias_acc);
          }
        }
      }
    });
    // dB, dC rows of this span: sum the block scratches in ascending block order.
    const int64_t width = tend - tbeg, rows = a.batch * a.groups * width;
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t bg = r / width, tt = r % width;  // tt: step within the span
        T* ob = dB + (bg * L + tbeg + tt) * n;
        T* oc = dC + (bg * L + tbeg + tt) * n;
        for (int64_t j = 0; j < n; ++j) ob[j] = oc[j] = T(0);
        for (int64_t bk = 0; bk < nblk_g; ++bk) {
          const int64_t off = ((bg * nblk_g + bk) * span * kChunk + tt) * n;
          const T* sb = scratchB.data() + off;
          const T* sc = scratchC.data() + off;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            ob[j] += sb[j];
            oc[j] += sc[j];
          }
        }
      }
    });
  }
  std::copy(carry.begin(), carry.end(), dx0);  // after step 0, q is dL/d(initial state)
}

// ------------------------------------------------------------------------------ host wrappers

static void check_common(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                         const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                         const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(u.dim() == 3, "u: expected (b, d, l), got ", u.sizes());
  const int64_t b = u.size(0), d = u.size(1), l = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == d, "A: expected (", d, ", n), got ", A.sizes());
  const int64_t n = A.size(1);
  TORCH_CHECK(B.dim() == 4 && B.size(0) == b && B.size(2) == l && B.size(3) == n,
              "B: expected transposed (b, g, l, n), got ", B.sizes());
  TORCH_CHECK(C.sizes() == B.sizes(), "C: expected ", B.sizes(), ", got ", C.sizes());
  const int64_t g = B.size(1);
  TORCH_CHECK(g >= 1 && d % g == 0, "B/C: groups g=", g, " must divide d=", d);
  TORCH_CHECK(delta.sizes() == u.sizes(), "delta: expected ", u.sizes(), ", got ", delta.sizes());
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == u.scalar_type(), name, ": dtype ", t.scalar_type(), " != u's ",
                u.scalar_type());
    TORCH_CHECK(t.is_contiguous(), name, ": must be contiguous");
    TORCH_CHECK(t.device().is_cpu(), name, ": must be a CPU tensor");
  };
  same(u, "u");
  same(delta, "delta");
  same(A, "A");
  same(B, "B");
  same(C, "C");
  if (D) {
    same(*D, "D");
    TORCH_CHECK(D->dim() == 1 && D->size(0) == d, "D: expected (", d, "), got ", D->sizes());
  }
  if (bias) {
    same(*bias, "delta_bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == d, "delta_bias: expected (", d, "), got ",
                bias->sizes());
  }
  if (z) {
    same(*z, "z");
    TORCH_CHECK(z->sizes() == u.sizes(), "z: expected ", u.sizes(), ", got ", z->sizes());
  }
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "selective_scan_cpu: float32 or float64 only (upcast half types first)");
}

template <typename T>
static ScanArgs<T> make_args(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                             const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                             const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                             bool softplus) {
  ScanArgs<T> a;
  a.batch = u.size(0);
  a.dim = u.size(1);
  a.len = u.size(2);
  a.n = A.size(1);
  a.groups = B.size(1);
  a.softplus = softplus;
  a.u = u.data_ptr<T>();
  a.delta = delta.data_ptr<T>();
  a.A = A.data_ptr<T>();
  a.B = B.data_ptr<T>();
  a.C = C.data_ptr<T>();
  a.D = D ? D->data_ptr<T>() : nullptr;
  a.z = z ? z->data_ptr<T>() : nullptr;
  a.bias = bias ? bias->data_ptr<T>() : nullptr;
  return a;
}

// Returns (out (b, d, l), final state (b, d, n), checkpoints (b, d, nchunk, n) or empty).
std::vector<at::Tensor> fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                            const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                            const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& x0, bool softplus, bool save_ckpt) {
  check_common(u, delta, A, B, C, D, z, bias);
  const int64_t b = u.size(0), d = u.size(1), n = A.size(1);
  if (x0) {
    TORCH_CHECK(x0->scalar_type() == u.scalar_type() && x0->is_contiguous(),
                "initial_state: must be contiguous with u's dtype");
    TORCH_CHECK(x0->dim() == 3 && x0->size(0) == b && x0->size(1) == d && x0->size(2) == n,
                "initial_state: expected (", b, ", ", d, ", ", n, "), got ", x0->sizes());
  }
  at::Tensor out = at::empty_like(u);
  at::Tensor xlast = at::empty({b, d, n}, u.options());
  const int64_t nchunk = std::max<int64_t>(1, (u.size(2) + kChunk - 1) / kChunk);
  at::Tensor ckpt = save_ckpt ? at::empty({b, d, nchunk, n}, u.options()) : at::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_fwd", [&] {
    const auto a = make_args<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    auto run = [&](auto impl) {
      impl(a, x0 ? x0->data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), xlast.data_ptr<scalar_t>(),
           save_ckpt ? ckpt.data_ptr<scalar_t>() : nullptr);
    };
    if (a.n == 16) {
      run(forward_impl<scalar_t, 16>);
    } else {
      run(forward_impl<scalar_t, 0>);
    }
  });
  return {out, xlast, ckpt};
}

// Returns (du, ddelta, dA, dB (b, g, l, n), dC (b, g, l, n), dD, dz (or empty), ddelta_bias, dx0).
std::vector<at::Tensor> bwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                            const at::Tensor& B, const at::Tensor& C, const c10::optional<at::Tensor>& D,
                            const c10::optional<at::Tensor>& z, const c10::optional<at::Tensor>& bias,
                            const at::Tensor& ckpt, const at::Tensor& dout,
                            const c10::optional<at::Tensor>& dxlast, bool softplus) {
  check_common(u, delta, A, B, C, D, z, bias);
  const int64_t b = u.size(0), d = u.size(1), n = A.size(1);
  const int64_t nchunk = std::max<int64_t>(1, (u.size(2) + kChunk - 1) / kChunk);
  TORCH_CHECK(ckpt.scalar_type() == u.scalar_type() && ckpt.is_contiguous() && ckpt.dim() == 4 &&
                  ckpt.size(0) == b && ckpt.size(1) == d && ckpt.size(2) == nchunk && ckpt.size(3) == n,
              "checkpoints: expected contiguous (", b, ", ", d, ", ", nchunk, ", ", n, "), got ",
              ckpt.sizes());
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() && dout.scalar_type() == u.scalar_type(),
              "dout: expected contiguous ", u.sizes());
  if (dxlast) {
    TORCH_CHECK(dxlast->scalar_type() == u.scalar_type() && dxlast->is_contiguous() && dxlast->dim() == 3 &&
                    dxlast->size(0) == b && dxlast->size(1) == d && dxlast->size(2) == n,
                "dfinal_state: expected contiguous (", b, ", ", d, ", ", n, ")");
  }
  at::Tensor du = at::empty_like(u), ddelta = at::empty_like(u);
  at::Tensor dB = at::empty_like(B), dC = at::empty_like(C);
  at::Tensor dz = z ? at::empty_like(u) : at::empty({0}, u.options());
  at::Tensor dx0 = at::empty({b, d, n}, u.options());
  auto dopt = u.options().dtype(at::kDouble);
  at::Tensor sA = at::empty({b, d, n}, dopt), sD = at::empty({b, d}, dopt), sBias = at::empty({b, d}, dopt);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_bwd", [&] {
    const auto a = make_args<scalar_t>(u, delta, A, B, C, D, z, bias, softplus);
    BackwardSums sums{sA.data_ptr<double>(), sD.data_ptr<double>(), sBias.data_ptr<double>()};
    auto run = [&](auto impl) {
      impl(a, ckpt.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(),
           dxlast ? dxlast->data_ptr<scalar_t>() : nullptr,
           du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(), z ? dz.data_ptr<scalar_t>() : nullptr,
           dB.data_ptr<scalar_t>(), dC.data_ptr<scalar_t>(), dx0.data_ptr<scalar_t>(), sums);
    };
    if (a.n == 16) {
      run(backward_impl<scalar_t, 16>);
    } else {
      run(backward_impl<scalar_t, 0>);
    }
  });
  // Sums over the batch, in batch order.
  at::Tensor dA = at::zeros({d, n}, dopt), dD = at::zeros({d}, dopt), dbias = at::zeros({d}, dopt);
  {
    double *pA = dA.data_ptr<double>(), *pD = dD.data_ptr<double>(), *pb = dbias.data_ptr<double>();
    const double *qA = sA.data_ptr<double>(), *qD = sD.data_ptr<double>(), *qb = sBias.data_ptr<double>();
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t i = 0; i < d * n; ++i) pA[i] += qA[bi * d * n + i];
      for (int64_t i = 0; i < d; ++i) {
        pD[i] += qD[bi * d + i];
        pb[i] += qb[bi * d + i];
      }
    }
  }
  dA = dA.to(u.scalar_type());
  dD = dD.to(u.scalar_type());
  dbias = dbias.to(u.scalar_type());
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dx0};
}


// ------------------------------------------------------------------------------ decode step
//
// One token through a pre-norm Mamba block, for decoding (semantics of
// genomamba.ops.reference.mamba_step_ref):
//   residual' = hidden + residual;  h = rmsnorm(residual') * norm_weight
//   (x, z)    = in_proj(h);  window = (conv_state, x);  conv_state <- window[1:]
//   x         = silu(<window, conv_weight> + conv_bias);  (dt_r, B, C) = x_proj(x)
//   dt        = softplus(dt_proj(dt_r) + dt_bias);  state <- exp(dt A) state + dt B x
//   out       = out_proj((<state, C> + D x) * silu(z))
// conv_state and ssm_state are updated in place. The three projections are ATen matrix products;
// everything between them runs here in one pass over the channels. Every tensor is in one dtype T
// (float or double), except ssm_state, which is float or T (math in T either way); every tensor is
// contiguous except conv_state, which is read and written through its strides.

template <typename T, typename S, int64_t NS>
static void step_channels(int64_t batch, int64_t di, int64_t n, int64_t rank, const T* xz, const T* xs,
                          const T* xdbl, const T* dt_w, const T* dt_b, const T* A, const T* D, S* ssm, T* y) {
  const int64_t nn = NS > 0 ? NS : n, width = rank + 2 * nn;
  at::parallel_for(0, batch * di, 256, [&](int64_t lo, int64_t hi) {
    std::vector<T> prod(nn);
    for (int64_t ch = lo; ch < hi; ++ch) {
      const int64_t bi = ch / di, c = ch % di;
      const T x = xs[ch];
      const T* row = xdbl + bi * width;
      const T* Bv = row + rank;
      const T* Cv = Bv + nn;
      T dt = dt_b[c];
      const T* wr = dt_w + c * rank;
      for (int64_t r = 0; r < rank; ++r) dt += wr[r] * row[r];
      dt = softplus_v(dt);
      const T dtx = dt * x;
      const T* a = A + c * nn;
      S* s = ssm + ch * nn;
      T* p = prod.data();
#pragma omp simd
      for (int64_t j = 0; j < nn; ++j) {
        const T v = exp_vec(dt * a[j]) * static_cast<T>(s[j]) + dtx * Bv[j];
        s[j] = static_cast<S>(v);
        p[j] = v * Cv[j];
      }
      T acc;
      if constexpr (NS > 0) {
        acc = tree_sum<T, NS>(p);
      } else {
        acc = 0;
        for (int64_t j = 0; j < nn; ++j) acc += p[j];
      }
      const T zv = xz[bi * 2 * di + di + c];
      y[ch] = (acc + D[c] * x) * (zv * sigmoid_v(zv));
    }
  });
}

// Rolls the conv window of every channel and writes silu(conv) into xs (b, d_inner). conv_state may
// be strided (a cached forward leaves a view of its input there): it is written where it lies.
template <typename T>
static void step_conv(int64_t batch, int64_t di, int64_t w, const T* xz, T* conv_state, const int64_t* cs,
                      const T* conv_w, const T* conv_b, T* xs) {
  for (int64_t bi = 0; bi < batch; ++bi) {
    for (int64_t c = 0; c < di; ++c) {
      const T x = xz[bi * 2 * di + c];
      T* st = conv_state + bi * cs[0] + c * cs[1];
      const T* wc = conv_w + c * w;
      T acc = conv_b ? conv_b[c] : T(0);
      for (int64_t k = 0; k + 1 < w; ++k) acc += st[k * cs[2]] * wc[k];
      acc += x * wc[w - 1];
      for (int64_t k = 0; k + 2 < w; ++k) st[k * cs[2]] = st[(k + 1) * cs[2]];
      if (w > 1) st[(w - 2) * cs[2]] = x;
      xs[bi * di + c] = acc * sigmoid_v(acc);
    }
  }
}

static void check_step_tensor(const at::Tensor& t, const at::Tensor& like, const char* name,
                              at::IntArrayRef sizes) {
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, ": dtype ", t.scalar_type(), " != hidden's ",
              like.scalar_type());
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, ": must be a contiguous CPU tensor");
  TORCH_CHECK(t.sizes() == sizes, name, ": expected ", sizes, ", got ", t.sizes());
}

// hidden, residual: (b, ..., d_model) with b * d_model elements; returns (out, residual') shaped as
// hidden.
std::vector<at::Tensor> step(const at::Tensor& hidden, const c10::optional<at::Tensor>& residual,
                             const at::Tensor& conv_state, const at::Tensor& ssm_state,
                             const at::Tensor& norm_w, double eps, const at::Tensor& in_w,
                             const c10::optional<at::Tensor>& in_b, const at::Tensor& conv_w,
                             const c10::optional<at::Tensor>& conv_b, const at::Tensor& xproj_w,
                             const at::Tensor& dt_w, const at::Tensor& dt_b, const at::Tensor& A,
                             const at::Tensor& D, const at::Tensor& out_w,
                             const c10::optional<at::Tensor>& out_b) {
  TORCH_CHECK(hidden.scalar_type() == at::kFloat || hidden.scalar_type() == at::kDouble,
              "mamba step (C++): float32 or float64 only");
  TORCH_CHECK(hidden.dim() >= 2 && hidden.is_contiguous() && hidden.device().is_cpu(),
              "hidden: expected a contiguous CPU tensor (b, ..., d_model)");
  const int64_t dm = hidden.size(-1), batch = hidden.size(0);
  TORCH_CHECK(hidden.numel() == batch * dm, "hidden: expected one token per sequence, got ", hidden.sizes());
  TORCH_CHECK(conv_state.dim() == 3 && conv_state.size(0) == batch, "conv_state: expected (", batch,
              ", d_inner, d_conv - 1), got ", conv_state.sizes());
  const int64_t di = conv_state.size(1), w = conv_state.size(2) + 1;
  TORCH_CHECK(A.dim() == 2 && A.size(0) == di, "A: expected (", di, ", n), got ", A.sizes());
  const int64_t n = A.size(1);
  TORCH_CHECK(dt_w.dim() == 2 && dt_w.size(0) == di, "dt_proj weight: expected (", di, ", rank), got ",
              dt_w.sizes());
  const int64_t rank = dt_w.size(1);
  if (residual) check_step_tensor(*residual, hidden, "residual", hidden.sizes());
  TORCH_CHECK(conv_state.scalar_type() == hidden.scalar_type() && conv_state.device().is_cpu(),
              "conv_state: expected a CPU tensor of hidden's dtype ", hidden.scalar_type());
  TORCH_CHECK(ssm_state.scalar_type() == hidden.scalar_type() || ssm_state.scalar_type() == at::kFloat,
              "ssm_state: float32 or hidden's dtype, got ", ssm_state.scalar_type());
  TORCH_CHECK(ssm_state.is_contiguous() && ssm_state.device().is_cpu() &&
                  ssm_state.sizes() == at::IntArrayRef({batch, di, n}),
              "ssm_state: expected a contiguous CPU tensor (", batch, ", ", di, ", ", n, "), got ", ssm_state.sizes());
  check_step_tensor(norm_w, hidden, "norm weight", {dm});
  check_step_tensor(in_w, hidden, "in_proj weight", {2 * di, dm});
  if (in_b) check_step_tensor(*in_b, hidden, "in_proj bias", {2 * di});
  TORCH_CHECK(conv_w.numel() == di * w, "conv weight: expected ", di * w, " values, got ", conv_w.sizes());
  check_step_tensor(conv_w, hidden, "conv weight", conv_w.sizes());
  if (conv_b) check_step_tensor(*conv_b, hidden, "conv bias", {di});
  check_step_tensor(xproj_w, hidden, "x_proj weight", {rank + 2 * n, di});
  check_step_tensor(dt_w, hidden, "dt_proj weight", {di, rank});
  check_step_tensor(dt_b, hidden, "dt_proj bias", {di});
  check_step_tensor(A, hidden, "A", {di, n});
  check_step_tensor(D, hidden, "D", {di});
  check_step_tensor(out_w, hidden, "out_proj weight", {dm, di});
  if (out_b) check_step_tensor(*out_b, hidden, "out_proj bias", {dm});

  at::Tensor res = residual ? hidden + *residual : hidden;
  at::Tensor h2 = res.view({batch, dm});
  at::Tensor normed = at::empty({batch, dm}, hidden.options());
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "mamba_step_norm", [&] {
    const scalar_t* r = h2.data_ptr<scalar_t>();
    const scalar_t* g = norm_w.data_ptr<scalar_t>();
    scalar_t* o = normed.data_ptr<scalar_t>();
    for (int64_t bi = 0; bi < batch; ++bi) {
      scalar_t ss = 0;
      for (int64_t k = 0; k < dm; ++k) ss += r[bi * dm + k] * r[bi * dm + k];
      const scalar_t inv = scalar_t(1) / std::sqrt(ss / scalar_t(dm) + scalar_t(eps));
      for (int64_t k = 0; k < dm; ++k) o[bi * dm + k] = r[bi * dm + k] * inv * g[k];
    }
  });
  at::Tensor xz = in_b ? at::addmm(*in_b, normed, in_w.t()) : at::mm(normed, in_w.t());  // (b, 2 di)
  at::Tensor xs = at::empty({batch, di}, hidden.options());
  at::Tensor y = at::empty({batch, di}, hidden.options());
  AT_DISPATCH_FLOATING_TYPES(hidden.scalar_type(), "mamba_step", [&] {
    step_conv<scalar_t>(batch, di, w, xz.data_ptr<scalar_t>(), conv_state.data_ptr<scalar_t>(),
                        conv_state.strides().data(), conv_w.data_ptr<scalar_t>(),
                        conv_b ? conv_b->data_ptr<scalar_t>() : nullptr, xs.data_ptr<scalar_t>());
    at::Tensor xdbl = at::mm(xs, xproj_w.t()).contiguous();  // (b, rank + 2n)
    auto run = [&](auto* ssm, auto impl) {
      impl(batch, di, n, rank, xz.data_ptr<scalar_t>(), xs.data_ptr<scalar_t>(), xdbl.data_ptr<scalar_t>(),
           dt_w.data_ptr<scalar_t>(), dt_b.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), D.data_ptr<scalar_t>(), ssm,
           y.data_ptr<scalar_t>());
    };
    if (ssm_state.scalar_type() == hidden.scalar_type()) {
      using S = scalar_t;
      n == 16 ? run(ssm_state.data_ptr<S>(), step_channels<scalar_t, S, 16>)
              : run(ssm_state.data_ptr<S>(), step_channels<scalar_t, S, 0>);
    } else {
      n == 16 ? run(ssm_state.data_ptr<float>(), step_channels<scalar_t, float, 16>)
              : run(ssm_state.data_ptr<float>(), step_channels<scalar_t, float, 0>);
    }
  });
  at::Tensor out = out_b ? at::addmm(*out_b, y, out_w.t()) : at::mm(y, out_w.t());
  return {out.view(hidden.sizes()), res};
}

}  // namespace genomamba_cpu

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "genomamba selective scan, CPU kernels (forward / backward, decode step)";
  m.def("fwd", &genomamba_cpu::fwd, "selective scan forward");
  m.def("bwd", &genomamba_cpu::bwd, "selective scan backward");
  m.def("step", &genomamba_cpu::step, "one decoding step of a pre-norm Mamba block");
  m.attr("CHUNK") = genomamba_cpu::kChunk;
}
