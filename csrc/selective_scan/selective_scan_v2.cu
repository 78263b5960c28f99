// Selective scan v2: forward and backward, parallel along l inside a warp (CUDA C++).
//
// Semantics: mamba_ssm selective_scan_fn plus initial_state in / final_state out (see
// genomamba/ops/reference.py). fp32 state and accumulation; u, delta, z, B, C, dout in T.
//
// Work layout (both directions). One warp owns one (batch, channel, segment). A tile is 32 * K
// consecutive tokens; lane i owns tokens [i*K, i*K + K) of the tile, loaded with 16-byte vector
// loads straight from global memory (no shared-memory staging, no __syncthreads in the forward).
// For each state n the lane folds its K tokens into one affine map h -> A*h + B, the warp combines
// the 32 maps with a shuffle scan (log2(32) = 5 steps), and the lane replays its K tokens from the
// true entering state. The state crossing tiles is one float per n per warp (shared memory). Why:
// v1 walked tokens one by one per thread (a dependent chain per token); here each lane has K
// independent exp2 per n in flight, and the scan's shuffle cost (~12 per n per tile) is amortised
// over K tokens. Channels of one block (W warps) share a group, so B/C rows are L1 hits for all
// but the first warp that touches them.
//
// Long sequences: l is cut into segments of whole tiles, one warp per (b, d, segment), so that
// b*d small still fills the GPU.
//   forward:  fwd_kernel runs every segment from zero (segment 0 from initial_state) and writes its
//             end state and sum(delta); fwd_combine_kernel chains the segments (tiny, sequential
//             over segments); fwd_fix_kernel adds the carried-in state's contribution
//             y_t += sum_n C_tn * exp(A_n * cumdelta_t) * carry_n to each segment's outputs. The
//             factor is a decay, so the fix-up is stable, and it stops once every decay is below
//             2^-kCutLog2 (for Mamba's A <= -1 and delta ~ 0.02 after ~2000 tokens), so for long
//             segments it costs a small fraction of a pass.
//   backward: needs h_{t-1} at every token, so the forward (when autograd needs it) also saves the
//             state at every tile start and each tile's sum(delta) (tstate, ~0.13 B per token and
//             channel). The reverse carry (dL/dh entering a segment from the right) is chained the
//             same way: bwd_summary_kernel (early-exit, like the fix-up) gives each segment's
//             contribution from zero, bwd_combine_kernel chains them right to left (one block
//             per (b, channel): a fixed-order sum of each segment's tile sums of delta), and
//             bwd_kernel then runs each segment, tiles right to left, with the true carry.
// Determinism: no float atomics. dB/dC: the W warps (channels) of a block write per-token partials
// to shared memory, summed over warps in a fixed order and written as per-block partials
// (b, g, blocks, n, l) fp32, then summed over blocks in a fixed order (by torch, or by
// bc_reduce_kernel straight into B's dtype, as set_bc_reduce says). dA, dD,
// d(delta_bias): per-warp partials, lane sums in fixed order, summed by torch.
// Indexing is int64 wherever a product of sizes appears.

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>

namespace ssv2 {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFull = 0xffffffffu;
// fix-up / summary passes skip a state from the first tile where its decay factor is below
// 2^-kCutLog2, and stop once every state's is: a term of relative size 2^-64 cannot change an fp32
// result
constexpr float kCutLog2 = 64.f;
constexpr int kMaxWarps = 16;
// backward: blocks of up to 8 warps take the builds whose launch bounds let ptxas use up to 255
// registers a thread (MINB = 1) or 128 (MINB = 2); 9..16 warps take the wide build (K = 8 only: one
// 512-thread block per SM, capped at 128 registers, as MINB = 2; the K = 16 backward spilled ~0.9 KB a
// thread there). A wider block sums the dB/dC of more channels before writing its partials, so the
// partials (and their reduction over blocks) shrink by the same factor.
constexpr int kMaxWarpsBwd = 8;
constexpr int kMaxWarpsBwdWide = 16;

struct Params {
  const void *u, *dt, *z, *B, *C, *dout;
  const float *A, *D, *bias, *h0, *dfinal;
  void *out, *du, *ddt, *dz;
  float *final_state, *hend, *dsum_seg, *carry, *tstate;  // tstate: (b, d, ntiles, n + 1)
  float *dBC_part;       // (2, b, g, nblk_pg, n, l)
  float *dA_part;        // (b, S, d, n)
  float *dD_part, *dbias_part;  // (b, S, d)
  float *dh0;            // (b, d, n)
  float *P;              // bwd summaries (b, S, d, n)
  int64_t b, d, n, l, g, dpg, nblk_pg;
  int64_t s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_ob, s_od, s_gb, s_gd;  // u, delta, z, out, dout
  int64_t s_xb, s_xd;  // du, ddelta, dz and the backward's out (one layout, the caller's or contiguous)
  int64_t s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn, s_Ad, s_An;
  int64_t ntiles, seg_tiles, nseg;
  int64_t ns;  // backward: states whose dB/dC partials are reduced per pair of block barriers
  bool has_D, has_z, has_bias, softplus, vec, save;
  bool state_exit;  // fix-up / summaries: a state drops out once its own decay is complete
  // B/C rows copied into shared memory this many states ahead of their use (0: loaded at use); the
  // main backward (pf_bwd) and the fix-up / reverse-summary passes (pf_fix); pf_off: where the
  // per-warp rings start in the kernel's dynamic shared memory, in floats
  int pf_bwd, pf_fix;
  int64_t pf_off;
  bool l2pf;  // PF builds: L2 prefetch hints for the rows of the tile after next (no effect on results)
};

template <typename T> __device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }
template <typename T> __device__ __forceinline__ T from_f(float x) { return static_cast<T>(x); }

// one MUFU.EX2; below 2^-126 flushes to zero, which only ends a decay that is already complete
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
// The activations of the scan, without branches and with one special-function instruction each
// where possible (per token they sit next to 16 exponentials of the states, on the same unit).
// softplus: log(1 + e^x) = max(x, 0) + log1p(e), e = e^-|x| in (0, 1]; log1p(e) = e q(e) with q a
// degree-8 polynomial fitted to log1p(e) / e on [0, 1] (relative error below 2e-7 in fp32 over the
// whole range, checked by tests/ops/test_cuda_activations.py); one exponential and nine FMAs. Above
// x = 20 the second term is below half an ulp of x, as torch's threshold assumes; below -87 e
// flushes to zero and softplus to 0, as in fp32.
__device__ __forceinline__ float softplus_f(float x) {
  const float e = ex2(-fabsf(x) * kLog2e);
  float q = 0.005232691299170256f;
  q = fmaf(q, e, -0.029505226761102676f);
  q = fmaf(q, e, 0.07822593301534653f);
  q = fmaf(q, e, -0.13663244247436523f);
  q = fmaf(q, e, 0.19106006622314453f);
  q = fmaf(q, e, -0.2484298199415207f);
  q = fmaf(q, e, 0.3331909775733948f);
  q = fmaf(q, e, -0.4999949336051941f);
  q = fmaf(q, e, 0.9999999403953552f);
  return fmaf(e, q, fmaxf(x, 0.f));
}
// sigmoid and silu: one exponential and one reciprocal (1 / inf = 0 far below zero)
__device__ __forceinline__ float sigmoid_f(float x) { return __fdividef(1.f, 1.f + ex2(-x * kLog2e)); }
__device__ __forceinline__ float silu_f(float x) { return __fdividef(x, 1.f + ex2(-x * kLog2e)); }

// K consecutive elements from p[t0..t0+K) as float, zero past `tend`. Vector path: 16-byte loads
// (the host checked 16-byte alignment of every row; t0 is a multiple of K, itself a multiple of
// 16 / sizeof(T)); it is taken only for a full run, so the one ragged tile per row loads scalars.
template <typename T, int K>
__device__ __forceinline__ void load_run(const T *p, int64_t t0, int64_t tend, bool vec, float (&v)[K]) {
  constexpr int E = 16 / sizeof(T);
  static_assert(K % E == 0, "K must be a multiple of 16 / sizeof(T)");
  if (vec && t0 + K <= tend) {
#pragma unroll
    for (int q = 0; q < K / E; ++q) {
      alignas(16) T tmp[E];
      *reinterpret_cast<uint4 *>(tmp) = __ldg(reinterpret_cast<const uint4 *>(p + t0 + q * E));
#pragma unroll
      for (int e = 0; e < E; ++e) v[q * E + e] = to_f(tmp[e]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = (t0 + k < tend) ? to_f(p[t0 + k]) : 0.f;
  }
}

template <typename T, int K>
__device__ __forceinline__ void store_run(T *p, int64_t t0, int64_t tend, bool vec, const float (&v)[K]) {
  constexpr int E = 16 / sizeof(T);
  if (vec && t0 + K <= tend) {
#pragma unroll
    for (int q = 0; q < K / E; ++q) {
      alignas(16) T tmp[E];
#pragma unroll
      for (int e = 0; e < E; ++e) tmp[e] = from_f<T>(v[q * E + e]);
      *reinterpret_cast<uint4 *>(p + t0 + q * E) = *reinterpret_cast<const uint4 *>(tmp);
    }
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k)
      if (t0 + k < tend) p[t0 + k] = from_f<T>(v[k]);
  }
}

// 16 bytes of T as float into v[0 .. 16 / sizeof(T)) (bf16: one integer op per value)
template <typename T>
__device__ __forceinline__ void unpack16(const uint4 raw, float *v) {
  constexpr int E = 16 / sizeof(T);
  if constexpr (std::is_same<T, c10::BFloat16>::value) {
    const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[2 * i] = __uint_as_float(w[i] << 16);
      v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  } else {
    alignas(16) T tmp[E];
    *reinterpret_cast<uint4 *>(tmp) = raw;
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = to_f(tmp[e]);
  }
}

// The "lean" forward's loads (fwd_kernel<..., true>): `row` already points at token t0 and `full`
// (vector path allowed and the whole run inside the sequence) is decided once per tile by the caller,
// so the per-state loop carries no 64-bit address arithmetic or alignment tests; bf16 is widened with
// one integer op per value (its bits are the high half of an fp32) instead of PRMT + shift.
template <typename T, int K>
__device__ __forceinline__ void load_lean(const T *row, int64_t t0, int64_t tend, bool full, float (&v)[K]) {
  constexpr int E = 16 / sizeof(T);
  static_assert(K % E == 0, "K must be a multiple of 16 / sizeof(T)");
  if (full) {
#pragma unroll
    for (int q = 0; q < K / E; ++q) unpack16<T>(__ldg(reinterpret_cast<const uint4 *>(row + q * E)), v + q * E);
  } else {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = (t0 + k < tend) ? to_f(row[k]) : 0.f;
  }
}

__device__ __forceinline__ void cp_async16(void *smem_dst, const void *gsrc, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gsrc), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::); }
// 16 bytes global -> shared through L1 (rows that the block's other warps read too)
__device__ __forceinline__ void cp_async16_ca(void *smem_dst, const void *gsrc) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gsrc) : "memory");
}
// wait until at most `pending` (0..3) of this thread's newest copy groups are still in flight; a
// compiler barrier too (the ring's reader loads the slot right after, with no __syncthreads between)
__device__ __forceinline__ void cp_async_wait_upto(int pending) {
  if (pending >= 3) asm volatile("cp.async.wait_group 3;\n" ::: "memory");
  else if (pending == 2) asm volatile("cp.async.wait_group 2;\n" ::: "memory");
  else if (pending == 1) asm volatile("cp.async.wait_group 1;\n" ::: "memory");
  else asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

// Prefetch rings (Params::pf_bwd / pf_fix): each lane copies its own K-token runs of the B and/or C
// rows of states still to come into its warp's ring in shared memory and reads them back itself, so
// no barrier is involved. A slot holds `rows` runs, chunk-major (16-byte chunk q of lane i at
// (q * 32 + i) * 16 bytes): a warp's read of one chunk is 512 contiguous bytes, free of bank conflicts.
template <typename T, int K> struct Ring {
  static constexpr int kChunks = K * static_cast<int>(sizeof(T)) / 16;  // 16-byte chunks of a run
  static constexpr int kRunBytes = kChunks * 32 * 16;                  // one row's runs, all lanes
};

// copy this lane's run of `row` (already at the lane's first token) into slot row `dst` (chunk-major)
template <typename T, int K>
__device__ __forceinline__ void ring_put(char *dst, int lane, const T *row) {
#pragma unroll
  for (int q = 0; q < Ring<T, K>::kChunks; ++q) cp_async16_ca(dst + (q * 32 + lane) * 16, row + q * (16 / sizeof(T)));
}

// this lane's run from slot row `src` as float (bf16 widened with one integer op per value)
template <typename T, int K>
__device__ __forceinline__ void ring_get(const char *src, int lane, float (&v)[K]) {
  constexpr int E = 16 / sizeof(T);
#pragma unroll
  for (int q = 0; q < K / E; ++q) unpack16<T>(*reinterpret_cast<const uint4 *>(src + (q * 32 + lane) * 16), v + q * E);
}

// L2 prefetch hints (Params::l2pf) for rows a pass will read at a later tile: the warp's lanes take the
// 128-byte lines of `nrows` rows (row r at rows(r), already at that tile's first token) that hold
// tokens [0, ntok), addresses inside the rows only. A hint changes no result.
__device__ __forceinline__ void l2_prefetch(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
template <typename T, typename Rows>
__device__ __forceinline__ void l2_rows(Rows rows, int nrows, int64_t ntok, int lane) {
  constexpr int E = 128 / static_cast<int>(sizeof(T));  // tokens per line
  const int lines = static_cast<int>((ntok + E - 1) / E);
  for (int i = lane; i < nrows * lines; i += 32) l2_prefetch(rows(i / lines) + (i % lines) * E);
}

// The fix-up / reverse-summary passes' C-row ring, within one tile: `issue` copies the run of the next
// state the loop will run (skipping, as the loop does, states whose decay is complete by the tile's
// start, cum), `read` gives the run of the state the loop has reached (ragged runs loaded directly).
template <typename T, int K> struct TileRing {
  char *base;
  int depth, put = 0, get = 0;
  int64_t next = 0;
  __device__ __forceinline__ void issue(const Params &p, const float *s_A2, float cum, bool full, int lane,
                                        const T *Cp, int64_t t0) {
    while (next < p.n && p.state_exit && s_A2[next] * cum < -kCutLog2) ++next;
    if (next < p.n && full) ring_put<T, K>(base + put * Ring<T, K>::kRunBytes, lane, Cp + next * p.s_Cn + t0);
    cp_async_commit();
    ++next;
    put = put == depth ? 0 : put + 1;
  }
  __device__ __forceinline__ void read(const Params &p, const float *s_A2, float cum, bool full, int lane,
                                       const T *Cp, int64_t t0, int64_t nn, float (&Cv)[K]) {
    issue(p, s_A2, cum, full, lane, Cp, t0);
    cp_async_wait_upto(depth);
    if (full) ring_get<T, K>(base + get * Ring<T, K>::kRunBytes, lane, Cv);
    else load_run<T, K>(Cp + nn * p.s_Cn, t0, p.l, p.vec, Cv);
    get = get == depth ? 0 : get + 1;
  }
};

__device__ __forceinline__ float warp_sum(float x) {
  // xor butterfly: every lane ends with the same value, summed in a fixed order (deterministic)
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFull, x, off);
  return x;
}

// Inclusive scan over the warp's lanes of affine maps h -> A h + B: afterwards lane i holds lanes
// 0..i composed (lane 0's map applied first). Five rounds of two shuffles.
__device__ __forceinline__ void scan_maps_up(float &A, float &B, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float pa = __shfl_up_sync(kFull, A, off);
    const float pb = __shfl_up_sync(kFull, B, off);
    if (lane >= off) {
      B = A * pb + B;
      A *= pa;
    }
  }
}

// The same from the right: lane i ends holding lanes 31..i composed (lane 31's map applied first),
// for the reverse recurrence of the backward.
__device__ __forceinline__ void scan_maps_down(float &P, float &Q, int lane) {
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float pn = __shfl_down_sync(kFull, P, off);
    const float qn = __shfl_down_sync(kFull, Q, off);
    if (lane + off < 32) {
      Q = P * qn + Q;
      P *= pn;
    }
  }
}

