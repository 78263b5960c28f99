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
#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kLayerFields = 14;

// Addresses of one layer's tensors, one row of the device table (int64 in Python, same order).
struct LayerPtrs {
  const void* norm_w;  // (D)
  const void* in_w;    // (2E, D)
  const void* in_b;    // (2E) or null
  const void* conv_w;  // (E, W)
  const void* conv_b;  // (E) or null
  const void* x_w;     // (R + 2N, E)
  const void* dt_w;    // (E, R)
  const void* dt_b;    // (E)
  const void* a_log;   // (E, N)
  const void* skip_d;  // (E)
  const void* out_w;   // (D, E)
  const void* out_b;   // (D) or null
  void* conv_state;    // (b, E, W - 1), model dtype
  float* ssm_state;    // (b, E, N)
};
static_assert(sizeof(LayerPtrs) == kLayerFields * 8, "layer table row");

struct Params {
  const LayerPtrs* layers;
  int n_layer;
  const int64_t* ids;  // (b)
  const void* emb;     // (V, D)
  const void* norm_f;  // (D)
  const void* head;    // (V, D)
  void* logits;        // (b, V)
  int b, D, E, R, N, W, V;
  float eps;
  bool res_fp32;
  float* res;   // (2, b, D): ping-pong residual stream
  float* hid;   // (b, D): mixer output
  float* xs;    // (b, E): conv + SiLU output
  float* zs;    // (b, E): gate input
  float* dbc;   // (b, R + 2N)
  float* ys;    // (b, E): gated scan output
  unsigned* sync;  // [0] launch epoch, [1], [2] barrier counters (one per epoch parity)
};

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f<T>(from_f<T>(v)); }

template <typename T> __device__ __forceinline__ float ld(const void* p, int64_t i) {
  return to_f<T>(__ldg(static_cast<const T*>(p) + i));
}

// 8 consecutive weights (16-byte aligned rows) as floats, through the read-only path.
template <typename T> __device__ __forceinline__ void load8(const T* p, float* o);
template <> __device__ __forceinline__ void load8<float>(const float* p, float* o) {
  float4 a = __ldg(reinterpret_cast<const float4*>(p));
  float4 b = __ldg(reinterpret_cast<const float4*>(p + 4));
  o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
template <> __device__ __forceinline__ void load8<__half>(const __half* p, float* o) {
  uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __half22float2(h[i]);
    o[2 * i] = f.x; o[2 * i + 1] = f.y;
  }
}
template <> __device__ __forceinline__ void load8<__nv_bfloat16>(const __nv_bfloat16* p, float* o) {
  uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 f = __bfloat1622float2(h[i]);
    o[2 * i] = f.x; o[2 * i + 1] = f.y;
  }
}

__device__ __forceinline__ float dot8(const float* w, const float* a) {
  float4 a0 = *reinterpret_cast<const float4*>(a);
  float4 a1 = *reinterpret_cast<const float4*>(a + 4);
  return w[0] * a0.x + w[1] * a0.y + w[2] * a0.z + w[3] * a0.w + w[4] * a1.x + w[5] * a1.y + w[6] * a1.z +
         w[7] * a1.w;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Grid-wide barrier. Every block is resident (one per SM at most, checked at launch), so spinning
// cannot starve a block that has not started. ``target`` counts arrivals expected so far.
__device__ __forceinline__ void grid_sync(unsigned* counter, unsigned& target) {
  __syncthreads();
  target += gridDim.x;
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    while (ld_acquire(counter) < target) {
    }
    __threadfence();
  }
  __syncthreads();
}

// Ask L2 for ``bytes`` from ``base``, this block's share of 128-byte lines.
__device__ __forceinline__ void prefetch_slice(const void* base, int64_t bytes) {
  const char* p = static_cast<const char*>(base);
  const int64_t lines = (bytes + 127) / 128;
  for (int64_t i = (int64_t)blockIdx.x * kThreads + threadIdx.x; i < lines; i += (int64_t)gridDim.x * kThreads)
    prefetch_l2(p + i * 128);
}

