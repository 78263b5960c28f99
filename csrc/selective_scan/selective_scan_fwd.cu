// Selective scan forward (Mamba; mamba_ssm selective_scan_fn semantics), CUDA C++.
//
// Work layout. A thread owns one channel d and NPT = 4 consecutive states of it (TPC threads per
// channel cover n), keeps its fp32 states in registers and walks tokens one by one; the per-token
// output sum over n is a shuffle across the TPC lanes of a channel. A block holds CPB = 128 / TPC
// channels of one (batch, group) and stages 64-token tiles of u and delta (after bias + softplus)
// in shared memory with coalesced loads, B and C as [t][n] so each thread reads its 4 states with
// one 16-byte load. Outputs go through shared memory and are written coalesced with D and the z
// gate applied. Long sequences are cut into chunks (when b * d alone does not fill the GPU):
//   mode 0: each chunk's end state from zero and its sum of delta;  pass kernel: the true state at
//   every chunk start (sequential over chunks, tiny);  mode 1: outputs from the true start state.
// One exp2 per (d, n, token) per pass: the special-function unit is the limit (16/clk/SM).
// Indexing is int64 wherever a product of sizes appears.

#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace {

constexpr int kThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

struct FwdParams {
  const void *u, *dt, *A, *B, *C, *D, *z, *bias;
  const float *hin;     // (b, nchunks, d, n) or (b, 1, d, n) initial state, or null
  void *out;            // (b, d, l), u's dtype
  float *hend, *dsum;   // mode 0 outputs
  float *final_state;   // (b, d, n)
  int64_t b, d, n, l, g, dpg;
  int64_t s_ub, s_ud, s_tb, s_td, s_zb, s_zd, s_ob, s_od;  // l stride is 1 (host guarantees)
  int64_t s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn, s_Ad, s_An;
  int64_t chunk_len, nchunks, nblk_d;
  bool has_D, has_z, has_bias, softplus;
  int tpc;  // threads per channel
};

template <typename T> __device__ __forceinline__ float to_f(T x) { return static_cast<float>(x); }

// one MUFU.EX2 (exp2f without fast-math adds denormal range fix-ups around it); rel. error ~2^-22,
// results below 2^-126 flush to zero, which only shortens a decay that is already complete
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float softplus_f(float x) {
  // torch's threshold 20; log1p keeps precision when exp(x) is tiny (Mamba's usual delta range)
  return x > 20.f ? x : log1pf(expf(x));
}