// delta after bias and softplus, zero past the end of the sequence (so a = 1, b = 0 there: the
// state passes unchanged through the padding of the last tile)
template <int K>
__device__ __forceinline__ void prep_delta(const Params &p, int64_t dch, int64_t t0, float (&dl)[K]) {
  const float bias = p.has_bias ? p.bias[dch] : 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    float x = dl[k] + bias;
    if (p.softplus) x = softplus_f(x);
    dl[k] = (t0 + k < p.l) ? x : 0.f;
  }
}

// (batch, group, channel) of this warp; channels of one block share a group
struct WarpPos {
  int64_t bi, gi, dch, seg, dloc, dblk;
  bool valid;
};
__device__ __forceinline__ WarpPos warp_pos(const Params &p, int warp, int64_t seg_offset) {
  WarpPos w;
  w.gi = blockIdx.x / p.nblk_pg;
  w.dblk = blockIdx.x % p.nblk_pg;
  w.dloc = w.dblk * (blockDim.x / 32) + warp;
  w.valid = w.dloc < p.dpg;
  w.dch = w.gi * p.dpg + (w.valid ? w.dloc : 0);
  w.seg = blockIdx.y + seg_offset;
  w.bi = blockIdx.z;
  return w;
}

// ----------------------------------------------------------------------------- forward

// kLean (chosen by CONFIG["fwd_lean"]): the same algorithm with fewer instructions per (token, state),
// aimed at what the Nsight Compute profile shows limits the forward (instruction count and
// latency, see NOTES.md): B/C row pointers advanced per state and the vector/tail test made once per tile
// (load_lean), the lane's decay product as one ex2 of its summed delta instead of K multiplies, and
// silu(z) with a fast divide instead of the IEEE division's slow path.
// kPair (lean only, CONFIG["fwd_pair_states"]): states two at a time, their folds, shuffle scans and
// replays interleaved (two independent chains per warp instead of one); C is loaded after the scan
// to leave registers for the second state. Every output sums the states in the same order as the
// one-state loop; an odd n ends with one state through that loop.
template <typename T, int K, bool kLean, bool kPair = false>
__global__ void __launch_bounds__(kMaxWarps * 32) fwd_kernel(Params p) {
  extern __shared__ __align__(16) float smem[];  // 16-byte aligned: lets the K-element stores vectorise
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const WarpPos w = warp_pos(p, warp, 0);
  if (!w.valid) return;  // no block-wide barriers in this kernel
  const int64_t n = p.n;
  float *s_A2 = smem + warp * 2 * n;  // A * log2(e) per state
  float *s_h = s_A2 + n;              // state at the current tile start, per state
  for (int64_t j = lane; j < n; j += 32) {
    s_A2[j] = p.A[w.dch * p.s_Ad + j * p.s_An] * kLog2e;
    s_h[j] = (w.seg == 0 && p.h0 != nullptr) ? p.h0[(w.bi * p.d + w.dch) * n + j] : 0.f;
  }
  __syncwarp();
  const T *u = static_cast<const T *>(p.u) + w.bi * p.s_ub + w.dch * p.s_ud;
  const T *dtp = static_cast<const T *>(p.dt) + w.bi * p.s_tb + w.dch * p.s_td;
  const T *Bp = static_cast<const T *>(p.B) + w.bi * p.s_Bb + w.gi * p.s_Bg;
  const T *Cp = static_cast<const T *>(p.C) + w.bi * p.s_Cb + w.gi * p.s_Cg;
  const float Dv = p.has_D ? p.D[w.dch] : 0.f;
  const int64_t tile0 = w.seg * p.seg_tiles;
  const int64_t tile1 = min(tile0 + p.seg_tiles, p.ntiles);
  float lane_dsum = 0.f;

  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t t0 = tile * 32 * K + lane * K;
    const bool full = p.vec && t0 + K <= p.l;
    float dl[K], du[K], y[K];
    if constexpr (kLean) {
      load_lean<T, K>(dtp + t0, t0, p.l, full, dl);
      load_lean<T, K>(u + t0, t0, p.l, full, du);
    } else {
      load_run<T, K>(dtp, t0, p.l, p.vec, dl);
      load_run<T, K>(u, t0, p.l, p.vec, du);
    }
    prep_delta<K>(p, w.dch, t0, dl);
    float tsum = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      y[k] = Dv * du[k];  // D skip folded in up front: u is not needed after this
      du[k] *= dl[k];
      tsum += dl[k];
    }
    lane_dsum += tsum;
    const float lane_sum = tsum;  // this lane's sum(delta) over its K tokens (kLean: its decay product)
    if (p.save) {  // tile-start state and the tile's sum(delta), for the backward
      float *ts = p.tstate + ((w.bi * p.d + w.dch) * p.ntiles + tile) * (n + 1);
      for (int64_t j = lane; j < n; j += 32) ts[j] = s_h[j];
      tsum = warp_sum(tsum);
      if (lane == 0) ts[n] = tsum;
    }
    const T *Brow = Bp + t0, *Crow = Cp + t0;  // kLean: this lane's run of B/C rows, one state at a time
    int64_t nn = 0;
    if constexpr (kPair) {
#pragma unroll 1
      for (; nn + 1 < n; nn += 2) {
        const float a2x = s_A2[nn], a2y = s_A2[nn + 1];
        const float cx = s_h[nn], cy = s_h[nn + 1];
        float Bx[K], By[K], ax[K], ay[K];
        load_lean<T, K>(Brow, t0, p.l, full, Bx);
        load_lean<T, K>(Brow + p.s_Bn, t0, p.l, full, By);
        float Ax = ex2(lane_sum * a2x), Ay = ex2(lane_sum * a2y), Bbx = 0.f, Bby = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          ax[k] = ex2(dl[k] * a2x);
          ay[k] = ex2(dl[k] * a2y);
          Bbx = ax[k] * Bbx + du[k] * Bx[k];
          Bby = ay[k] * Bby + du[k] * By[k];
        }
        if (lane == 0) {
          Bbx = Ax * cx + Bbx;
          Bby = Ay * cy + Bby;
        }
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const float pax = __shfl_up_sync(kFull, Ax, off), pbx = __shfl_up_sync(kFull, Bbx, off);
          const float pay = __shfl_up_sync(kFull, Ay, off), pby = __shfl_up_sync(kFull, Bby, off);
          if (lane >= off) {
            Bbx = Ax * pbx + Bbx;
            Ax *= pax;
            Bby = Ay * pby + Bby;
            Ay *= pay;
          }
        }
        float hx = __shfl_up_sync(kFull, Bbx, 1), hy = __shfl_up_sync(kFull, Bby, 1);
        if (lane == 0) {
          hx = cx;
          hy = cy;
        }
        const float lastx = __shfl_sync(kFull, Bbx, 31), lasty = __shfl_sync(kFull, Bby, 31);
        float Cx[K], Cy[K];
        load_lean<T, K>(Crow, t0, p.l, full, Cx);
        load_lean<T, K>(Crow + p.s_Cn, t0, p.l, full, Cy);
#pragma unroll
        for (int k = 0; k < K; ++k) {
          hx = ax[k] * hx + du[k] * Bx[k];
          hy = ay[k] * hy + du[k] * By[k];
          y[k] += Cx[k] * hx;
          y[k] += Cy[k] * hy;
        }
        Brow += 2 * p.s_Bn;
        Crow += 2 * p.s_Cn;
        __syncwarp();  // every lane has read the carries before they are overwritten
        if (lane == 0) {
          s_h[nn] = lastx;
          s_h[nn + 1] = lasty;
        }
      }
    }
#pragma unroll 1
    for (; nn < n; ++nn) {
      const float a2 = s_A2[nn];
      const float carry = s_h[nn];
      float Bv[K], Cv[K], a[K];
      if constexpr (kLean) {
        load_lean<T, K>(Brow, t0, p.l, full, Bv);
        load_lean<T, K>(Crow, t0, p.l, full, Cv);
        Brow += p.s_Bn;
        Crow += p.s_Cn;
      } else {
        load_run<T, K>(Bp + nn * p.s_Bn, t0, p.l, p.vec, Bv);
        load_run<T, K>(Cp + nn * p.s_Cn, t0, p.l, p.vec, Cv);
      }
      // this lane's K tokens as one affine map h -> Aa * h + Bb
      float Aa = 1.f, Bb = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        a[k] = ex2(dl[k] * a2);
        Bb = a[k] * Bb + du[k] * Bv[k];
        if constexpr (!kLean) Aa *= a[k];
      }
      if constexpr (kLean) Aa = ex2(lane_sum * a2);
      if (lane == 0) Bb = Aa * carry + Bb;  // fold the tile's entering state into lane 0
      // inclusive scan of the maps over lanes; afterwards Bb = state after this lane's last token
      scan_maps_up(Aa, Bb, lane);
      float h = __shfl_up_sync(kFull, Bb, 1);
      if (lane == 0) h = carry;
      const float hlast = __shfl_sync(kFull, Bb, 31);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        h = a[k] * h + du[k] * Bv[k];
        y[k] += Cv[k] * h;
      }
      __syncwarp();  // every lane has read s_h[nn] (carry) before it is overwritten
      if (lane == 0) s_h[nn] = hlast;
    }
    __syncwarp();
    if (p.has_z) {
      float zv[K];
      const T *zp = static_cast<const T *>(p.z) + w.bi * p.s_zb + w.dch * p.s_zd;
      if constexpr (kLean) {
        load_lean<T, K>(zp + t0, t0, p.l, full, zv);
#pragma unroll
        for (int k = 0; k < K; ++k) y[k] *= silu_f(zv[k]);
      } else {
        load_run<T, K>(zp, t0, p.l, p.vec, zv);
#pragma unroll
        for (int k = 0; k < K; ++k) y[k] *= silu_f(zv[k]);
      }
    }
    store_run<T, K>(static_cast<T *>(p.out) + w.bi * p.s_ob + w.dch * p.s_od, t0, p.l, p.vec, y);
  }
  if (p.nseg == 1) {
    for (int64_t j = lane; j < n; j += 32) p.final_state[(w.bi * p.d + w.dch) * n + j] = s_h[j];
  } else {
    const int64_t base = (w.bi * p.nseg + w.seg) * p.d + w.dch;
    for (int64_t j = lane; j < n; j += 32) p.hend[base * n + j] = s_h[j];
    lane_dsum = warp_sum(lane_dsum);
    if (lane == 0) p.dsum_seg[base] = lane_dsum;
  }
}

// state entering segment s = exp(A * dsum(s-1)) * state entering s-1 + end state of s-1 from zero
__global__ void fwd_combine_kernel(Params p) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.b * p.d * p.n) return;
  const int64_t bi = i / (p.d * p.n), dn = i % (p.d * p.n), dc = dn / p.n, nn = dn % p.n;
  const float a2 = p.A[dc * p.s_Ad + nn * p.s_An] * kLog2e;
  float h = p.hend[(bi * p.nseg * p.d + dc) * p.n + nn];  // segment 0 started from h0: exact
  for (int64_t s = 1; s < p.nseg; ++s) {
    const int64_t base = (bi * p.nseg + s) * p.d + dc;
    p.carry[base * p.n + nn] = h;
    h = ex2(p.dsum_seg[base] * a2) * h + p.hend[base * p.n + nn];
  }
  p.final_state[(bi * p.d + dc) * p.n + nn] = h;
}

// inclusive prefix of delta along the segment for this lane's K tokens; returns the tile's total
template <int K>
__device__ __forceinline__ float cum_delta(float base, int lane, float (&dl)[K]) {
  float run = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    run += dl[k];
    dl[k] = run;
  }
  float incl = run;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float x = __shfl_up_sync(kFull, incl, off);
    if (lane >= off) incl += x;
  }
  float excl = __shfl_up_sync(kFull, incl, 1);
  if (lane == 0) excl = 0.f;
#pragma unroll
  for (int k = 0; k < K; ++k) dl[k] += base + excl;
  return __shfl_sync(kFull, incl, 31);
}

// segments >= 1: out_t += silu(z_t) * sum_n C_tn * 2^(A2_n * cum_t) * carry_n, and the saved
// tile-start states get the same carry term; a state drops out at the first tile where its decay is
// below 2^-kCutLog2 (the fast states after a few hundred tokens), and the pass ends once all have
// PF: the build with the C-row prefetch ring (Params::pf_fix states ahead) and the L2 hints
// (Params::l2pf); the PF = false build has neither
template <typename T, int K, bool PF = false>
__global__ void __launch_bounds__(kMaxWarps * 32) fwd_fix_kernel(Params p) {
  extern __shared__ __align__(16) float smem[];  // 16-byte aligned: lets the K-element stores vectorise
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const WarpPos w = warp_pos(p, warp, 1);
  if (!w.valid) return;
  const int64_t n = p.n;
  float *s_A2 = smem + warp * 2 * n;
  float *s_c = s_A2 + n;
  float amax = -INFINITY;  // the slowest decay (A <= 0 expected; A > 0 just never exits early)
  for (int64_t j = lane; j < n; j += 32) {
    s_A2[j] = p.A[w.dch * p.s_Ad + j * p.s_An] * kLog2e;
    s_c[j] = p.carry[((w.bi * p.nseg + w.seg) * p.d + w.dch) * n + j];
    amax = fmaxf(amax, s_A2[j]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFull, amax, off));
  __syncwarp();
  const T *dtp = static_cast<const T *>(p.dt) + w.bi * p.s_tb + w.dch * p.s_td;
  const T *Cp = static_cast<const T *>(p.C) + w.bi * p.s_Cb + w.gi * p.s_Cg;
  T *op = static_cast<T *>(p.out) + w.bi * p.s_ob + w.dch * p.s_od;
  const int64_t tile0 = w.seg * p.seg_tiles;
  const int64_t tile1 = min(tile0 + p.seg_tiles, p.ntiles);
  constexpr int kRB = Ring<T, K>::kRunBytes;
  const int pfd = PF ? p.pf_fix : 0;  // C rows in flight ahead of their use (0: loaded at use)
  char *ring = reinterpret_cast<char *>(smem + p.pf_off) + warp * (pfd + 1) * kRB;
  // L2 hints (PF build): the delta, output, z and C rows of tile tx, issued at the end of tile tx - 2,
  // when the registers of a tile's work are free
  auto hint = [&](int64_t tx) {
    const int64_t nx = tx * 32 * K, ntok = min(static_cast<int64_t>(32 * K), p.l - nx);
    const T *zr = static_cast<const T *>(p.z) + w.bi * p.s_zb + w.dch * p.s_zd;
    l2_rows<T>([&](int r) { return (r == 0 ? dtp : r == 1 ? static_cast<const T *>(op) : zr) + nx; },
               p.has_z ? 3 : 2, ntok, lane);
    l2_rows<T>([&](int r) { return Cp + r * p.s_Cn + nx; }, static_cast<int>(n), ntok, lane);
  };
  if (PF && p.l2pf && tile0 + 1 < tile1) hint(tile0 + 1);
  float cum = 0.f;
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t t0 = tile * 32 * K + lane * K;
    const bool full = p.vec && t0 + K <= p.l;
    if (p.save) {
      float *ts = p.tstate + ((w.bi * p.d + w.dch) * p.ntiles + tile) * (n + 1);
      for (int64_t j = lane; j < n; j += 32) ts[j] += ex2(s_A2[j] * cum) * s_c[j];
    }
    float cs[K], fix[K];
    load_run<T, K>(dtp, t0, p.l, p.vec, cs);
    prep_delta<K>(p, w.dch, t0, cs);
    const float tot = cum_delta<K>(cum, lane, cs);
#pragma unroll
    for (int k = 0; k < K; ++k) fix[k] = 0.f;
    // the C rows of the states this tile runs, issued pfd states ahead (skipping those it drops)
    TileRing<T, K> cr{ring, pfd};
    for (int i = 0; i < pfd; ++i) cr.issue(p, s_A2, cum, full, lane, Cp, t0);
#pragma unroll 1
    for (int64_t nn = 0; nn < n; ++nn) {
      const float a2 = s_A2[nn], c = s_c[nn];
      if (p.state_exit && a2 * cum < -kCutLog2) continue;  // this state's decay is complete (warp-uniform)
      float Cv[K];
      if (pfd) {
        cr.read(p, s_A2, cum, full, lane, Cp, t0, nn, Cv);
      } else {
        load_run<T, K>(Cp + nn * p.s_Cn, t0, p.l, p.vec, Cv);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) fix[k] += Cv[k] * (ex2(a2 * cs[k]) * c);
    }
    float ov[K];
    load_run<T, K>(op, t0, p.l, p.vec, ov);
    if (p.has_z) {
      float zv[K];
      load_run<T, K>(static_cast<const T *>(p.z) + w.bi * p.s_zb + w.dch * p.s_zd, t0, p.l, p.vec, zv);
#pragma unroll
      for (int k = 0; k < K; ++k) fix[k] *= silu_f(zv[k]);
    }
#pragma unroll
    for (int k = 0; k < K; ++k) ov[k] += fix[k];
    store_run<T, K>(op, t0, p.l, p.vec, ov);
    if (PF && p.l2pf && tile + 2 < tile1) hint(tile + 2);
    cum += tot;
    if (amax * cum < -kCutLog2) break;  // warp-uniform: cum and amax are the same in every lane
  }
}