// residual' = residual + hidden (the embedding row at the first layer); act = RMSNorm(residual') * w
// in the model dtype, into shared memory; block 0 writes residual' for the next layer.
template <typename T>
__device__ void add_norm(const Params& p, bool first, const float* res_in, float* res_out, const void* w,
                         float* act) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = p.D;
  for (int i = warp; i < p.b; i += kWarps) {
    int64_t tok = p.ids[i];
    tok = tok < 0 ? 0 : (tok >= p.V ? p.V - 1 : tok);
    float ss = 0.f;
    for (int k = lane; k < D; k += 32) {
      float r;
      if (first) {
        r = ld<T>(p.emb, tok * D + k);
      } else {
        r = __ldcg(res_in + (int64_t)i * D + k) + __ldcg(p.hid + (int64_t)i * D + k);
        if (!p.res_fp32) r = round_t<T>(r);
      }
      act[i * D + k] = r;
      ss += r * r;
    }
    ss = warp_sum(ss);
    const float inv = rsqrtf(ss / D + p.eps);
    for (int k = lane; k < D; k += 32) {
      const float r = act[i * D + k];
      if (res_out != nullptr) res_out[(int64_t)i * D + k] = r;
      act[i * D + k] = round_t<T>(r * inv * ld<T>(w, k));
    }
  }
  __syncthreads();
}

// Copy n floats from global (through L2, never a stale L1 line) into shared memory.
__device__ __forceinline__ void stage(const float* src, float* dst, int n) {
  for (int k = threadIdx.x; k < n; k += kThreads) dst[k] = __ldcg(src + k);
  __syncthreads();
}

// acc[i] = row . act[i] for i < b, reduced over the warp (every lane holds the sums).
template <typename T, int BB>
__device__ __forceinline__ void row_dot(const T* row, const float* act, int K, int b, float* acc) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int i = 0; i < BB; ++i) acc[i] = 0.f;
  for (int k = lane * 8; k < K; k += 256) {
    float w[8];
    load8<T>(row + k, w);
#pragma unroll
    for (int i = 0; i < BB; ++i)
      if (i < b) acc[i] += dot8(w, act + i * K + k);
  }
#pragma unroll
  for (int i = 0; i < BB; ++i) acc[i] = warp_sum(acc[i]);
}

template <int BB>
__device__ __forceinline__ float pick(const float* acc, int i) {
  float v = 0.f;
#pragma unroll
  for (int j = 0; j < BB; ++j)
    if (j == i) v = acc[j];
  return v;
}

