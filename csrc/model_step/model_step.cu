// One decoding step of a whole Mamba language model in one persistent kernel.
//
// A decode step at small batch reads every weight once and does little arithmetic per byte, so
// launching ~7 kernels per layer costs more than the work. Here one kernel runs the whole step:
// the blocks (one per SM) stay resident and meet at a grid-wide barrier between the four phases of
// each layer:
//   A  residual add + RMSNorm (every block, into shared memory), in_proj rows, causal conv step, SiLU
//   B  x_proj rows (dt_low, B, C)
//   C  dt_proj, softplus, selective state update, D skip, SiLU(z) gate
//   D  out_proj rows
// then the final add + RMSNorm and the LM head. While a layer runs, each block asks L2 to prefetch
// its slice of the next layer's weights, so the next layer reads from L2, not DRAM.
//
// Rounding follows the layered step: values that it keeps in the model's dtype (in_proj, conv and
// x_proj outputs, dt, the mixer output, the normed input) are rounded to that dtype here too;
// accumulation is in fp32; the residual stream is fp32 when residual_in_fp32, else the model dtype.
#include "common.cuh"

#include <algorithm>

namespace {

using namespace gm_step;

struct Params : StepModel {
  float* res;   // (2, b, D): ping-pong residual stream
  float* hid;   // (b, D): mixer output
  float* xs;    // (b, E): conv + SiLU output
  float* zs;    // (b, E): gate input
  float* dbc;   // (b, R + 2N)
  float* ys;    // (b, E): gated scan output
};

// residual' = residual + hidden (the embedding row at the first layer); act = RMSNorm(residual') * w
// in the model dtype, into shared memory; ``res_out`` (block 0 only) gets residual'. All threads
// of the block share each row, so every load of the row is in flight at once.
template <typename T, int BB>
__device__ void add_norm(const Params& p, bool first, const float* res_in, float* res_out, const void* w,
                         float* act) {
  __shared__ float part[kWarps][BB];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = p.D, b = p.b;
  float ss[BB];
#pragma unroll
  for (int i = 0; i < BB; ++i) ss[i] = 0.f;
  float wk_held[4];  // the norm weights of this thread's first columns, loaded with the rows
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int k = threadIdx.x + j * kThreads;
    wk_held[j] = k < D ? ld<T>(w, k) : 0.f;
  }
  for (int k = threadIdx.x; k < D; k += kThreads) {
#pragma unroll
    for (int i = 0; i < BB; ++i) {
      if (i >= b) continue;
      float r;
      if (first) {
        int64_t tok = p.ids[i];
        tok = tok < 0 ? 0 : (tok >= p.V ? p.V - 1 : tok);
        r = ld<T>(p.emb, tok * D + k);
      } else {
        r = __ldcg(res_in + (int64_t)i * D + k) + __ldcg(p.hid + (int64_t)i * D + k);
        if (!p.res_fp32) r = round_t<T>(r);
      }
      act[i * D + k] = r;
      const float x = round_t<T>(r);  // the norm reads residual' in the model dtype, as the layered step
      ss[i] += x * x;
    }
  }
#pragma unroll
  for (int i = 0; i < BB; ++i) {
    const float v = warp_sum(ss[i]);
    if (lane == 0) part[warp][i] = v;
  }
  __syncthreads();
  float inv[BB];
#pragma unroll
  for (int i = 0; i < BB; ++i) {
    float t = 0.f;
#pragma unroll
    for (int j = 0; j < kWarps; ++j) t += part[j][i];
    inv[i] = rsqrtf(t / D + p.eps);
  }
  for (int k = threadIdx.x, j = 0; k < D; k += kThreads, ++j) {
    float wk = 0.f;
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (q == j) wk = wk_held[q];
    if (j >= 4) wk = ld<T>(w, k);
#pragma unroll
    for (int i = 0; i < BB; ++i) {
      if (i >= b) continue;
      const float r = act[i * D + k];
      if (res_out != nullptr) res_out[(int64_t)i * D + k] = r;
      act[i * D + k] = round_t<T>(round_t<T>(r) * inv[i] * wk);
    }
  }
  __syncthreads();
}

