"""CUDA C++ backend (csrc/selective_scan): JIT-built on first GPU use, for the local GPU only.

Two forward kernels and one backward live in one extension:

* ``v1`` (selective_scan_fwd.cu): the first forward, verified on an H100 (tests/gpu).
* ``v2`` (selective_scan_v2.cu): forward parallel along l inside a warp, segments across blocks
  for long l, and the CUDA backward (recompute + reverse scan, deterministic dB/dC).

Nothing is selected on trust. After a build, a self-test runs every kernel against the fp64 oracle
on this GPU (in a child process, so a kernel that faults cannot poison this process's CUDA
context) and records pass/fail per part in the build folder: ``STATUS["v1"|"v2"|"bwd"]``. The
forward uses ``v2`` only if it passed (else ``v1``); gradients use the CUDA backward only if both
``v2`` and ``bwd`` passed, otherwise the call goes to Triton (forward and backward) as before.
``GENOMAMBA_CUDA_UNVERIFIED=1`` allows forcing a part that did not pass (debugging only).

Calls with mixed input dtypes, fp64 or n > 64 are handed to Triton. ``available()`` is False,
never raising, where there is no CUDA device, no nvcc, the build fails, or no forward passed its
self-test (one-line notice), so the dispatcher falls through to Triton and then torch.

The extension is cached under ``$GENOMAMBA_CACHE`` (default ``~/.cache/genomamba``) in a folder keyed
by a hash of the sources, the torch version, the CUDA version and the GPU architecture, so a
changed source or toolchain rebuilds (and re-tests) and an unchanged one loads in a second.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from genomamba.ops._sources import csrc_dir

_SRC_DIR = csrc_dir("selective_scan")
_REPO = Path(__file__).resolve().parents[2]
_SOURCES = ["selective_scan_fwd.cu", "selective_scan_v2.cu", "bindings.cpp"]
_CHILD_ENV = "GENOMAMBA_CUDA_SELFTEST_CHILD"
_ext = None
_failed: str | None = None
_build_dir: Path | None = None
# self-test outcome per part: True (passed), or a string saying why not; filled by _build()
STATUS: dict[str, object] = {"v1": "not built", "v2": "not built", "bwd": "not built", "lean": "not built"}


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# v1: npt = states per thread (4 or 16), target_threads = threads to aim for when cutting l into
# chunks (defaults: fastest of the v1 variants timed on an H100 on 2026-11-23, 0.89 ms on row 1).
# v2: kitems = tokens per lane (8 or 16; a tile is 32 * kitems tokens), warps = channels per block;
# *_train: the same for forward + backward (the backward needs the forward's tile size, and at
# kitems = 16 it needs ~200 registers, so training runs both at 8 until measured otherwise);
# target_warps = warps to aim for when cutting l into segments (0: 64 per SM of this GPU);
# min_seg_tokens: shortest segment (the fix-up / summary passes cost up to ~2-3K tokens per
# segment for Mamba's usual delta, so shorter segments would spend a large share on them).
CONFIG = {
    "variant": os.environ.get("GENOMAMBA_CUDA_VARIANT", "auto"),  # auto | v1 | v2
    "npt": _env_int("GENOMAMBA_CUDA_NPT", 4),
    "target_threads": _env_int("GENOMAMBA_CUDA_TARGET_THREADS", 96 * 1024),
    "kitems": _env_int("GENOMAMBA_CUDA_KITEMS", 16),
    "warps": _env_int("GENOMAMBA_CUDA_WARPS", 4),
    "kitems_train": _env_int("GENOMAMBA_CUDA_KITEMS_TRAIN", 8),
    "warps_fwd_train": _env_int("GENOMAMBA_CUDA_WARPS_FWD_TRAIN", 4),
    "warps_bwd": _env_int("GENOMAMBA_CUDA_WARPS_BWD", 8),
    # blocks per SM promised to ptxas for the backward: 2 -> at most 128 registers (16 warps/SM,
    # ~0.1 KB spills at kitems 8), 1 -> ~190 registers, no spills, 8 warps/SM (sm_90 report)
    "bwd_min_blocks": _env_int("GENOMAMBA_CUDA_BWD_MIN_BLOCKS", 2),
    "target_warps": _env_int("GENOMAMBA_CUDA_TARGET_WARPS", 0),
    "min_seg_tokens": _env_int("GENOMAMBA_CUDA_MIN_SEG_TOKENS", 8192),
    "use_cuda_bwd": os.environ.get("GENOMAMBA_CUDA_BWD", "auto"),  # auto | off
    # the lean build of the v2 forward's main pass (fewer instructions per element, same results to
    # rounding; selective_scan_v2.cu, fwd_kernel<..., true>), used only if its self-test passed.
    # -1 (auto): lean except the fp32 inference forward, where H200 timing (gpu_verify, 2026-12-01)
    # found it slower (0.679 vs 0.608 ms; bf16 0.468 vs 0.527 ms; training 1-2 % faster in both);
    # 0: never; 1: always
    "fwd_lean": _env_int("GENOMAMBA_CUDA_FWD_LEAN", -1),
}


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").exists():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _build():
    global _ext, _failed, _build_dir
    if _ext is not None or _failed is not None:
        return _ext
    try:
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device")
        if torch.version.cuda is None:
            raise RuntimeError("torch was built without CUDA")
        if _nvcc() is None:
            raise RuntimeError("nvcc not found (set CUDA_HOME)")
        if not all((_SRC_DIR / s).exists() for s in _SOURCES):
            raise RuntimeError(f"sources missing under {_SRC_DIR}")
        major, minor = torch.cuda.get_device_capability()
        arch = f"{major}{minor}"
        h = hashlib.sha256()
        for s in _SOURCES:
            h.update((_SRC_DIR / s).read_bytes())
        h.update(f"{torch.__version__}|{torch.version.cuda}|sm_{arch}".encode())
        key = h.hexdigest()[:16]
        root = Path(os.environ.get("GENOMAMBA_CACHE", Path.home() / ".cache" / "genomamba"))
        _build_dir = root / "torch_ext" / f"selective_scan_{key}"
        _build_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.cpp_extension import load

        ext = load(
            name=f"genomamba_selective_scan_{key}",
            sources=[str(_SRC_DIR / s) for s in _SOURCES],
            build_directory=str(_build_dir),
            extra_cflags=["-O3"],
            # only the local architecture: a short build, and native code for this GPU
            extra_cuda_cflags=["-O3", "-lineinfo", f"-gencode=arch=compute_{arch},code=sm_{arch}"],
            verbose=False,
        )
        if os.environ.get(_CHILD_ENV):
            _ext = ext  # the child runs the self-test itself, in this process
            return _ext
        STATUS.update(_self_test_status(_build_dir))
        if STATUS["v1"] is not True and STATUS["v2"] is not True:
            raise RuntimeError(f"self-test failed: v1: {STATUS['v1']}; v2: {STATUS['v2']}")
        _ext = ext
        for part in ("v2", "bwd") + (("lean",) if CONFIG["fwd_lean"] else ()):  # -1 (auto) counts
            if STATUS.get(part) is not True:
                print(f"genomamba: CUDA {part} kernel not used ({STATUS[part]})", file=sys.stderr)
    except Exception as exc:  # no compiler / failed build / failed self-test: fall back, say so once
        _failed = f"{type(exc).__name__}: {exc}"
        print(f"genomamba: CUDA kernels unavailable ({_failed}); using Triton/torch", file=sys.stderr)
        _ext = None
    return _ext


# ----------------------------------------------------------------------------- self-test


def _self_test_status(build_dir: Path) -> dict:
    """Run the self-test once per build in a child process; cache its verdict in the build folder."""
    path = build_dir / "selftest.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except Exception:
            pass
    env = dict(os.environ)
    env[_CHILD_ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(_REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    code = f"from genomamba.ops.cuda import _self_test_child; _self_test_child({str(path)!r})"
    status = {k: "self-test did not run" for k in ("v1", "v2", "bwd", "lean")}
    try:
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        if path.exists():
            status = json.loads(path.read_text())
        if r.returncode != 0:
            # a part still "running" is the one that crashed the child: never selected
            why = f"self-test process exited {r.returncode}: {(r.stderr or '').strip()[-300:]}"
            status = {k: (why if v == "running" else v) for k, v in status.items()}
    except Exception as exc:
        status = {k: f"self-test process failed: {type(exc).__name__}: {exc}" for k in status}
    path.write_text(json.dumps(status, indent=1))
    return status


def _self_test_child(path: str) -> None:
    """Child-process entry: build (cached), test v1, v2 and the backward; write each verdict as it
    is known (a part left "running" crashed the process)."""
    ext = _build()
    status = {"v1": "not run", "v2": "not run", "bwd": "not run", "lean": "not run"}

    def save():
        Path(path).write_text(json.dumps(status, indent=1))

    for part, fn in (("v1", _test_v1), ("v2", _test_v2), ("bwd", _test_bwd), ("lean", _test_lean)):
        if part in ("bwd", "lean") and status["v2"] is not True:
            status[part] = "v2 forward did not pass"
            continue
        status[part] = "running"
        save()
        try:
            fn(ext)
            torch.cuda.synchronize()
            status[part] = True
        except Exception as exc:
            status[part] = f"{type(exc).__name__}: {exc}"[:500]
        save()


def _rel(x, y) -> float:
    return ((x.double() - y.double()).norm() / y.double().norm().clamp_min(1e-300)).item()


def _cases():
    # (b, d, n, l, dtype, groups): several segments/tiles, grouped B/C, odd n, half precision
    return (
        (2, 24, 16, 300, torch.float32, None),
        (1, 16, 5, 700, torch.float32, 2),
        (1, 32, 16, 257, torch.bfloat16, None),
        (2, 16, 16, 2100, torch.float32, None),
        (1, 24, 16, 1500, torch.float16, 3),
        # slow decays (delta ~ 0.002, |A| ~ 0.5): fix-up and summaries run whole segments, no early exit
        (1, 16, 16, 3000, torch.float32, None, True),
    )


def _inputs(b, d, n, l, dtype, groups, slow=False, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, device="cuda", generator=g).to(dtype)

    bc = (b, n, l) if groups is None else (b, groups, n, l)
    u, delta, z, B, C = r(b, d, l), r(b, d, l), r(b, d, l), r(*bc), r(*bc)
    A = -torch.rand(d, n, device="cuda", generator=g) - 0.5
    D, bias = torch.randn(d, device="cuda", generator=g), torch.randn(d, device="cuda", generator=g)
    if slow:
        delta, bias = (delta.float() * 0.1).to(dtype), bias * 0.1 - 6.0
    h0 = torch.randn(b, d, n, device="cuda", generator=g)
    return [u, delta, A, B, C, D, z, bias], h0


def _check(name, x, y, tol, where):
    err = _rel(x, y)
    if not err < tol:  # also catches NaN
        raise RuntimeError(f"{name} rel. error {err:.2e} > {tol:.0e} at {where}")


def _test_v1(ext) -> None:
    from genomamba.ops.reference import selective_scan_ref

    for case in _cases()[:3]:
        ins, h0 = _inputs(*case)
        rout, rst = selective_scan_ref(*[t.double() for t in ins], True, h0.double(), True)
        tol = 1e-4 if case[4] == torch.float32 else 2e-2
        for npt in (4, 16):  # 1024 target threads: several chunks, so chunk passing is checked
            out, st = ext.selective_scan_fwd(*ins, True, h0, 1024, npt)
            _check("v1 out", out, rout, tol, (case, npt))
            _check("v1 final_state", st, rst, tol, (case, npt))


def _test_v2(ext, lean: bool = False) -> None:
    from genomamba.ops.reference import selective_scan_ref

    for case in _cases():
        ins, h0 = _inputs(*case)
        ref = {
            True: selective_scan_ref(*[t.double() for t in ins], True, h0.double(), True),
            False: selective_scan_ref(*[t.double() for t in ins], True, None, True),
        }
        tol = 1e-4 if case[4] == torch.float32 else 2e-2
        # seg_tiles 1: every tile its own segment (combine + fix-up on every boundary); 1000: one
        for kitems, warps, seg_tiles in ((16, 4, 1000), (8, 4, 1), (16, 8, 1), (8, 3, 2)):
            for with_h0 in (True, False):
                h = h0 if with_h0 else None
                out, st, _ = ext.selective_scan_fwd_v2(*ins, True, h, kitems, warps, seg_tiles, True, lean)
                r_o, r_s = ref[with_h0]
                _check("v2 out", out, r_o, tol, (case, kitems, warps, seg_tiles, with_h0))
                _check("v2 final_state", st, r_s, tol, (case, kitems, warps, seg_tiles, with_h0))


def _test_lean(ext) -> None:
    """The lean forward: the v2 forward's cases, and a backward from its saved tile states."""
    _test_v2(ext, lean=True)
    _test_bwd(ext, lean=True)


