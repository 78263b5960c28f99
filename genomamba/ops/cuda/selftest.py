"""The CUDA kernels' self-test: every part against the fp64 oracle on this GPU, before first use.

It runs in a child process, so a kernel that faults cannot poison the caller's CUDA context, and
its verdict per part (``v1``, ``v2``, ``bwd``, ``lean``, ``pair``, ``chan``, ``chan2``, ``chan4``,
``bwdchan``, ``bwdchan2``, ``prefetch``) is cached as ``selftest.json`` in the build folder: an
unchanged build is tested once.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from genomamba.files import file_lock, write_text
from genomamba.ops.cuda.build import extension
from genomamba.ops.cuda.kernels import _v2, _v2_apply, scan_backward, scan_forward_saving
from genomamba.ops.cuda.knobs import CONFIG, STATUS
from genomamba.ops.reference import selective_scan_ref

_PKG_ROOT = Path(__file__).resolve().parents[3]  # the folder holding the genomamba package
PARTS = ("v1", "v2", "bwd", "lean", "pair", "chan", "chan2", "chan4", "bwdchan", "bwdchan2", "prefetch")


def _cached(path: Path):
    """The finished verdict in ``path``, or None (absent, unreadable, or a test still in progress)."""
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(status, dict) or any(v in ("running", "not run") for v in status.values()):
        return None
    return status


def verdicts(build_dir: Path, child_code: Optional[str] = None) -> dict:
    """Run the self-test once per build in a child process; cache its verdict in the build folder.

    Processes that start together (the ranks of a multi-GPU run, runs launched side by side) take
    turns on a lock: one runs the test, the others wait for its verdict instead of reading a test
    in progress. The child writes its progress to ``selftest.partial.json``; ``selftest.json`` only
    ever holds a finished verdict (written whole, then renamed into place). ``child_code`` replaces
    the child's Python code (it gets the progress file's path as ``PATH``)."""
    path = build_dir / "selftest.json"
    status = _cached(path)
    if status is not None:
        return status
    with file_lock(build_dir / "selftest.lock"):
        status = _cached(path)  # finished by another process while this one waited
        if status is not None:
            return status
        partial = build_dir / "selftest.partial.json"
        partial.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(_PKG_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if child_code is None:
            code = f"from genomamba.ops.cuda.selftest import child_main; child_main({str(partial)!r})"
        else:
            code = f"PATH = {str(partial)!r}\n{child_code}"
        status = {k: "self-test did not run" for k in PARTS}
        try:
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
            if partial.exists():
                status = json.loads(partial.read_text())
            if r.returncode != 0:
                # a part still "running" is the one that crashed the child: never selected
                why = f"self-test process exited {r.returncode}: {(r.stderr or '').strip()[-300:]}"
                status = {k: (why if v in ("running", "not run") else v) for k, v in status.items()}
        except Exception as exc:
            status = {k: f"self-test process failed: {type(exc).__name__}: {exc}" for k in status}
        write_text(path, json.dumps(status, indent=1))
        partial.unlink(missing_ok=True)
    return status


def child_main(path: str) -> None:
    """Child-process entry: build (cached), test v1, v2, the backward, the lean, paired and lane-per-channel
    forwards; write each
    verdict as it is known (a part left "running" crashed the process)."""
    ext = extension()
    status = {k: "not run" for k in PARTS}

    def save():
        Path(path).write_text(json.dumps(status, indent=1))

    tests = (("v1", _test_v1), ("v2", _test_v2), ("bwd", _test_bwd), ("lean", _test_lean), ("pair", _test_pair),
             ("chan", _test_chan), ("chan2", _test_chan2), ("chan4", _test_chan4), ("bwdchan", _test_bwdchan),
             ("bwdchan2", _test_bwdchan2), ("prefetch", _test_prefetch))
    for part, fn in tests:
        if part not in ("v1", "v2") and status["v2"] is not True:
            status[part] = "v2 forward did not pass"
            continue
        if part == "prefetch" and status["bwd"] is not True:
            status[part] = "backward did not pass"
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
        # slow delta with decays from -0.5 to -300 across the states: within a segment the fast states
        # drop out of the fix-up and the summaries tiles before the slow ones
        (1, 16, 16, 3000, torch.float32, None, "spread"),
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
    if slow == "spread":
        A = -torch.logspace(math.log10(0.5), math.log10(300.0), n, device="cuda").expand(d, n).contiguous()
    h0 = torch.randn(b, d, n, device="cuda", generator=g)
    return [u, delta, A, B, C, D, z, bias], h0


def _check(name, x, y, tol, where):
    err = _rel(x, y)
    if not err < tol:  # also catches NaN
        raise RuntimeError(f"{name} rel. error {err:.2e} > {tol:.0e} at {where}")


def _test_v1(ext) -> None:
    for case in _cases()[:3]:
        ins, h0 = _inputs(*case)
        rout, rst = selective_scan_ref(*[t.double() for t in ins], True, h0.double(), True)
        tol = 1e-4 if case[4] == torch.float32 else 2e-2
        for npt in (4, 16):  # 1024 target threads: several chunks, so chunk passing is checked
            out, st = ext.selective_scan_fwd(*ins, True, h0, 1024, npt)
            _check("v1 out", out, rout, tol, (case, npt))
            _check("v1 final_state", st, rst, tol, (case, npt))


V2_CONFIGS = ((16, 4, 1000), (8, 4, 1), (16, 8, 1), (8, 3, 2))


def _test_v2(ext, build: int = 0, cases=None, configs=V2_CONFIGS) -> None:
    for case in cases or _cases():
        ins, h0 = _inputs(*case)
        ref = {
            True: selective_scan_ref(*[t.double() for t in ins], True, h0.double(), True),
            False: selective_scan_ref(*[t.double() for t in ins], True, None, True),
        }
        tol = 1e-4 if case[4] == torch.float32 else 2e-2
        # seg_tiles 1: every tile its own segment (combine + fix-up on every boundary); 1000: one
        for kitems, warps, seg_tiles in configs:
            for with_h0 in (True, False):
                h = h0 if with_h0 else None
                out, st, _ = ext.selective_scan_fwd_v2(*ins, True, h, kitems, warps, seg_tiles, True, build, None)
                r_o, r_s = ref[with_h0]
                _check("v2 out", out, r_o, tol, (case, kitems, warps, seg_tiles, with_h0))
                _check("v2 final_state", st, r_s, tol, (case, kitems, warps, seg_tiles, with_h0))
                _check_out_into(ext, ins, h, kitems, warps, seg_tiles, build, out, (case, kitems, warps, seg_tiles))


def _check_out_into(ext, ins, h, kitems, warps, seg_tiles, build, out, where) -> None:
    """The forward writing its output into rows of a (d, b * l) matrix (as the training mixer asks):
    the same values as into its own (b, d, l) tensor, nothing outside them touched."""
    b, d, l = ins[0].shape
    rows = torch.full((d + 1, b * l), float("nan"), device="cuda", dtype=ins[0].dtype)
    view = rows[:d].view(d, b, l).transpose(0, 1)
    got = ext.selective_scan_fwd_v2(*ins, True, h, kitems, warps, seg_tiles, True, build, view)[0]
    if got.data_ptr() != view.data_ptr():
        raise RuntimeError(f"v2 forward: not written into the given rows at {where}")
    if not torch.equal(view, out) or not bool(rows[d].isnan().all()):
        raise RuntimeError(f"v2 forward: the output written into rows differs at {where}")


def _test_lean(ext) -> None:
    """The lean forward: the v2 forward's cases, and a backward from its saved tile states."""
    _test_v2(ext, build=1)
    _test_bwd(ext, build=1)


