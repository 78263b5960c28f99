// Python bindings of the selective-scan extension: v1 forward (selective_scan_fwd.cu) and the v2
// forward/backward (selective_scan_v2.cu), one module so one JIT build serves both for A/B runs.
#include <torch/extension.h>

std::vector<torch::Tensor> selective_scan_fwd(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                              torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                              c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> bias,
                                              bool softplus, c10::optional<torch::Tensor> h0,
                                              int64_t target_threads, int64_t npt);
std::vector<torch::Tensor> selective_scan_fwd_v2(torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                                 torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                                 c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> bias,
                                                 bool softplus, c10::optional<torch::Tensor> h0, int64_t kitems,
                                                 int64_t warps, int64_t seg_tiles, bool save, int64_t build,
                                                 c10::optional<torch::Tensor> out_into);
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
                                                 c10::optional<torch::Tensor> out_into);
namespace ssv2 {  // run-time settings of the v2 kernels (selective_scan_v2.cu)
void set_state_exit(bool on);
void set_prefetch(int64_t bwd, int64_t fix, int64_t l2);
void set_bc_reduce(int64_t mode);
}  // namespace ssv2

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_fwd", &selective_scan_fwd, "selective scan forward, v1 (CUDA)");
  m.def("selective_scan_fwd_v2", &selective_scan_fwd_v2, "selective scan forward, v2 (CUDA)");
  m.def("selective_scan_bwd_v2", &selective_scan_bwd_v2, "selective scan backward, v2 (CUDA)");
  m.def("set_state_exit", &ssv2::set_state_exit, "v2 fix-up and summaries: drop each state once its decay is complete");
  m.def("set_bc_reduce", &ssv2::set_bc_reduce, "v2 backward: dB/dC partials summed by torch (0) or in one pass into the output dtype (1)");
  m.def("set_prefetch", &ssv2::set_prefetch, "v2: B/C rows copied this many states ahead (main backward, fix-up and summaries); L2 hints for the next tile (0 none, 1 every PF build, 2 the backward only)");
}
