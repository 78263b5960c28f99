// One decoding step of a whole Mamba language model at batch 5-64, in one persistent kernel, its
// matrix products on the tensor cores.
//
// At batch 1-4 (model_step.cu) every weight is multiplied on the CUDA cores once per batch row; from
// batch 16 on that costs more than the layered step's cuBLAS products. Here each product is a
// 16-row weight tile times the batch (8-row n-tiles, mma.sync m16n8k16, fp32 accumulation) and the
// blocks (one per SM) meet at a grid-wide barrier between four phases per layer:
//   A  in_proj: a block per 16-channel tile (its x and z rows), the 16 warps splitting d_model;
//      then the conv step and SiLU of the tile, and the tile's share of x_proj (a partial sum
//      over its 16 channels, written per tile)
//   C  per (batch row, channel): the x_proj partial sums added up (fixed order), dt_proj, softplus,
//      the selective state update, D skip, SiLU(z) gate
//   D1 out_proj: a block per (4 row tiles, slice of d_inner); partial sums per slice
//   D2 per batch row: the slices added up, + bias, residual add, RMSNorm of the next layer (or the
//      final norm) into the model dtype
// then the LM head, a warp per 16 vocabulary rows. Every sum has a fixed order: the kernel is
// deterministic.
//
// Rounding follows the layered step (as in model_step.cu): in_proj, conv, x_proj, dt, mixer and
// out_proj outputs and the normed input are rounded to the model dtype; the residual stream is
// fp32 when residual_in_fp32, else the model dtype.
//
// Fragment layout: a lane (group g = lane / 4, thread t = lane % 4) loads 8 consecutive columns
// 32c + 8t .. 32c + 8t + 7 of its rows (weights: rows g and g + 8 of the tile; activations: batch
// row g of the n-tile) with one 16-byte load and uses them as the k = {2t, 2t + 1, 2t + 8, 2t + 9}
// entries of two k16 steps. Weights and activations are permuted alike, so the products are the
// plain dot products.
#include "common.cuh"

namespace {

using namespace gm_step;

struct MmaParams : StepModel {
  int XM;      // x_proj row tiles: ceil((R + 2N) / 16)
  int S;       // out_proj slices of d_inner
  float* res;  // (b, D) residual stream
  void* xn;    // (b, D) model dtype: the normed input of the next in_proj (or of the head)
  float* xs;   // (b, E) conv + SiLU output
  float* zs;   // (b, E) gate input
  void* ys;    // (b, E) model dtype: gated scan output
  float* xp;   // (E / 16, b, 16 XM) x_proj partial sums, one per channel tile
  float* op;   // (S, b, D) out_proj partial sums, one per slice
};

// Shared-memory row stride (elements) of staged activations: K plus padding so that rows are
// 64 bytes apart modulo 128 (a quarter warp's 16-byte loads of two rows hit distinct banks).
__host__ __device__ __forceinline__ int act_stride(int K) { return K + ((32 - K % 64) + 64) % 64; }

template <typename T> struct Mma;
template <> struct Mma<__half> {
  static __device__ __forceinline__ void run(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                             unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};
template <> struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&c)[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                             unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

// One k16 step: lo / hi are a lane's 4 weights of rows g and g + 8, bv its 4 activations.
template <typename T>
__device__ __forceinline__ void mma_step(float (&c)[4], uint2 lo, uint2 hi, uint2 bv) {
  Mma<T>::run(c, lo.x, hi.x, lo.y, hi.y, bv.x, bv.y);
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;" ::: "memory");
}

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(static_cast<const uint4*>(p)); }

// Columns [c0, c0 + n) of rows [0, b) of a (b, ld) model-dtype matrix written earlier in this launch
// (copied through L2), into shared rows ``stride`` elements apart; rows [b, BP) are zeros. The copies
// are only issued here: stage_wait() waits for them (weights can be requested in between).
template <typename T>
__device__ void stage_rows(T* dst, int stride, const T* src, int64_t ld, int c0, int n, int b, int BP) {
  const int v = n / 8;
  for (int q = threadIdx.x; q < BP * v; q += kThreads) {
    const int i = q / v, k = (q % v) * 8;
    if (i < b) cp_async16(dst + i * stride + k, src + (int64_t)i * ld + c0 + k);
    else *reinterpret_cast<uint4*>(dst + i * stride + k) = make_uint4(0u, 0u, 0u, 0u);
  }
}

__device__ __forceinline__ void stage_wait() {
  cp_async_wait_all();
  __syncthreads();
}

// One warp's product of a 16-row weight tile with the staged batch rows over the 32-column chunks
// k0, k0 + dk, ... (n of them): acc[nt] += W[r0 .. r0 + 15, chunks] . act[8 nt .. 8 nt + 7, chunks].
// w: row-major, ``ldw`` elements a row, ``rows`` rows (beyond: zeros); act: shared rows ``stride``
// apart, chunk j at column 32 (k0 + j dk) as in w. prime() requests the first U chunks' weights (it
// may run before the activations are staged); run() multiplies, the next U chunks' weights in
// flight while the current ones are used.
template <typename T, int NT>
struct TileMma {
  static constexpr int U = NT >= 8 ? 2 : 4;
  uint4 lo[U], hi[U];
  const T* plo;
  const T* phi;
  bool ok_lo, ok_hi;
  int k0, dk, n;