def _test_bwd(ext, lean: bool = False) -> None:
    from genomamba.ops.reference import selective_scan_ref

    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    for case in _cases():
        ins, h0 = _inputs(*case)
        dtype = case[4]
        ref = [t.double().requires_grad_(True) for t in ins + [h0]]
        rout, rst = selective_scan_ref(*ref[:8], True, ref[8], True)
        g = torch.Generator(device="cuda").manual_seed(1)
        gout = torch.randn(rout.shape, device="cuda", generator=g).to(dtype)
        gst = torch.randn(rst.shape, device="cuda", generator=g)
        rgrads = torch.autograd.grad((rout, rst), ref, (gout.double(), gst.double()))
        tol = 1e-3 if dtype == torch.float32 else 3e-2
        configs = ((8, 4, 8, 1000, 2), (8, 4, 8, 1, 1), (8, 4, 8, 1, 2), (16, 4, 4, 2, 1), (8, 2, 3, 1, 2))
        if lean:
            configs = configs[:2]
        for kitems, wf, wb, seg_tiles, minb in configs:
            leaves = [t.detach().clone().requires_grad_(True) for t in ins + [h0]]
            runs = []
            saved = CONFIG["bwd_min_blocks"]
            CONFIG["bwd_min_blocks"] = minb
            try:
                for _ in range(2):
                    out, st = _v2_apply(*leaves[:8], True, leaves[8], kitems, wf, wb, seg_tiles, seg_tiles, lean)
                    runs.append(torch.autograd.grad((out, st), leaves, (gout, gst)))
            finally:
                CONFIG["bwd_min_blocks"] = saved
            where = (case, kitems, wf, wb, seg_tiles, minb)
            for nm, a, b_, r in zip(names, runs[0], runs[1], rgrads):
                _check(f"bwd d{nm}", a, r, tol, where)
                if not torch.equal(a, b_):
                    raise RuntimeError(f"bwd d{nm} differs between two runs at {where}")


