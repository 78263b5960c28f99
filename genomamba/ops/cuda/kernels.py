"""The CUDA scan kernels as ``torch.library`` custom ops (fake kernels and autograd registered, so
``torch.compile`` traces through them), and the functional the dispatcher calls.

Two forward kernels and one backward live in one extension:

* ``v1`` (selective_scan_fwd.cu): the first forward.
* ``v2`` (selective_scan_v2.cu): forward parallel along l inside a warp, segments across blocks
  for long l, and the CUDA backward (recompute + reverse scan, deterministic dB/dC).

Which of them runs is decided by :mod:`genomamba.ops.cuda.knobs` from the self-test verdicts; which
calls reach this backend at all (dtypes, state size, a verified backward) is decided by the
dispatch table in :mod:`genomamba.ops.dispatch`.
"""

from __future__ import annotations

import torch

from genomamba.ops.cuda.build import extension
from genomamba.ops.cuda.knobs import (
    CONFIG,
    bwd_chan_seg_tiles,
    bwd_layout,
    bwd_warps,
    chan_applies,
    forward_plan,
    forward_variant,
    fwd_build,
    prefetch_settings,
    seg_tiles,
)

_SET: dict = {}  # the switches last passed to the extension (they are process-wide there)


def _v2(dtype: torch.dtype | None = None):
    """The extension, with this process's choice of the fix-up / summary passes' per-state exit, of
    the prefetch settings for a scan of ``dtype`` and of the dB/dC reduction (passed on only when they
    changed: this runs before every scan call)."""
    ext = extension()
    want = (bool(CONFIG["fix_state_exit"]), prefetch_settings(dtype), 1 if CONFIG["bc_reduce"] == 1 else 0)
    if _SET.get(id(ext)) != want:
        ext.set_state_exit(want[0])
        ext.set_prefetch(*want[1])
        ext.set_bc_reduce(want[2])
        _SET[id(ext)] = want
    return ext


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
    out, final = extension().selective_scan_fwd(
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
    build: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, final, tstate = _v2(u.dtype).selective_scan_fwd_v2(
        u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, kitems, warps, seg_tiles, save, build, None
    )
    return out, final, tstate


@_v2_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, kitems, warps, warps_bwd, seg_tiles, seg_tiles_bwd,
      save, build=0):
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
    states_per_sync: int,
    joint_scan: bool,
    layout: int = 0,
) -> list[torch.Tensor]:
    return list(
        _v2(u.dtype).selective_scan_bwd_v2(
            u, delta, A, B, C, D, z, delta_bias, softplus, tstate, dout, dfinal, want_dh0, kitems, warps, seg_tiles,
            min_blocks, states_per_sync, joint_scan, layout, False, None, None, None, None,
        )[:9]
    )


@_v2_bwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, tstate, dout, dfinal, want_dh0, kitems, warps, seg_tiles,
      min_blocks, states_per_sync, joint_scan, layout=0):
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
    gout = unit_stride(gout)
    layout = bwd_layout(A.shape[1])
    tiles = ctx.seg_tiles_bwd if ctx.seg_tiles_bwd > 0 else _bwd_tiles(b, d, l, ctx.kitems, layout)
    du, dd, dA, dB, dC, dD, dz, dbias, dh0 = _v2_bwd_op(
        u, delta, A, B, C, D, z, bias, ctx.softplus, tstate, gout, gfinal, ctx.has_h0, ctx.kitems,
        ctx.warps_bwd, tiles, CONFIG["bwd_min_blocks"], CONFIG["bwd_states_per_sync"],
        bool(CONFIG["bwd_joint_scan"]), layout,
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
    build=None,
):
    """v2 forward (saving states when autograd will need them) with the CUDA backward attached;
    seg_tiles_bwd 0: the backward picks its own segments; build (0 plain, 1 lean, 2 lean in pairs,
    3 / 4 lane per channel with 64- / 32-token tiles) None: as configured (fwd_build())."""
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    out, final, _ = _v2_fwd_op(
        u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, kitems, warps, warps_bwd, seg_tiles,
        seg_tiles_bwd, save, fwd_build(u.dtype, training=save) if build is None else int(build),
    )
    return out, final


def _bwd_tiles(b, d, l, kitems, layout):
    """Tiles per backward segment: the cut of l each backward layout aims for."""
    return bwd_chan_seg_tiles(b, d, l, kitems) if layout else seg_tiles(b, d, l, kitems)