def _test_pair(ext) -> None:
    """The lean forward taking states in pairs (odd n included: the last state runs alone), and a
    backward from its saved tile states."""
    _test_v2(ext, build=2)
    _test_bwd(ext, build=2)


def _test_prefetch(ext) -> None:
    """The backward's PF build (swizzled dB/dC slots) with B/C rows copied ahead into shared memory
    (``CONFIG["bwd_prefetch"]`` and ``["bwd_prefetch_fp32"]`` 0 to 3), the fix-up / summary rings
    (``["fix_prefetch"]``) and the L2 hints (``["l2_prefetch"]`` 1, also next to the shipped backward, and
    2, the backward's only):
    the forward's fix-up passes (segments of one, two and three tiles) and the backward with its
    reverse summaries, over the usual cases plus a half-precision one whose rows take the vector path
    and end in a ragged tile; and the wide joint backward (the PF build) over segments of several
    tiles, so that its ring crosses tile boundaries and its L2 hints for the tile after next are issued."""
    cases = _cases() + ((1, 32, 16, 2056, torch.bfloat16, None),)
    fwd_configs = V2_CONFIGS + ((8, 4, 3),)
    multi_tile = ((8, 4, 16, 1000, 1, 4, 1), (8, 4, 16, 3, 1, 3, 1), (8, 4, 16, 2, 2, 4, 1))
    saved = (CONFIG["bwd_prefetch"], CONFIG["bwd_prefetch_fp32"], CONFIG["fix_prefetch"], CONFIG["l2_prefetch"],
             STATUS.get("prefetch"))
    STATUS["prefetch"] = True  # this child's own verdict table: lets the backward's wrapper pass the depths on
    try:
        for depth, l2 in ((0, 1), (1, 0), (2, 1), (3, 2)):
            CONFIG.update(bwd_prefetch=depth, bwd_prefetch_fp32=depth, fix_prefetch=depth, l2_prefetch=l2)
            _v2()  # the extension's switches follow CONFIG
            if depth:
                _test_v2(ext, cases=cases, configs=fwd_configs)
            _test_bwd(ext, cases=cases if depth == 2 else cases[5:])
            _test_bwd(ext, cases=cases[3:], configs=multi_tile)
        # the hints next to the shipped backward (the fix-up and summaries take their PF builds)
        CONFIG.update(bwd_prefetch=-1, bwd_prefetch_fp32=-1, fix_prefetch=0, l2_prefetch=1)
        _v2()
        _test_v2(ext, cases=cases[5:], configs=fwd_configs)
        _test_bwd(ext, cases=cases[5:])
        _test_bwd(ext, cases=cases[5:], configs=multi_tile)
    finally:
        CONFIG.update(bwd_prefetch=saved[0], bwd_prefetch_fp32=saved[1], fix_prefetch=saved[2], l2_prefetch=saved[3])
        STATUS["prefetch"] = saved[4]
        _v2()


