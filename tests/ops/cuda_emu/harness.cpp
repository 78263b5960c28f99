// Runs the tensor-core decode kernel (its source rewritten for the host into kernel.inc) on the CPU.
// Usage: harness DIR. DIR/cfg.txt holds "n_layer b D E R N W V eps res_fp32 ad_fp32 bf16 blocks
// launches"; DIR holds each tensor as raw bytes (L<layer>_<field>.bin in the order of struct
// LayerPtrs, emb.bin, norm_f.bin, head.bin, ids.bin). After each launch the logits and every layer's
// states are written back (out_logits_<launch>.bin, out_conv_<launch>_<layer>.bin,
// out_ssm_<launch>_<layer>.bin). Workspace and shared memory start as NaN, so anything read before it
// is written shows in the results.
#include "emu.h"
thread_local Dim threadIdx, blockIdx;
Dim gridDim;
thread_local char* t_smem;
BlockCtl* g_blocks;
#include "kernel.inc"

#include <pthread.h>

#include <fstream>
#include <string>

static std::string dir;

static std::vector<char> load(const std::string& name, bool optional = false) {
  std::ifstream f(dir + "/" + name, std::ios::binary);
  if (!f) {
    if (optional) return {};
    fprintf(stderr, "missing %s\n", name.c_str());
    exit(1);
  }
  return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

static void save(const std::string& name, const void* p, size_t n) {
  std::ofstream f(dir + "/" + name, std::ios::binary);
  f.write(static_cast<const char*>(p), n);
}

static void* heap_copy(const std::vector<char>& v) {
  if (v.empty()) return nullptr;
  void* p = nullptr;
  if (posix_memalign(&p, 64, v.size())) abort();
  memcpy(p, v.data(), v.size());
  return p;
}

struct Launch {
  MmaParams p;
  int smem, nt, bf16;
};
static Launch g_launch;
static std::vector<char*> g_smem;
struct Arg {
  int block, thread;
};

template <typename T, int NT> static void run_thread(const Arg& a) {
  threadIdx.x = a.thread;
  blockIdx.x = a.block;
  t_smem = g_smem[a.block];
  model_step_mma_kernel<T, NT>(g_launch.p, g_launch.smem);
}

static void* thread_main(void* v) {
  const Arg a = *static_cast<Arg*>(v);
  const int nt = g_launch.nt;
  if (g_launch.bf16) {
    if (nt == 2) run_thread<__nv_bfloat16, 2>(a);
    else if (nt == 4) run_thread<__nv_bfloat16, 4>(a);
    else run_thread<__nv_bfloat16, 8>(a);
  } else {
    if (nt == 2) run_thread<__half, 2>(a);
    else if (nt == 4) run_thread<__half, 4>(a);
    else run_thread<__half, 8>(a);
  }
  return nullptr;
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: harness DIR\n");
    return 2;
  }
  dir = argv[1];
  int n_layer, b, D, E, R, N, W, V, res_fp32, ad_fp32, bf16, G, launches;
  float eps;
  {
    std::ifstream f(dir + "/cfg.txt");
    f >> n_layer >> b >> D >> E >> R >> N >> W >> V >> eps >> res_fp32 >> ad_fp32 >> bf16 >> G >> launches;
    if (!f) {
      fprintf(stderr, "bad %s/cfg.txt\n", dir.c_str());
      return 2;
    }
  }
  std::vector<LayerPtrs> layers(n_layer);
  for (int l = 0; l < n_layer; ++l) {
    auto P = [&](const char* n, bool optional = false) {
      return heap_copy(load("L" + std::to_string(l) + "_" + n + ".bin", optional));
    };
    LayerPtrs& L = layers[l];
    L.norm_w = P("norm_w"); L.in_w = P("in_w"); L.in_b = P("in_b", true); L.conv_w = P("conv_w");
    L.conv_b = P("conv_b", true); L.x_w = P("x_w"); L.dt_w = P("dt_w"); L.dt_b = P("dt_b");
    L.a_log = P("a_log"); L.skip_d = P("skip_d"); L.out_w = P("out_w"); L.out_b = P("out_b", true);
    L.conv_state = P("conv_state"); L.ssm_state = static_cast<float*>(P("ssm_state"));
  }
  MmaParams p{};
  p.layers = layers.data();
  p.n_layer = n_layer;
  p.ids = static_cast<const int64_t*>(heap_copy(load("ids.bin")));
  p.emb = heap_copy(load("emb.bin"));
  p.norm_f = heap_copy(load("norm_f.bin"));
  p.head = heap_copy(load("head.bin"));
  const size_t logit_bytes = (size_t)b * V * 2;
  p.logits = malloc(logit_bytes);
  memset(p.logits, 0xff, logit_bytes);
  p.b = b; p.D = D; p.E = E; p.R = R; p.N = N; p.W = W; p.V = V;
  p.XM = (R + 2 * N + 15) / 16;
  const Sizes z = sizes(b, D, E, R, N, G);  // the launch's own sizing, for G blocks
  p.S = z.S;
  p.eps = eps;
  p.res_fp32 = res_fp32;
  p.ad_fp32 = ad_fp32;
  float* w = static_cast<float*>(malloc(z.total * 4));
  memset(w, 0xff, z.total * 4);
  p.res = w + z.res; p.xn = w + z.xn; p.xs = w + z.xs; p.zs = w + z.zs; p.ys = w + z.ys; p.xp = w + z.xp;
  p.op = w + z.op;
  unsigned* sync = static_cast<unsigned*>(calloc(3, 4));
  p.sync = sync;
  p.times = nullptr;
  printf("nt %d slices %d smem %d workspace %lld\n", z.nt, z.S, z.smem, (long long)z.total);
  g_launch.p = p;
  g_launch.smem = z.smem;
  g_launch.nt = z.nt;
  g_launch.bf16 = bf16;
  gridDim.x = G;
  g_blocks = new BlockCtl[G];
  for (int g = 0; g < G; ++g) {
    g_blocks[g].bar = new std::barrier<>(kThreads);
    for (int k = 0; k < kWarps; ++k) g_blocks[g].warp_bar[k] = new std::barrier<>(32);
    g_smem.push_back(static_cast<char*>(malloc(z.smem)));
  }
  for (int launch = 0; launch < launches; ++launch) {
    for (int g = 0; g < G; ++g) memset(g_smem[g], 0xff, z.smem);
    std::vector<pthread_t> th(G * kThreads);
    std::vector<Arg> args(G * kThreads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    for (int i = 0; i < G * kThreads; ++i) {
      args[i] = {i / kThreads, i % kThreads};
      if (pthread_create(&th[i], &attr, thread_main, &args[i])) {
        perror("pthread_create");
        return 1;
      }
    }
    for (auto& t : th) pthread_join(t, nullptr);
    printf("launch %d: sync words %u %u %u\n", launch, sync[0], sync[1], sync[2]);
    const std::string s = std::to_string(launch);
    save("out_logits_" + s + ".bin", p.logits, logit_bytes);
    for (int l = 0; l < n_layer; ++l) {
      save("out_conv_" + s + "_" + std::to_string(l) + ".bin", layers[l].conv_state, (size_t)b * E * (W - 1) * 2);
      save("out_ssm_" + s + "_" + std::to_string(l) + ".bin", layers[l].ssm_state, (size_t)b * E * N * 4);
    }
  }
  return 0;
}
