"""The whole-model decode kernels (csrc/model_step: model_step_mma.cu for batch 5-64 on the tensor
cores, model_step.cu for batch 1-4) run on the CPU, against the layered decode step of the same model.

Their source is compiled as host C++ (tests/ops/cuda_emu): every CUDA thread an OS thread, the block's
barriers real barriers, the grid barrier the kernel's own atomic counter, mma.sync computed from the
PTX ISA's operand layout, cp.async a copy. Only those device primitives are replaced (each rewrite
below must match the source exactly once); the index math, the work splits, the shared-memory
layout, the sizing (``sizes``), the synchronisation and the rounding are the kernel's own. The
workspace and shared memory start as NaN, so a value read before it is written shows up. A few
blocks instead of one per SM make every "more tasks than blocks" loop run.

What this cannot show: the GPU's memory model (L1 / L2 coherence, cp.async asynchrony), the tensor
cores themselves and the speed; tests/gpu/test_model_step_gpu.py runs the kernels on a GPU.
Needs g++ with C++20 and the CUDA toolkit's headers (cuda_fp16.h); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from genomamba import MambaConfig, MambaLM
from genomamba.ops._sources import csrc_dir

EMU = Path(__file__).parent / "cuda_emu"


def _cuda_include() -> Path | None:
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            return Path(root) / "include"
    return None


def _rewrite(src: str, pairs) -> str:
    for old, new in pairs:
        assert src.count(old) == 1, f"the emulation's rewrite no longer matches the kernel source: {old!r}"
        src = src.replace(old, new)
    return src


def host_sources(out: Path) -> None:
    """common_emu.cuh, kernel.inc and kernel_small.inc: the kernels' sources with the device-only
    primitives replaced."""
    common = (csrc_dir("model_step") / "common.cuh").read_text()
    common = _rewrite(common, [
        ("#include <torch/extension.h>\n", ""),
        ("#include <c10/cuda/CUDAGuard.h>\n", ""),
        ("#include <c10/cuda/CUDAStream.h>\n", ""),
        ('asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");',
         "v = emu_load_acquire(p);"),
        ('asm volatile("prefetch.global.L2 [%0];" ::"l"(p));', "(void)p;"),
        ('asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));', "t = 0;"),
    ])
    kernel = (csrc_dir("model_step") / "model_step_mma.cu").read_text()
    start, end = kernel.index("template <> struct Mma<__half> {"), kernel.index("// One k16 step")
    kernel = kernel[:start] + kernel[end:]
    kernel = kernel[:kernel.index("int sm_count(int dev)")] + "}  // namespace\n"
    kernel = _rewrite(kernel, [
        ('#include "common.cuh"', '#include "common_emu.cuh"'),
        ("template <typename T> struct Mma;", '#include "mma.h"'),
        ("  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));\n"
         '  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");',
         "  memcpy(dst, src, 16);"),
        ('asm volatile("cp.async.commit_group;\\ncp.async.wait_group 0;" ::: "memory");', ""),
        ("extern __shared__ __align__(16) char smem[];", "char* smem = t_smem;"),
    ])
    small = (csrc_dir("model_step") / "model_step.cu").read_text()
    small = small[:small.index("template <typename T, int BB>\nvoid launch(")] + "}  // namespace\n"
    small = _rewrite(small, [
        ('#include "common.cuh"', '#include "common_emu.cuh"'),
        ("__shared__ float part[kWarps][BB];",
         "float (&part)[kWarps][BB] = *reinterpret_cast<float (*)[kWarps][BB]>(t_static);"),
        ("extern __shared__ float smem[];", "float* smem = reinterpret_cast<float*>(t_smem);"),
    ])
    for name, text in (("common_emu.cuh", common), ("kernel.inc", kernel), ("kernel_small.inc", small)):
        assert "asm" not in text.replace("#include", ""), f"{name}: device assembly left in the host build"
        (out / name).write_text(text)


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory) -> dict:
    """{"mma": the tensor-core kernel's harness, "small": the batch 1-4 kernel's}, built once."""
    include = _cuda_include()
    cxx = shutil.which("g++")
    if include is None or cxx is None:
        pytest.skip("needs g++ and the CUDA toolkit's headers (cuda_fp16.h)")
    out = tmp_path_factory.mktemp("cuda_emu")
    host_sources(out)
    built = {}
    for kind, main in (("mma", "harness.cpp"), ("small", "harness_small.cpp")):
        exe = out / f"harness_{kind}"
        res = subprocess.run([cxx, "-std=c++20", "-O2", "-pthread", f"-I{out}", f"-I{EMU}", f"-I{include}",
                              str(EMU / main), "-o", str(exe)], capture_output=True, text=True, timeout=600)
        if res.returncode != 0 and "barrier" in res.stderr and "No such file" in res.stderr:
            pytest.skip("the C++ library has no <barrier>")
        assert res.returncode == 0, res.stderr[-4000:]
        built[kind] = exe
    return built


def make_model(dtype, seed=0, **cfg) -> MambaLM:
    """A model built in ``dtype`` (A_log and D stay float32, as a half-precision model keeps them) with
    every bias nonzero and D varied, so every term of the step matters."""
    torch.manual_seed(seed)
    m = MambaLM(MambaConfig(**cfg), dtype=dtype).eval()
    with torch.no_grad():
        m.backbone.embedding.weight.mul_(3)
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


def _raw(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous()
    return t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()


def write_case(folder: Path, m: MambaLM, ids: torch.Tensor, cache, blocks: int, launches: int) -> None:
    bb, cfg = m.backbone, m.config
    mx = bb.layers[0].mixer
    ad = mx.A_log.dtype
    for i, (layer, c) in enumerate(zip(bb.layers, cache.layers)):
        x = layer.mixer
        fields = {"norm_w": layer.norm.weight, "in_w": x.in_proj.weight, "in_b": x.in_proj.bias,
                  "conv_w": x.conv1d.weight.reshape(x.d_inner, -1), "conv_b": x.conv1d.bias, "x_w": x.x_proj.weight,
                  "dt_w": x.dt_proj.weight, "dt_b": x.dt_proj.bias, "a_log": x.A_log, "skip_d": x.D,
                  "out_w": x.out_proj.weight, "out_b": x.out_proj.bias, "conv_state": c.conv_state,
                  "ssm_state": c.ssm_state}
        for name, t in fields.items():
            if t is not None:
                (folder / f"L{i}_{name}.bin").write_bytes(_raw(t))
    (folder / "emb.bin").write_bytes(_raw(bb.embedding.weight))
    (folder / "norm_f.bin").write_bytes(_raw(bb.norm_f.weight))
    (folder / "head.bin").write_bytes(_raw(m.lm_head.weight))
    (folder / "ids.bin").write_bytes(ids.to(torch.int64).numpy().tobytes())
    vocab = m.lm_head.weight.shape[0]
    (folder / "cfg.txt").write_text(
        f"{cfg.n_layer} {ids.numel()} {cfg.d_model} {mx.d_inner} {mx.dt_rank} {mx.d_state} {mx.d_conv} {vocab} "
        f"{bb.norm_f.eps} {int(cfg.residual_in_fp32)} {int(ad == torch.float32)} "
        f"{DTYPE_CODES[bb.embedding.weight.dtype]} {blocks} {launches}\n")


DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}


def read(path: Path, dtype, shape) -> torch.Tensor:
    raw = np.fromfile(path, dtype=np.int16 if dtype == torch.bfloat16 else
                      (np.float16 if dtype == torch.float16 else np.float32))
    t = torch.from_numpy(raw.copy())
    if dtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    return t.float().reshape(shape)


CASES = {
    # batch 5 and 16: 16-row specialisation; 2 blocks for 8 channel tiles, in_proj slices left empty
    "b5_fp16": dict(dtype=torch.float16, batch=5, blocks=2, cfg=dict(d_model=64, n_layer=2, vocab_size=50)),
    "b16_bf16_bias": dict(dtype=torch.bfloat16, batch=16, blocks=3,
                          cfg=dict(d_model=64, n_layer=2, vocab_size=37, bias=True, d_conv=3, d_state=8)),
    # 32-row specialisation, residual in the model dtype, d_conv 2, conv without bias
    "b20_fp16_halfres": dict(dtype=torch.float16, batch=20, blocks=5,
                             cfg=dict(d_model=96, n_layer=2, vocab_size=77, residual_in_fp32=False, d_conv=2,
                                      conv_bias=False)),
    # 64-row specialisation, x_proj wider than one row tile (dt_rank 40 + 2 x 16), A_log and D in bf16
    "b40_bf16_converted": dict(dtype=torch.bfloat16, batch=40, blocks=4, convert=True,
                               cfg=dict(d_model=64, n_layer=1, vocab_size=29, dt_rank=40)),
    # d_model 256 on 3 blocks: out_proj in one slice of 16 chunks (every quarter of the block busy,
    # several rounds of the weight double-buffer), more channel tiles than blocks
    "b36_fp16_wide": dict(dtype=torch.float16, batch=36, blocks=3, cfg=dict(d_model=256, n_layer=1, vocab_size=40)),
    # phase C reading dt_proj and A_log from global memory: its channels' rows (512 of them) do not fit
    # in the shared memory sized for the products at 16 rows; everywhere else they are staged
    "b5_fp16_d256_unstaged": dict(dtype=torch.float16, batch=5, blocks=2,
                                  cfg=dict(d_model=256, n_layer=1, vocab_size=40)),
    # phase C copying its rows as they are (dt_rank 8, d_state 8: the loop over states), 1.5 rows of
    # pairs a block, so the channels of every other block wrap past d_inner
    "b9_fp16_d128_wrap": dict(dtype=torch.float16, batch=9, blocks=6,
                              cfg=dict(d_model=128, n_layer=2, vocab_size=33, d_state=8)),
    # a layer of the 130M model (d_model 768, d_inner 1536, dt_rank 48, five x_proj row tiles) at batch
    # 64: the specialisation `genomamba bench generate` times, on 4 blocks (24 channel tiles each)
    "b64_130m_layer": dict(dtype=torch.float16, batch=64, blocks=4, cfg=dict(d_model=768, n_layer=1, vocab_size=64)),
}


SMALL_CASES = {
    # the batch 1-4 kernel: one row, four rows (its two specialisations), float32 and half precision
    "b1_fp32": dict(dtype=torch.float32, batch=1, blocks=3, cfg=dict(d_model=64, n_layer=2, vocab_size=50)),
    "b3_fp16_bias": dict(dtype=torch.float16, batch=3, blocks=4,
                         cfg=dict(d_model=40, n_layer=2, vocab_size=37, d_state=8, d_conv=2, dt_rank=5, bias=True,
                                  conv_bias=False, residual_in_fp32=False)),
    "b4_bf16": dict(dtype=torch.bfloat16, batch=4, blocks=2, cfg=dict(d_model=64, n_layer=2, vocab_size=29,
                                                                       d_state=32, d_conv=3)),
}


# the cases whose phase C copies its channels' dt_proj and A_log rows as they are (the rest write
# them one element at a time, or read them from global memory)
COPIED = {"b40_bf16_converted", "b36_fp16_wide", "b9_fp16_d128_wrap"}


def copies_rows(m: MambaLM, b: int, blocks: int, smem: int) -> bool:
    """Whether block 0's phase C takes the copied path (the kernel's test, for its first block's pairs)."""
    mx = m.backbone.layers[0].mixer
    E, R, N = mx.d_inner, mx.dt_rank, mx.d_state
    X16 = -(-(R + 2 * N) // 16) * 16
    per = -(-(b * E) // blocks)
    nr = (min(per, b * E) - 1) // E + 1
    run, slots = nr * X16, min(per, E)
    dbytes, abytes = R * mx.dt_proj.weight.element_size(), N * mx.A_log.element_size()

    def stride(n):  # an odd number of 16-byte units
        return (n // 16 | 1) * 16
    need = -(-run * 4 // 16) * 16 + slots * (stride(dbytes) + stride(abytes)) + run * 4
    return dbytes % 16 == 0 and abytes % 16 == 0 and need <= smem


@pytest.mark.parametrize("name", list(CASES) + list(SMALL_CASES))
@torch.no_grad()
def test_emulated_kernel_equals_the_layered_step(name, harnesses, tmp_path):
    case = CASES.get(name) or SMALL_CASES[name]
    harness = harnesses["mma" if name in CASES else "small"]
    dtype, b = case["dtype"], case["batch"]
    if case.get("convert"):
        m = make_model(torch.float32, **case["cfg"]).to(dtype)
    else:
        m = make_model(dtype, **case["cfg"])
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, m.config.vocab_size, (b,), generator=g)
    cache = m.allocate_cache(b)
    for c in cache.layers:
        c.conv_state.copy_(torch.randn(c.conv_state.shape, generator=g))
        c.ssm_state.copy_(torch.randn(c.ssm_state.shape, generator=g))
    launches = 2  # the second starts from the states the first left (and the other barrier counter)
    write_case(tmp_path, m, ids, cache, case["blocks"], launches)
    res = subprocess.run([str(harness), str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "launch 1: sync words 2 " in res.stdout, res.stdout  # the epoch moved on once per launch
    if name in CASES:
        smem = int(res.stdout.split(" smem ")[1].split()[0])
        assert copies_rows(m, b, case["blocks"], smem) == (name in COPIED), name
    vocab = m.lm_head.weight.shape[0]
    for launch in range(launches):
        want = m.step(ids, cache).float()  # the layered step, on the CPU
        got = read(tmp_path / f"out_logits_{launch}.bin", dtype, (b, vocab))
        assert not got.isnan().any(), f"launch {launch}: NaN logits (a value read before it was written)"
        scale = want.abs().max() + 1
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        assert (got - want).abs().max() <= tol * scale, (launch, (got - want).abs().max().item())
        for i, c in enumerate(cache.layers):
            conv = read(tmp_path / f"out_conv_{launch}_{i}.bin", dtype, c.conv_state.shape)
            ssm = read(tmp_path / f"out_ssm_{launch}_{i}.bin", torch.float32, c.ssm_state.shape)
            ref_conv, ref_ssm = c.conv_state.float(), c.ssm_state
            assert (conv - ref_conv).abs().max() <= tol * (ref_conv.abs().max() + 1), (launch, i)
            assert (ssm - ref_ssm).abs().max() <= tol * (ref_ssm.abs().max() + 1), (launch, i)


def test_rewrites_leave_the_kernel_logic_alone(tmp_path):
    """Only the device primitives differ between the kernels' sources and their host builds."""
    host_sources(tmp_path)
    src = (csrc_dir("model_step") / "model_step_mma.cu").read_text()
    for piece in ("__device__ void phase_in_proj(", "__device__ void phase_scan(", "__device__ void phase_out_proj(",
                  "__device__ void phase_norm(", "__device__ void phase_head(", "Sizes sizes("):
        body = src[src.index(piece):].split("\n}\n", 1)[0]
        assert body in (tmp_path / "kernel.inc").read_text(), piece
    src = (csrc_dir("model_step") / "model_step.cu").read_text()
    piece = src[src.index("__global__ void __launch_bounds__(kThreads, 1) model_step_kernel("):]
    piece = piece[piece.index("extern __shared__ float smem[];\n") + 32:].split("\n}\n", 1)[0]  # after smem
    assert len(piece) > 2000 and piece in (tmp_path / "kernel_small.inc").read_text()