  __device__ __forceinline__ void fetch(int j0) {
    const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int j = j0 + u;
      const int64_t col = (int64_t)(k0 + j * dk) * 32;
      lo[u] = j < n && ok_lo ? ldg16(plo + col) : zero;
      hi[u] = j < n && ok_hi ? ldg16(phi + col) : zero;
    }
  }

  __device__ __forceinline__ void prime(const T* w, int64_t ldw, int r0, int rows, int k0_, int dk_, int n_) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    ok_lo = r0 + g < rows;
    ok_hi = r0 + g + 8 < rows;
    plo = w + (int64_t)(ok_lo ? r0 + g : 0) * ldw + 8 * t;
    phi = w + (int64_t)(ok_hi ? r0 + g + 8 : 0) * ldw + 8 * t;
    k0 = k0_;
    dk = dk_;
    n = n_;
    fetch(0);
  }

  __device__ __forceinline__ void run(float (&acc)[NT][4], const T* act, int stride) {
    const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const T* pa = act + g * stride + 8 * t;
    for (int j0 = 0; j0 < n; j0 += U) {
      uint4 cl[U], ch[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        cl[u] = lo[u];
        ch[u] = hi[u];
      }
      fetch(j0 + U);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (j0 + u >= n) break;
        const int col = (k0 + (j0 + u) * dk) * 32;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          const uint4 bv = *reinterpret_cast<const uint4*>(pa + nt * 8 * stride + col);
          mma_step<T>(acc[nt], make_uint2(cl[u].x, cl[u].y), make_uint2(ch[u].x, ch[u].y), make_uint2(bv.x, bv.y));
          mma_step<T>(acc[nt], make_uint2(cl[u].z, cl[u].w), make_uint2(ch[u].z, ch[u].w), make_uint2(bv.z, bv.w));
        }
      }
    }
  }
};

template <int NT>
__device__ __forceinline__ void zero_acc(float (&acc)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[nt][j] = 0.f;
}

// This warp's 16 x 8 NT accumulator tile into its slot of the block's reduction area (rows ``rs``
// floats apart: BP + 8).
template <int NT>
__device__ __forceinline__ void park(const float (&acc)[NT][4], float* slot, int rs) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    *reinterpret_cast<float2*>(slot + g * rs + nt * 8 + 2 * t) = make_float2(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<float2*>(slot + (g + 8) * rs + nt * 8 + 2 * t) = make_float2(acc[nt][2], acc[nt][3]);
  }
}

// Shared-memory layout of phases A and D1 (bytes): staged activations, then the reduction slots
// of the 16 warps, then A's summed tiles and its conv outputs as x_proj operands.
struct Layout {
  int act, red, sum, xc, total;
};

__host__ __device__ inline Layout layout(int BP, int D, int kc_slice) {
  Layout s;
  const int a = BP * act_stride(D) * 2, d1 = BP * act_stride(32 * kc_slice) * 2;
  s.act = 0;
  s.red = ((a > d1 ? a : d1) + 15) / 16 * 16;
  s.sum = s.red + kWarps * 16 * (BP + 8) * 4;
  s.xc = s.sum + 2 * 16 * BP * 4;
  s.total = s.xc + BP * 16 * 2;
  return s;
}

__host__ __device__ inline int out_slices(int D, int E, int blocks) {
  const int groups = (D / 16 + 3) / 4, kc = E / 32;
  int s = blocks / groups;
  return s < 1 ? 1 : (s > kc ? kc : s);
}

