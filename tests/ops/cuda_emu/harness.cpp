// Runs the tensor-core decode kernel (model_step_mma.cu, rewritten for the host into kernel.inc) on
// the CPU. Usage: harness DIR, DIR holding cfg.txt (see harness_io.h) and each tensor as raw bytes
// (L<layer>_<field>.bin in the order of struct LayerPtrs, emb.bin, norm_f.bin, head.bin, ids.bin).
// After each launch the logits and every layer's states are written back (out_*.bin). Workspace
// and shared memory start as NaN, so anything read before it is written shows in the results.
#include "emu.h"
thread_local Dim threadIdx, blockIdx;
Dim gridDim;
thread_local char* t_smem;
thread_local char* t_static;
BlockCtl* g_blocks;
#include "kernel.inc"
#include "harness_io.h"

template <typename T> static void launches(const Case& c, MmaParams p, const Sizes& z, unsigned* sync) {
  for (int launch = 0; launch < c.launches; ++launch) {
    launch_blocks(c.G, z.smem, [&] {
      if (z.nt == 2) model_step_mma_kernel<T, 2>(p, z.smem);
      else if (z.nt == 4) model_step_mma_kernel<T, 4>(p, z.smem);
      else model_step_mma_kernel<T, 8>(p, z.smem);
    });
    printf("launch %d: sync words %u %u %u\n", launch, sync[0], sync[1], sync[2]);
    save_outputs(c, launch, p.logits);
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: harness DIR\n");
    return 2;
  }
  dir = argv[1];
  const Case c = read_case();
  MmaParams p{};
  fill_model(p, c);
  p.XM = (c.R + 2 * c.N + 15) / 16;
  const Sizes z = sizes(c.b, c.D, c.E, c.R, c.N, c.G);  // the launch's own sizing, for G blocks
  p.S = z.S;
  float* w = static_cast<float*>(malloc(z.total * 4));
  memset(w, 0xff, z.total * 4);
  p.res = w + z.res; p.xn = w + z.xn; p.xs = w + z.xs; p.zs = w + z.zs; p.ys = w + z.ys; p.xp = w + z.xp;
  p.op = w + z.op;
  printf("nt %d slices %d smem %d workspace %lld\n", z.nt, z.S, z.smem, (long long)z.total);
  if (c.dtype == 1) launches<__nv_bfloat16>(c, p, z, p.sync);
  else launches<__half>(c, p, z, p.sync);
  return 0;
}
