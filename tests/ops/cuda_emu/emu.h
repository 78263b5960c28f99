// Host emulation of the CUDA features the whole-model decode kernels use, for running their source on
// the CPU in tests: every CUDA thread is an OS thread, __syncthreads a barrier of the block's 512
// threads, warp-wide operations (shuffles, mma.sync) exchange registers through per-warp slots
// between two barriers of the warp's 32 threads. Half and bfloat16 come from the CUDA toolkit's
// host-usable headers. Global and shared memory are plain host memory (cp.async is a copy).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>
#include <vector_types.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct Dim {
  unsigned x = 0, y = 0, z = 0;
};
extern thread_local Dim threadIdx, blockIdx;
extern Dim gridDim;
extern thread_local char* t_smem;    // the block's dynamic shared memory
extern thread_local char* t_static;  // the block's statically declared shared variables

struct BlockCtl {
  std::barrier<>* bar;
  std::barrier<>* warp_bar[16];
  uint32_t xch[16][32][8];  // per-warp register exchange (mma operands)
  float fx[16][32];         // per-warp shuffle exchange
};
extern BlockCtl* g_blocks;

inline void __syncthreads() { g_blocks[blockIdx.x].bar->arrive_and_wait(); }
inline void warp_barrier() { g_blocks[blockIdx.x].warp_bar[threadIdx.x >> 5]->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int o) {
  BlockCtl& B = g_blocks[blockIdx.x];
  const int w = threadIdx.x >> 5, l = threadIdx.x & 31;
  B.fx[w][l] = v;
  warp_barrier();
  const float r = B.fx[w][l ^ o];
  warp_barrier();
  return r;
}

template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline unsigned emu_load_acquire(const unsigned* p) {
  sched_yield();  // a spinning block lets the others run
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