template <typename T, int BB>
__global__ void __launch_bounds__(kThreads, 1) model_step_kernel(Params p) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  // warps numbered across blocks first, so that a phase with few rows spreads over many SMs
  const int sw = warp * gridDim.x + blockIdx.x, nw = gridDim.x * kWarps;
  const int b = p.b, D = p.D, E = p.E, R = p.R, N = p.N, W = p.W;
  const int XW = R + 2 * N;

  const unsigned epoch = ld_acquire(p.sync);
  unsigned* counter = p.sync + 1 + (epoch & 1u);
  unsigned target = 0;

  for (int l = 0; l < p.n_layer; ++l) {
    const LayerPtrs L = p.layers[l];
    const float* res_in = p.res + (int64_t)(l & 1) * b * D;
    float* res_out = p.res + (int64_t)((l + 1) & 1) * b * D;

    // ---- A: add + norm, in_proj (rows c and E + c together), conv step, SiLU
    add_norm<T>(p, l == 0, res_in, blockIdx.x == 0 ? res_out : nullptr, L.norm_w, smem);
    if (l + 1 < p.n_layer) {
      const LayerPtrs& M = p.layers[l + 1];
      prefetch_slice(M.in_w, (int64_t)2 * E * D * sizeof(T));
      prefetch_slice(M.x_w, (int64_t)XW * E * sizeof(T));
      prefetch_slice(M.dt_w, (int64_t)E * R * sizeof(T));
      prefetch_slice(M.out_w, (int64_t)D * E * sizeof(T));
    }
    for (int c = sw; c < E; c += nw) {
      float ax[BB], az[BB];
      const T* wx = static_cast<const T*>(L.in_w) + (int64_t)c * D;
      row_dot<T, BB>(wx, smem, D, b, ax);
      row_dot<T, BB>(wx + (int64_t)E * D, smem, D, b, az);
      const float xv = pick<BB>(ax, lane), zv = pick<BB>(az, lane);
      if (lane < b) {
        const int i = lane;
        const float x = round_t<T>(xv + (L.in_b ? ld<T>(L.in_b, c) : 0.f));
        const float z = round_t<T>(zv + (L.in_b ? ld<T>(L.in_b, E + c) : 0.f));
        T* cs = static_cast<T*>(L.conv_state) + ((int64_t)i * E + c) * (W - 1);
        float acc = L.conv_b ? ld<T>(L.conv_b, c) : 0.f;
        for (int j = 0; j < W - 1; ++j) acc += ld<T>(L.conv_w, (int64_t)c * W + j) * to_f<T>(cs[j]);
        acc += ld<T>(L.conv_w, (int64_t)c * W + W - 1) * x;
        for (int j = 0; j + 1 < W - 1; ++j) cs[j] = cs[j + 1];
        if (W > 1) cs[W - 2] = from_f<T>(x);
        const float xc = round_t<T>(acc / (1.f + __expf(-acc)));
        p.xs[(int64_t)i * E + c] = xc;
        p.zs[(int64_t)i * E + c] = z;
      }
    }
    grid_sync(counter, target);

    // ---- B: x_proj
    if ((int)blockIdx.x < XW) {
      stage(p.xs, smem, b * E);
      for (int r = sw; r < XW; r += nw) {
        float acc[BB];
        row_dot<T, BB>(static_cast<const T*>(L.x_w) + (int64_t)r * E, smem, E, b, acc);
        const float v = pick<BB>(acc, lane);
        if (lane < b) p.dbc[(int64_t)lane * XW + r] = round_t<T>(v);
      }
    }
    grid_sync(counter, target);

    // ---- C: dt_proj + softplus, state update, D skip, gate; N lanes per (row, channel)
    {
      stage(p.dbc, smem, b * XW);
      const int per_warp = 32 / N;
      const int n = lane % N, g = lane / N;
      const int total = b * E;
      for (int base = sw * per_warp; base < total; base += nw * per_warp) {
        const int t = base + g;
        const bool on = t < total;
        const int i = on ? t / E : 0, c = on ? t % E : 0;
        const float* db = smem + i * XW;
        float dt = 0.f;
        if (on)
          for (int r = n; r < R; r += N) dt += ld<T>(L.dt_w, (int64_t)c * R + r) * db[r];
        for (int o = N / 2; o > 0; o >>= 1) dt += __shfl_xor_sync(0xffffffffu, dt, o);
        float y = 0.f, x = 0.f, z = 0.f;
        if (on) {
          dt = round_t<T>(dt) + ld<T>(L.dt_b, c);
          dt = dt > 20.f ? dt : log1pf(__expf(dt));
          x = __ldcg(p.xs + (int64_t)i * E + c);
          z = __ldcg(p.zs + (int64_t)i * E + c);
          const float a = -__expf(ld<T>(L.a_log, (int64_t)c * N + n));
          float* st = L.ssm_state + ((int64_t)i * E + c) * N + n;
          const float h = *st * __expf(dt * a) + dt * db[R + n] * x;
          *st = h;
          y = h * db[R + N + n];
        }
        for (int o = N / 2; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
        if (on && n == 0) {
          y += x * ld<T>(L.skip_d, c);
          y *= z / (1.f + __expf(-z));
          p.ys[(int64_t)i * E + c] = round_t<T>(y);
        }
      }
    }
    grid_sync(counter, target);

    // ---- D: out_proj
    stage(p.ys, smem, b * E);
    for (int d = sw; d < D; d += nw) {
      float acc[BB];
      row_dot<T, BB>(static_cast<const T*>(L.out_w) + (int64_t)d * E, smem, E, b, acc);
      const float v = pick<BB>(acc, lane);
      if (lane < b) p.hid[(int64_t)lane * D + d] = round_t<T>(v + (L.out_b ? ld<T>(L.out_b, d) : 0.f));
    }
    if (l == 0 && blockIdx.x == 0 && threadIdx.x == 0) {
      // every block has read the epoch (it passed a barrier): the next launch uses the other counter
      p.sync[1 + ((epoch + 1u) & 1u)] = 0u;
      p.sync[0] = epoch + 1u;
    }
    grid_sync(counter, target);
  }

  // ---- final add + RMSNorm, LM head
  add_norm<T>(p, false, p.res + (int64_t)(p.n_layer & 1) * b * D, nullptr, p.norm_f, smem);
  for (int v = sw; v < p.V; v += nw) {
    float acc[BB];
    row_dot<T, BB>(static_cast<const T*>(p.head) + (int64_t)v * D, smem, D, b, acc);
    const float s = pick<BB>(acc, lane);
    if (lane < b) static_cast<T*>(p.logits)[(int64_t)lane * p.V + v] = from_f<T>(s);
  }
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

// layers: (n_layer, 14) int64 device table; ints: b, D, E, R, N, W, V; workspace: float32 of
// workspace_floats(b, D, E, R, N) elements followed by 3 uint32 sync words (zeroed once).
torch::Tensor model_step(torch::Tensor layers, torch::Tensor ids, torch::Tensor emb, torch::Tensor norm_f,
                         torch::Tensor head, torch::Tensor workspace, torch::Tensor sync, torch::Tensor logits,
                         int64_t E, int64_t R, int64_t N, int64_t W, double eps, bool res_fp32) {
  TORCH_CHECK(layers.is_cuda() && layers.scalar_type() == torch::kInt64 && layers.dim() == 2 &&
                  layers.size(1) == kLayerFields && layers.is_contiguous(),
              "model_step: layers must be a contiguous (n_layer, 14) int64 CUDA tensor");
  TORCH_CHECK(ids.is_cuda() && ids.scalar_type() == torch::kInt64 && ids.dim() == 1 && ids.is_contiguous(),
              "model_step: ids must be a contiguous 1-D int64 CUDA tensor");
  TORCH_CHECK(emb.dim() == 2 && head.dim() == 2 && emb.size(1) == head.size(1) && emb.is_contiguous() &&
                  head.is_contiguous(),
              "model_step: emb and head must be contiguous (V, D)");
  TORCH_CHECK(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "model_step: d_state must be a power of two <= 32");
  TORCH_CHECK(W >= 1 && W <= 4, "model_step: d_conv must be 1..4");
  const c10::cuda::CUDAGuard guard(ids.device());
  Params p;
  p.layers = reinterpret_cast<const LayerPtrs*>(layers.data_ptr<int64_t>());
  p.n_layer = (int)layers.size(0);
  p.ids = ids.data_ptr<int64_t>();
  p.emb = emb.data_ptr();
  p.norm_f = norm_f.data_ptr();
  p.head = head.data_ptr();
  p.logits = logits.data_ptr();
  p.b = (int)ids.size(0);
  p.D = (int)emb.size(1);
  p.E = (int)E; p.R = (int)R; p.N = (int)N; p.W = (int)W;
  p.V = (int)head.size(0);
  p.eps = (float)eps;
  p.res_fp32 = res_fp32;
  TORCH_CHECK(p.D % 8 == 0 && p.E % 8 == 0, "model_step: d_model and d_inner must be multiples of 8");
  TORCH_CHECK(logits.size(0) == p.b && logits.size(1) == p.V && logits.is_contiguous(), "model_step: logits shape");
  const int64_t b = p.b, D = p.D, XW = R + 2 * N;
  TORCH_CHECK(workspace.scalar_type() == torch::kFloat32 && workspace.numel() >= b * (3 * D + 3 * E + XW),
              "model_step: workspace too small");
  TORCH_CHECK(sync.scalar_type() == torch::kInt32 && sync.numel() >= 3, "model_step: sync words");
  float* w = workspace.data_ptr<float>();
  p.res = w; w += 2 * b * D;
  p.hid = w; w += b * D;
  p.xs = w; w += b * E;
  p.zs = w; w += b * E;
  p.ys = w; w += b * E;
  p.dbc = w;
  p.sync = reinterpret_cast<unsigned*>(sync.data_ptr<int32_t>());

  const int64_t width = std::max<int64_t>(D, std::max<int64_t>(E, XW));
  const size_t smem = (size_t)(b * width) * sizeof(float);
  int dev = ids.get_device();
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto st = emb.scalar_type();
  TORCH_CHECK(p.b >= 1 && p.b <= 16, "model_step: batch must be 1..16");
#define GM_LAUNCH(T)                                            \
  if (p.b == 1) launch<T, 1>(p, sms, smem, stream);            \
  else launch<T, 16>(p, sms, smem, stream);
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

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("model_step", &model_step, "one decoding step of a whole Mamba LM (CUDA, persistent kernel)");
}