// ---- A: in_proj, conv step + SiLU, x_proj partial sums
template <typename T, int NT>
__device__ void phase_in_proj(const MmaParams& p, const LayerPtrs& L, char* smem, const Layout& ly) {
  constexpr int BP = NT * 8, RS = BP + 8;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int b = p.b, D = p.D, E = p.E, W = p.W, XW = p.R + 2 * p.N, X16 = 16 * p.XM;
  const int tiles = E / 16, sa = act_stride(D);
  if ((int)blockIdx.x >= tiles) return;
  T* act = reinterpret_cast<T*>(smem + ly.act);
  float* red = reinterpret_cast<float*>(smem + ly.red);
  float* sum = reinterpret_cast<float*>(smem + ly.sum);
  T* xc = reinterpret_cast<T*>(smem + ly.xc);
  const int m = warp & 1, kg = warp >> 1, KC = D / 32;  // x or z rows; 8 slices of d_model
  const int nk = kg < KC ? (KC - kg + 7) / 8 : 0;
  TileMma<T, NT> wtile;
  stage_rows<T>(act, sa, static_cast<const T*>(p.xn), D, 0, D, b, BP);
  wtile.prime(static_cast<const T*>(L.in_w), D, m * E + (int)blockIdx.x * 16, 2 * E, kg, 8, nk);
  stage_wait();
  for (int j = blockIdx.x; j < tiles; j += gridDim.x) {
    const int c0 = j * 16;
    if (j != (int)blockIdx.x) wtile.prime(static_cast<const T*>(L.in_w), D, m * E + c0, 2 * E, kg, 8, nk);
    float acc[NT][4];
    zero_acc<NT>(acc);
    wtile.run(acc, act, sa);
    park<NT>(acc, red + warp * 16 * RS, RS);
    __syncthreads();
    for (int q = threadIdx.x; q < 2 * 16 * BP; q += kThreads) {  // sum[m][r][i], slices in order
      const int mm = q / (16 * BP), r = (q / BP) % 16, i = q % BP;
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) s += red[((k << 1) | mm) * 16 * RS + r * RS + i];
      sum[q] = s;
    }
    __syncthreads();
    for (int q = threadIdx.x; q < 16 * BP; q += kThreads) {  // conv step + SiLU per (batch row, channel)
      const int i = q / 16, cc = q % 16, c = c0 + cc;
      float xcv = 0.f;
      if (i < b) {
        const float x = round_t<T>(sum[cc * BP + i] + (L.in_b ? ld<T>(L.in_b, c) : 0.f));
        const float z = round_t<T>(sum[16 * BP + cc * BP + i] + (L.in_b ? ld<T>(L.in_b, E + c) : 0.f));
        T* cs = static_cast<T*>(L.conv_state) + ((int64_t)i * E + c) * (W - 1);
        float old[3];
#pragma unroll
        for (int k = 0; k < 3; ++k) old[k] = k < W - 1 ? to_f<T>(cs[k]) : 0.f;
        float a = L.conv_b ? ld<T>(L.conv_b, c) : 0.f;
#pragma unroll
        for (int k = 0; k < 3; ++k)
          if (k < W - 1) a += ld<T>(L.conv_w, (int64_t)c * W + k) * old[k];
        a += ld<T>(L.conv_w, (int64_t)c * W + W - 1) * x;
#pragma unroll
        for (int k = 0; k < 2; ++k)
          if (k + 1 < W - 1) cs[k] = from_f<T>(old[k + 1]);
        if (W > 1) cs[W - 2] = from_f<T>(x);
        xcv = round_t<T>(a / (1.f + __expf(-a)));
        p.xs[(int64_t)i * E + c] = xcv;
        p.zs[(int64_t)i * E + c] = z;
      }
      xc[i * 16 + cc] = from_f<T>(xcv);
    }
    __syncthreads();
    // x_proj rows times this tile's 16 channels (one k16 step), for every batch row
    for (int mt = warp; mt < p.XM; mt += kWarps) {
      const int r = mt * 16 + g;
      const T* xw = static_cast<const T*>(L.x_w) + c0 + 4 * t;
      uint2 lo = make_uint2(0u, 0u), hi = make_uint2(0u, 0u);
      if (r < XW) lo = __ldg(reinterpret_cast<const uint2*>(xw + (int64_t)r * E));
      if (r + 8 < XW) hi = __ldg(reinterpret_cast<const uint2*>(xw + (int64_t)(r + 8) * E));
      float* dst = p.xp + (int64_t)j * b * X16 + r;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float c4[4] = {0.f, 0.f, 0.f, 0.f};
        mma_step<T>(c4, lo, hi, *reinterpret_cast<const uint2*>(xc + (nt * 8 + g) * 16 + 4 * t));
        const int i = nt * 8 + 2 * t;
        if (i < b) {
          dst[(int64_t)i * X16] = c4[0];
          dst[(int64_t)i * X16 + 8] = c4[2];
        }
        if (i + 1 < b) {
          dst[(int64_t)(i + 1) * X16] = c4[1];
          dst[(int64_t)(i + 1) * X16 + 8] = c4[3];
        }
      }
    }
    __syncthreads();
  }
}

// This block's channels' dt_proj rows and A_log rows, staged in shared memory (slot s holds channel
// (c0 + s) mod E): read per (row, channel) pair from global memory, consecutive lanes would touch rows
// 2 R bytes apart, one cache line each per load.
// - Copied (the usual case: rows of whole 16-byte units, 16-byte aligned weights): each row as it is,
//   one cp.async per 16 bytes, all in flight at once and issued before the partial sums are staged,
//   so they share one wait. Rows sit an odd number of 16-byte units apart, so the 16-byte reads of a
//   quarter warp (8 consecutive slots) cover the 32 banks once. -exp(A_log) is taken at use.
// - Otherwise: dt_proj rows and -exp(A_log) rows written one element at a time (row strides of an
//   odd number of words), or, where even those do not fit, read from global memory.
struct ScanStage {
  const void* dtw;  // T rows, or null: read from global memory
  const void* al;   // copied: A_log rows (fp32 or T); else -exp(A_log) rows (float)
  int c0;
  int dstride, astride;  // elements between slots: copied, in T / A_log's type; else T / float
};