// ----------------------------------------------------------------------------- forward, lane per channel
// build 3 ("chan"): one lane = one channel, all of its states (n <= 16) in registers, walking the
// tokens in order. Per (token, state) that is one exp2 and four FP operations with no shuffles and
// 16 independent recurrences per lane, instead of the lane-per-tokens layout's map fold, shuffle
// scan and replay. The price is parallelism: one warp per 32 channels, so l is cut into segments
// (as fwd_kernel's, with the same combine and fix-up passes) unless b * d alone fills the GPU.
// Staging: 64-token tiles of delta, u, z (each warp its 32 rows) and of B, C (the block's, shared
// by its warps) go global -> shared with 16-byte cp.async, double-buffered so the next tile loads
// while this one is computed; rows are padded by 16 bytes so a lane reading 8 tokens of its own
// row with one 16-byte load hits distinct banks. B and C are converted once per tile to fp32
// [token][32] (B at 0..15, C at 16..31), read by every lane as broadcast float4 loads. Outputs are
// written back into the lane's delta row (already consumed) and stored row by row, coalesced.
constexpr int kChanTile = 64;  // tokens per staged tile (the default; 32 is the smaller-footprint build)
constexpr int kChanN = 16;     // states held per lane (missing states: A = B = C = 0)

template <typename T, int TILE, int TPC = 1> struct ChanShape {
  static constexpr int kCPW = 32 / TPC;  // channels per warp (TPC lanes share a channel's states)
  static constexpr int kNS = kChanN / TPC;  // states per lane
  static constexpr int kRowBytes = TILE * static_cast<int>(sizeof(T));
  static constexpr int kPitch = kRowBytes + 16;
  static constexpr int kChunks = kRowBytes / 16;  // 16-byte chunks per row
  static constexpr int kE = 16 / static_cast<int>(sizeof(T));
  // per warp: delta, u, z rows of its channels; per block: B and C rows (16 each); two stages
  static constexpr int kWarpStage = 3 * kCPW * kPitch;
  static constexpr int kBCStage = 2 * kChanN * kPitch;
};

__host__ __device__ constexpr size_t chan_smem_bytes(int warps, int tile, int elem_bytes, int tpc = 1) {
  return static_cast<size_t>(2) *
             (3 * (32 / tpc) * (tile * elem_bytes + 16) * warps + 2 * kChanN * (tile * elem_bytes + 16)) +
         sizeof(float) * tile * 2 * kChanN;
}

// 8 consecutive T from shared memory (16-byte aligned) as float
template <typename T> __device__ __forceinline__ void lds8(const char *src, float (&v)[8]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = *reinterpret_cast<const float4 *>(src), b = *reinterpret_cast<const float4 *>(src + 16);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4 *>(src);
    alignas(16) T tmp[8];
    *reinterpret_cast<uint4 *>(tmp) = raw;
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = to_f(tmp[e]);
  }
}
template <typename T> __device__ __forceinline__ void sts8(char *dst, const float (&v)[8]) {
  alignas(16) T tmp[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) tmp[e] = from_f<T>(v[e]);
  if constexpr (sizeof(T) == 4) {
    reinterpret_cast<uint4 *>(dst)[0] = reinterpret_cast<const uint4 *>(tmp)[0];
    reinterpret_cast<uint4 *>(dst)[1] = reinterpret_cast<const uint4 *>(tmp)[1];
  } else {
    *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(tmp);
  }
}

// this lane's NS states (from j0) of B and C at token k of a tile staged as fp32 [token][32]
// (B at 0..15, C at 16..31): broadcast float4 loads
template <int NS>
__device__ __forceinline__ void bc_read(const float *sBC, int k, int j0, float (&Bv)[NS], float (&Cv)[NS]) {
  const float4 *bc = reinterpret_cast<const float4 *>(sBC + k * 32);
#pragma unroll
  for (int q = 0; q < NS / 4; ++q) {
    const float4 b4 = bc[j0 / 4 + q], c4 = bc[kChanN / 4 + j0 / 4 + q];
    Bv[4 * q] = b4.x; Bv[4 * q + 1] = b4.y; Bv[4 * q + 2] = b4.z; Bv[4 * q + 3] = b4.w;
    Cv[4 * q] = c4.x; Cv[4 * q + 1] = c4.y; Cv[4 * q + 2] = c4.z; Cv[4 * q + 3] = c4.w;
  }
}

// the sum over the TPC lanes sharing a channel (a no-op for one lane a channel)
template <int TPC> __device__ __forceinline__ float pair_sum(float x) {
  if constexpr (TPC == 2) x += __shfl_xor_sync(kFull, x, 1);
  return x;
}

// One token of a lane's NS states (delta x, delta * u du, B and C of token k of the staged tile):
// h <- 2^(x A2) h + du B, returning this lane's share of the output, sum_j C_j h_j
template <int NS>
__device__ __forceinline__ float chan_token(const float *sBC, int k, int j0, float x, float du,
                                            const float (&A2)[NS], float (&h)[NS]) {
  float Bv[NS], Cv[NS];
  bc_read<NS>(sBC, k, j0, Bv, Cv);
  float y0 = 0.f, y1 = 0.f;
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    h[j] = ex2(x * A2[j]) * h[j] + du * Bv[j];
    if (j & 1) y1 += Cv[j] * h[j]; else y0 += Cv[j] * h[j];
  }
  return y0 + y1;
}

// The sums over the TPC lanes of a channel of 8 per-token values, scattered: afterwards v[j * TPC]
// holds the sum for token j * TPC + sub (sub: the lane's place among the TPC). Recursive halving:
// at bit m each lane keeps the tokens whose owner agrees with it on bit m and sends the others to
// the lane that differs in that bit (one shuffle a token pair).
template <int TPC> __device__ __forceinline__ void reduce_scatter8(float (&v)[8], int sub) {
  static_assert(TPC == 2 || TPC == 4, "two or four lanes a channel");
#pragma unroll
  for (int m = TPC / 2; m >= 1; m /= 2) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if ((k % TPC) & (TPC - m)) continue;  // k: a live slot whose owner bit m is still 0
      const bool hi = (sub & m) != 0;
      const float send = hi ? v[k] : v[k + m], keep = hi ? v[k + m] : v[k];
      v[k] = keep + __shfl_xor_sync(kFull, send, m);
    }
  }
}

// Host guarantees: n <= kChanN, every row of u, delta, z, B, C, out 16-byte aligned (p.vec).
// grid = (g * ceil(dpg / (32 * warps)), nseg, b); dynamic smem chan_smem_bytes(warps, ...). A
// segment is seg_tiles tiles of ktile_tokens = 32 * K tokens (a multiple of kChanTile), and ends as
// fwd_kernel's do: the final state (one segment) or the end state from zero and sum(delta) for
// fwd_combine_kernel. With p.save, tstate gets the state at every tile start and each tile's
// sum(delta), as fwd_kernel<T, K> writes them for the backward (segments after the first from zero:
// fwd_fix_kernel adds the carry).
template <typename T, int TILE, int TPC>
__global__ void __launch_bounds__(128) fwd_chan_kernel(Params p, int ktile_tokens) {
  using S = ChanShape<T, TILE, TPC>;
  constexpr int kChanTile = TILE, kCPW = S::kCPW, kNS = S::kNS;
  extern __shared__ __align__(16) unsigned char chan_smem[];
  const int warps = blockDim.x / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  char *stage_base = reinterpret_cast<char *>(chan_smem);
  const int stage_bytes = S::kWarpStage * warps + S::kBCStage;
  float *sBC = reinterpret_cast<float *>(stage_base + 2 * stage_bytes);  // [TILE][32]

  const int64_t nblk = (p.dpg + kCPW * warps - 1) / (kCPW * warps);
  const int64_t gi = blockIdx.x / nblk, dblk = blockIdx.x % nblk;
  const int64_t bi = blockIdx.z;
  const int64_t dloc0 = dblk * kCPW * warps + warp * kCPW;  // this warp's first channel in the group
  const int cl = lane / TPC, sub = lane % TPC;  // the lane's channel in the warp, its share of states
  const int64_t dloc = dloc0 + cl;
  const bool valid = dloc < p.dpg;
  const int64_t dch = gi * p.dpg + (valid ? dloc : 0);
  const int64_t n = p.n;
  const int64_t seg = blockIdx.y;
  const int64_t t_begin = seg * p.seg_tiles * ktile_tokens;
  const int64_t t_end = min(p.l, t_begin + p.seg_tiles * ktile_tokens);

  const int j0 = sub * kNS;  // this lane's states are j0 .. j0 + kNS - 1
  float A2[kNS], h[kNS];
#pragma unroll
  for (int j = 0; j < kNS; ++j) {
    A2[j] = j0 + j < n ? p.A[dch * p.s_Ad + (j0 + j) * p.s_An] * kLog2e : 0.f;
    h[j] = (j0 + j < n && seg == 0 && p.h0 != nullptr) ? p.h0[(bi * p.d + dch) * n + j0 + j] : 0.f;
  }
  const float Dv = p.has_D ? p.D[dch] : 0.f;
  const float bias = p.has_bias ? p.bias[dch] : 0.f;

  const T *ug = static_cast<const T *>(p.u) + bi * p.s_ub;
  const T *dg = static_cast<const T *>(p.dt) + bi * p.s_tb;
  const T *zg = static_cast<const T *>(p.z) + bi * p.s_zb;
  const T *Bg = static_cast<const T *>(p.B) + bi * p.s_Bb + gi * p.s_Bg;
  const T *Cg = static_cast<const T *>(p.C) + bi * p.s_Cb + gi * p.s_Cg;
  T *og = static_cast<T *>(p.out) + bi * p.s_ob;
  const int64_t gch0 = gi * p.dpg + dloc0;  // global channel of the warp's row 0
  const int64_t rows_valid = min(static_cast<int64_t>(kCPW), p.dpg - dloc0);  // may be <= 0 for an idle warp

  // issue the copies of tile `it` into stage `st`; a chunk past the end (or of an absent row) is
  // zero-filled, with an in-bounds dummy source address
  auto issue = [&](int64_t it, int st) {
    const int64_t t0 = t_begin + it * kChanTile;
    char *wbase = stage_base + st * stage_bytes + warp * S::kWarpStage;
    const int narr = p.has_z ? 3 : 2;
    for (int arr = 0; arr < narr; ++arr) {
      const T *src = arr == 0 ? dg : (arr == 1 ? ug : zg);
      const int64_t s_row = arr == 0 ? p.s_td : (arr == 1 ? p.s_ud : p.s_zd);
#pragma unroll
      for (int i = 0; i < kCPW * S::kChunks / 32; ++i) {
        const int idx = i * 32 + lane;
        const int r = idx / S::kChunks, c = idx % S::kChunks;
        const int64_t t = t0 + c * S::kE;
        const bool ok = r < rows_valid && t < t_end;
        const int bytes = ok ? static_cast<int>(min(static_cast<int64_t>(S::kE), t_end - t) * sizeof(T)) : 0;
        const T *g = ok ? src + (gch0 + r) * s_row + t : src;
        cp_async16(wbase + (arr * kCPW + r) * S::kPitch + c * 16, g, bytes);
      }
    }
    char *bcbase = stage_base + st * stage_bytes + warps * S::kWarpStage;
    for (int idx = threadIdx.x; idx < 2 * kChanN * S::kChunks; idx += blockDim.x) {
      const int row = idx / S::kChunks, c = idx % S::kChunks;  // row: 0..15 B, 16..31 C
      const int nn = row % kChanN;
      const int64_t t = t0 + c * S::kE;
      const bool ok = nn < n && t < t_end;
      const int bytes = ok ? static_cast<int>(min(static_cast<int64_t>(S::kE), t_end - t) * sizeof(T)) : 0;
      const T *base = row < kChanN ? Bg + nn * p.s_Bn : Cg + nn * p.s_Cn;
      cp_async16(bcbase + row * S::kPitch + c * 16, ok ? base + t : Bg, bytes);
    }
  };

  const int64_t niter = (t_end - t_begin + kChanTile - 1) / kChanTile;
  float tsum = 0.f;  // sum(delta) of the current backward tile (p.save)
  float ssum = 0.f;  // sum(delta) of the segment so far (for the combine pass)
  issue(0, 0);
  cp_async_commit();
  for (int64_t it = 0; it < niter; ++it) {
    const int st = static_cast<int>(it & 1);
    if (it + 1 < niter) issue(it + 1, st ^ 1);
    cp_async_commit();
    cp_async_wait1();
    __syncthreads();
    {  // B, C of this tile to fp32 [token][32]; lanes take consecutive rows (distinct banks)
      const char *bcbase = stage_base + st * stage_bytes + warps * S::kWarpStage;
      for (int idx = threadIdx.x; idx < 2 * kChanN * S::kChunks; idx += blockDim.x) {
        const int row = idx % (2 * kChanN), c = idx / (2 * kChanN);
        float v[8];
        if constexpr (sizeof(T) == 4) {
          const float4 a = *reinterpret_cast<const float4 *>(bcbase + row * S::kPitch + c * 16);
          v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
#pragma unroll
          for (int e = 0; e < 4; ++e) sBC[(c * 4 + e) * 32 + row] = v[e];
        } else {
          lds8<T>(bcbase + row * S::kPitch + c * 16, v);
#pragma unroll
          for (int e = 0; e < 8; ++e) sBC[(c * 8 + e) * 32 + row] = v[e];
        }
      }
    }
    __syncthreads();
    const int64_t t0 = t_begin + it * kChanTile;
    if (p.save && t0 % ktile_tokens == 0) {  // a backward tile starts here: its entering state
      float *ts = p.tstate + ((bi * p.d + dch) * p.ntiles + t0 / ktile_tokens) * (n + 1);
      if (valid) {
        if (t0 > t_begin && sub == 0) ts[-1] = tsum;  // the previous tile's sum(delta) (its slot n)
        for (int j = 0; j < kNS; ++j)
          if (j0 + j < n) ts[j0 + j] = h[j];
      }
      ssum += tsum;
      tsum = 0.f;
    }
    char *myrow = stage_base + st * stage_bytes + warp * S::kWarpStage;
    char *drow = myrow + cl * S::kPitch, *urow = myrow + (kCPW + cl) * S::kPitch,
         *zrow = myrow + (2 * kCPW + cl) * S::kPitch;
    const int64_t count = min(static_cast<int64_t>(kChanTile), t_end - t0);
#pragma unroll 1
    for (int gq = 0; gq < kChanTile / 8; ++gq) {
      if constexpr (TPC == 1) {
        float dl[8], uv[8], yv[8];
        lds8<T>(drow + gq * 8 * sizeof(T), dl);
        lds8<T>(urow + gq * 8 * sizeof(T), uv);
        // the group's 8 deltas first, without branches, so their softplus chains overlap
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          float x = dl[k] + bias;
          if (p.softplus) x = softplus_f(x);
          x = (gq * 8 + k < count) ? x : 0.f;  // past the end: a = 1, no input (state unchanged)
          tsum += x;
          dl[k] = x;
          yv[k] = Dv * uv[k];
          uv[k] *= x;
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) yv[k] += chan_token<kNS>(sBC, gq * 8 + k, j0, dl[k], uv[k], A2, h);
        if (p.has_z) {
          float zv[8];
          lds8<T>(zrow + gq * 8 * sizeof(T), zv);
#pragma unroll
          for (int k = 0; k < 8; ++k) yv[k] *= silu_f(zv[k]);
        }
        sts8<T>(drow + gq * 8 * sizeof(T), yv);  // over the consumed deltas
      } else {
        // TPC lanes share a channel: each computes the activations of the group's tokens it owns
        // (k = j * TPC + sub), hands its deltas to the others by shuffles, and after the states
        // receives the channel's output sums of its own tokens (reduce-scatter), gates and writes
        // them. A lane reads and overwrites only its own tokens of the delta row: no other lane's
        // read can race its writes.
        constexpr int kJ = 8 / TPC;
        const int owner0 = lane - sub;  // the channel's first lane
        const T *dt_row = reinterpret_cast<const T *>(drow) + gq * 8;
        const T *u_row = reinterpret_cast<const T *>(urow) + gq * 8;
        float mine[kJ];
#pragma unroll
        for (int j = 0; j < kJ; ++j) {
          const int k = j * TPC + sub;
          float x = to_f(dt_row[k]) + bias;
          if (p.softplus) x = softplus_f(x);
          mine[j] = (gq * 8 + k < count) ? x : 0.f;  // past the end: a = 1, no input
        }
        float dl[8], uv[8], part[8];
        lds8<T>(urow + gq * 8 * sizeof(T), uv);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          dl[k] = __shfl_sync(kFull, mine[k / TPC], owner0 + k % TPC);
          tsum += dl[k];
          uv[k] *= dl[k];
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) part[k] = chan_token<kNS>(sBC, gq * 8 + k, j0, dl[k], uv[k], A2, h);
        reduce_scatter8<TPC>(part, sub);  // part[j * TPC]: the channel's sum for token j * TPC + sub
        T *out_row = reinterpret_cast<T *>(drow) + gq * 8;
#pragma unroll
        for (int j = 0; j < kJ; ++j) {
          const int k = j * TPC + sub;
          float y = part[j * TPC] + Dv * to_f(u_row[k]);
          if (p.has_z) y *= silu_f(to_f(reinterpret_cast<const T *>(zrow)[gq * 8 + k]));
          out_row[k] = from_f<T>(y);
        }
      }
    }
    __syncwarp();
    // the warp's 32 output rows of this tile, coalesced (16-byte stores)