// NPT states per thread; TILE tokens per shared-memory tile. NPT = 16 (one thread per channel at
// n = 16) needs no shuffles and amortises per-token loads over 16 states; NPT = 4 gives 4x the
// threads for short, narrow problems.
template <typename T, int MODE, int NPT, int TILE>
__global__ void __launch_bounds__(kThreads) scan_fwd_kernel(FwdParams p) {
  constexpr int kNPT = NPT, kTile = TILE;
  extern __shared__ float smem[];
  const int tpc = p.tpc;
  const int cpb = kThreads / tpc;
  const int np = tpc * kNPT;  // padded states
  float *s_dt = smem;                          // [cpb][kTile + 1]
  float *s_u = s_dt + cpb * (kTile + 1);       // [cpb][kTile + 1]
  float *s_y = s_dt;  // y[c][t] overwrites delta[c][t] after its only reader (the same thread) used it
  float *s_B = s_u + cpb * (kTile + 1);        // [kTile][np]
  float *s_C = s_B + kTile * np;               // [kTile][np]

  const int tid = threadIdx.x;
  const int ch = tid / tpc, sub = tid % tpc;
  const int64_t bg = blockIdx.y;  // batch * g + group
  const int64_t bi = bg / p.g, gi = bg % p.g;
  const int64_t chunk = blockIdx.x / p.nblk_d, dblk = blockIdx.x % p.nblk_d;
  const int64_t d_in_group = dblk * cpb + ch;
  const bool valid = d_in_group < p.dpg;
  const int64_t dch = gi * p.dpg + (valid ? d_in_group : 0);
  const int n0 = sub * kNPT;

  const T *u = static_cast<const T *>(p.u) + bi * p.s_ub;
  const T *dtp = static_cast<const T *>(p.dt) + bi * p.s_tb;
  const T *Bp = static_cast<const T *>(p.B) + bi * p.s_Bb + gi * p.s_Bg;
  const T *Cp = static_cast<const T *>(p.C) + bi * p.s_Cb + gi * p.s_Cg;
  const float *Ap = static_cast<const float *>(p.A);

  float A2[kNPT], h[kNPT];
#pragma unroll
  for (int j = 0; j < kNPT; ++j) {
    const bool ok = valid && (n0 + j) < p.n;
    A2[j] = ok ? Ap[dch * p.s_Ad + (n0 + j) * p.s_An] * kLog2e : 0.f;
    h[j] = 0.f;
    if (MODE == 1 && p.hin != nullptr && ok)
      h[j] = p.hin[((bi * p.nchunks + chunk) * p.d + dch) * p.n + n0 + j];
  }
  float dsum = 0.f;
  const int64_t t0 = chunk * p.chunk_len;
  const int64_t t1 = min(t0 + p.chunk_len, p.l);
  const int64_t dbase = gi * p.dpg + dblk * cpb;  // first channel of this block

  for (int64_t ts = t0; ts < t1; ts += kTile) {
    const int tl = (t1 - ts < kTile) ? static_cast<int>(t1 - ts) : kTile;
    // stage u, delta (bias + softplus applied once here), B, C
    for (int i = tid; i < cpb * kTile; i += kThreads) {
      const int c = i / kTile, t = i % kTile;
      const int64_t dd = dblk * cpb + c;
      float dv = 0.f, uv = 0.f;
      if (t < tl && dd < p.dpg) {
        const int64_t dc = dbase + c;
        dv = to_f(dtp[dc * p.s_td + ts + t]);
        if (p.has_bias) dv += static_cast<const float *>(p.bias)[dc];
        if (p.softplus) dv = softplus_f(dv);
        uv = to_f(u[dc * p.s_ud + ts + t]);
      }
      s_dt[c * (kTile + 1) + t] = dv;
      s_u[c * (kTile + 1) + t] = uv;
    }
    for (int i = tid; i < np * kTile; i += kThreads) {
      const int nn = i / kTile, t = i % kTile;
      float bv = 0.f, cv = 0.f;
      if (t < tl && nn < p.n) {
        bv = to_f(Bp[nn * p.s_Bn + ts + t]);
        if (MODE == 1) cv = to_f(Cp[nn * p.s_Cn + ts + t]);
      }
      s_B[t * np + nn] = bv;
      s_C[t * np + nn] = cv;
    }
    __syncthreads();
#pragma unroll 2
    for (int t = 0; t < tl; ++t) {
      const float dv = s_dt[ch * (kTile + 1) + t];
      const float du = dv * s_u[ch * (kTile + 1) + t];
      float bv[kNPT];
#pragma unroll
      for (int q = 0; q < kNPT / 4; ++q) {
        const float4 b4 = *reinterpret_cast<const float4 *>(&s_B[t * np + n0 + 4 * q]);
        bv[4 * q] = b4.x; bv[4 * q + 1] = b4.y; bv[4 * q + 2] = b4.z; bv[4 * q + 3] = b4.w;
      }
      if (MODE == 1) {
        float cv[kNPT];
#pragma unroll
        for (int q = 0; q < kNPT / 4; ++q) {
          const float4 c4 = *reinterpret_cast<const float4 *>(&s_C[t * np + n0 + 4 * q]);
          cv[4 * q] = c4.x; cv[4 * q + 1] = c4.y; cv[4 * q + 2] = c4.z; cv[4 * q + 3] = c4.w;
        }
        // two partial sums: a shorter dependent chain of adds
        float y0 = 0.f, y1 = 0.f;
#pragma unroll
        for (int j = 0; j < kNPT; ++j) {
          h[j] = ex2(dv * A2[j]) * h[j] + du * bv[j];
          if (j & 1) y1 += h[j] * cv[j]; else y0 += h[j] * cv[j];
        }
        float y = y0 + y1;
        for (int off = 1; off < tpc; off <<= 1) y += __shfl_xor_sync(0xffffffffu, y, off);
        // all tpc lanes of this channel have read s_dt[ch][t] above (shuffle = warp sync point)
        if (sub == 0) s_y[ch * (kTile + 1) + t] = y;
      } else {
#pragma unroll
        for (int j = 0; j < kNPT; ++j) h[j] = ex2(dv * A2[j]) * h[j] + du * bv[j];
        dsum += dv;
      }
    }
    __syncthreads();
    if (MODE == 1) {
      T *op = static_cast<T *>(p.out) + bi * p.s_ob;
      const T *zp = static_cast<const T *>(p.z) + bi * p.s_zb;
      for (int i = tid; i < cpb * kTile; i += kThreads) {
        const int c = i / kTile, t = i % kTile;
        const int64_t dd = dblk * cpb + c;
        if (t < tl && dd < p.dpg) {
          const int64_t dc = dbase + c;
          float y = s_y[c * (kTile + 1) + t];
          if (p.has_D) y += s_u[c * (kTile + 1) + t] * static_cast<const float *>(p.D)[dc];
          if (p.has_z) {
            const float zv = to_f(zp[dc * p.s_zd + ts + t]);
            y *= zv / (1.f + __expf(-zv));
          }
          op[dc * p.s_od + ts + t] = static_cast<T>(y);
        }
      }
      __syncthreads();
    }
  }
  if (!valid) return;
#pragma unroll
  for (int j = 0; j < kNPT; ++j) {
    if (n0 + j >= p.n) continue;
    if (MODE == 0) {
      p.hend[((bi * p.nchunks + chunk) * p.d + dch) * p.n + n0 + j] = h[j];
    } else if (chunk == p.nchunks - 1) {
      p.final_state[(bi * p.d + dch) * p.n + n0 + j] = h[j];
    }
  }
  if (MODE == 0 && sub == 0) p.dsum[(bi * p.nchunks + chunk) * p.d + dch] = dsum;
}