def _chan_cases():
    # the lane-per-channel forward needs 16-byte aligned rows (l * element size a multiple of 16);
    # l not a multiple of its 64-token tile, channels not a multiple of 32, n < 16, groups, slow decays
    return (
        (2, 24, 16, 304, torch.float32, None),
        (1, 16, 5, 704, torch.float32, 2),
        (1, 40, 16, 264, torch.bfloat16, None),
        (2, 16, 16, 2104, torch.float32, None),
        (1, 72, 16, 1504, torch.float16, 3),
        (1, 16, 16, 3000, torch.float32, None, True),
        # slow delta with decays from -0.5 to -300 across the states: within a segment the fast states
        # drop out of the fix-up and the summaries tiles before the slow ones
        (1, 16, 16, 3000, torch.float32, None, "spread"),
    )


def _test_chan(ext, builds=(3, 4)) -> None:
    """The lane-per-channel forward (1, 2 and 4 warps a block, one segment and several, with and
    without an initial state), and a backward from the tile states it saves."""
    for case in _chan_cases():
        ins, h0 = _inputs(*case)
        tol = 1e-4 if case[4] == torch.float32 else 2e-2
        for with_h0 in (True, False):
            h = h0 if with_h0 else None
            r_o, r_s = selective_scan_ref(*[t.double() for t in ins], True, h.double() if with_h0 else None, True)
            # seg_tiles 1000: one segment; 1 to 3: the combine and fix-up passes on segment boundaries
            for kitems, warps, seg in ((16, 1, 1000), (8, 2, 1), (16, 4, 2), (8, 1, 3)):
                for build in builds:  # 64- and 32-token staging tiles
                    out, st, _ = ext.selective_scan_fwd_v2(*ins, True, h, kitems, warps, seg, True, build, None)
                    _check("chan out", out, r_o, tol, (case, kitems, warps, seg, with_h0, build))
                    _check("chan final_state", st, r_s, tol, (case, kitems, warps, seg, with_h0, build))
                    _check_out_into(ext, ins, h, kitems, warps, seg, build, out, (case, kitems, warps, seg, build))
    _test_bwd(ext, build=builds[0], cases=_chan_cases())
    _test_bwd(ext, build=builds[1], cases=_chan_cases()[:3])


def _test_chan2(ext) -> None:
    """The same with two lanes per channel (8 states each)."""
    _test_chan(ext, builds=(5, 6))


def _test_chan4(ext) -> None:
    """The same with four lanes per channel (4 states each)."""
    _test_chan(ext, builds=(7, 8))


def _test_bwdchan(ext, lanes: int = 1) -> None:
    """The lane-per-channel backward: every gradient against the oracle and bit-identical twice, from
    the tile states of the lanes-over-tokens and the lane-per-channel forwards (one segment, one per
    tile, two tiles each; tiles of 256 and 512 tokens; l not a multiple of its 8-token sub-tile)."""
    part = "bwdchan" if lanes == 1 else "bwdchan2"
    saved = CONFIG["bwd_chan"], STATUS.get(part)
    CONFIG["bwd_chan"], STATUS[part] = lanes, True  # this child's own verdict table
    try:
        _test_bwd(ext, build=0, cases=_cases(), short_configs=((8, 4, 8, 1000), (8, 4, 8, 1), (16, 4, 4, 2)))
        _test_bwd(ext, build=3, cases=_chan_cases(), short_configs=((8, 4, 8, 1000), (8, 2, 8, 1), (16, 4, 8, 3)))
    finally:
        CONFIG["bwd_chan"], STATUS[part] = saved