#pragma unroll
    for (int i = 0; i < kCPW * S::kChunks / 32; ++i) {
      const int idx = i * 32 + lane;
      const int r = idx / S::kChunks, c = idx % S::kChunks;
      const int64_t t = t0 + c * S::kE;
      if (r < rows_valid && t < t_end) {
        const char *src = myrow + r * S::kPitch + c * 16;
        T *dst = og + (gch0 + r) * p.s_od + t;
        if (t + S::kE <= t_end) {
          *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
        } else {
          for (int e = 0; e < t_end - t; ++e) dst[e] = reinterpret_cast<const T *>(src)[e];
        }
      }
    }
    __syncwarp();  // every lane's reads of this stage are done before the next copies into it
  }
  if (!valid) return;
  if (p.save && sub == 0)
    p.tstate[((bi * p.d + dch) * p.ntiles + (t_end - 1) / ktile_tokens) * (n + 1) + n] = tsum;
  if (p.nseg == 1) {
#pragma unroll
    for (int j = 0; j < kNS; ++j)
      if (j0 + j < n) p.final_state[(bi * p.d + dch) * n + j0 + j] = h[j];
  } else {
    const int64_t base = (bi * p.nseg + seg) * p.d + dch;
#pragma unroll
    for (int j = 0; j < kNS; ++j)
      if (j0 + j < n) p.hend[base * n + j0 + j] = h[j];
    if (sub == 0) p.dsum_seg[base] = ssum + tsum;
  }
}
// ----------------------------------------------------------------------------- backward

// dL/dh entering segment s from the right, from segment s alone with zero carry: the segment's
// first-token term a_t0 * g_t0 = sum_t 2^(A2 * cum_t) * C_t * dy_t (early exit like the fix-up)
template <typename T, int K, bool PF = false>  // PF: as in fwd_fix_kernel
__global__ void __launch_bounds__(kMaxWarps * 32) bwd_summary_kernel(Params p) {
  extern __shared__ __align__(16) float smem[];  // 16-byte aligned: lets the K-element stores vectorise
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const WarpPos w = warp_pos(p, warp, 1);
  if (!w.valid) return;
  const int64_t n = p.n;
  float *s_A2 = smem + warp * 2 * n;
  float *s_P = s_A2 + n;
  float amax = -INFINITY;
  for (int64_t j = lane; j < n; j += 32) {
    s_A2[j] = p.A[w.dch * p.s_Ad + j * p.s_An] * kLog2e;
    s_P[j] = 0.f;
    amax = fmaxf(amax, s_A2[j]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFull, amax, off));
  __syncwarp();
  const T *dtp = static_cast<const T *>(p.dt) + w.bi * p.s_tb + w.dch * p.s_td;
  const T *gp = static_cast<const T *>(p.dout) + w.bi * p.s_gb + w.dch * p.s_gd;
  const T *Cp = static_cast<const T *>(p.C) + w.bi * p.s_Cb + w.gi * p.s_Cg;
  const int64_t tile0 = w.seg * p.seg_tiles;
  const int64_t tile1 = min(tile0 + p.seg_tiles, p.ntiles);
  constexpr int kRB = Ring<T, K>::kRunBytes;
  const int pfd = PF ? p.pf_fix : 0;  // as in fwd_fix_kernel
  char *ring = reinterpret_cast<char *>(smem + p.pf_off) + warp * (pfd + 1) * kRB;
  auto hint = [&](int64_t tx) {  // as in fwd_fix_kernel: delta, dout, z and C rows of tile tx
    const int64_t nx = tx * 32 * K, ntok = min(static_cast<int64_t>(32 * K), p.l - nx);
    const T *zr = static_cast<const T *>(p.z) + w.bi * p.s_zb + w.dch * p.s_zd;
    l2_rows<T>([&](int r) { return (r == 0 ? dtp : r == 1 ? gp : zr) + nx; }, p.has_z ? 3 : 2, ntok, lane);
    l2_rows<T>([&](int r) { return Cp + r * p.s_Cn + nx; }, static_cast<int>(n), ntok, lane);
  };
  if (PF && p.l2pf && tile0 + 1 < tile1) hint(tile0 + 1);
  float cum = 0.f;
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t t0 = tile * 32 * K + lane * K;
    const bool full = p.vec && t0 + K <= p.l;
    float cs[K], dy[K];
    load_run<T, K>(dtp, t0, p.l, p.vec, cs);
    prep_delta<K>(p, w.dch, t0, cs);
    const float tot = cum_delta<K>(cum, lane, cs);
    load_run<T, K>(gp, t0, p.l, p.vec, dy);
    if (p.has_z) {
      float zv[K];
      load_run<T, K>(static_cast<const T *>(p.z) + w.bi * p.s_zb + w.dch * p.s_zd, t0, p.l, p.vec, zv);
#pragma unroll
      for (int k = 0; k < K; ++k) dy[k] *= silu_f(zv[k]);
    }
    TileRing<T, K> cr{ring, pfd};
    for (int i = 0; i < pfd; ++i) cr.issue(p, s_A2, cum, full, lane, Cp, t0);
#pragma unroll 1
    for (int64_t nn = 0; nn < n; ++nn) {
      const float a2 = s_A2[nn];
      if (p.state_exit && a2 * cum < -kCutLog2) continue;  // as in fwd_fix_kernel
      float Cv[K];
      if (pfd) {
        cr.read(p, s_A2, cum, full, lane, Cp, t0, nn, Cv);
      } else {
        load_run<T, K>(Cp + nn * p.s_Cn, t0, p.l, p.vec, Cv);
      }
      float v = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) v += ex2(a2 * cs[k]) * Cv[k] * dy[k];
      v = warp_sum(v);
      if (lane == 0) s_P[nn] += v;
    }
    if (PF && p.l2pf && tile + 2 < tile1) hint(tile + 2);
    cum += tot;
    if (amax * cum < -kCutLog2) break;
  }
  __syncwarp();
  for (int64_t j = lane; j < n; j += 32) p.P[((w.bi * p.nseg + w.seg) * p.d + w.dch) * n + j] = s_P[j];
}

// reverse carry entering each segment from the right; written to p.carry (b, S, d, n). One block of
// kCombineThreads per (b, channel): the block sums each segment's tile sums of delta (every thread a
// fixed strided share, then a fixed tree over lanes and warps: deterministic), and thread nn < n
// chains state nn's carry through the segments right to left (a thread per (b, channel, state)
// walking every tile of every segment in order was a long chain of dependent loads on a small grid;
// timings in csrc/selective_scan/NOTES.md).
constexpr int kCombineThreads = 128;
__global__ void __launch_bounds__(kCombineThreads) bwd_combine_kernel(Params p) {
  __shared__ float s_w[kCombineThreads / 32];
  const int64_t bd = blockIdx.x;  // bi * d + dc
  const int64_t bi = bd / p.d, dc = bd % p.d;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const bool mine = tid < p.n;
  const int64_t nn = mine ? tid : 0;
  const float a2 = mine ? p.A[dc * p.s_Ad + nn * p.s_An] * kLog2e : 0.f;
  float R = (mine && p.dfinal) ? p.dfinal[bd * p.n + nn] : 0.f;
  const float *ts = p.tstate + bd * p.ntiles * (p.n + 1) + p.n;  // tile t's sum(delta) at t * (n + 1)
  for (int64_t s = p.nseg - 1; s >= 1; --s) {
    const int64_t base = (bi * p.nseg + s) * p.d + dc;
    if (mine) p.carry[base * p.n + nn] = R;
    const int64_t t1 = min((s + 1) * p.seg_tiles, p.ntiles);
    float part = 0.f;
    for (int64_t t = s * p.seg_tiles + tid; t < t1; t += kCombineThreads) part += ts[t * (p.n + 1)];
    part = warp_sum(part);
    if (lane == 0) s_w[warp] = part;
    __syncthreads();
    float dsum = 0.f;
#pragma unroll
    for (int w = 0; w < kCombineThreads / 32; ++w) dsum += s_w[w];
    __syncthreads();  // s_w is written again for the next segment
    if (mine) R = p.P[base * p.n + nn] + ex2(dsum * a2) * R;
  }
  if (mine) p.carry[(bi * p.nseg * p.d + dc) * p.n + nn] = R;
}

// dB and dC from their partials (2, rows, parts, nl) in fp32: out[w][r][x] = sum over q, in order,
// of part[w][r][q][x], accumulated in fp32 and written in the output's dtype in one pass (the
// fixed order keeps the result deterministic). VEC: four consecutive x a thread (nl % 4 == 0).
template <typename OutT, bool VEC>
__global__ void bc_reduce_kernel(const float *__restrict__ part, OutT *__restrict__ dB, OutT *__restrict__ dC,
                                 int64_t rows, int64_t parts, int64_t nl) {
  constexpr int E = VEC ? 4 : 1;
  const int64_t per_row = nl / E;
  const int64_t total = 2 * rows * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t wr = i / per_row, x = (i % per_row) * E;  // wr = which * rows + row
    const float *src = part + wr * parts * nl + x;
    OutT *dst = (wr < rows ? dB : dC) + (wr % rows) * nl + x;
    if constexpr (VEC) {
      float4 s = *reinterpret_cast<const float4 *>(src);
#pragma unroll 4
      for (int64_t q = 1; q < parts; ++q) {
        const float4 v = *reinterpret_cast<const float4 *>(src + q * nl);
        s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
      }
      dst[0] = from_f<OutT>(s.x); dst[1] = from_f<OutT>(s.y); dst[2] = from_f<OutT>(s.z); dst[3] = from_f<OutT>(s.w);
    } else {
      float s = src[0];
      for (int64_t q = 1; q < parts; ++q) s += src[q * nl];
      dst[0] = from_f<OutT>(s);
    }
  }
}

