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
  fill_model(p, c);
  const int64_t XW = c.R + 2 * c.N, floats = (int64_t)c.b * (3 * c.D + 3 * c.E + XW);
  float* w = static_cast<float*>(malloc(floats * 4));  // the layout of model_step()'s workspace
  memset(w, 0xff, floats * 4);
  p.res = w; w += 2 * c.b * c.D;
  p.hid = w; w += c.b * c.D;
  p.xs = w; w += c.b * c.E;
  p.zs = w; w += c.b * c.E;
  p.ys = w; w += c.b * c.E;
  p.dbc = w;
  const size_t smem = (size_t)c.b * std::max<int64_t>(c.D, std::max<int64_t>(c.E, XW)) * 4;
  if (c.dtype == 1) launches<__nv_bfloat16>(c, p, smem, p.sync);
  else if (c.dtype == 0) launches<__half>(c, p, smem, p.sync);
  else launches<float>(c, p, smem, p.sync);
  return 0;
}