// state entering chunk c = exp(A * sum(delta of chunk c-1)) * state entering c-1 + hend[c-1]
__global__ void pass_fwd_kernel(const float *A, int64_t s_Ad, int64_t s_An, const float *h0, const float *hend,
                                const float *dsum, float *hin, int64_t b, int64_t d, int64_t n, int64_t nchunks) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= b * d * n) return;
  const int64_t bi = i / (d * n), dn = i % (d * n), dc = dn / n, nn = dn % n;
  const float a2 = A[dc * s_Ad + nn * s_An] * kLog2e;
  float h = h0 ? h0[i] : 0.f;
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t base = (bi * nchunks + c) * d * n + dn;
    hin[base] = h;
    h = exp2f(dsum[(bi * nchunks + c) * d + dc] * a2) * h + hend[base];
  }
}

void check_cuda(const char *what) {
  const cudaError_t e = cudaGetLastError();
  TORCH_CHECK(e == cudaSuccess, "genomamba selective_scan (", what, "): ", cudaGetErrorString(e));
}

template <typename K> void set_smem(K kernel, size_t bytes);

template <typename T, int MODE>
void launch_t(int64_t npt, dim3 grid, size_t smem, cudaStream_t stream, const FwdParams &p) {
  if (npt == 16) {
    set_smem(scan_fwd_kernel<T, MODE, 16, 32>, smem);
    scan_fwd_kernel<T, MODE, 16, 32><<<grid, kThreads, smem, stream>>>(p);
  } else {
    set_smem(scan_fwd_kernel<T, MODE, 4, 64>, smem);
    scan_fwd_kernel<T, MODE, 4, 64><<<grid, kThreads, smem, stream>>>(p);
  }
}

// above 48 KB a kernel's dynamic shared memory must be raised explicitly (tpc = 1: 128 channels)
template <typename K> void set_smem(K kernel, size_t bytes) {
  if (bytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes));
    TORCH_CHECK(e == cudaSuccess, "genomamba selective_scan: shared memory ", bytes, ": ", cudaGetErrorString(e));
  }
}

template <int MODE>
void launch(at::ScalarType st, int64_t npt, dim3 grid, size_t smem, cudaStream_t stream, const FwdParams &p) {
  AT_DISPATCH_SWITCH(st, "selective_scan_fwd",
      AT_DISPATCH_CASE(at::ScalarType::Float, [&] { launch_t<scalar_t, MODE>(npt, grid, smem, stream, p); })
      AT_DISPATCH_CASE(at::ScalarType::Half, [&] { launch_t<scalar_t, MODE>(npt, grid, smem, stream, p); })
      AT_DISPATCH_CASE(at::ScalarType::BFloat16, [&] { launch_t<scalar_t, MODE>(npt, grid, smem, stream, p); }));
}

}  // namespace