def available() -> bool:
    try:
        return torch.cuda.is_available() and _build() is not None
    except Exception:
        return False


_noticed: set[str] = set()


def _unverified_ok() -> bool:
    return os.environ.get("GENOMAMBA_CUDA_UNVERIFIED", "") == "1"


def forward_variant() -> str:
    """The forward kernel a call would use now: CONFIG['variant'] if it passed its self-test."""
    want = CONFIG["variant"]
    if want == "auto":
        return "v2" if STATUS["v2"] is True else "v1"
    if want in ("v1", "v2") and (STATUS[want] is True or _unverified_ok()):
        return want
    other = "v1" if want == "v2" else "v2"
    if STATUS.get(other) is True:
        if want not in _noticed:
            _noticed.add(want)
            print(f"genomamba: CUDA variant {want!r} did not pass its self-test; using {other}", file=sys.stderr)
        return other
    raise RuntimeError(f"CUDA variant {want!r} is not verified on this GPU: {STATUS}")


def use_lean(dtype=None, training: bool = False) -> bool:
    """True if the v2 forward runs its lean build for inputs of ``dtype`` (None: any) in a training
    (saving) or inference forward: CONFIG['fwd_lean'] selects it (-1 auto: all but the fp32
    inference forward) and its self-test passed."""
    mode = CONFIG["fwd_lean"]
    if not mode or (mode < 0 and dtype == torch.float32 and not training):
        return False
    return STATUS.get("lean") is True or _unverified_ok()