def scan_forward_saving(u, delta, A, B, C, D, z, delta_bias, h0=None, out=None):
    """The v2 forward with softplus on delta, from initial state ``h0`` (or zeros), keeping the tile
    states its backward needs, called on the extension directly (no autograd node: for callers that
    run the backward themselves, as :mod:`genomamba.ops.mixer_fn` does). Returns out (b, d, l), the
    final state (b, d, n) float32 and what :func:`scan_backward` takes. ``out``: a (b, d, l) tensor of
    u's dtype with l the unit-stride axis (e.g. rows of a (d, b * l) matrix) to write the output into
    (then returned as out), or None."""
    b, d, l = u.shape
    chan = chan_applies(u, delta, B, C, z, A.shape[1], True)
    kitems, warps, tiles, build = forward_plan(b, d, l, u.dtype, True, chan)
    out, final, tstate = _v2(u.dtype).selective_scan_fwd_v2(
        u, delta, A, B, C, D, z, delta_bias, True, h0, kitems, warps, tiles, True, build, out
    )
    return out, final, (tstate, kitems)


def scan_backward(saved, u, delta, A, B, C, D, z, delta_bias, h0, dout, dfinal, want_out=False, into=None):
    """Gradients of :func:`scan_forward_saving` for ``dout`` (u's dtype, l the unit-stride axis) and the
    final state's ``dfinal`` (or None): du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 (dA, dD,
    ddelta_bias, dh0 in float32; dh0 None without ``h0``), then the forward's output (b, d, l),
    written again by the backward's replay, with ``want_out`` (else None). ``into``: (du, ddelta, dz,
    out), each a (b, d, l) tensor to write that result into or None; those given share one layout
    (e.g. rows of (channels, b * l) matrices) and come back as the results."""
    du_into, dd_into, dz_into, out_into = into if into is not None else (None,) * 4
    tstate, kitems = saved
    b, d, l = u.shape
    layout = bwd_layout(A.shape[1])
    tiles = _bwd_tiles(b, d, l, kitems, layout)
    du, dd, dA, dB, dC, dD, dz, dbias, dh0, out = _v2(u.dtype).selective_scan_bwd_v2(
        u, delta, A, B, C, D, z, delta_bias, True, tstate, dout, dfinal, h0 is not None, kitems, bwd_warps(kitems),
        tiles, CONFIG["bwd_min_blocks"], CONFIG["bwd_states_per_sync"], bool(CONFIG["bwd_joint_scan"]), layout,
        bool(want_out), du_into, dd_into, dz_into, out_into,
    )
    return du, dd, dA, dB, dC, dD, dz, dbias, (dh0 if h0 is not None else None), (out if want_out else None)


def unit_stride(t):
    """``t`` with a unit stride along its last axis (l), as the kernels read it. ``.contiguous()``
    alone is not enough: a tensor whose last axis has size 1 counts as contiguous with any stride
    there (e.g. a one-token chunk cut from a transposed tensor), so that case is copied afresh."""
    if t is None or t.stride(-1) == 1:
        return t
    out = t.contiguous()
    if out.stride(-1) != 1:
        out = torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)
    return out


def _wants_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


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
    """Arguments as :func:`genomamba.ops.selective_scan` (validated there; the dispatch table sends
    only calls this backend supports: fp32/bf16/fp16, one dtype for u/delta/B/C/z, n <= 64, and
    gradients only where the CUDA backward passed its self-test)."""

    args = (unit_stride(u), unit_stride(delta), A.float(), unit_stride(B), unit_stride(C), D, unit_stride(z),
            delta_bias, bool(delta_softplus))
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    training = _wants_grad(tensors)
    if not training and forward_variant() != "v2":
        out, final = _scan_fwd_op(*args, initial_state)
    else:
        b, d, l = u.shape
        chan = chan_applies(args[0], args[1], args[3], args[4], args[6], A.shape[1], training)
        kitems, warps, tiles, build = forward_plan(b, d, l, u.dtype, training, chan)
        if training:  # the backward picks its own segments (seg_tiles_bwd 0)
            out, final = _v2_apply(*args, initial_state, kitems, warps, bwd_warps(kitems), tiles, build=build)
        else:
            out, final, _ = _v2_fwd_op(*args, initial_state, kitems, warps, bwd_warps(kitems), tiles, 0, False, build)
    return (out, final) if return_final_state else out