__host__ __device__ inline int stage_words(int R) { return (R / 2 + 1) | 1; }
// bytes between copied rows of ``bytes`` each (a multiple of 16): an odd number of 16-byte units
__host__ __device__ inline int copy_stride(int bytes) { return (bytes / 16) | 1; }

// -exp(A_log[c, n]) read from global memory (A_log fp32 or the model's dtype), d_state N
template <typename T>
__device__ __forceinline__ float neg_a(const MmaParams& p, const LayerPtrs& L, int c, int n, int N) {
  const int64_t i = (int64_t)c * N + n;
  return -__expf(p.ad_fp32 ? ld<float>(L.a_log, i) : ld<T>(L.a_log, i));
}

// Rows of ``bytes`` (a multiple of 16) of channels c0 .. c0 + slots - 1 (mod E) into shared slots
// 16 * copy_stride(bytes) bytes apart; only issued (the caller waits).
__device__ void copy_rows(char* dst, const void* src, int bytes, int c0, int slots, int E) {
  const int u = bytes / 16, su = copy_stride(bytes) * 16;
  for (int q = threadIdx.x; q < slots * u; q += kThreads) {
    const int s = q / u, k = q % u, c = c0 + s < E ? c0 + s : c0 + s - E;
    cp_async16(dst + s * su + k * 16, static_cast<const char*>(src) + (int64_t)c * bytes + k * 16);
  }
}

// The state update of pairs [p0, p1) (pair q = batch row q / E, channel q % E). NS: d_state known
// at compile time (16, every load of a pair issued at once), or 0 (p.N, a loop). COPIED: the rows
// were copied as they are (ScanStage).
template <typename T, int NS, bool COPIED>
__device__ __forceinline__ void scan_pairs(const MmaParams& p, const LayerPtrs& L, const float* dbc, int i0,
                                           int64_t p0, int64_t p1, const ScanStage& st) {
  const int E = p.E, R = p.R, N = NS > 0 ? NS : p.N, X16 = 16 * p.XM;
  for (int64_t q = p0 + threadIdx.x; q < p1; q += kThreads) {
    const int i = (int)(q / E), c = (int)(q % E);
    const float* db = dbc + (i - i0) * X16;
    const int slot = c - st.c0 < 0 ? c - st.c0 + E : c - st.c0;
    // -exp(A_log[c, n]) of this pair's channel
    auto a_of = [&](int n) -> float {
      if (st.dtw == nullptr) return neg_a<T>(p, L, c, n, N);
      if constexpr (COPIED) {
        const int64_t o = (int64_t)slot * st.astride + n;
        return -__expf(p.ad_fp32 ? static_cast<const float*>(st.al)[o] : to_f<T>(static_cast<const T*>(st.al)[o]));
      } else {
        return static_cast<const float*>(st.al)[slot * st.astride + n];
      }
    };
    float dt = 0.f;
    if (st.dtw == nullptr) {
      for (int r = 0; r < R; ++r) dt += ld<T>(L.dt_w, (int64_t)c * R + r) * db[r];
    } else if constexpr (COPIED) {
      const T* ws = static_cast<const T*>(st.dtw) + slot * st.dstride;
      for (int r0 = 0; r0 < R; r0 += 8) {
        const uint4 v = *reinterpret_cast<const uint4*>(ws + r0);
        T w8[8];
        memcpy(w8, &v, 16);
#pragma unroll
        for (int k = 0; k < 8; ++k) dt += to_f<T>(w8[k]) * db[r0 + k];
      }
    } else {
      const T* ws = static_cast<const T*>(st.dtw) + slot * st.dstride;
      for (int r = 0; r < R; ++r) dt += to_f<T>(ws[r]) * db[r];
    }
    dt = round_t<T>(dt) + ld<T>(L.dt_b, c);
    dt = dt > 20.f ? dt : log1pf(__expf(dt));
    const float x = __ldcg(p.xs + q), z = __ldcg(p.zs + q);
    float* h = L.ssm_state + q * N;
    float y = 0.f;
    if constexpr (NS > 0) {
      float hv[NS], av[NS];
#pragma unroll
      for (int k = 0; k < NS / 4; ++k) {
        const float4 v = *reinterpret_cast<const float4*>(h + 4 * k);
        hv[4 * k] = v.x; hv[4 * k + 1] = v.y; hv[4 * k + 2] = v.z; hv[4 * k + 3] = v.w;
      }
#pragma unroll
      for (int n = 0; n < NS; ++n) av[n] = a_of(n);
#pragma unroll
      for (int n = 0; n < NS; ++n) {
        hv[n] = hv[n] * __expf(dt * av[n]) + dt * db[R + n] * x;
        y += hv[n] * db[R + NS + n];
      }
#pragma unroll
      for (int k = 0; k < NS / 4; ++k)
        *reinterpret_cast<float4*>(h + 4 * k) = make_float4(hv[4 * k], hv[4 * k + 1], hv[4 * k + 2], hv[4 * k + 3]);
    } else {
      for (int n = 0; n < N; ++n) {
        const float hn = h[n] * __expf(dt * a_of(n)) + dt * db[R + n] * x;
        h[n] = hn;
        y += hn * db[R + N + n];
      }
    }
    y += x * (p.ad_fp32 ? ld<float>(L.skip_d, c) : ld<T>(L.skip_d, c));
    y *= z / (1.f + __expf(-z));
    static_cast<T*>(p.ys)[q] = from_f<T>(y);
  }
}