// The PF build's dB/dC slot rows (K = 8 fp32 values a lane, 32 bytes): the lane's two 16-byte halves
// swap places in every other group of four lanes, so the eight lanes of each quarter-warp store to 32
// distinct banks (unswizzled, lanes i and i + 4 share banks: two wavefronts a store). swizzled(t): where
// the value of tile token t sits in its row (t ^ 4 in the swapped groups of lanes).
__device__ __forceinline__ void put_swizzled(float *row_at_lane, int lane, const float (&v)[8]) {
  float4 *q = reinterpret_cast<float4 *>(row_at_lane);
  const int s = (lane >> 2) & 1;
  q[s] = make_float4(v[0], v[1], v[2], v[3]);
  q[s ^ 1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ int swizzled(int t) { return t ^ (((t >> 5) & 1) << 2); }

// Main backward: one warp per (b, channel, segment), W channels of one group per block; tiles
// right to left. Per tile and state: recompute h from the saved tile-start state (forward map
// scan), then the reverse scan g_t = C_t dy_t + a_{t+1} g_{t+1} (suffix map scan), then all
// gradients of this token. a_t = 2^(A2 delta_t) is computed once and used by both scans.
// Lean per-state loop: du = delta * u is formed once per tile; the gradients of u and delta are
// carried as two sums over states, S_t = sum_n g_tn B_tn and sum_n (dL/da_tn a_tn) A_n, and turned
// into du = delta S + D dy, ddelta = (that sum + u S) softplus' once per tile (u, delta, z and dout
// are read again there, from cache, instead of being held in registers through the state loop);
// the lane's product of decays (the forward and the reverse map's factor alike) is one exp2 of
// A2 * sum(delta); B/C rows are walked by pointer with the vector/tail test once per tile.
// MINB = 2 caps ptxas at 128 registers (16 warps per SM at 8-warp blocks); MINB = 1 lets it use
// more (8 warps per SM); CONFIG["bwd_min_blocks"] picks one. JOINT: the reverse map is folded before
// the forward replay (it needs a_t and C_t dy_t only) and both shuffle scans share their five rounds;
// CONFIG["bwd_joint_scan"] picks it.
// PF (wide joint build at K = 8 only): the dB/dC slot rows swizzled (put_swizzled), B/C rows through
// the prefetch ring when Params::pf_bwd >= 1 (that many states ahead), L2 hints with Params::l2pf in the
// HINTS build only (the hint code, compiled in but switched off, made ptxas spill two accumulators
// inside the state loop).
template <typename T, int K, int MINB, bool JOINT, bool WIDE = false, bool PF = false, bool HINTS = false>
__global__ void __launch_bounds__((WIDE ? kMaxWarpsBwdWide : kMaxWarpsBwd) * 32, WIDE ? 1 : MINB) bwd_kernel(Params p) {
  static_assert(!PF || K == 8, "the PF build takes K = 8");
  static_assert(!HINTS || PF, "L2 hints come with the PF build");
  extern __shared__ __align__(16) float smem[];  // 16-byte aligned: lets the K-element stores vectorise
  const int W = blockDim.x / 32;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const WarpPos w = warp_pos(p, warp, 0);
  const int64_t n = p.n;
  constexpr int TILE = 32 * K;
  const int ns = static_cast<int>(p.ns);
  float *s_part = smem;  // [ns][2][W][TILE]: dB, dC per state slot and warp (channel)
  float *s_A2 = s_part + 2 * ns * W * TILE + warp * 3 * n;  // [W][3][n]: A2, tile-start h, reverse carry
  float *s_h = s_A2 + n;
  float *s_R = s_h + n;
  float *s_dA = smem + 2 * ns * W * TILE + 3 * W * n + warp * n * 32;  // [W][n][32] per-lane dA sums
  for (int64_t j = lane; j < n; j += 32) {
    s_A2[j] = w.valid ? p.A[w.dch * p.s_Ad + j * p.s_An] * kLog2e : 0.f;
    s_R[j] = w.valid ? p.carry[((w.bi * p.nseg + w.seg) * p.d + w.dch) * n + j] : 0.f;
  }
  for (int64_t j = lane; j < n * 32; j += 32) s_dA[j] = 0.f;
  __syncwarp();
  const int64_t tend = w.valid ? p.l : 0;  // an idle warp (channel past the group) sees zeros
  const T *u = static_cast<const T *>(p.u) + w.bi * p.s_ub + w.dch * p.s_ud;
  const T *dtp = static_cast<const T *>(p.dt) + w.bi * p.s_tb + w.dch * p.s_td;
  const T *gp = static_cast<const T *>(p.dout) + w.bi * p.s_gb + w.dch * p.s_gd;
  const T *zp = static_cast<const T *>(p.z) + w.bi * p.s_zb + w.dch * p.s_zd;
  const T *Bp = static_cast<const T *>(p.B) + w.bi * p.s_Bb + w.gi * p.s_Bg;
  const T *Cp = static_cast<const T *>(p.C) + w.bi * p.s_Cb + w.gi * p.s_Cg;
  const float Dv = (p.has_D && w.valid) ? p.D[w.dch] : 0.f;
  const float bias = (p.has_bias && w.valid) ? p.bias[w.dch] : 0.f;
  const int64_t tile0 = w.seg * p.seg_tiles;
  const int64_t tile1 = min(tile0 + p.seg_tiles, p.ntiles);
  const int64_t part_base = ((w.bi * p.g + w.gi) * p.nblk_pg + w.dblk) * n;  // row (.., n=0) of this block
  const int64_t part_stride = p.b * p.g * p.nblk_pg * n * p.l;                // dB -> dC
  float dD_l = 0.f, dbias_l = 0.f;
  // B/C prefetch (p.pf_bwd states ahead, across tile boundaries; 0: loaded at use): the ring's slot
  // holds a state's B runs then its C runs; (itile, inx) is the next (tile, state) to issue, in the
  // order the loops below consume them
  constexpr int kRB = Ring<T, K>::kRunBytes;
  const int pfd = PF ? max(p.pf_bwd, 0) : 0;
  char *ring = reinterpret_cast<char *>(smem + p.pf_off) + warp * (pfd + 1) * 2 * kRB;
  int64_t itile = tile1 - 1;
  int inx = 0, put = 0, get = 0;
  auto issue = [&]() {
    if (itile >= tile0) {
      const int64_t tx = itile * TILE + lane * K;
      if (p.vec && tx + K <= tend) {
        char *slot = ring + put * 2 * kRB;
        ring_put<T, K>(slot, lane, Bp + inx * p.s_Bn + tx);
        ring_put<T, K>(slot + kRB, lane, Cp + inx * p.s_Cn + tx);
      }
      if (++inx == n) {
        inx = 0;
        --itile;
      }
    }
    cp_async_commit();
    put = put == pfd ? 0 : put + 1;
  };
  for (int i = 0; i < pfd; ++i) issue();
  // L2 hints (PF build): this warp's u, delta, dout, z rows of tile tx and the B/C rows of states warp,
  // warp + W, ... (the block's warps share them), issued at the end of tile tx + 2 (tiles run right to
  // left; all but the first are whole), when the registers of a tile's work are free
  auto hint = [&](int64_t tx) {
    if (!w.valid) return;
    const int64_t nx = tx * TILE;
    l2_rows<T>([&](int r) { return (r == 0 ? u : r == 1 ? dtp : r == 2 ? gp : zp) + nx; }, p.has_z ? 4 : 3,
               TILE, lane);
    for (int64_t j = warp; j < n; j += W)
      l2_rows<T>([&](int r) { return (r == 0 ? Bp + j * p.s_Bn : Cp + j * p.s_Cn) + nx; }, 2, TILE, lane);
  };
  if (HINTS && p.l2pf && tile1 - 2 >= tile0) hint(tile1 - 2);

  for (int64_t tile = tile1 - 1; tile >= tile0; --tile) {
    const int64_t t0 = tile * TILE + lane * K;
    const bool full = p.vec && t0 + K <= tend;
    float dl[K], du[K], dy[K], y[K], S[K], gA[K];
    {
      float uv[K], zv[K];
      load_run<T, K>(u, t0, tend, p.vec, uv);
      load_run<T, K>(dtp, t0, tend, p.vec, dl);
      load_run<T, K>(gp, t0, tend, p.vec, dy);
      if (p.has_z) load_run<T, K>(zp, t0, tend, p.vec, zv);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float x = dl[k] + bias;
        dl[k] = (t0 + k < tend) ? (p.softplus ? softplus_f(x) : x) : 0.f;
        du[k] = dl[k] * uv[k];
        y[k] = Dv * uv[k];
        if (p.has_z) dy[k] *= silu_f(zv[k]);  // dL/dy = dout * silu(z)
        S[k] = 0.f;
        gA[k] = 0.f;
      }
    }
    float sdl = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) sdl += dl[k];
    {  // an idle warp must hold zeros, not stale shared memory: its dC rows (0 * h) enter the sums
      const float *ts = p.tstate + ((w.bi * p.d + w.dch) * p.ntiles + tile) * (n + 1);
      for (int64_t j = lane; j < n; j += 32) s_h[j] = w.valid ? ts[j] : 0.f;
    }
    __syncwarp();
    const T *Brow = Bp + t0;
    const T *Crow = Cp + t0;
    // this block's dB partial row of state 0 at the tile's first token (+ part_stride: dC), advanced
    // by ns rows per reduction; ntok: the tile's tokens inside the sequence
    float *part_row = p.dBC_part + part_base * p.l + tile * TILE;
    const int ntok = static_cast<int>(min(static_cast<int64_t>(TILE), p.l - tile * TILE));
    int slot = 0;  // state nn's slot in s_part: nn % ns
#pragma unroll 1
    for (int64_t nn = 0; nn < n; ++nn, Brow += p.s_Bn, Crow += p.s_Cn) {
      float *pB = s_part + (slot * 2 * W + warp) * TILE + lane * K;
      float *pC = pB + W * TILE;
      const float a2 = s_A2[nn], hs = s_h[nn], R = s_R[nn];
      const float An = a2 * kLn2;
      float Bv[K], Cv[K], a[K], hp[K];
      if (pfd) {
        issue();
        cp_async_wait_upto(pfd);
        if (full) {
          ring_get<T, K>(ring + get * 2 * kRB, lane, Bv);
          ring_get<T, K>(ring + get * 2 * kRB + kRB, lane, Cv);
        } else {
          load_lean<T, K>(Brow, t0, tend, false, Bv);
          load_lean<T, K>(Crow, t0, tend, false, Cv);
        }
        get = get == pfd ? 0 : get + 1;
      } else {
        load_lean<T, K>(Brow, t0, tend, full, Bv);
        load_lean<T, K>(Crow, t0, tend, full, Cv);
      }
      // forward recompute (as fwd_kernel): the lane's map h -> Al * h + Bb
      const float Al = ex2(a2 * sdl);
      float Aa = Al, Bb = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        a[k] = ex2(dl[k] * a2);
        Bb = a[k] * Bb + du[k] * Bv[k];
      }
      if (lane == 0) Bb = Aa * hs + Bb;
      // reverse: lane's tokens as a map on "a_{next} * g_{next}" entering from the right:
      // Gout = P * Gin + Q with Gout = a_first * g_first. It needs a and C dy only, not h, so the
      // JOINT build folds it here and runs the two shuffle scans in the same five steps (one chain of
      // five shuffle rounds per state instead of two chains of five).
      float P = Al, Q = 0.f;
      if constexpr (JOINT) {
#pragma unroll
        for (int k = K - 1; k >= 0; --k) Q = a[k] * (Cv[k] * dy[k] + Q);
        if (lane == 31) Q = P * R + Q;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
          const float pa = __shfl_up_sync(kFull, Aa, off);
          const float pb = __shfl_up_sync(kFull, Bb, off);
          const float pn = __shfl_down_sync(kFull, P, off);
          const float qn = __shfl_down_sync(kFull, Q, off);
          if (lane >= off) {
            Bb = Aa * pb + Bb;
            Aa *= pa;
          }
          if (lane + off < 32) {
            Q = P * qn + Q;
            P *= pn;
          }
        }
      } else {
        scan_maps_up(Aa, Bb, lane);
      }
      float h = __shfl_up_sync(kFull, Bb, 1);
      if (lane == 0) h = hs;
      float vC[K];  // this channel's dC_t (PF: stored below, swizzled)
#pragma unroll
      for (int k = 0; k < K; ++k) {
        hp[k] = h;
        h = a[k] * h + du[k] * Bv[k];
        y[k] += Cv[k] * h;
        vC[k] = dy[k] * h;
        if constexpr (!PF) pC[k] = vC[k];
        Cv[k] *= dy[k];     // from here on: C_t dy_t, the reverse scan's input
      }
      if constexpr (PF) put_swizzled(pC, lane, vC);
      if constexpr (!JOINT) {
#pragma unroll
        for (int k = K - 1; k >= 0; --k) Q = a[k] * (Cv[k] + Q);
        if (lane == 31) Q = P * R + Q;
        scan_maps_down(P, Q, lane);
      }
      float G = __shfl_down_sync(kFull, Q, 1);
      if (lane == 31) G = R;
      const float Rnew = __shfl_sync(kFull, Q, 0);
      float dAl = 0.f;
      float vB[K];  // this channel's dB_t (PF: stored below, swizzled)
#pragma unroll
      for (int k = K - 1; k >= 0; --k) {
        const float gk = Cv[k] + G;          // dL/dh_t
        const float wk = gk * hp[k] * a[k];  // dL/da_t * a_t
        gA[k] += wk * An;
        S[k] += gk * Bv[k];
        dAl += wk * dl[k];
        vB[k] = gk * du[k];
        if constexpr (!PF) pB[k] = vB[k];
        G = a[k] * gk;
      }
      if constexpr (PF) put_swizzled(pB, lane, vB);
      s_dA[nn * 32 + lane] += dAl;
      __syncwarp();
      if (lane == 0) s_R[nn] = Rnew;
      if (++slot < ns && nn + 1 < n) continue;  // block-uniform: every warp walks the same states
      // dB, dC of this tile and the last `slot` states: sums over the block's channels in warp order,
      // four tokens a thread (one 16-byte shared load per warp's row, one 16-byte partial store where
      // the partial rows are 16-byte aligned, i.e. l % 4 == 0; scalar stores at a ragged tile end)
      __syncthreads();
      const int quads = 2 * slot * (TILE / 4);
      for (int i = threadIdx.x; i < quads; i += blockDim.x) {
        const int sw = i / (TILE / 4), t = (i % (TILE / 4)) * 4;  // sw = 2 * state slot + (0: dB, 1: dC)
        const float4 *col = reinterpret_cast<const float4 *>(s_part + sw * W * TILE + (PF ? swizzled(t) : t));
        float4 s = col[0];
#pragma unroll 4
        for (int ww = 1; ww < W; ++ww) {
          const float4 v = col[ww * (TILE / 4)];
          s.x += v.x; s.y += v.y; s.z += v.z; s.w += v.w;
        }
        float *dst = part_row + (sw >> 1) * p.l + (sw & 1) * part_stride + t;
        if (t + 4 <= ntok && (p.l & 3) == 0) {
          *reinterpret_cast<float4 *>(dst) = s;
        } else {
          if (t < ntok) dst[0] = s.x;
          if (t + 1 < ntok) dst[1] = s.y;
          if (t + 2 < ntok) dst[2] = s.z;
          if (t + 3 < ntok) dst[3] = s.w;
        }
      }
      part_row += slot * p.l;
      slot = 0;
      __syncthreads();
    }
    // per token: du = delta S + D dy; ddelta = (sum_n wk A_n + u S) softplus'(delta + bias), stored
    // first (their registers are free for what follows); then dz = dout silu'(z) (y + D u) and, where
    // asked for (p.out), the forward's output again, (y + D u) silu(z)
    const int64_t xo = w.bi * p.s_xb + w.dch * p.s_xd;
    {
      float uv[K], xv[K];
      load_run<T, K>(u, t0, tend, p.vec, uv);
      load_run<T, K>(dtp, t0, tend, p.vec, xv);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const bool in = t0 + k < tend;
        const float gd = gA[k] + uv[k] * S[k];
        S[k] = dl[k] * S[k] + Dv * dy[k];  // du
        dl[k] = p.softplus ? gd * sigmoid_f(xv[k] + bias) : gd;  // ddelta
        dD_l += in ? dy[k] * uv[k] : 0.f;
        dbias_l += in ? dl[k] : 0.f;
      }
    }
    if (w.valid) {
      store_run<T, K>(static_cast<T *>(p.du) + xo, t0, p.l, p.vec, S);
      store_run<T, K>(static_cast<T *>(p.ddt) + xo, t0, p.l, p.vec, dl);
    }
    if (p.has_z) {
      float zv[K], gv[K];
      load_run<T, K>(zp, t0, tend, p.vec, zv);
      load_run<T, K>(gp, t0, tend, p.vec, gv);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const float s = sigmoid_f(zv[k]);
        gv[k] *= s * (1.f + zv[k] * (1.f - s));  // dout silu'(z)
        zv[k] *= s;                               // silu(z)
      }
      if (p.out != nullptr) {
#pragma unroll
        for (int k = 0; k < K; ++k) zv[k] *= y[k];
        if (w.valid) store_run<T, K>(static_cast<T *>(p.out) + xo, t0, p.l, p.vec, zv);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) y[k] *= gv[k];  // dz
      if (w.valid) store_run<T, K>(static_cast<T *>(p.dz) + xo, t0, p.l, p.vec, y);
    } else if (p.out != nullptr && w.valid) {
      store_run<T, K>(static_cast<T *>(p.out) + xo, t0, p.l, p.vec, y);
    }
    if (HINTS && p.l2pf && tile - 2 >= tile0) hint(tile - 2);
  }
  __syncwarp();
  if (!w.valid) return;
  const int64_t base = (w.bi * p.nseg + w.seg) * p.d + w.dch;
  for (int64_t j = lane; j < n; j += 32) {
    float s = 0.f;
    for (int q = 0; q < 32; ++q) s += s_dA[j * 32 + q];
    p.dA_part[base * n + j] = s;
    if (w.seg == 0 && p.dh0 != nullptr) p.dh0[(w.bi * p.d + w.dch) * n + j] = s_R[j];
  }
  dD_l = warp_sum(dD_l);
  dbias_l = warp_sum(dbias_l);
  if (lane == 0) {
    p.dD_part[base] = dD_l;
    p.dbias_part[base] = dbias_l;
  }
}

// ----------------------------------------------------------------------------- backward, lane per channel
// layout 1 of selective_scan_bwd_v2 ("bwdchan"): one warp = 32 channels, one lane = one channel with
// all of its n <= 16 states, reverse carries and dA sums in registers. Per backward tile (the
// forward's 32 * K tokens, whose entering state the forward saved in tstate):
//   1. checkpoint pass: walk the tile forward from its saved state and write the state at every
//      8-token sub-tile start to a per-warp scratch area in global memory (L2-resident: 64 B per
//      channel and sub-tile);
//   2. reverse pass, sub-tiles right to left: recompute the sub-tile's 8 states from its checkpoint
//      into shared memory (and the pre-gate output for dz), then walk its tokens right to left:
//      g_t = C_t dy_t + a_{t+1} g_{t+1} and every gradient of the token, per state 1 exp2 and ~10 FP
//      operations, no shuffles.
// dB_t and dC_t are sums over channels, i.e. over the warp's lanes: every lane writes its 32 values
// of a token (16 dB, 16 dC) as a row of a shared [32][36] buffer and lane q sums column q over the
// 32 rows in a fixed order; the per-warp sums go to partials (2, b, g, warps per group, n, l) that
// torch sums over warps, as bwd_kernel's per-block partials. Deterministic, no atomics.
constexpr int kBcSub = 8;  // tokens per sub-tile