def _test_bwdchan2(ext) -> None:
    """The same with two lanes per channel (8 states each)."""
    _test_bwdchan(ext, lanes=2)


def _test_bwd(ext, build: int = 0, cases=None, short_configs=None, configs=None) -> None:
    """``configs``: full (kitems, forward warps, backward warps, seg_tiles, blocks per SM, states per
    barrier pair, joint scans) tuples instead of the usual ones."""
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    explicit = configs
    for case in cases or _cases():
        ins, h0 = _inputs(*case)
        dtype = case[4]
        ref = [t.double().requires_grad_(True) for t in ins + [h0]]
        rout, rst = selective_scan_ref(*ref[:8], True, ref[8], True)
        g = torch.Generator(device="cuda").manual_seed(1)
        gout = torch.randn(rout.shape, device="cuda", generator=g).to(dtype)
        gst = torch.randn(rst.shape, device="cuda", generator=g)
        rgrads = torch.autograd.grad((rout, rst), ref, (gout.double(), gst.double()))
        tol = 1e-3 if dtype == torch.float32 else 3e-2
        # (kitems, forward warps, backward warps, seg_tiles, blocks per SM, states per barrier pair,
        # joint scans); 3 and 5 states per pair leave a shorter last group whenever n is not a multiple;
        # 16 and 12 backward warps: the wide build (one 512-thread block per SM)
        configs = ((8, 4, 8, 1000, 2, 1, 0), (8, 4, 8, 1, 1, 1, 0), (8, 4, 8, 1, 2, 4, 1), (16, 4, 4, 2, 1, 3, 1),
                   (8, 2, 3, 1, 2, 5, 0), (8, 4, 8, 1000, 2, 64, 1), (8, 4, 8, 1, 1, 2, 1), (16, 4, 8, 1, 2, 1, 1),
                   (8, 4, 16, 1, 2, 4, 1), (8, 4, 12, 1000, 1, 3, 0))
        if build:
            configs = configs[:3]
        if short_configs is not None:
            configs = tuple(tuple(c) + (2, 1, 0) for c in short_configs)
        if explicit is not None:
            configs = explicit
        knobs = ("bwd_min_blocks", "bwd_states_per_sync", "bwd_joint_scan")
        for kitems, wf, wb, seg_tiles, *setting in configs:
            leaves = [t.detach().clone().requires_grad_(True) for t in ins + [h0]]
            runs = []
            saved = {k: CONFIG[k] for k in knobs}
            CONFIG.update(zip(knobs, setting))
            try:
                for _ in range(2):
                    out, st = _v2_apply(*leaves[:8], True, leaves[8], kitems, wf, wb, seg_tiles, seg_tiles, build)
                    runs.append(torch.autograd.grad((out, st), leaves, (gout, gst)))
            finally:
                CONFIG.update(saved)
            where = (case, kitems, wf, wb, seg_tiles, *setting)
            for nm, a, b_, r in zip(names, runs[0], runs[1], rgrads):
                _check(f"bwd d{nm}", a, r, tol, where)
                if not torch.equal(a, b_):
                    raise RuntimeError(f"bwd d{nm} differs between two runs at {where}")
        # the forward's output written again by the backward's replay (the training mixer's out_proj
        # weight gradient takes it from there instead of keeping it), and du, ddelta, dz and that output
        # written into rows of (channels, b * l) matrices, as the training mixer asks
        _, _, kept = scan_forward_saving(*ins, h0)
        again = scan_backward(kept, *ins, h0, gout, gst, want_out=True)[9]
        _check("bwd out", again, rout, tol, (case, "want_out"))
        b, d, l = ins[0].shape
        into = [torch.full((d, b * l), float("nan"), device="cuda", dtype=dtype).view(d, b, l).transpose(0, 1)
                for _ in range(4)]
        got = scan_backward(kept, *ins, h0, gout, gst, want_out=True, into=into)
        for nm, i, want, view in (("du", 0, rgrads[0], into[0]), ("ddelta", 1, rgrads[1], into[1]),
                                  ("dz", 6, rgrads[6], into[2]), ("out", 9, rout, into[3])):
            if got[i].data_ptr() != view.data_ptr() or got[i].stride() != view.stride():
                raise RuntimeError(f"bwd {nm}: not written into the given rows at {case}")
            _check(f"bwd {nm} into rows", view, want, tol, (case, "into"))