// Copy n floats from global (through L2, never a stale L1 line) into shared memory.
__device__ __forceinline__ void stage(const float* src, float* dst, int n) {
  for (int k = threadIdx.x; k < n; k += kThreads) dst[k] = __ldcg(src + k);
  __syncthreads();
}

// 8 weights as raw bytes (one 16-byte load for 16-bit types, two for fp32), unpacked later, so that
// a warp issues all its loads before it waits for the first.
template <typename T> struct Raw8 { uint4 v[sizeof(T) / 2]; };

template <typename T> __device__ __forceinline__ void load_raw(const T* p, Raw8<T>& r) {
#pragma unroll
  for (int j = 0; j < (int)(sizeof(T) / 2); ++j) r.v[j] = __ldg(reinterpret_cast<const uint4*>(p) + j);
}

template <typename T> __device__ __forceinline__ void unpack8(const Raw8<T>& r, float* o);
template <> __device__ __forceinline__ void unpack8<float>(const Raw8<float>& r, float* o) {
  const float* f = reinterpret_cast<const float*>(r.v);
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j] = f[j];
}
template <> __device__ __forceinline__ void unpack8<__half>(const Raw8<__half>& r, float* o) {
  const __half2* h = reinterpret_cast<const __half2*>(r.v);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __half22float2(h[j]);
    o[2 * j] = f.x; o[2 * j + 1] = f.y;
  }
}
template <> __device__ __forceinline__ void unpack8<__nv_bfloat16>(const Raw8<__nv_bfloat16>& r, float* o) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(r.v);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float2 f = __bfloat1622float2(h[j]);
    o[2 * j] = f.x; o[2 * j + 1] = f.y;
  }
}

// The first PRE chunks (of 8 weights per lane, 256 per warp) of NR rows, loaded ahead: issued
// before the barrier that precedes their use, so their latency overlaps the wait.
template <typename T, int NR, int PRE>
struct Rows {
  Raw8<T> raw[NR][PRE];
  const T* row0;
  int64_t stride;
  int K;

  __device__ __forceinline__ void load(const T* r0, int64_t s, int k) {
    row0 = r0; stride = s; K = k;
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < PRE; ++u) {
      const int kk = lane * 8 + u * 256;
#pragma unroll
      for (int r = 0; r < NR; ++r)
        if (kk < K) load_raw<T>(row0 + r * stride + kk, raw[r][u]);
    }
  }

  // a[i] += one 8-element chunk of a weight row . the same chunk of activation row i (rows K apart)
  template <int BB>
  __device__ __forceinline__ void add_chunk(const Raw8<T>& chunk, const float* act, int b, float (&a)[BB]) const {
    float w[8];
    unpack8<T>(chunk, w);
#pragma unroll
    for (int i = 0; i < BB; ++i)
      if (i < b) a[i] += dot8(w, act + i * K);
  }

  // acc[r][i] = row r . act[i] (act: b rows of K floats), summed over the warp
  template <int BB>
  __device__ __forceinline__ void dot(const float* act, int b, float (&acc)[NR][BB]) const {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int i = 0; i < BB; ++i) acc[r][i] = 0.f;