// ---- C: x_proj sums, dt_proj + softplus, state update, D skip, gate; a contiguous range of
// (batch row, channel) pairs per block
template <typename T>
__device__ void phase_scan(const MmaParams& p, const LayerPtrs& L, char* smem, int smem_bytes) {
  const int b = p.b, E = p.E, N = p.N, R = p.R, X16 = 16 * p.XM, J = E / 16;
  const int64_t pairs = (int64_t)b * E, per = (pairs + gridDim.x - 1) / gridDim.x;
  const int64_t p0 = (int64_t)blockIdx.x * per, p1 = p0 + per < pairs ? p0 + per : pairs;
  if (p0 >= p1) return;
  const int i0 = (int)(p0 / E), nr = (int)((p1 - 1) / E) - i0 + 1, run = nr * X16;
  const int slots = (int)(p1 - p0 < E ? p1 - p0 : E), c0 = (int)(p0 % E);
  float* dbc = reinterpret_cast<float*>(smem);  // (nr, X16): dt_low, B, C of this block's rows
  // the copied rows: after dbc, in flight while the partial sums are staged behind them
  const int dbytes = R * (int)sizeof(T), abytes = N * (p.ad_fp32 ? 4 : (int)sizeof(T));
  const int64_t dcopy = (int64_t)slots * copy_stride(dbytes) * 16, acopy = (int64_t)slots * copy_stride(abytes) * 16;
  const int64_t head = ((int64_t)run * 4 + 15) / 16 * 16;
  const bool copied = dbytes % 16 == 0 && abytes % 16 == 0 && reinterpret_cast<uintptr_t>(L.dt_w) % 16 == 0 &&
                      reinterpret_cast<uintptr_t>(L.a_log) % 16 == 0 &&
                      head + dcopy + acopy + (int64_t)run * 4 <= smem_bytes;
  ScanStage st{nullptr, nullptr, c0, 0, 0};
  float* stg = dbc + run;
  if (copied) {
    char* dst = smem + head;
    copy_rows(dst, L.dt_w, dbytes, c0, slots, E);
    copy_rows(dst + dcopy, L.a_log, abytes, c0, slots, E);
    st = ScanStage{dst, dst + dcopy, c0, copy_stride(dbytes) * 16 / (int)sizeof(T),
                   copy_stride(abytes) * 16 / (p.ad_fp32 ? 4 : (int)sizeof(T))};
    stg = reinterpret_cast<float*>(dst + dcopy + acopy);
  }
  const int jc = (int)((smem_bytes - (reinterpret_cast<char*>(stg) - smem)) / 4 / run);  // partials staged at once
  for (int o = threadIdx.x; o < run; o += kThreads) dbc[o] = 0.f;
  for (int j0 = 0; j0 < J; j0 += jc) {
    const int n = J - j0 < jc ? J - j0 : jc, v = run / 4;
    for (int q = threadIdx.x; q < n * v; q += kThreads) {
      const int jj = q / v, o = (q % v) * 4;
      cp_async16(stg + jj * run + o, p.xp + ((int64_t)(j0 + jj) * b + i0) * X16 + o);
    }
    cp_async_wait_all();
    __syncthreads();
    for (int o = threadIdx.x; o < run; o += kThreads) {
      float s = dbc[o];
      for (int jj = 0; jj < n; ++jj) s += stg[jj * run + o];
      dbc[o] = s;
    }
    __syncthreads();
  }
  for (int o = threadIdx.x; o < run; o += kThreads) dbc[o] = round_t<T>(dbc[o]);
  if (copied) {
    __syncthreads();
    if (N == 16) scan_pairs<T, 16, true>(p, L, dbc, i0, p0, p1, st);
    else scan_pairs<T, 0, true>(p, L, dbc, i0, p0, p1, st);
    return;
  }
  // written one element at a time, where they fit (after the partial sums, over their space)
  const int wh = stage_words(R), an = N | 1;
  const int64_t dtw_bytes = ((int64_t)slots * 4 * wh + 15) / 16 * 16;
  if ((int64_t)run * 4 + dtw_bytes + (int64_t)slots * an * 4 <= smem_bytes) {
    T* sw = reinterpret_cast<T*>(stg);
    float* sa = reinterpret_cast<float*>(reinterpret_cast<char*>(stg) + dtw_bytes);
    for (int f = threadIdx.x; f < slots * R; f += kThreads) {
      const int s = f / R, r = f % R, c = c0 + s < E ? c0 + s : c0 + s - E;
      sw[s * 2 * wh + r] = bits_as<T>(__ldg(static_cast<const unsigned short*>(L.dt_w) + (int64_t)c * R + r));
    }
    for (int f = threadIdx.x; f < slots * N; f += kThreads) {
      const int s = f / N, n = f % N, c = c0 + s < E ? c0 + s : c0 + s - E;
      sa[s * an + n] = neg_a<T>(p, L, c, n, N);
    }
    st = ScanStage{sw, sa, c0, 2 * wh, an};
  }
  __syncthreads();
  if (N == 16) scan_pairs<T, 16, false>(p, L, dbc, i0, p0, p1, st);
  else scan_pairs<T, 0, false>(p, L, dbc, i0, p0, p1, st);
}