// Returns (out, final_state). Host wrapper: inputs validated by genomamba.ops; l-stride must be 1.
std::vector<torch::Tensor> selective_scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                              torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                              c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> bias,
                                              bool softplus, c10::optional<torch::Tensor> h0,
                                              int64_t target_threads, int64_t npt) {
  const c10::cuda::CUDAGuard guard(u.device());
  TORCH_CHECK(u.stride(2) == 1 && delta.stride(2) == 1 && B.stride(-1) == 1 && C.stride(-1) == 1,
              "selective_scan_fwd: l must be the unit-stride axis");
  TORCH_CHECK(delta.scalar_type() == u.scalar_type() && B.scalar_type() == u.scalar_type() &&
                  C.scalar_type() == u.scalar_type(),
              "selective_scan_fwd: u, delta, B, C must share a dtype");
  TORCH_CHECK(A.scalar_type() == torch::kFloat32, "selective_scan_fwd: A must be float32");
  const int64_t b = u.size(0), d = u.size(1), l = u.size(2), n = A.size(1);
  TORCH_CHECK(npt == 4 || npt == 16, "selective_scan_fwd: npt is 4 or 16");
  const int kNPT = static_cast<int>(npt);
  const int kTile = npt == 16 ? 32 : 64;
  TORCH_CHECK(n <= 32 * kNPT, "selective_scan_fwd: n too large");
  const bool grouped = B.dim() == 4;
  const int64_t g = grouped ? B.size(1) : 1;
  TORCH_CHECK(!grouped || (C.dim() == 4 && C.size(1) == g), "selective_scan_fwd: B and C grouped alike");
  int tpc = 1;
  while (tpc * kNPT < n) tpc <<= 1;
  const int cpb = kThreads / tpc;
  const int64_t dpg = d / g;
  const int64_t nblk_d = (dpg + cpb - 1) / cpb;
  const int64_t ntiles = (l + kTile - 1) / kTile;
  const int64_t base_threads = b * g * nblk_d * kThreads;
  int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(ntiles, (target_threads + base_threads - 1) / base_threads));
  const int64_t per = (ntiles + nchunks - 1) / nchunks;
  nchunks = (ntiles + per - 1) / per;

  auto f32 = u.options().dtype(torch::kFloat32);
  auto out = torch::empty({b, d, l}, u.options());
  auto final_state = torch::empty({b, d, n}, f32);
  auto zt = z.has_value() ? z.value() : u;
  TORCH_CHECK(zt.stride(2) == 1 && zt.scalar_type() == u.scalar_type(), "selective_scan_fwd: z layout/dtype");
  auto Dt = D.has_value() ? D.value().to(torch::kFloat32).contiguous() : torch::Tensor();
  auto bt = bias.has_value() ? bias.value().to(torch::kFloat32).contiguous() : torch::Tensor();
  torch::Tensor h0c = h0.has_value() ? h0.value().to(torch::kFloat32).contiguous() : torch::Tensor();

  FwdParams p{};
  p.u = u.data_ptr(); p.dt = delta.data_ptr(); p.A = A.data_ptr(); p.B = B.data_ptr(); p.C = C.data_ptr();
  p.D = D.has_value() ? Dt.data_ptr() : nullptr; p.z = zt.data_ptr(); p.bias = bias.has_value() ? bt.data_ptr() : nullptr;
  p.out = out.data_ptr(); p.final_state = final_state.data_ptr<float>();
  p.b = b; p.d = d; p.n = n; p.l = l; p.g = g; p.dpg = dpg;
  p.s_ub = u.stride(0); p.s_ud = u.stride(1); p.s_tb = delta.stride(0); p.s_td = delta.stride(1);
  p.s_zb = zt.stride(0); p.s_zd = zt.stride(1); p.s_ob = out.stride(0); p.s_od = out.stride(1);
  p.s_Bb = B.stride(0); p.s_Bg = grouped ? B.stride(1) : 0; p.s_Bn = B.stride(-2);
  p.s_Cb = C.stride(0); p.s_Cg = grouped ? C.stride(1) : 0; p.s_Cn = C.stride(-2);
  p.s_Ad = A.stride(0); p.s_An = A.stride(1);
  p.chunk_len = per * kTile; p.nchunks = nchunks; p.nblk_d = nblk_d;
  p.has_D = D.has_value(); p.has_z = z.has_value(); p.has_bias = bias.has_value(); p.softplus = softplus;
  p.tpc = tpc;
  const size_t smem = sizeof(float) * (2 * cpb * (kTile + 1) + 2 * kTile * tpc * kNPT);
  const dim3 grid(static_cast<unsigned>(nblk_d * nchunks), static_cast<unsigned>(b * g));
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (l == 0) {
    if (h0.has_value()) final_state.copy_(h0c); else final_state.zero_();
    return {out, final_state};
  }
  torch::Tensor hin;
  if (nchunks > 1) {
    auto hend = torch::empty({b, nchunks, d, n}, f32);
    auto dsum = torch::empty({b, nchunks, d}, f32);
    hin = torch::empty({b, nchunks, d, n}, f32);
    p.hend = hend.data_ptr<float>(); p.dsum = dsum.data_ptr<float>();
    launch<0>(u.scalar_type(), npt, grid, smem, stream, p);
    check_cuda("mode 0");
    const int64_t tot = b * d * n;
    pass_fwd_kernel<<<static_cast<unsigned>((tot + 255) / 256), 256, 0, stream>>>(
        A.data_ptr<float>(), A.stride(0), A.stride(1), h0.has_value() ? h0c.data_ptr<float>() : nullptr,
        hend.data_ptr<float>(), dsum.data_ptr<float>(), hin.data_ptr<float>(), b, d, n, nchunks);
    check_cuda("pass");
    p.hin = hin.data_ptr<float>();
  } else {
    p.hin = h0.has_value() ? h0c.data_ptr<float>() : nullptr;
  }
  launch<1>(u.scalar_type(), npt, grid, smem, stream, p);
  check_cuda("mode 1");
  return {out, final_state};
}

// bound in bindings.cpp together with the v2 kernels (selective_scan_v2.cu)