def cuda_backward_enabled() -> bool:
    """True if gradients go through the CUDA backward (v2 forward and backward both verified)."""
    if CONFIG["use_cuda_bwd"] == "off" or CONFIG["variant"] == "v1":
        return False
    return (STATUS["v2"] is True and STATUS["bwd"] is True) or _unverified_ok()


def _seg_tiles(b: int, d: int, l: int, kitems: int) -> int:
    """Tiles per segment: enough segments that b*d*segments warps fill the GPU, none shorter
    than min_seg_tokens (the fix-up and summary passes cost up to a few thousand tokens each)."""
    tile = 32 * kitems
    ntiles = max(1, math.ceil(l / tile))
    target = CONFIG["target_warps"]
    if target <= 0:
        target = 64 * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    nseg = max(1, math.ceil(target / max(1, b * d)))
    nseg = min(nseg, max(1, l // max(tile, CONFIG["min_seg_tokens"])), ntiles, 65535)
    return math.ceil(ntiles / nseg)


# ----------------------------------------------------------------------------- torch.library ops


@torch.library.custom_op("genomamba::selective_scan_fwd_cuda", mutates_args=())
def _scan_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    out, final = _build().selective_scan_fwd(
        u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, CONFIG["target_threads"], CONFIG["npt"]
    )
    return out, final


@_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state):
    b, d, l = u.shape
    return u.new_empty((b, d, l)), u.new_empty((b, d, A.shape[1]), dtype=torch.float32)


@torch.library.custom_op("genomamba::selective_scan_v2_fwd_cuda", mutates_args=())
def _v2_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    initial_state: torch.Tensor | None,
    kitems: int,
    warps: int,
    warps_bwd: int,
    seg_tiles: int,
    seg_tiles_bwd: int,
    save: bool,
    lean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, final, tstate = _build().selective_scan_fwd_v2(
        u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, kitems, warps, seg_tiles, save, lean
    )
    return out, final, tstate


@_v2_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, kitems, warps, warps_bwd, seg_tiles, seg_tiles_bwd,
      save, lean=False):
    b, d, l = u.shape
    n = A.shape[1]
    ntiles = (l + 32 * kitems - 1) // (32 * kitems)
    ts = u.new_empty((b, d, ntiles, n + 1) if save else (0,), dtype=torch.float32)
    return u.new_empty((b, d, l)), u.new_empty((b, d, n), dtype=torch.float32), ts


