// Host side shared by the two whole-model decode step launches: the checks of what every launch
// takes and the StepModel filled from it.
#pragma once
#include "common.cuh"

namespace gm_step {

inline void fill_model(StepModel& p, const char* name, const torch::Tensor& layers, const torch::Tensor& ids,
                       const torch::Tensor& emb, const torch::Tensor& norm_f, const torch::Tensor& head,
                       const torch::Tensor& logits, const torch::Tensor& sync, int64_t E, int64_t R, int64_t N,
                       int64_t W, double eps, bool res_fp32, bool ad_fp32,
                       const c10::optional<torch::Tensor>& times) {
  TORCH_CHECK(layers.is_cuda() && layers.scalar_type() == torch::kInt64 && layers.dim() == 2 &&
                  layers.size(1) == kLayerFields && layers.is_contiguous(),
              name, ": layers must be a contiguous (n_layer, 14) int64 CUDA tensor");
  TORCH_CHECK(ids.is_cuda() && ids.scalar_type() == torch::kInt64 && ids.dim() == 1 && ids.is_contiguous(),
              name, ": ids must be a contiguous 1-D int64 CUDA tensor");
  TORCH_CHECK(emb.dim() == 2 && head.dim() == 2 && emb.size(1) == head.size(1) && emb.is_contiguous() &&
                  head.is_contiguous(),
              name, ": emb and head must be contiguous (V, D)");
  TORCH_CHECK(W >= 1 && W <= 4, name, ": d_conv must be 1..4");
  TORCH_CHECK(logits.size(0) == ids.size(0) && logits.size(1) == head.size(0) && logits.is_contiguous() &&
                  logits.scalar_type() == emb.scalar_type(),
              name, ": logits shape");
  TORCH_CHECK(sync.scalar_type() == torch::kInt32 && sync.numel() >= 3, name, ": sync words");
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
  p.ad_fp32 = ad_fp32;
  p.sync = reinterpret_cast<unsigned*>(sync.data_ptr<int32_t>());
  p.times = nullptr;
  if (times.has_value() && times->numel() > 0) {
    TORCH_CHECK(times->scalar_type() == torch::kInt64 && times->numel() >= 8 * p.n_layer + 2, name,
                ": times must hold 8 n_layer + 2 int64");
    p.times = reinterpret_cast<unsigned long long*>(times->data_ptr<int64_t>());
  }
}

}  // namespace gm_step
