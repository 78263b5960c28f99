// Pieces shared by the whole-model decode step kernels (model_step.cu: batch 1-4 on the CUDA cores;
// model_step_mma.cu: batch 5-64 on the tensor cores): the layer table, dtype conversions, the
// grid-wide barrier and L2 prefetches.
#pragma once

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace gm_step {

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
  const void* a_log;   // (E, N), model dtype or fp32 (Params::ad_fp32)
  const void* skip_d;  // (E), as a_log
  const void* out_w;   // (D, E)
  const void* out_b;   // (D) or null
  void* conv_state;    // (b, E, W - 1), model dtype
  float* ssm_state;    // (b, E, N)
};
static_assert(sizeof(LayerPtrs) == kLayerFields * 8, "layer table row");

// What both kernels are told about the model and the step; each kernel's parameters add its scratch.
struct StepModel {
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
  bool ad_fp32;  // A_log and D kept in fp32 (as a model built in half precision keeps them)
  unsigned* sync;  // [0] launch epoch, [1], [2] barrier counters (one per epoch parity)
  unsigned long long* times;  // null, or (8 n_layer + 2) phase timestamps of block 0 (ns)
};

// Block 0's timestamp for phase boundary ``slot`` (when timing was asked for).
__device__ __forceinline__ void stamp(const StepModel& p, int slot) {
  if (p.times != nullptr && blockIdx.x == 0 && threadIdx.x == 0) {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    p.times[slot] = t;
  }
}

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ float round_t(float v) { return to_f<T>(from_f<T>(v)); }

// A read-only load of element i. Half precision goes through the 16-bit integer load: cuda_fp16.h's
// and cuda_bf16.h's __ldg overloads are inline assembly the compiler may treat as free of side effects
// and so move out of a loop or a branch, reading past the end of a tensor (a fault where the tensor
// ends a memory segment); the integer overload cannot be moved.
template <typename T> __device__ __forceinline__ T bits_as(unsigned short u);
template <> __device__ __forceinline__ __half bits_as<__half>(unsigned short u) { return __ushort_as_half(u); }
template <> __device__ __forceinline__ __nv_bfloat16 bits_as<__nv_bfloat16>(unsigned short u) {
  return __ushort_as_bfloat16(u);
}

template <typename T> __device__ __forceinline__ float ld(const void* p, int64_t i) {
  if constexpr (sizeof(T) == 2) {
    return to_f<T>(bits_as<T>(__ldg(static_cast<const unsigned short*>(p) + i)));
  } else {
    return __ldg(static_cast<const float*>(p) + i);
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


}  // namespace gm_step