@torch.library.custom_op("genomamba::selective_scan_v2_bwd_cuda", mutates_args=())
def _v2_bwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    softplus: bool,
    tstate: torch.Tensor,
    dout: torch.Tensor,
    dfinal: torch.Tensor | None,
    want_dh0: bool,
    kitems: int,
    warps: int,
    seg_tiles: int,
    min_blocks: int,
) -> list[torch.Tensor]:
    return list(
        _build().selective_scan_bwd_v2(
            u, delta, A, B, C, D, z, delta_bias, softplus, tstate, dout, dfinal, want_dh0, kitems, warps, seg_tiles,
            min_blocks,
        )
    )


@_v2_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, tstate, dout, dfinal, want_dh0, kitems, warps, seg_tiles,
      min_blocks):
    b, d, l = u.shape
    n = A.shape[1]
    f32 = dict(dtype=torch.float32)
    return [
        torch.empty_like(u),
        torch.empty_like(u),
        A.new_empty((d, n), **f32),
        torch.empty_like(B),
        torch.empty_like(C),
        u.new_empty((d,) if D is not None else (0,), **f32),
        u.new_empty((b, d, l) if z is not None else (0,)),
        u.new_empty((d,) if delta_bias is not None else (0,), **f32),
        u.new_empty((b, d, n) if want_dh0 else (0,), **f32),
    ]


def _v2_setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, bias, softplus, h0, kitems, warps, warps_bwd, seg_tiles, seg_tiles_bwd, save, _ = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, bias, output[2])
    ctx.softplus, ctx.kitems, ctx.warps_bwd, ctx.seg_tiles_bwd = softplus, kitems, warps_bwd, seg_tiles_bwd
    ctx.has_h0 = h0 is not None
    ctx.h0_dtype = h0.dtype if h0 is not None else None
    ctx.save = save


