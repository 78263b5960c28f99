// Runs the batch 1-4 decode kernel (model_step.cu, rewritten for the host into kernel_small.inc) on
// the CPU; files as for harness.cpp.
#include "emu.h"
thread_local Dim threadIdx, blockIdx;
Dim gridDim;
thread_local char* t_smem;
thread_local char* t_static;
BlockCtl* g_blocks;
#include "kernel_small.inc"
#include "harness_io.h"

template <typename T> static void launches(const Case& c, Params p, size_t smem, unsigned* sync) {
  for (int launch = 0; launch < c.launches; ++launch) {
    launch_blocks(c.G, smem, [&] {
      if (c.b == 1) model_step_kernel<T, 1>(p);
      else model_step_kernel<T, 4>(p);
    });
    printf("launch %d: sync words %u %u %u\n", launch, sync[0], sync[1], sync[2]);
    save_outputs(c, launch, p.logits);
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: harness_small DIR\n");
    return 2;
  }
  dir = argv[1];
  const Case c = read_case();
  Params p{};
  p.layers = c.layers.data();
  p.n_layer = c.n_layer;
  p.ids = c.ids;
  p.emb = c.emb; p.norm_f = c.norm_f; p.head = c.head;
  const size_t logit_bytes = (size_t)c.b * c.V * c.elem();
  p.logits = malloc(logit_bytes);
  memset(p.logits, 0xff, logit_bytes);
  p.b = c.b; p.D = c.D; p.E = c.E; p.R = c.R; p.N = c.N; p.W = c.W; p.V = c.V;
  p.eps = c.eps;
  p.res_fp32 = c.res_fp32;
  p.ad_fp32 = c.ad_fp32;
  const int64_t XW = c.R + 2 * c.N, floats = (int64_t)c.b * (3 * c.D + 3 * c.E + XW);
  float* w = static_cast<float*>(malloc(floats * 4));  // the layout of model_step()'s workspace
  memset(w, 0xff, floats * 4);
  p.res = w; w += 2 * c.b * c.D;
  p.hid = w; w += c.b * c.D;
  p.xs = w; w += c.b * c.E;
  p.zs = w; w += c.b * c.E;
  p.ys = w; w += c.b * c.E;
  p.dbc = w;
  unsigned* sync = static_cast<unsigned*>(calloc(3, 4));
  p.sync = sync;
  p.times = nullptr;
  const size_t smem = (size_t)c.b * std::max<int64_t>(c.D, std::max<int64_t>(c.E, XW)) * 4;
  if (c.dtype == 1) launches<__nv_bfloat16>(c, p, smem, sync);
  else if (c.dtype == 0) launches<__half>(c, p, smem, sync);
  else launches<float>(c, p, smem, sync);
  return 0;
}