// ---- D1: out_proj partial sums; a block per (4 row tiles, slice of d_inner)
template <typename T, int NT>
__device__ void phase_out_proj(const MmaParams& p, const LayerPtrs& L, char* smem, const Layout& ly) {
  constexpr int BP = NT * 8, RS = BP + 8;
  const int warp = threadIdx.x >> 5;
  const int b = p.b, D = p.D, E = p.E, S = p.S;
  const int MT = D / 16, groups = (MT + 3) / 4, KC = E / 32;
  T* act = reinterpret_cast<T*>(smem + ly.act);
  float* red = reinterpret_cast<float*>(smem + ly.red);
  const int mm = warp & 3, kq = warp >> 2;  // row tile of the group; quarter of the slice
  for (int task = blockIdx.x; task < groups * S; task += gridDim.x) {
    const int grp = task % groups, s = task / groups;
    const int kc0 = (int)((int64_t)s * KC / S), nk = (int)((int64_t)(s + 1) * KC / S) - kc0;
    const int sa = act_stride(32 * nk);
    const int mt = grp * 4 + mm;
    TileMma<T, NT> wtile;
    stage_rows<T>(act, sa, static_cast<const T*>(p.ys), E, 32 * kc0, 32 * nk, b, BP);
    wtile.prime(static_cast<const T*>(L.out_w) + 32 * kc0, E, mt * 16, mt < MT ? D : 0, kq, 4,
              kq < nk ? (nk - kq + 3) / 4 : 0);
    stage_wait();
    float acc[NT][4];
    zero_acc<NT>(acc);
    wtile.run(acc, act, sa);
    park<NT>(acc, red + warp * 16 * RS, RS);
    __syncthreads();
    for (int q = threadIdx.x; q < BP * 64; q += kThreads) {  // (batch row, 64 output rows of the group)
      const int i = q / 64, m4 = (q % 64) / 16, r = q % 16, d = (grp * 4 + m4) * 16 + r;
      if (i >= b || d >= D) continue;
      float v = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) v += red[(k * 4 + m4) * 16 * RS + r * RS + i];
      p.op[((int64_t)s * b + i) * D + d] = v;
    }
    __syncthreads();
  }
}

// ---- D2: out_proj slices + bias, residual add, RMSNorm; a block per batch row. ``first``: the
// residual is the embedding row (before the first layer).
template <typename T>
__device__ void phase_norm(const MmaParams& p, const LayerPtrs* L, const void* norm_w, char* smem) {
  const int D = p.D, S = p.S, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* row = reinterpret_cast<float*>(smem);
  float* part = row + D;
  float* stg = part + kWarps;  // (S, D): this row's out_proj slices
  for (int i = blockIdx.x; i < p.b; i += gridDim.x) {
    int64_t tok = 0;
    if (L == nullptr) {
      tok = p.ids[i];
      tok = tok < 0 ? 0 : (tok >= p.V ? p.V - 1 : tok);
    } else {  // every slice in flight at once, then summed in order
      const int v = D / 4;
      for (int q = threadIdx.x; q < S * v; q += kThreads)
        cp_async16(stg + 4 * q, p.op + ((int64_t)(q / v) * p.b + i) * D + 4 * (q % v));
      cp_async_wait_all();
      __syncthreads();
    }
    float ss = 0.f;
    for (int d = threadIdx.x; d < D; d += kThreads) {
      float r;
      if (L == nullptr) {
        r = ld<T>(p.emb, tok * D + d);
      } else {
        float h = 0.f;
        for (int s = 0; s < S; ++s) h += stg[s * D + d];
        h = round_t<T>(h + (L->out_b ? ld<T>(L->out_b, d) : 0.f));
        r = __ldcg(p.res + (int64_t)i * D + d) + h;
        if (!p.res_fp32) r = round_t<T>(r);
      }
      p.res[(int64_t)i * D + d] = r;
      const float x = round_t<T>(r);  // the norm reads residual' in the model dtype, as the layered step
      row[d] = x;
      ss += x * x;
    }
    ss = warp_sum(ss);
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    float tot = 0.f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) tot += part[k];
    const float inv = rsqrtf(tot / D + p.eps);
    for (int d = threadIdx.x; d < D; d += kThreads)
      static_cast<T*>(p.xn)[(int64_t)i * D + d] = from_f<T>(row[d] * inv * ld<T>(norm_w, d));
    __syncthreads();
  }
}