#pragma unroll
    for (int u = 0; u < PRE; ++u) {
      const int kk = lane * 8 + u * 256;
      if (kk < K) {
#pragma unroll
        for (int r = 0; r < NR; ++r) add_chunk<BB>(raw[r][u], act + kk, b, acc[r]);
      }
    }
    // the rest of the row, two chunks per row in flight at a time
    for (int k0 = lane * 8 + PRE * 256; k0 < K; k0 += 512) {
      Raw8<T> rest[NR][2];
#pragma unroll
      for (int u = 0; u < 2; ++u)
#pragma unroll
        for (int r = 0; r < NR; ++r)
          if (k0 + u * 256 < K) load_raw<T>(row0 + r * stride + k0 + u * 256, rest[r][u]);
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int kk = k0 + u * 256;
        if (kk < K) {
#pragma unroll
          for (int r = 0; r < NR; ++r) add_chunk<BB>(rest[r][u], act + kk, b, acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
      for (int i = 0; i < BB; ++i) acc[r][i] = warp_sum(acc[r][i]);
  }
};

template <int BB>
__device__ __forceinline__ float pick(const float* acc, int i) {
  float v = 0.f;
#pragma unroll
  for (int j = 0; j < BB; ++j)
    if (j == i) v = acc[j];
  return v;
}

// How many 256-weight chunks per row a warp loads ahead (registers: fewer for fp32 and big batches).
template <typename T, int BB> constexpr int pre_chunks() { return (sizeof(T) == 4 ? 2 : 4) / (BB > 1 ? 2 : 1); }

template <typename T, int BB>
__global__ void __launch_bounds__(kThreads, 1) model_step_kernel(Params p) {
  extern __shared__ float smem[];
  constexpr int PRE = pre_chunks<T, BB>();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // warps numbered across blocks first, so that a phase with few rows spreads over many SMs
  const int sw = warp * gridDim.x + blockIdx.x, nw = gridDim.x * kWarps;
  const int b = p.b, D = p.D, E = p.E, R = p.R, N = p.N, W = p.W;
  const int XW = R + 2 * N;

  const unsigned epoch = ld_acquire(p.sync);
  unsigned* counter = p.sync + 1 + (epoch & 1u);
  unsigned target = 0;

  Rows<T, 2, PRE> in_rows;   // phase A: in_proj rows c and E + c
  Rows<T, 1, PRE> one_row;   // phases B and D: an x_proj or out_proj row
  if (sw < E) in_rows.load(static_cast<const T*>(p.layers[0].in_w) + (int64_t)sw * D, (int64_t)E * D, D);

  for (int l = 0; l < p.n_layer; ++l) {
    const LayerPtrs L = p.layers[l];
    const float* res_in = p.res + (int64_t)(l & 1) * b * D;
    float* res_out = p.res + (int64_t)((l + 1) & 1) * b * D;
    stamp(p, l * 8 + 0);

    // ---- A: add + norm, in_proj (rows c and E + c together), conv step, SiLU
    // this lane's conv operands (lane i < b: batch row i) for channel c, loaded ahead of their use
    float cw[4], cs_old[3], cb = 0.f, bx = 0.f, bz = 0.f;
    auto load_conv = [&](int c) {
      if (lane < b) {
        const T* cs = static_cast<const T*>(L.conv_state) + ((int64_t)lane * E + c) * (W - 1);
#pragma unroll
        for (int j = 0; j < 4; ++j) cw[j] = j < W ? ld<T>(L.conv_w, (int64_t)c * W + j) : 0.f;
#pragma unroll
        for (int j = 0; j < 3; ++j) cs_old[j] = j < W - 1 ? to_f<T>(cs[j]) : 0.f;
        cb = L.conv_b ? ld<T>(L.conv_b, c) : 0.f;
        bx = L.in_b ? ld<T>(L.in_b, c) : 0.f;
        bz = L.in_b ? ld<T>(L.in_b, E + c) : 0.f;
      }
    };
    if (sw < E) load_conv(sw);
    add_norm<T, BB>(p, l == 0, res_in, blockIdx.x == 0 ? res_out : nullptr, L.norm_w, smem);
    if (l + 1 < p.n_layer) {
      const LayerPtrs& M = p.layers[l + 1];
      prefetch_slice(M.in_w, (int64_t)2 * E * D * sizeof(T));
      prefetch_slice(M.x_w, (int64_t)XW * E * sizeof(T));
      prefetch_slice(M.dt_w, (int64_t)E * R * sizeof(T));
      prefetch_slice(M.out_w, (int64_t)D * E * sizeof(T));
    }
    for (int c = sw; c < E; c += nw) {
      if (c != sw) {
        in_rows.load(static_cast<const T*>(L.in_w) + (int64_t)c * D, (int64_t)E * D, D);
        load_conv(c);
      }
      T* cs = static_cast<T*>(L.conv_state) + ((int64_t)(lane < b ? lane : 0) * E + c) * (W - 1);
      float acc[2][BB];
      in_rows.template dot<BB>(smem, b, acc);
      const float xv = pick<BB>(acc[0], lane), zv = pick<BB>(acc[1], lane);
      if (lane < b) {
        const int i = lane;
        const float x = round_t<T>(xv + bx);
        const float z = round_t<T>(zv + bz);
        float a = cb;
#pragma unroll
        for (int j = 0; j < 3; ++j)
          if (j < W - 1) a += cw[j] * cs_old[j];
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (j == W - 1) a += cw[j] * x;
#pragma unroll
        for (int j = 0; j < 2; ++j)
          if (j + 1 < W - 1) cs[j] = from_f<T>(cs_old[j + 1]);
        if (W > 1) cs[W - 2] = from_f<T>(x);
        const float xc = round_t<T>(a / (1.f + __expf(-a)));
        p.xs[(int64_t)i * E + c] = xc;
        p.zs[(int64_t)i * E + c] = z;
      }
    }
    if (sw < XW) one_row.load(static_cast<const T*>(L.x_w) + (int64_t)sw * E, 0, E);
    stamp(p, l * 8 + 1);
    grid_sync(counter, target);
    stamp(p, l * 8 + 2);

    // ---- B: x_proj
    if ((int)blockIdx.x < XW) {
      stage(p.xs, smem, b * E);
      for (int r = sw; r < XW; r += nw) {
        if (r != sw) one_row.load(static_cast<const T*>(L.x_w) + (int64_t)r * E, 0, E);
        float acc[1][BB];
        one_row.template dot<BB>(smem, b, acc);
        const float v = pick<BB>(acc[0], lane);
        if (lane < b) p.dbc[(int64_t)lane * XW + r] = round_t<T>(v);
      }
    }
    // phase C's per-channel operands of this warp's first task, loaded before the barrier
    const int per_warp = 32 / N;
    const int n = lane % N, g = lane / N;
    const int total = b * E;
    float c_dtw[4], c_a = 0.f, c_h = 0.f, c_dtb = 0.f, c_d = 0.f, c_x = 0.f, c_z = 0.f;
    auto load_c = [&](int t) {
      const int c = t % E, i = t / E;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int r = n + j * N;
        c_dtw[j] = r < R ? ld<T>(L.dt_w, (int64_t)c * R + r) : 0.f;
      }
      c_a = -__expf(p.ad_fp32 ? ld<float>(L.a_log, (int64_t)c * N + n) : ld<T>(L.a_log, (int64_t)c * N + n));
      c_h = L.ssm_state[((int64_t)i * E + c) * N + n];
      c_dtb = ld<T>(L.dt_b, c);
      c_d = p.ad_fp32 ? ld<float>(L.skip_d, c) : ld<T>(L.skip_d, c);
      c_x = __ldcg(p.xs + (int64_t)i * E + c);
      c_z = __ldcg(p.zs + (int64_t)i * E + c);
    };
    if (sw * per_warp + g < total) load_c(sw * per_warp + g);
    stamp(p, l * 8 + 3);
    grid_sync(counter, target);
    stamp(p, l * 8 + 4);

    // ---- C: dt_proj + softplus, state update, D skip, gate; N lanes per (row, channel)
    {
      stage(p.dbc, smem, b * XW);
      for (int base = sw * per_warp; base < total; base += nw * per_warp) {
        const int t = base + g;
        const bool on = t < total;
        if (on && base != sw * per_warp) load_c(t);
        const int i = on ? t / E : 0, c = on ? t % E : 0;
        const float* db = smem + i * XW;
        float dt = 0.f;
        if (on) {
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (n + j * N < R) dt += c_dtw[j] * db[n + j * N];
          for (int r = n + 4 * N; r < R; r += N) dt += ld<T>(L.dt_w, (int64_t)c * R + r) * db[r];
        }
        for (int o = N / 2; o > 0; o >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, o);
        float y = 0.f, x = 0.f, z = 0.f;
        if (on) {
          dt = round_t<T>(dt) + c_dtb;
          dt = dt > 20.f ? dt : log1pf(__expf(dt));
          x = c_x;
          z = c_z;
          const float h = c_h * __expf(dt * c_a) + dt * db[R + n] * x;
          L.ssm_state[((int64_t)i * E + c) * N + n] = h;
          y = h * db[R + N + n];
        }
        for (int o = N / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
        if (on && n == 0) {
          y += x * c_d;
          y *= z / (1.f + __expf(-z));
          p.ys[(int64_t)i * E + c] = round_t<T>(y);
        }
      }
    }
    float ob = 0.f;
    if (sw < D) {
      one_row.load(static_cast<const T*>(L.out_w) + (int64_t)sw * E, 0, E);
      if (L.out_b) ob = ld<T>(L.out_b, sw);
    }
    stamp(p, l * 8 + 5);
    grid_sync(counter, target);
    stamp(p, l * 8 + 6);

    // ---- D: out_proj
    stage(p.ys, smem, b * E);
    for (int d = sw; d < D; d += nw) {
      if (d != sw) {
        one_row.load(static_cast<const T*>(L.out_w) + (int64_t)d * E, 0, E);
        ob = L.out_b ? ld<T>(L.out_b, d) : 0.f;
      }
      float acc[1][BB];
      one_row.template dot<BB>(smem, b, acc);
      const float v = pick<BB>(acc[0], lane);
      if (lane < b) p.hid[(int64_t)lane * D + d] = round_t<T>(v + ob);
    }
    if (l == 0 && blockIdx.x == 0 && threadIdx.x == 0) {
      // every block has read the epoch (it passed a barrier): the next launch uses the other counter
      p.sync[1 + ((epoch + 1u) & 1u)] = 0u;
      p.sync[0] = epoch + 1u;
    }
    if (l + 1 < p.n_layer && sw < E)
      in_rows.load(static_cast<const T*>(p.layers[l + 1].in_w) + (int64_t)sw * D, (int64_t)E * D, D);
    stamp(p, l * 8 + 7);
    grid_sync(counter, target);
  }

  // ---- final add + RMSNorm, LM head (the next row's load in flight while a row is summed)
  stamp(p, p.n_layer * 8);
  Rows<T, 1, PRE> cur, nxt;
  if (sw < p.V) cur.load(static_cast<const T*>(p.head) + (int64_t)sw * D, 0, D);
  add_norm<T, BB>(p, false, p.res + (int64_t)(p.n_layer & 1) * b * D, nullptr, p.norm_f, smem);
  for (int v = sw; v < p.V; v += nw) {
    if (v + nw < p.V) nxt.load(static_cast<const T*>(p.head) + (int64_t)(v + nw) * D, 0, D);
    float acc[1][BB];
    cur.template dot<BB>(smem, b, acc);
    const float s = pick<BB>(acc[0], lane);
    if (lane < b) static_cast<T*>(p.logits)[(int64_t)lane * p.V + v] = from_f<T>(s);
    cur = nxt;
  }
  stamp(p, p.n_layer * 8 + 1);
}

template <typename T, int BB>
void launch(const Params& p, int blocks, size_t smem, cudaStream_t stream) {
  auto kernel = model_step_kernel<T, BB>;
  if (smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  int per_sm = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem));
  TORCH_CHECK(per_sm >= 1, "model_step: the kernel does not fit on one SM (shared memory ", smem, " bytes)");
  kernel<<<blocks, kThreads, smem, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

#include "step_host.cuh"

// layers: (n_layer, 14) int64 device table; ints: b, D, E, R, N, W, V; workspace: float32 of
// workspace_floats(b, D, E, R, N) elements followed by 3 uint32 sync words (zeroed once).
torch::Tensor model_step(torch::Tensor layers, torch::Tensor ids, torch::Tensor emb, torch::Tensor norm_f,
                         torch::Tensor head, torch::Tensor workspace, torch::Tensor sync, torch::Tensor logits,
                         int64_t E, int64_t R, int64_t N, int64_t W, double eps, bool res_fp32, bool ad_fp32,
                         c10::optional<torch::Tensor> times) {
  TORCH_CHECK(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "model_step: d_state must be a power of two <= 32");
  const c10::cuda::CUDAGuard guard(ids.device());
  Params p;
  fill_model(p, "model_step", layers, ids, emb, norm_f, head, logits, sync, E, R, N, W, eps, res_fp32, ad_fp32, times);
  TORCH_CHECK(p.D % 8 == 0 && p.E % 8 == 0, "model_step: d_model and d_inner must be multiples of 8");
  const int64_t b = p.b, D = p.D, XW = R + 2 * N;
  TORCH_CHECK(workspace.scalar_type() == torch::kFloat32 && workspace.numel() >= b * (3 * D + 3 * E + XW),
              "model_step: workspace too small");
  float* w = workspace.data_ptr<float>();
  p.res = w; w += 2 * b * D;
  p.hid = w; w += b * D;
  p.xs = w; w += b * E;
  p.zs = w; w += b * E;
  p.ys = w; w += b * E;
  p.dbc = w;

  const int64_t width = std::max<int64_t>(D, std::max<int64_t>(E, XW));
  const size_t smem = (size_t)(b * width) * sizeof(float);
  int dev = ids.get_device();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto st = emb.scalar_type();
  TORCH_CHECK(p.b >= 1 && p.b <= 4, "model_step: batch must be 1..4");
#define GM_LAUNCH(T)                                            \
  if (p.b == 1) launch<T, 1>(p, sms, smem, stream);            \
  else launch<T, 4>(p, sms, smem, stream);
  if (st == torch::kFloat16) {
    GM_LAUNCH(__half)
  } else if (st == torch::kBFloat16) {
    GM_LAUNCH(__nv_bfloat16)
  } else if (st == torch::kFloat32) {
    GM_LAUNCH(float)
  } else {
    TORCH_CHECK(false, "model_step: float16, bfloat16 or float32 weights");
  }
#undef GM_LAUNCH
  return logits;
}

// model_step_mma.cu: batch 5-64 on the tensor cores
std::vector<int64_t> model_step_mma_sizes(int64_t b, int64_t D, int64_t E, int64_t R, int64_t N);
torch::Tensor model_step_mma(torch::Tensor layers, torch::Tensor ids, torch::Tensor emb, torch::Tensor norm_f,
                             torch::Tensor head, torch::Tensor workspace, torch::Tensor sync, torch::Tensor logits,
                             int64_t E, int64_t R, int64_t N, int64_t W, double eps, bool res_fp32, bool ad_fp32,
                             c10::optional<torch::Tensor> times);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("model_step", &model_step, "one decoding step of a whole Mamba LM (CUDA, persistent kernel)");
  m.def("model_step_mma", &model_step_mma,
        "one decoding step of a whole Mamba LM at batch 5-64, products on the tensor cores (CUDA, persistent kernel)");
  m.def("model_step_mma_sizes", &model_step_mma_sizes,
        "(workspace floats, shared-memory bytes) of model_step_mma for (b, d_model, d_inner, dt_rank, d_state)");
}
