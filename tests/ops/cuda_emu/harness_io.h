// Shared parts of the emulation harnesses: raw tensor files in and out, the case's settings, and
// one launch of a kernel as blocks x 512 OS threads.
#pragma once
#include <pthread.h>

#include <fstream>
#include <functional>
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

// cfg.txt: "n_layer b D E R N W V eps res_fp32 ad_fp32 dtype blocks launches" (dtype 0 fp16, 1 bf16,
// 2 fp32)
struct Case {
  int n_layer, b, D, E, R, N, W, V, res_fp32, ad_fp32, dtype, G, launches;
  float eps;
  std::vector<LayerPtrs> layers;
  const int64_t* ids;
  const void *emb, *norm_f, *head;
  int elem() const { return dtype == 2 ? 4 : 2; }
};

static Case read_case() {
  Case c;
  std::ifstream f(dir + "/cfg.txt");
  f >> c.n_layer >> c.b >> c.D >> c.E >> c.R >> c.N >> c.W >> c.V >> c.eps >> c.res_fp32 >> c.ad_fp32 >> c.dtype >>
      c.G >> c.launches;
  if (!f) {
    fprintf(stderr, "bad %s/cfg.txt\n", dir.c_str());
    exit(2);
  }
  c.layers.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    auto P = [&](const char* n, bool optional = false) {
      return heap_copy(load("L" + std::to_string(l) + "_" + n + ".bin", optional));
    };
    LayerPtrs& L = c.layers[l];
    L.norm_w = P("norm_w"); L.in_w = P("in_w"); L.in_b = P("in_b", true); L.conv_w = P("conv_w");
    L.conv_b = P("conv_b", true); L.x_w = P("x_w"); L.dt_w = P("dt_w"); L.dt_b = P("dt_b");
    L.a_log = P("a_log"); L.skip_d = P("skip_d"); L.out_w = P("out_w"); L.out_b = P("out_b", true);
    L.conv_state = P("conv_state"); L.ssm_state = static_cast<float*>(P("ssm_state"));
  }
  c.ids = static_cast<const int64_t*>(heap_copy(load("ids.bin")));
  c.emb = heap_copy(load("emb.bin"));
  c.norm_f = heap_copy(load("norm_f.bin"));
  c.head = heap_copy(load("head.bin"));
  return c;
}

// ``body`` on G x 512 threads, each block with ``smem`` bytes of NaN-filled shared memory (and 4 KB
// after them for the kernel's statically declared shared variables).
static std::vector<char*> g_smem;
static size_t g_smem_bytes = 0;
static std::function<void()> g_body;

static void* thread_main(void* v) {
  const int i = static_cast<int>(reinterpret_cast<intptr_t>(v));
  threadIdx.x = i % kThreads;
  blockIdx.x = i / kThreads;
  t_smem = g_smem[blockIdx.x];
  t_static = t_smem + g_smem_bytes;
  g_body();
  return nullptr;
}

static void launch_blocks(int G, size_t smem, std::function<void()> body) {
  if (g_blocks == nullptr) {
    g_blocks = new BlockCtl[G];
    for (int g = 0; g < G; ++g) {
      g_blocks[g].bar = new std::barrier<>(kThreads);
      for (int k = 0; k < kWarps; ++k) g_blocks[g].warp_bar[k] = new std::barrier<>(32);
      g_smem.push_back(static_cast<char*>(malloc(smem + 4096)));
    }
    g_smem_bytes = (smem + 15) / 16 * 16;
  }
  for (int g = 0; g < G; ++g) memset(g_smem[g], 0xff, smem + 4096);
  gridDim.x = G;
  g_body = std::move(body);
  std::vector<pthread_t> th(G * kThreads);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 1 << 20);
  for (int i = 0; i < G * kThreads; ++i)
    if (pthread_create(&th[i], &attr, thread_main, reinterpret_cast<void*>(static_cast<intptr_t>(i)))) {
      perror("pthread_create");
      exit(1);
    }
  for (auto& t : th) pthread_join(t, nullptr);
}

// The StepModel part of a kernel's parameters from the case: tensors, shape, NaN-filled logits, zeroed
// sync words, no timestamps.
static void fill_model(StepModel& p, const Case& c) {
  p.layers = c.layers.data();
  p.n_layer = c.n_layer;
  p.ids = c.ids;
  p.emb = c.emb;
  p.norm_f = c.norm_f;
  p.head = c.head;
  const size_t logit_bytes = (size_t)c.b * c.V * c.elem();
  p.logits = malloc(logit_bytes);
  memset(p.logits, 0xff, logit_bytes);
  p.b = c.b; p.D = c.D; p.E = c.E; p.R = c.R; p.N = c.N; p.W = c.W; p.V = c.V;
  p.eps = c.eps;
  p.res_fp32 = c.res_fp32;
  p.ad_fp32 = c.ad_fp32;
  p.sync = static_cast<unsigned*>(calloc(3, 4));
  p.times = nullptr;
}

static void save_outputs(const Case& c, int launch, const void* logits) {
  const std::string s = std::to_string(launch);
  save("out_logits_" + s + ".bin", logits, (size_t)c.b * c.V * c.elem());
  for (int l = 0; l < c.n_layer; ++l) {
    save("out_conv_" + s + "_" + std::to_string(l) + ".bin", c.layers[l].conv_state,
         (size_t)c.b * c.E * (c.W - 1) * c.elem());
    save("out_ssm_" + s + "_" + std::to_string(l) + ".bin", c.layers[l].ssm_state, (size_t)c.b * c.E * c.N * 4);
  }
}