// ---- LM head: a warp per 16 vocabulary rows, the normed rows staged in every block
template <typename T, int NT>
__device__ void phase_head(const MmaParams& p, char* smem, const Layout& ly) {
  constexpr int BP = NT * 8;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int b = p.b, D = p.D, V = p.V, sa = act_stride(D);
  const int MV = (V + 15) / 16, nw = gridDim.x * kWarps;
  T* act = reinterpret_cast<T*>(smem + ly.act);
  const T* head = static_cast<const T*>(p.head);
  const int64_t lines = ((int64_t)D * sizeof(T) + 127) / 128;  // per row (each starts inside the row)
  TileMma<T, NT> wtile;
  stage_rows<T>(act, sa, static_cast<const T*>(p.xn), D, 0, D, b, BP);
  stage_wait();
  for (int q = warp * gridDim.x + blockIdx.x; q < MV; q += nw) {
    const int qn = q + nw;  // the next tile's rows, asked of L2 while this one is multiplied
    if (qn < MV)
      for (int64_t k = lane; k < 16 * lines; k += 32) {
        const int r = qn * 16 + (int)(k / lines);
        if (r < V) prefetch_l2(head + (int64_t)r * D + (k % lines) * (128 / sizeof(T)));
      }
    wtile.prime(head, D, q * 16, V, 0, 1, D / 32);
    float acc[NT][4];
    zero_acc<NT>(acc);
    wtile.run(acc, act, sa);
    T* out = static_cast<T*>(p.logits);
    const int v = q * 16 + g;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int i = nt * 8 + 2 * t;
      if (i < b && v < V) out[(int64_t)i * V + v] = from_f<T>(acc[nt][0]);
      if (i + 1 < b && v < V) out[(int64_t)(i + 1) * V + v] = from_f<T>(acc[nt][1]);
      if (i < b && v + 8 < V) out[(int64_t)i * V + v + 8] = from_f<T>(acc[nt][2]);
      if (i + 1 < b && v + 8 < V) out[(int64_t)(i + 1) * V + v + 8] = from_f<T>(acc[nt][3]);
    }
  }
}

template <typename T, int NT>
__global__ void __launch_bounds__(kThreads, 1) model_step_mma_kernel(MmaParams p, int smem_bytes) {
  extern __shared__ __align__(16) char smem[];
  const int b = p.b, D = p.D, E = p.E, N = p.N, XW = p.R + 2 * N;
  const int KC = E / 32, kc_slice = (KC + p.S - 1) / p.S;
  const Layout ly = layout(NT * 8, D, kc_slice);
  const unsigned epoch = ld_acquire(p.sync);
  unsigned* counter = p.sync + 1 + (epoch & 1u);
  unsigned target = 0;

  prefetch_slice(p.layers[0].in_w, (int64_t)2 * E * D * sizeof(T));
  phase_norm<T>(p, nullptr, p.layers[0].norm_w, smem);
  grid_sync(counter, target);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    // every block has read the epoch (it passed a barrier): the next launch uses the other counter
    p.sync[1 + ((epoch + 1u) & 1u)] = 0u;
    p.sync[0] = epoch + 1u;
  }
  for (int l = 0; l < p.n_layer; ++l) {
    const LayerPtrs L = p.layers[l];
    stamp(p, l * 8 + 0);
    // L2 prefetches for the phases after A: this layer's states and weights
    prefetch_slice(L.ssm_state, (int64_t)b * E * N * 4);
    prefetch_slice(L.dt_w, (int64_t)E * p.R * sizeof(T));
    prefetch_slice(L.out_w, (int64_t)D * E * sizeof(T));
    prefetch_slice(L.x_w, (int64_t)XW * E * sizeof(T));
    phase_in_proj<T, NT>(p, L, smem, ly);
    stamp(p, l * 8 + 1);
    grid_sync(counter, target);
    stamp(p, l * 8 + 2);
    if (l + 1 < p.n_layer) prefetch_slice(p.layers[l + 1].in_w, (int64_t)2 * E * D * sizeof(T));
    phase_scan<T>(p, L, smem, smem_bytes);
    stamp(p, l * 8 + 3);
    grid_sync(counter, target);
    stamp(p, l * 8 + 4);
    phase_out_proj<T, NT>(p, L, smem, ly);
    stamp(p, l * 8 + 5);
    grid_sync(counter, target);
    stamp(p, l * 8 + 6);
    phase_norm<T>(p, &L, l + 1 < p.n_layer ? p.layers[l + 1].norm_w : p.norm_f, smem);
    stamp(p, l * 8 + 7);
    grid_sync(counter, target);
  }
  stamp(p, p.n_layer * 8);
  phase_head<T, NT>(p, smem, ly);
  stamp(p, p.n_layer * 8 + 1);
}

// Sizes of one launch: shared memory (bytes) and workspace (floats, each part 16-byte aligned).
struct Sizes {
  int nt, S, smem;
  int64_t res, xn, xs, zs, ys, xp, op, total;
};