def _v2_backward(ctx, gout, gfinal, _gtstate):
    if not ctx.save:
        raise RuntimeError("genomamba: the v2 forward ran without saving states; no backward possible")
    u, delta, A, B, C, D, z, bias, tstate = ctx.saved_tensors
    b, d, l = u.shape
    gout = torch.zeros_like(u) if gout is None else gout.to(u.dtype)
    if gout.stride(-1) != 1:
        gout = gout.contiguous()
    seg_tiles = ctx.seg_tiles_bwd if ctx.seg_tiles_bwd > 0 else _seg_tiles(b, d, l, ctx.kitems)
    du, dd, dA, dB, dC, dD, dz, dbias, dh0 = _v2_bwd_op(
        u, delta, A, B, C, D, z, bias, ctx.softplus, tstate, gout, gfinal, ctx.has_h0, ctx.kitems,
        ctx.warps_bwd, seg_tiles, CONFIG["bwd_min_blocks"],
    )
    return (
        du,
        dd,
        dA.to(A.dtype),
        dB,
        dC,
        dD.to(D.dtype) if D is not None else None,
        dz if z is not None else None,
        dbias.to(bias.dtype) if bias is not None else None,
        None,
        dh0.to(ctx.h0_dtype) if ctx.has_h0 else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


_v2_fwd_op.register_autograd(_v2_backward, setup_context=_v2_setup_context)


def _v2_apply(
    u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, kitems, warps, warps_bwd, seg_tiles, seg_tiles_bwd=0,
    lean=None,
):
    """v2 forward (saving states when autograd will need them) with the CUDA backward attached;
    seg_tiles_bwd 0: the backward picks its own segments; lean None: as configured (use_lean())."""
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, final, _ = _v2_fwd_op(
        u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, kitems, warps, warps_bwd, seg_tiles,
        seg_tiles_bwd, save, use_lean(u.dtype, training=save) if lean is None else bool(lean),
    )
    return out, final


def _wants_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _needs_triton(u, delta, A, B, C, D, z, delta_bias, initial_state) -> bool:
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    if _wants_grad(tensors) and not cuda_backward_enabled():
        return True  # CUDA backward not verified on this GPU: Triton does forward and backward
    if any(t.dtype == torch.float64 for t in tensors) or A.shape[1] > 64:
        return True
    return any(t.dtype != u.dtype for t in (delta, B, C) + ((z,) if z is not None else ()))


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_final_state=False,
):
    """Arguments as :func:`genomamba.ops.selective_scan` (validated there)."""
    if _needs_triton(u, delta, A, B, C, D, z, delta_bias, initial_state):
        from genomamba.ops.triton.scan import selective_scan as tri

        return tri(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state)

    def unit(t):
        return t if t is None or t.stride(-1) == 1 else t.contiguous()

    args = (unit(u), unit(delta), A.float(), unit(B), unit(C), D, unit(z), delta_bias, bool(delta_softplus))
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    if _wants_grad(tensors):  # cuda_backward_enabled() holds here (else _needs_triton)
        kitems = CONFIG["kitems_train"]
        b, d, l = u.shape
        out, final = _v2_apply(
            *args, initial_state, kitems, CONFIG["warps_fwd_train"], CONFIG["warps_bwd"], _seg_tiles(b, d, l, kitems)
        )
    elif forward_variant() == "v2":
        kitems = CONFIG["kitems"]
        b, d, l = u.shape
        out, final, _ = _v2_fwd_op(
            *args, initial_state, kitems, CONFIG["warps"], CONFIG["warps_bwd"], _seg_tiles(b, d, l, kitems), 0, False,
            use_lean(u.dtype),
        )
    else:
        out, final = _scan_fwd_op(*args, initial_state)
    return (out, final) if return_final_state else out


__all__ = ["available", "selective_scan", "forward_variant", "cuda_backward_enabled", "use_lean", "STATUS", "CONFIG"]