// shared-memory row of one lane's dB/dC values of a token (2 * states per lane, padded so that
// 16-byte row stores and the column sums hit distinct banks)
template <int TPC> struct BwdChanShape {
  static constexpr int kCPW = 32 / TPC;     // channels per warp
  static constexpr int kNS = kChanN / TPC;  // states per lane
  static constexpr int kPitch = TPC == 1 ? 36 : 20;
};

__host__ __device__ constexpr size_t bwd_chan_smem_bytes(int tpc) {
  return sizeof(float) * (kBcSub * kChanN * 32 / tpc + 2 * 32 * (tpc == 1 ? 36 : 20) + kBcSub * 32);
}

// B (lanes 0..15) and C (lanes 16..31) rows of tokens t0..t0+7 as fp32 into sBC[token][32]
template <typename T>
__device__ __forceinline__ void bc_stage(const Params &p, const T *Bg, const T *Cg, int64_t t0, float *sBC, int lane) {
  const int j = lane % kChanN;
  float v[kBcSub];
  if (j < p.n) {
    const T *row = lane < kChanN ? Bg + j * p.s_Bn : Cg + j * p.s_Cn;
    load_run<T, kBcSub>(row, t0, p.l, p.vec, v);
  } else {
#pragma unroll
    for (int k = 0; k < kBcSub; ++k) v[k] = 0.f;
  }
#pragma unroll
  for (int k = 0; k < kBcSub; ++k) sBC[k * 32 + lane] = v[k];
}

// grid = (g * ceil(dpg / (32 / TPC)), nseg, b), 32 threads, bwd_chan_smem_bytes(TPC) of shared
// memory; ckpt: per block ktile / 8 * 16 / TPC * 32 floats of scratch. TPC = 2: two lanes per
// channel, 8 states each (registers capped at 168 for 12 blocks per SM, 14 KB of shared memory a
// block, twice the warps for the same channels; the per-token sums over states and the output take
// one shuffle each).
template <typename T, int TPC>
__global__ void __launch_bounds__(32, TPC == 2 ? 12 : 1) bwd_chan_kernel(Params p, int ktile, float *ckpt) {
  using S = BwdChanShape<TPC>;
  constexpr int kNS = S::kNS, kCPW = S::kCPW, kPitch = S::kPitch;
  extern __shared__ __align__(16) float bc_smem[];
  float *hbuf = bc_smem;                      // [k][state / 4][lane][4]: h_{t-1} of the sub-tile
  float *red = hbuf + kBcSub * kNS * 32;      // [2][32][kPitch]
  float *sBC = red + 2 * 32 * kPitch;         // [k][32]
  const int lane = threadIdx.x;
  const int cl = lane / TPC, sub = lane % TPC, j0 = sub * kNS;
  const int64_t nw = (p.dpg + kCPW - 1) / kCPW;
  const int64_t gi = blockIdx.x / nw, wblk = blockIdx.x % nw;
  const int64_t seg = blockIdx.y, bi = blockIdx.z;
  const int64_t dloc = wblk * kCPW + cl;
  const bool valid = dloc < p.dpg;
  const int64_t dch = gi * p.dpg + (valid ? dloc : 0);
  const int64_t n = p.n;
  const int nsub_max = ktile / kBcSub;
  float *ck = ckpt + ((bi * p.nseg + seg) * gridDim.x + blockIdx.x) * static_cast<int64_t>(nsub_max) * kNS * 32;

  float A2[kNS], G[kNS], dA[kNS];
#pragma unroll
  for (int j = 0; j < kNS; ++j) {
    const bool on = valid && j0 + j < n;
    A2[j] = on ? p.A[dch * p.s_Ad + (j0 + j) * p.s_An] * kLog2e : 0.f;
    G[j] = on ? p.carry[((bi * p.nseg + seg) * p.d + dch) * n + j0 + j] : 0.f;  // a_{t+1} g_{t+1} from the right
    dA[j] = 0.f;
  }
  const float Dv = (p.has_D && valid) ? p.D[dch] : 0.f;
  const float bias = (p.has_bias && valid) ? p.bias[dch] : 0.f;
  const T *urow = static_cast<const T *>(p.u) + bi * p.s_ub + dch * p.s_ud;
  const T *drow = static_cast<const T *>(p.dt) + bi * p.s_tb + dch * p.s_td;
  const T *grow = static_cast<const T *>(p.dout) + bi * p.s_gb + dch * p.s_gd;
  const T *zrow = static_cast<const T *>(p.z) + bi * p.s_zb + dch * p.s_zd;
  const T *Bg = static_cast<const T *>(p.B) + bi * p.s_Bb + gi * p.s_Bg;
  const T *Cg = static_cast<const T *>(p.C) + bi * p.s_Cb + gi * p.s_Cg;
  const int64_t xo = bi * p.s_xb + dch * p.s_xd;
  const bool writer = valid && sub == 0;  // one lane per channel stores its per-token gradients
  // lane q sums dB (q < 16) or dC (q >= 16) of state jq over the warp's channels: the column of
  // those values in the rows of the lanes holding state jq
  const int jq = lane % kChanN, which = lane / kChanN;
  const int qhalf = jq / kNS, qcol = which * kNS + jq % kNS;
  float *part_row = p.dBC_part + ((((static_cast<int64_t>(which) * p.b + bi) * p.g + gi) * nw + wblk) * n + jq) * p.l;
  const int64_t tile0 = seg * p.seg_tiles;
  const int64_t tile1 = min(tile0 + p.seg_tiles, p.ntiles);
  float dD_l = 0.f, dbias_l = 0.f;
  int buf = 0;

  for (int64_t tile = tile1 - 1; tile >= tile0; --tile) {
    const int64_t ta = tile * ktile;
    const int nsub = static_cast<int>((min(ta + ktile, p.l) - ta + kBcSub - 1) / kBcSub);
    float h[kNS];
    {
      const float *ts = p.tstate + ((bi * p.d + dch) * p.ntiles + tile) * (n + 1);
#pragma unroll
      for (int j = 0; j < kNS; ++j) h[j] = (valid && j0 + j < n) ? ts[j0 + j] : 0.f;
    }
    // 1. checkpoints: the state entering every sub-tile
#pragma unroll 1
    for (int s = 0; s < nsub; ++s) {
#pragma unroll
      for (int j = 0; j < kNS; ++j) ck[(s * kNS + j) * 32 + lane] = h[j];
      if (s == nsub - 1) break;
      const int64_t t0 = ta + s * kBcSub;
      __syncwarp();
      bc_stage<T>(p, Bg, Cg, t0, sBC, lane);
      float dl[kBcSub], uv[kBcSub];
      load_run<T, kBcSub>(drow, t0, p.l, p.vec, dl);
      load_run<T, kBcSub>(urow, t0, p.l, p.vec, uv);
      __syncwarp();
#pragma unroll
      for (int k = 0; k < kBcSub; ++k) {
        const float x = p.softplus ? softplus_f(dl[k] + bias) : dl[k] + bias;
        const float dk = t0 + k < p.l ? x : 0.f;
        const float duk = dk * uv[k];
        float Bv[kNS], Cv[kNS];
        bc_read<kNS>(sBC, k, j0, Bv, Cv);
#pragma unroll
        for (int j = 0; j < kNS; ++j) h[j] = ex2(dk * A2[j]) * h[j] + duk * Bv[j];
      }
    }
    // 2. sub-tiles right to left
#pragma unroll 1
    for (int s = nsub - 1; s >= 0; --s) {
      const int64_t t0 = ta + s * kBcSub;
      __syncwarp();
      bc_stage<T>(p, Bg, Cg, t0, sBC, lane);
      float dr[kBcSub], uv[kBcSub], gv[kBcSub], zv[kBcSub];
      load_run<T, kBcSub>(drow, t0, p.l, p.vec, dr);
      load_run<T, kBcSub>(urow, t0, p.l, p.vec, uv);
      load_run<T, kBcSub>(grow, t0, p.l, p.vec, gv);
      if (p.has_z) load_run<T, kBcSub>(zrow, t0, p.l, p.vec, zv);
#pragma unroll
      for (int j = 0; j < kNS; ++j) h[j] = ck[(s * kNS + j) * 32 + lane];
      float dl[kBcSub], dy[kBcSub], dz[kBcSub];
#pragma unroll
      for (int k = 0; k < kBcSub; ++k) {
        const bool in = valid && t0 + k < p.l;
        const float x = p.softplus ? softplus_f(dr[k] + bias) : dr[k] + bias;
        dl[k] = t0 + k < p.l ? x : 0.f;
        float gy = gv[k];
        if (p.has_z) gy *= silu_f(zv[k]);  // dL/dy = dout * silu(z)
        dy[k] = in ? gy : 0.f;  // an idle lane or a token past the end: no cotangent
      }
      __syncwarp();
      // recompute the sub-tile's states: h_{t-1} to shared memory, y + D u for dz
#pragma unroll
      for (int k = 0; k < kBcSub; ++k) {
        float4 *hb = reinterpret_cast<float4 *>(hbuf + k * kNS * 32) + lane;
#pragma unroll
        for (int q = 0; q < kNS / 4; ++q) hb[q * 32] = make_float4(h[4 * q], h[4 * q + 1], h[4 * q + 2], h[4 * q + 3]);
        float Bv[kNS], Cv[kNS];
        bc_read<kNS>(sBC, k, j0, Bv, Cv);
        const float duk = dl[k] * uv[k];
        float y0 = 0.f, y1 = 0.f;
#pragma unroll
        for (int j = 0; j < kNS; ++j) {
          h[j] = ex2(dl[k] * A2[j]) * h[j] + duk * Bv[j];
          if (j & 1) y1 += Cv[j] * h[j]; else y0 += Cv[j] * h[j];
        }
        dz[k] = pair_sum<TPC>(y0 + y1) + Dv * uv[k];  // y + D u
      }
      // dz = dout silu'(z) (y + D u) and (p.out) the forward's output again, (y + D u) silu(z): z and
      // dout read again (cached) instead of held in registers through the recompute
      if (p.has_z) {
        load_run<T, kBcSub>(grow, t0, p.l, p.vec, gv);
        load_run<T, kBcSub>(zrow, t0, p.l, p.vec, zv);
#pragma unroll
        for (int k = 0; k < kBcSub; ++k) {
          const float sg = sigmoid_f(zv[k]);
          gv[k] *= sg * (1.f + zv[k] * (1.f - sg));
          zv[k] *= sg * dz[k];
          dz[k] *= gv[k];
        }
        if (writer) store_run<T, kBcSub>(static_cast<T *>(p.dz) + xo, t0, p.l, p.vec, dz);
        if (p.out != nullptr && writer) store_run<T, kBcSub>(static_cast<T *>(p.out) + xo, t0, p.l, p.vec, zv);
      } else if (p.out != nullptr && writer) {
        store_run<T, kBcSub>(static_cast<T *>(p.out) + xo, t0, p.l, p.vec, dz);
      }
      // reverse walk; h holds h_t of the token being walked
      float Sv[kBcSub], gAv[kBcSub];
#pragma unroll
      for (int k = kBcSub - 1; k >= 0; --k) {
        float Bv[kNS], Cv[kNS], hp[kNS];
        bc_read<kNS>(sBC, k, j0, Bv, Cv);
        {
          const float4 *hb = reinterpret_cast<const float4 *>(hbuf + k * kNS * 32) + lane;
#pragma unroll
          for (int q = 0; q < kNS / 4; ++q) {
            const float4 v = hb[q * 32];
            hp[4 * q] = v.x; hp[4 * q + 1] = v.y; hp[4 * q + 2] = v.z; hp[4 * q + 3] = v.w;
          }
        }
        const float dk = dl[k], duk = dk * uv[k], dyk = dy[k];
        float S0 = 0.f, S1 = 0.f, gA0 = 0.f, gA1 = 0.f;
        float *row = red + (buf * 32 + lane) * kPitch;
#pragma unroll
        for (int q = 0; q < kNS / 4; ++q) {
          float db[4], dc[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int j = 4 * q + e;
            const float a = ex2(dk * A2[j]);
            const float gt = fmaf(dyk, Cv[j], G[j]);  // dL/dh_t
            dc[e] = dyk * h[j];
            db[e] = gt * duk;
            const float w = gt * a * hp[j];  // dL/da_t * a_t
            dA[j] = fmaf(dk, w, dA[j]);
            if (j & 1) { S1 = fmaf(gt, Bv[j], S1); gA1 = fmaf(A2[j], w, gA1); }
            else { S0 = fmaf(gt, Bv[j], S0); gA0 = fmaf(A2[j], w, gA0); }
            G[j] = a * gt;
            h[j] = hp[j];
          }
          reinterpret_cast<float4 *>(row)[q] = make_float4(db[0], db[1], db[2], db[3]);
          reinterpret_cast<float4 *>(row)[kNS / 4 + q] = make_float4(dc[0], dc[1], dc[2], dc[3]);
        }
        Sv[k] = pair_sum<TPC>(S0 + S1);
        gAv[k] = pair_sum<TPC>(gA0 + gA1) * kLn2;
        __syncwarp();
        const float *col = red + (buf * 32 + qhalf) * kPitch + qcol;
        float r0 = 0.f, r1 = 0.f, r2 = 0.f, r3 = 0.f;
#pragma unroll
        for (int c = 0; c < kCPW; c += 4) {
          r0 += col[(c * TPC) * kPitch];
          r1 += col[((c + 1) * TPC) * kPitch];
          r2 += col[((c + 2) * TPC) * kPitch];
          r3 += col[((c + 3) * TPC) * kPitch];
        }
        if (jq < n && t0 + k < p.l) part_row[t0 + k] = (r0 + r1) + (r2 + r3);
        buf ^= 1;
      }
      // per token: du = delta S + D dy; ddelta = (sum_n w A_n + u S) softplus'(delta + bias)
      float du[kBcSub], dd[kBcSub];
#pragma unroll
      for (int k = 0; k < kBcSub; ++k) {
        const bool in = writer && t0 + k < p.l;
        du[k] = dl[k] * Sv[k] + Dv * dy[k];
        const float gd = gAv[k] + uv[k] * Sv[k];
        dd[k] = p.softplus ? gd * sigmoid_f(dr[k] + bias) : gd;
        dD_l += in ? dy[k] * uv[k] : 0.f;
        dbias_l += in ? dd[k] : 0.f;
      }
      if (writer) {
        store_run<T, kBcSub>(static_cast<T *>(p.du) + xo, t0, p.l, p.vec, du);
        store_run<T, kBcSub>(static_cast<T *>(p.ddt) + xo, t0, p.l, p.vec, dd);
      }
    }
  }
  if (!valid) return;
  const int64_t base = (bi * p.nseg + seg) * p.d + dch;
#pragma unroll
  for (int j = 0; j < kNS; ++j) {
    if (j0 + j < n) {
      p.dA_part[base * n + j0 + j] = dA[j];
      if (seg == 0 && p.dh0 != nullptr) p.dh0[(bi * p.d + dch) * n + j0 + j] = G[j];
    }
  }
  if (sub == 0) {
    p.dD_part[base] = dD_l;
    p.dbias_part[base] = dbias_l;
  }
}

// ----------------------------------------------------------------------------- host

void check_cuda(const char *what) {
  const cudaError_t e = cudaGetLastError();
  TORCH_CHECK(e == cudaSuccess, "genomamba selective_scan v2 (", what, "): ", cudaGetErrorString(e));
}

template <typename Kern> void set_smem(Kern kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    TORCH_CHECK(e == cudaSuccess, "genomamba selective_scan v2: shared memory ", bytes, ": ", cudaGetErrorString(e));
  }
}

bool aligned16(const torch::Tensor &t, int rows_from_dim) {
  // every row start (all dims but the last, unit-stride one) 16-byte aligned
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  for (int i = rows_from_dim; i < t.dim() - 1; ++i)
    if ((t.stride(i) * t.element_size()) % 16 != 0) return false;
  return true;
}

// per-state exit of the fix-up and summary passes (on by default; set_state_exit(False) gives the
// earlier rule, every state to the last tile any state needs, for same-machine comparisons)
static bool g_state_exit = true;
void set_state_exit(bool on) { g_state_exit = on; }