Sizes sizes(int64_t b, int64_t D, int64_t E, int64_t R, int64_t N, int blocks) {
  Sizes z;
  z.nt = b <= 16 ? 2 : (b <= 32 ? 4 : 8);
  z.S = out_slices((int)D, (int)E, blocks);
  const int KC = (int)E / 32, kc_slice = (KC + z.S - 1) / z.S;
  const Layout ly = layout(z.nt * 8, (int)D, kc_slice);
  const int64_t X16 = (R + 2 * N + 15) / 16 * 16;
  const int64_t per = (b * E + blocks - 1) / blocks, nr = per / E + 2;
  const int64_t scan = 2 * nr * X16 * 4, norm = (D + kWarps + z.S * D) * 4;
  z.smem = (int)std::max<int64_t>({(int64_t)ly.total, scan, norm});
  auto up = [](int64_t n) { return (n + 3) / 4 * 4; };
  int64_t o = 0;
  z.res = o; o += up(b * D);
  z.xn = o; o += up((b * D + 1) / 2);
  z.xs = o; o += up(b * E);
  z.zs = o; o += up(b * E);
  z.ys = o; o += up((b * E + 1) / 2);
  z.xp = o; o += up(E / 16 * b * X16);
  z.op = o; o += up(z.S * b * D);
  z.total = o;
  return z;
}

int sm_count(int dev) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// The shared-memory allowance and the co-residency check, once per kernel, device and size (not
// again while a CUDA graph is being captured).
template <typename T, int NT>
void launch_mma(const MmaParams& p, int blocks, int smem, int dev, cudaStream_t stream) {
  auto kernel = model_step_mma_kernel<T, NT>;
  static int allowed[64] = {0};
  int& done = allowed[dev & 63];
  if (smem > done) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
    TORCH_CHECK(per_sm >= 1, "model_step_mma: the kernel does not fit on one SM (shared memory ", smem, " bytes)");
    done = smem;
  }
  kernel<<<blocks, kThreads, smem, stream>>>(p, smem);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

#include "step_host.cuh"

// (workspace floats, shared-memory bytes) of model_step_mma at this shape on the current device
std::vector<int64_t> model_step_mma_sizes(int64_t b, int64_t D, int64_t E, int64_t R, int64_t N) {
  const Sizes z = sizes(b, D, E, R, N, sm_count(c10::cuda::current_device()));
  return {z.total, (int64_t)z.smem};
}

// layers: (n_layer, 14) int64 device table (model_step.cu's); workspace: float32 of
// model_step_mma_sizes(...)[0] elements; sync: 3 int32 words (zeroed once).
torch::Tensor model_step_mma(torch::Tensor layers, torch::Tensor ids, torch::Tensor emb, torch::Tensor norm_f,
                             torch::Tensor head, torch::Tensor workspace, torch::Tensor sync, torch::Tensor logits,
                             int64_t E, int64_t R, int64_t N, int64_t W, double eps, bool res_fp32, bool ad_fp32,
                             c10::optional<torch::Tensor> times) {
  const auto st = emb.scalar_type();
  TORCH_CHECK(st == torch::kFloat16 || st == torch::kBFloat16, "model_step_mma: float16 or bfloat16 weights");
  TORCH_CHECK(N >= 1 && N <= 32, "model_step_mma: d_state must be 1..32");
  const c10::cuda::CUDAGuard guard(ids.device());
  MmaParams p;
  fill_model(p, "model_step_mma", layers, ids, emb, norm_f, head, logits, sync, E, R, N, W, eps, res_fp32, ad_fp32,
             times);
  const int64_t b = p.b, D = p.D;
  TORCH_CHECK(b >= 1 && b <= 64, "model_step_mma: batch must be 1..64");
  TORCH_CHECK(D % 32 == 0 && E % 32 == 0, "model_step_mma: d_model and d_inner must be multiples of 32");
  const int dev = ids.get_device(), blocks = sm_count(dev);
  const Sizes z = sizes(b, D, E, R, N, blocks);
  TORCH_CHECK(workspace.scalar_type() == torch::kFloat32 && workspace.numel() >= z.total && workspace.is_contiguous(),
              "model_step_mma: workspace too small");
  p.XM = (int)((R + 2 * N + 15) / 16);
  p.S = z.S;
  float* w = workspace.data_ptr<float>();
  p.res = w + z.res;
  p.xn = w + z.xn;
  p.xs = w + z.xs;
  p.zs = w + z.zs;
  p.ys = w + z.ys;
  p.xp = w + z.xp;
  p.op = w + z.op;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
#define GM_LAUNCH(T)                                                    \
  if (z.nt == 2) launch_mma<T, 2>(p, blocks, z.smem, dev, stream);      \
  else if (z.nt == 4) launch_mma<T, 4>(p, blocks, z.smem, dev, stream); \
  else launch_mma<T, 8>(p, blocks, z.smem, dev, stream);
  if (st == torch::kFloat16) {
    GM_LAUNCH(__half)
  } else {
    GM_LAUNCH(__nv_bfloat16)
  }
#undef GM_LAUNCH
  return logits;
}