// B/C prefetch depths (states ahead) of the main backward and of the fix-up / reverse-summary passes.
// Backward: -1 (the default) runs the shipped build; 0..3 the PF build (swizzled dB/dC slots) with a
// ring that deep (0: rows loaded at use). Fix-up and summaries: 0 (the default) loads at use.
// l2: L2 prefetch hints for the next tile's rows: 0 none (the default), 1 in the PF builds of the
// backward (bwd >= 0), fix-up and summaries, 2 in the backward's PF build only
static int g_pf_bwd = -1, g_pf_fix = 0, g_l2 = 0;
// dB/dC partial sums: 0 torch's reductions (a sum over the parts, then a cast), 1 bc_reduce_kernel
static int g_bc_reduce = 0;
void set_bc_reduce(int64_t mode) {
  TORCH_CHECK(mode == 0 || mode == 1, "selective_scan v2: the dB/dC reduction mode is 0 or 1");
  g_bc_reduce = static_cast<int>(mode);
}
void set_prefetch(int64_t bwd, int64_t fix, int64_t l2) {
  TORCH_CHECK(bwd >= -1 && bwd <= 3 && fix >= 0 && fix <= 3 && l2 >= 0 && l2 <= 2,
              "selective_scan v2: prefetch depths are -1..3 (backward) and 0..3 (fix-up), L2 hint modes 0..2");
  g_pf_bwd = static_cast<int>(bwd);
  g_pf_fix = static_cast<int>(fix);
  g_l2 = static_cast<int>(l2);
}

// dynamic shared memory of a kernel whose own arrays take `base_floats` floats, plus W warps' prefetch
// rings of (depth + 1) slots of `rows` rows of K-token runs; lowers the depth until it fits the
// device (0: no ring) and sets p.pf_off. Returns the bytes to launch with.
static size_t with_rings(Params &p, int &depth, size_t base_floats, int64_t W, int rows, int64_t K,
                         int64_t esize, int device) {
  int smem_max = 0;
  cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  p.pf_off = static_cast<int64_t>((base_floats + 3) / 4 * 4);
  auto bytes = [&](int d) {
    return sizeof(float) * static_cast<size_t>(p.pf_off) +
           (d ? static_cast<size_t>(W * (d + 1) * rows * K * esize * 32) : 0);
  };
  if (p.n < 1) depth = 0;
  while (depth > 0 && bytes(depth) > static_cast<size_t>(smem_max)) --depth;
  return depth ? bytes(depth) : sizeof(float) * base_floats;
}

struct Common {
  Params p{};
  int64_t K, W;
  dim3 grid;
  torch::Tensor Dt, bt, zt;
};

Common setup(const torch::Tensor &u, const torch::Tensor &delta, const torch::Tensor &A, const torch::Tensor &B,
             const torch::Tensor &C, const c10::optional<torch::Tensor> &D, const c10::optional<torch::Tensor> &z,
             const c10::optional<torch::Tensor> &bias, bool softplus, int64_t kitems, int64_t warps,
             int64_t seg_tiles) {
  TORCH_CHECK(u.stride(2) == 1 && delta.stride(2) == 1 && B.stride(-1) == 1 && C.stride(-1) == 1,
              "selective_scan v2: l must be the unit-stride axis");
  TORCH_CHECK(delta.scalar_type() == u.scalar_type() && B.scalar_type() == u.scalar_type() &&
                  C.scalar_type() == u.scalar_type(),
              "selective_scan v2: u, delta, B, C must share a dtype");
  TORCH_CHECK(A.scalar_type() == torch::kFloat32, "selective_scan v2: A must be float32");
  TORCH_CHECK(kitems == 8 || kitems == 16, "selective_scan v2: kitems is 8 or 16");
  TORCH_CHECK(warps >= 1 && warps <= kMaxWarps, "selective_scan v2: warps in 1..", kMaxWarps);
  TORCH_CHECK(seg_tiles >= 1, "selective_scan v2: seg_tiles >= 1");
  Common c;
  c.K = kitems;
  c.W = warps;
  Params &p = c.p;
  const bool grouped = B.dim() == 4;
  p.b = u.size(0); p.d = u.size(1); p.l = u.size(2); p.n = A.size(1);
  p.g = grouped ? B.size(1) : 1;
  TORCH_CHECK(!grouped || (C.dim() == 4 && C.size(1) == p.g), "selective_scan v2: B and C grouped alike");
  p.dpg = p.d / p.g;
  p.nblk_pg = (p.dpg + warps - 1) / warps;
  p.ntiles = (p.l + 32 * kitems - 1) / (32 * kitems);
  p.seg_tiles = seg_tiles;
  p.nseg = std::max<int64_t>(1, (p.ntiles + seg_tiles - 1) / seg_tiles);
  c.zt = z.has_value() ? z.value() : u;
  TORCH_CHECK(c.zt.stride(2) == 1 && c.zt.scalar_type() == u.scalar_type(), "selective_scan v2: z layout/dtype");
  c.Dt = D.has_value() ? D.value().to(torch::kFloat32).contiguous() : torch::Tensor();
  c.bt = bias.has_value() ? bias.value().to(torch::kFloat32).contiguous() : torch::Tensor();
  p.u = u.data_ptr(); p.dt = delta.data_ptr(); p.z = c.zt.data_ptr(); p.B = B.data_ptr(); p.C = C.data_ptr();
  p.A = A.data_ptr<float>();
  p.D = D.has_value() ? c.Dt.data_ptr<float>() : nullptr;
  p.bias = bias.has_value() ? c.bt.data_ptr<float>() : nullptr;
  p.s_ub = u.stride(0); p.s_ud = u.stride(1); p.s_tb = delta.stride(0); p.s_td = delta.stride(1);
  p.s_zb = c.zt.stride(0); p.s_zd = c.zt.stride(1);
  p.s_Bb = B.stride(0); p.s_Bg = grouped ? B.stride(1) : 0; p.s_Bn = B.stride(-2);
  p.s_Cb = C.stride(0); p.s_Cg = grouped ? C.stride(1) : 0; p.s_Cn = C.stride(-2);
  p.s_Ad = A.stride(0); p.s_An = A.stride(1);
  p.has_D = D.has_value(); p.has_z = z.has_value(); p.has_bias = bias.has_value(); p.softplus = softplus;
  p.state_exit = g_state_exit;
  p.pf_bwd = g_pf_bwd;
  p.pf_fix = g_pf_fix;
  p.l2pf = g_l2 != 0;
  p.vec = aligned16(u, 0) && aligned16(delta, 0) && aligned16(c.zt, 0) && aligned16(B, 0) && aligned16(C, 0);
  TORCH_CHECK(p.nseg <= 65535 && p.b <= 65535, "selective_scan v2: too many segments or batches for the grid");
  c.grid = dim3(static_cast<unsigned>(p.g * p.nblk_pg), static_cast<unsigned>(p.nseg), static_cast<unsigned>(p.b));
  return c;
}

#define SSV2_DISPATCH(ST, K, ...)                                                       \
  AT_DISPATCH_SWITCH(ST, "selective_scan_v2",                                           \
      AT_DISPATCH_CASE(at::ScalarType::Float, [&] {                                     \
        if (K == 16) { constexpr int kK = 16; __VA_ARGS__ } else { constexpr int kK = 8; __VA_ARGS__ } }) \
      AT_DISPATCH_CASE(at::ScalarType::Half, [&] {                                      \
        if (K == 16) { constexpr int kK = 16; __VA_ARGS__ } else { constexpr int kK = 8; __VA_ARGS__ } }) \
      AT_DISPATCH_CASE(at::ScalarType::BFloat16, [&] {                                  \
        if (K == 16) { constexpr int kK = 16; __VA_ARGS__ } else { constexpr int kK = 8; __VA_ARGS__ } }))

}  // namespace ssv2

// Returns (out, final_state, tstate); tstate (b, d, ntiles, n + 1) holds the state at every tile
// start and each tile's sum(delta) when `save` (for the backward), else it is empty. `build`: 0 the
// plain main pass, 1 its lean build fwd_kernel<..., true>, 2 the lean build taking states in pairs
// (same results to rounding; see fwd_kernel), 3 one lane per channel (fwd_chan_kernel: n <= 16,
// aligned rows; `warps` 1..4 per block), 4 the same staging 32-token tiles (half the shared memory),
// 5 / 6 as 3 / 4 with two lanes per channel (8 states each), 7 / 8 with four (4 states each); the lanes
// of a channel share the activations of its tokens and reduce-scatter its outputs.
std::vector<torch::Tensor> selective_scan_fwd_v2(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                                 torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                                 c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> bias,
                                                 bool softplus, c10::optional<torch::Tensor> h0, int64_t kitems,
                                                 int64_t warps, int64_t seg_tiles, bool save, int64_t build,
                                                 c10::optional<torch::Tensor> out_into) {
  using namespace ssv2;
  const c10::cuda::CUDAGuard guard(u.device());
  Common c = setup(u, delta, A, B, C, D, z, bias, softplus, kitems, warps, seg_tiles);
  Params &p = c.p;
  auto f32 = u.options().dtype(torch::kFloat32);
  // out_into: where the caller wants the output (e.g. rows of its own (channels, b * l) matrix): a
  // (b, d, l) tensor of u's dtype and device with a unit last stride, not overlapping itself
  if (out_into.has_value()) {
    const torch::Tensor &v = out_into.value();
    TORCH_CHECK(v.dim() == 3 && v.size(0) == p.b && v.size(1) == p.d && v.size(2) == p.l &&
                    v.scalar_type() == u.scalar_type() && v.device() == u.device() && v.stride(2) == 1 &&
                    v.is_non_overlapping_and_dense(),
                "selective_scan v2: out_into is not a dense (b, d, l) tensor of u's dtype and device with a "
                "unit last stride");
  }
  auto out = out_into.has_value() ? out_into.value() : torch::empty({p.b, p.d, p.l}, u.options());
  auto final_state = torch::empty({p.b, p.d, p.n}, f32);
  torch::Tensor h0c = h0.has_value() ? h0.value().to(torch::kFloat32).contiguous() : torch::Tensor();
  torch::Tensor tstate = save ? torch::empty({p.b, p.d, p.ntiles, p.n + 1}, f32) : torch::empty({0}, f32);
  if (p.l == 0) {
    if (h0.has_value()) final_state.copy_(h0c); else final_state.zero_();
    return {out, final_state, tstate};
  }
  p.out = out.data_ptr(); p.final_state = final_state.data_ptr<float>();
  p.h0 = h0.has_value() ? h0c.data_ptr<float>() : nullptr;
  p.save = save; p.tstate = save ? tstate.data_ptr<float>() : nullptr;
  p.s_ob = out.stride(0); p.s_od = out.stride(1);
  p.vec = p.vec && aligned16(out, 0);
  torch::Tensor hend, dsum, carry;
  if (p.nseg > 1) {
    hend = torch::empty({p.b, p.nseg, p.d, p.n}, f32);
    dsum = torch::empty({p.b, p.nseg, p.d}, f32);
    carry = torch::empty({p.b, p.nseg, p.d, p.n}, f32);
    p.hend = hend.data_ptr<float>(); p.dsum_seg = dsum.data_ptr<float>(); p.carry = carry.data_ptr<float>();
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  const size_t smem = sizeof(float) * 2 * p.n * c.W;
  const unsigned threads = static_cast<unsigned>(32 * c.W);
  TORCH_CHECK(build >= 0 && build <= 8, "selective_scan v2: build is 0 (plain), 1 (lean), 2 (lean, states in "
              "pairs), 3 / 4 (lane per channel, 64- / 32-token tiles), 5 / 6 (two lanes per channel) or 7 / 8 "
              "(four lanes per channel)");
  if (build >= 3) {  // one lane per channel (fwd_chan_kernel), then the same combine and fix-up
    TORCH_CHECK(p.n <= kChanN, "selective_scan v2: the lane-per-channel forward takes n <= ", kChanN);
    TORCH_CHECK(p.vec, "selective_scan v2: the lane-per-channel forward needs 16-byte aligned rows");
    TORCH_CHECK(c.W >= 1 && c.W <= 4, "selective_scan v2: the lane-per-channel forward takes 1..4 warps");
    // fp32 rows are twice as long: at most 2 warps a block fit the opt-in shared memory
    const int64_t cw = std::min<int64_t>(c.W, u.element_size() == 4 ? 2 : 4);
    const int tile = (build % 2 == 0) ? 32 : kChanTile;
    const int tpc = build >= 7 ? 4 : (build >= 5 ? 2 : 1);
    const size_t sm = chan_smem_bytes(static_cast<int>(cw), tile, static_cast<int>(u.element_size()), tpc);
    const int64_t cpb = 32 / tpc * cw;  // channels per block
    const int64_t nblk = (p.dpg + cpb - 1) / cpb;
    const dim3 grid(static_cast<unsigned>(p.g * nblk), static_cast<unsigned>(p.nseg), static_cast<unsigned>(p.b));
    const int ktile = static_cast<int>(32 * c.K);
    const unsigned nthr = static_cast<unsigned>(32 * cw);
    SSV2_DISPATCH(u.scalar_type(), c.K, {
      (void)kK;
      auto launch = [&](auto kernel) {
        set_smem(kernel, sm);
        kernel<<<grid, nthr, sm, stream>>>(p, ktile);
      };
      if (tpc == 1) {
        if (tile == 32) launch(fwd_chan_kernel<scalar_t, 32, 1>); else launch(fwd_chan_kernel<scalar_t, kChanTile, 1>);
      } else if (tpc == 2) {
        if (tile == 32) launch(fwd_chan_kernel<scalar_t, 32, 2>); else launch(fwd_chan_kernel<scalar_t, kChanTile, 2>);
      } else {
        if (tile == 32) launch(fwd_chan_kernel<scalar_t, 32, 4>); else launch(fwd_chan_kernel<scalar_t, kChanTile, 4>);
      }
    });
  } else SSV2_DISPATCH(u.scalar_type(), c.K, {
    if (build == 2) {
      set_smem(fwd_kernel<scalar_t, kK, true, true>, smem);
      fwd_kernel<scalar_t, kK, true, true><<<c.grid, threads, smem, stream>>>(p);
    } else if (build == 1) {
      set_smem(fwd_kernel<scalar_t, kK, true>, smem);
      fwd_kernel<scalar_t, kK, true><<<c.grid, threads, smem, stream>>>(p);
    } else {
      set_smem(fwd_kernel<scalar_t, kK, false>, smem);
      fwd_kernel<scalar_t, kK, false><<<c.grid, threads, smem, stream>>>(p);
    }
  });
  check_cuda(build >= 3 ? "fwd (lane per channel)" : "fwd");
  if (p.nseg > 1) {
    const int64_t tot = p.b * p.d * p.n;
    fwd_combine_kernel<<<static_cast<unsigned>((tot + 255) / 256), 256, 0, stream>>>(p);
    check_cuda("fwd combine");
    dim3 g2 = c.grid;
    g2.y = static_cast<unsigned>(p.nseg - 1);
    const size_t smem_fix = with_rings(p, p.pf_fix, 2 * p.n * c.W, c.W, 1, c.K, u.element_size(), u.get_device());
    p.l2pf = g_l2 == 1;  // mode 2 hints the backward only
    SSV2_DISPATCH(u.scalar_type(), c.K, {
      if (p.pf_fix || p.l2pf) {
        set_smem(fwd_fix_kernel<scalar_t, kK, true>, smem_fix);
        fwd_fix_kernel<scalar_t, kK, true><<<g2, threads, smem_fix, stream>>>(p);
      } else {
        set_smem(fwd_fix_kernel<scalar_t, kK>, smem_fix);
        fwd_fix_kernel<scalar_t, kK><<<g2, threads, smem_fix, stream>>>(p);
      }
    });
    check_cuda("fwd fix-up");
  }
  return {out, final_state, tstate};
}

// Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0, out); absent inputs get empty tensors.
// tstate and kitems must come from the forward (save = true); seg_tiles may differ from it;
// min_blocks: 1 or 2 blocks per SM promised to ptxas (register cap 255 or 128 at 256 threads);
// states_per_sync: states per pair of block barriers (capped by n and shared memory); joint_scan: the
// JOINT build of bwd_kernel (forward and reverse shuffle scans in the same rounds); layout 1: the
// lane-per-channel backward (bwd_chan_kernel: n <= 16; min_blocks, states_per_sync, joint_scan and
// warps do not apply to it), 2: the same with two lanes per channel (8 states each).
std::vector<torch::Tensor> selective_scan_bwd_v2(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                                 torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                                 c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> bias,
                                                 bool softplus, torch::Tensor tstate, torch::Tensor dout,
                                                 c10::optional<torch::Tensor> dfinal, bool want_dh0, int64_t kitems,
                                                 int64_t warps, int64_t seg_tiles, int64_t min_blocks,
                                                 int64_t states_per_sync, bool joint_scan, int64_t layout,
                                                 bool want_out, c10::optional<torch::Tensor> du_into,
                                                 c10::optional<torch::Tensor> ddelta_into,
                                                 c10::optional<torch::Tensor> dz_into,
                                                 c10::optional<torch::Tensor> out_into) {
  using namespace ssv2;
  TORCH_CHECK(min_blocks == 1 || min_blocks == 2, "selective_scan v2 bwd: min_blocks is 1 or 2");
  TORCH_CHECK(layout >= 0 && layout <= 2, "selective_scan v2 bwd: layout is 0 (lanes over tokens), 1 (lane per "
              "channel) or 2 (two lanes per channel)");
  TORCH_CHECK(states_per_sync >= 1, "selective_scan v2 bwd: states_per_sync >= 1");
  const c10::cuda::CUDAGuard guard(u.device());
  TORCH_CHECK(warps <= kMaxWarpsBwdWide, "selective_scan v2 bwd: at most ", kMaxWarpsBwdWide, " warps a block");
  TORCH_CHECK(warps <= kMaxWarpsBwd || kitems == 8 || layout != 0, "selective_scan v2 bwd: more than ",
              kMaxWarpsBwd, " warps a block take kitems 8");
  Common c = setup(u, delta, A, B, C, D, z, bias, softplus, kitems, warps, seg_tiles);
  Params &p = c.p;
  TORCH_CHECK(dout.scalar_type() == u.scalar_type() && dout.stride(2) == 1, "selective_scan v2 bwd: dout layout/dtype");
  TORCH_CHECK(tstate.is_contiguous() && tstate.dim() == 4 && tstate.size(2) == p.ntiles && tstate.size(3) == p.n + 1,
              "selective_scan v2 bwd: tstate does not match (same kitems as the forward?)");
  auto f32 = u.options().dtype(torch::kFloat32);
  const bool grouped = B.dim() == 4;
  // *_into: where the caller wants du, ddelta, dz and out (e.g. rows of its own (channels, b * l)
  // matrices): (b, d, l) in u's dtype, unit last stride, dense, all with the same strides (the kernels
  // store the four at one offset); those not given are allocated with those strides
  TORCH_CHECK(!dz_into.has_value() || z.has_value(), "selective_scan v2 bwd: dz_into without z");
  TORCH_CHECK(!out_into.has_value() || want_out, "selective_scan v2 bwd: out_into without want_out");
  int64_t xs0 = -1, xs1 = -1;
  for (const c10::optional<torch::Tensor> *t : {&du_into, &ddelta_into, &dz_into, &out_into}) {
    if (!t->has_value()) continue;
    const torch::Tensor &v = t->value();
    TORCH_CHECK(v.dim() == 3 && v.size(0) == p.b && v.size(1) == p.d && v.size(2) == p.l &&
                    v.scalar_type() == u.scalar_type() && v.device() == u.device() && v.stride(2) == 1 &&
                    v.is_non_overlapping_and_dense(),
                "selective_scan v2 bwd: an output buffer is not a dense (b, d, l) tensor of u's dtype and "
                "device with a unit last stride");
    if (xs0 < 0) { xs0 = v.stride(0); xs1 = v.stride(1); }
    TORCH_CHECK(v.stride(0) == xs0 && v.stride(1) == xs1, "selective_scan v2 bwd: the output buffers' strides differ");
  }
  auto alloc = [&](const c10::optional<torch::Tensor> &given) {
    if (given.has_value()) return given.value();
    if (xs0 < 0) return torch::empty({p.b, p.d, p.l}, u.options());
    return torch::empty_strided({p.b, p.d, p.l}, {xs0, xs1, 1}, u.options());
  };
  auto du = alloc(du_into);
  auto ddelta = alloc(ddelta_into);
  auto dz = z.has_value() ? alloc(dz_into) : torch::empty({0}, u.options());
  auto dh0 = want_dh0 ? torch::empty({p.b, p.d, p.n}, f32) : torch::empty({0}, f32);
  // want_out: the forward's output written again by the replay (callers that did not keep it)
  auto out = want_out ? alloc(out_into) : torch::empty({0}, u.options());
  p.out = nullptr;
  TORCH_CHECK(layout == 0 || p.n <= kChanN, "selective_scan v2 bwd: the lane-per-channel backward takes n <= ", kChanN);
  // dB/dC partials: one per block (lanes over tokens) or per warp of 32 channels (lane per channel)
  const int64_t nwarps_pg = layout == 0 ? 0 : (p.dpg + 32 / layout - 1) / (32 / layout);
  auto dBC = torch::empty({2, p.b, p.g, layout >= 1 ? nwarps_pg : p.nblk_pg, p.n, p.l}, f32);
  auto dA_part = torch::empty({p.b, p.nseg, p.d, p.n}, f32);
  auto dD_part = torch::empty({p.b, p.nseg, p.d}, f32);
  auto dbias_part = torch::empty({p.b, p.nseg, p.d}, f32);
  auto carry = torch::empty({p.b, p.nseg, p.d, p.n}, f32);
  torch::Tensor Pbuf = p.nseg > 1 ? torch::empty({p.b, p.nseg, p.d, p.n}, f32) : torch::Tensor();
  torch::Tensor dfc = dfinal.has_value() ? dfinal.value().to(torch::kFloat32).contiguous() : torch::Tensor();
  if (p.l > 0) {
    p.dout = dout.data_ptr(); p.s_gb = dout.stride(0); p.s_gd = dout.stride(1);
    p.du = du.data_ptr(); p.ddt = ddelta.data_ptr(); p.dz = z.has_value() ? dz.data_ptr() : nullptr;
    p.s_xb = du.stride(0); p.s_xd = du.stride(1);
    if (want_out) p.out = out.data_ptr();
    p.tstate = tstate.data_ptr<float>();
    p.dfinal = dfinal.has_value() ? dfc.data_ptr<float>() : nullptr;
    p.dBC_part = dBC.data_ptr<float>(); p.dA_part = dA_part.data_ptr<float>();
    p.dD_part = dD_part.data_ptr<float>(); p.dbias_part = dbias_part.data_ptr<float>();
    p.dh0 = want_dh0 ? dh0.data_ptr<float>() : nullptr;
    p.carry = carry.data_ptr<float>();
    p.P = p.nseg > 1 ? Pbuf.data_ptr<float>() : nullptr;
    p.vec = p.vec && aligned16(dout, 0) && aligned16(du, 0) && aligned16(ddelta, 0) &&
            (!z.has_value() || aligned16(dz, 0)) && (!want_out || aligned16(out, 0));
    auto stream = c10::cuda::getCurrentCUDAStream();
    const unsigned threads = static_cast<unsigned>(32 * c.W);
    if (p.nseg > 1) {
      const size_t smem_small = with_rings(p, p.pf_fix, 2 * p.n * c.W, c.W, 1, c.K, u.element_size(), u.get_device());
      dim3 g2 = c.grid;
      g2.y = static_cast<unsigned>(p.nseg - 1);
      p.l2pf = g_l2 == 1;  // mode 2 hints the main backward only
      SSV2_DISPATCH(u.scalar_type(), c.K, {
        if (p.pf_fix || p.l2pf) {
          set_smem(bwd_summary_kernel<scalar_t, kK, true>, smem_small);
          bwd_summary_kernel<scalar_t, kK, true><<<g2, threads, smem_small, stream>>>(p);
        } else {
          set_smem(bwd_summary_kernel<scalar_t, kK>, smem_small);
          bwd_summary_kernel<scalar_t, kK><<<g2, threads, smem_small, stream>>>(p);
        }
      });
      check_cuda("bwd summary");
      p.l2pf = g_l2 != 0;
    }
    if (p.nseg > 1) {
      TORCH_CHECK(p.n <= kCombineThreads, "selective_scan v2 bwd: n <= ", kCombineThreads, " states");
      bwd_combine_kernel<<<static_cast<unsigned>(p.b * p.d), kCombineThreads, 0, stream>>>(p);
      check_cuda("bwd combine");
    } else if (dfinal.has_value()) {  // one segment: the carry entering it is dL/d(final state)
      carry.view({p.b, p.d, p.n}).copy_(dfc);
    } else {
      carry.zero_();
    }
    if (layout >= 1) {
      const int ktile = static_cast<int>(32 * c.K);
      const int tpc = static_cast<int>(layout);
      const dim3 grid(static_cast<unsigned>(p.g * nwarps_pg), static_cast<unsigned>(p.nseg), static_cast<unsigned>(p.b));
      auto ckpt = torch::empty({static_cast<int64_t>(grid.x) * p.nseg * p.b * (ktile / kBcSub) * (kChanN / tpc) * 32}, f32);
      const size_t sm = bwd_chan_smem_bytes(tpc);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, u.scalar_type(),
                                      "selective_scan_v2_bwd_chan", [&] {
        auto launch = [&](auto kernel) {
          set_smem(kernel, sm);
          kernel<<<grid, 32, sm, stream>>>(p, ktile, ckpt.data_ptr<float>());
        };
        if (tpc == 2) launch(bwd_chan_kernel<scalar_t, 2>); else launch(bwd_chan_kernel<scalar_t, 1>);
      });
      check_cuda("bwd (lane per channel)");
    } else {
    // dB/dC slots for ns states, as many as asked for that fit the per-block shared memory (>= 1)
    const size_t fixed = sizeof(float) * (3 * c.W * p.n + c.W * p.n * 32);
    const size_t per_state = sizeof(float) * 2 * c.W * 32 * c.K;
    int smem_max = 0;
    cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, u.get_device());
    // the prefetch ring (16 bytes of alignment slack before it) comes out of what the dB/dC slots may
    // take; a ring that leaves no room for one slot is made shallower
    if (!(c.K == 8 && c.W > kMaxWarpsBwd && joint_scan)) p.pf_bwd = -1;  // only the wide joint build has PF
    if (!p.vec && p.pf_bwd > 0) p.pf_bwd = 0;  // unaligned rows load every run directly: no ring to fill
    const size_t ring_unit = static_cast<size_t>(c.W * 2 * c.K * u.element_size() * 32);  // per slot
    while (p.pf_bwd > 0 && fixed + per_state + 16 + ring_unit * (p.pf_bwd + 1) > static_cast<size_t>(smem_max))
      --p.pf_bwd;
    const size_t ring = p.pf_bwd > 0 ? 16 + ring_unit * (p.pf_bwd + 1) : 0;
    const int64_t fit = smem_max > static_cast<int64_t>(fixed + per_state + ring)
                            ? (static_cast<int64_t>(smem_max) - static_cast<int64_t>(fixed + ring)) /
                                  static_cast<int64_t>(per_state)
                            : 1;
    p.ns = std::max<int64_t>(1, std::min({states_per_sync, std::max<int64_t>(p.n, 1), fit}));
    const size_t smem = p.pf_bwd > 0 ? with_rings(p, p.pf_bwd, (fixed + per_state * p.ns) / sizeof(float), c.W, 2,
                                                  c.K, u.element_size(), u.get_device())
                                     : fixed + per_state * p.ns;
    SSV2_DISPATCH(u.scalar_type(), c.K, {
      if constexpr (kK == 8) {
        if (c.W > kMaxWarpsBwd) {
          if (joint_scan && p.pf_bwd >= 0 && p.l2pf) {
            set_smem(bwd_kernel<scalar_t, kK, 1, true, true, true, true>, smem);
            bwd_kernel<scalar_t, kK, 1, true, true, true, true><<<c.grid, threads, smem, stream>>>(p);
          } else if (joint_scan && p.pf_bwd >= 0) {
            set_smem(bwd_kernel<scalar_t, kK, 1, true, true, true>, smem);
            bwd_kernel<scalar_t, kK, 1, true, true, true><<<c.grid, threads, smem, stream>>>(p);
          } else if (joint_scan) {
            set_smem(bwd_kernel<scalar_t, kK, 1, true, true>, smem);
            bwd_kernel<scalar_t, kK, 1, true, true><<<c.grid, threads, smem, stream>>>(p);
          } else {
            set_smem(bwd_kernel<scalar_t, kK, 1, false, true>, smem);
            bwd_kernel<scalar_t, kK, 1, false, true><<<c.grid, threads, smem, stream>>>(p);
          }
          return;
        }
      }
      if (min_blocks == 2 && joint_scan) {
        set_smem(bwd_kernel<scalar_t, kK, 2, true>, smem);
        bwd_kernel<scalar_t, kK, 2, true><<<c.grid, threads, smem, stream>>>(p);
      } else if (min_blocks == 2) {
        set_smem(bwd_kernel<scalar_t, kK, 2, false>, smem);
        bwd_kernel<scalar_t, kK, 2, false><<<c.grid, threads, smem, stream>>>(p);
      } else if (joint_scan) {
        set_smem(bwd_kernel<scalar_t, kK, 1, true>, smem);
        bwd_kernel<scalar_t, kK, 1, true><<<c.grid, threads, smem, stream>>>(p);
      } else {
        set_smem(bwd_kernel<scalar_t, kK, 1, false>, smem);
        bwd_kernel<scalar_t, kK, 1, false><<<c.grid, threads, smem, stream>>>(p);
      }
    });
    check_cuda("bwd");
    }
  } else {
    dBC.zero_(); dA_part.zero_(); dD_part.zero_(); dbias_part.zero_();
    if (want_dh0) {
      if (dfinal.has_value()) dh0.copy_(dfc); else dh0.zero_();
    }
  }
  // fixed-order reductions of the partials (torch's reduction kernels use no atomics for these);
  // dB and dC are separate sums, never views of one buffer (custom-op outputs must not alias)
  torch::Tensor dB, dC;  // (b, g, n, l)
  const auto bc_type = B.scalar_type();
  const bool one_pass = g_bc_reduce == 1 && p.l > 0 && C.scalar_type() == bc_type &&
                        (bc_type == at::kFloat || bc_type == at::kHalf || bc_type == at::kBFloat16);
  if (one_pass) {
    dB = torch::empty({p.b, p.g, p.n, p.l}, B.options());
    dC = torch::empty({p.b, p.g, p.n, p.l}, B.options());
    const int64_t rows = p.b * p.g, parts = dBC.size(3), nl = p.n * p.l;
    const bool vec = nl % 4 == 0;
    const int64_t work = 2 * rows * (vec ? nl / 4 : nl);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, u.get_device());
    const unsigned blocks = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((work + 255) / 256, 16 * std::max(sms, 1))));
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, bc_type, "selective_scan_v2_bc_reduce", [&] {
      if (vec)
        bc_reduce_kernel<scalar_t, true><<<blocks, 256, 0, stream>>>(dBC.data_ptr<float>(), dB.data_ptr<scalar_t>(),
                                                                      dC.data_ptr<scalar_t>(), rows, parts, nl);
      else
        bc_reduce_kernel<scalar_t, false><<<blocks, 256, 0, stream>>>(dBC.data_ptr<float>(), dB.data_ptr<scalar_t>(),
                                                                       dC.data_ptr<scalar_t>(), rows, parts, nl);
    });
    check_cuda("bwd dB/dC reduction");
  } else {
    dB = dBC[0].sum(2).to(bc_type);
    dC = dBC[1].sum(2).to(C.scalar_type());
  }
  if (!grouped) {
    dB = dB.squeeze(1);
    dC = dC.squeeze(1);
  }
  auto dA = dA_part.sum(at::IntArrayRef{0, 1});
  auto dD = D.has_value() ? dD_part.sum(at::IntArrayRef{0, 1}) : torch::empty({0}, f32);
  auto dbias = bias.has_value() ? dbias_part.sum(at::IntArrayRef{0, 1}) : torch::empty({0}, f32);
  return {du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, out};
}
