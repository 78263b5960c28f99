"""CPU checks of genomamba.ops.cuda: it imports cleanly, reports itself unavailable without a GPU,
and never routes gradients to a CUDA backward that did not pass its self-test."""

import json
import os
from pathlib import Path

import pytest
import torch

import genomamba.ops as ops
import genomamba.ops.cuda as cu
from genomamba.ops.cuda import kernels, selftest
from genomamba.ops.dispatch import BACKENDS


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_unavailable_without_cuda():
    assert cu.available() is False
    assert cu.available() is False  # cached verdict, still no exception
    # the backend called directly (not through genomamba.ops.selective_scan) says why it cannot run
    u, delta = torch.randn(1, 4, 8), torch.rand(1, 4, 8)
    with pytest.raises(RuntimeError, match=r"CUDA scan kernels unavailable \(RuntimeError: no CUDA device\)"):
        cu.selective_scan(u, delta, -torch.rand(4, 2), torch.randn(1, 2, 8), torch.randn(1, 2, 8))


def test_dispatch_skips_cuda_without_gpu():
    if not torch.cuda.is_available():
        assert ops.backend_for(torch.device("cpu")) != "cuda"


@pytest.fixture
def status():
    saved_status, saved_cfg = dict(cu.STATUS), dict(cu.CONFIG)
    yield cu.STATUS
    cu.STATUS.clear()
    cu.STATUS.update(saved_status)
    cu.CONFIG.clear()
    cu.CONFIG.update(saved_cfg)


def _call(requires_grad, dtype=torch.float32, n=3, mixed=False):
    """The dispatch description of a scan call as if its tensors were on a GPU."""
    b, d, l = 1, 4, 5
    u = torch.randn(b, d, l, dtype=dtype, requires_grad=requires_grad)
    B = torch.randn(b, n, l, dtype=torch.bfloat16 if mixed else dtype)
    return ops._scan_call(u, torch.rand(b, d, l, dtype=dtype), -torch.rand(d, n), B, B)._replace(device="cuda")


@pytest.mark.parametrize("v2,bwd,expect", [(True, True, True), (True, "failed", False), ("failed", True, False)])
def test_backward_gate(status, monkeypatch, v2, bwd, expect):
    monkeypatch.delenv("GENOMAMBA_CUDA_UNVERIFIED", raising=False)
    status.update(v1=True, v2=v2, bwd=bwd)
    cu.CONFIG.update(variant="auto", use_cuda_bwd="auto")
    assert cu.cuda_backward_enabled() is expect
    # gradients needed and no verified CUDA backward: the table hands the call to the next backend
    assert (BACKENDS["cuda"].refuses(_call(True)) is not None) is (not expect)
    assert BACKENDS["cuda"].refuses(_call(False)) is None
    cu.CONFIG.update(use_cuda_bwd="off")
    assert cu.cuda_backward_enabled() is False


def test_cuda_refuses_what_its_kernels_do_not_take():
    cuda = BACKENDS["cuda"]
    assert "float64" in cuda.refuses(_call(False, dtype=torch.float64))
    assert "n <= 64" in cuda.refuses(_call(False, n=65))
    assert "one dtype" in cuda.refuses(_call(False, mixed=True))
    assert BACKENDS["triton"].refuses(_call(False, mixed=True)) is None
    assert BACKENDS["triton"].refuses(_call(False, n=65)) is None


def test_forward_variant_gate(status, monkeypatch):
    monkeypatch.delenv("GENOMAMBA_CUDA_UNVERIFIED", raising=False)
    status.update(v1=True, v2="failed: out rel. error", bwd="v2 forward did not pass")
    cu.CONFIG.update(variant="auto")
    assert cu.forward_variant() == "v1"
    cu.CONFIG.update(variant="v2")
    assert cu.forward_variant() == "v1"  # a failed v2 is never used, even when asked for
    status.update(v2=True)
    assert cu.forward_variant() == "v2"
    cu.CONFIG.update(variant="v1")
    assert cu.forward_variant() == "v1"
    status.update(v1="failed", v2="failed")
    with pytest.raises(RuntimeError):
        cu.forward_variant()


def test_lean_gate(status, monkeypatch):
    """Auto (-1): the lean forward for 16-bit inputs and for training, not for the fp32 inference
    forward (slower there on Hopper GPUs); 0 / 1 force it; a failed self-test part is never used."""
    monkeypatch.delenv("GENOMAMBA_CUDA_UNVERIFIED", raising=False)
    status.update(v1=True, v2=True, bwd=True, lean=True)
    cu.CONFIG.update(fwd_lean=-1)
    assert cu.use_lean(torch.bfloat16) and cu.use_lean(torch.float16)
    assert not cu.use_lean(torch.float32)
    assert cu.use_lean(torch.float32, training=True)
    cu.CONFIG.update(fwd_lean=1)
    assert cu.use_lean(torch.float32)
    cu.CONFIG.update(fwd_lean=0)
    assert not cu.use_lean(torch.bfloat16) and not cu.use_lean(torch.float32, training=True)
    cu.CONFIG.update(fwd_lean=-1)
    status.update(lean="failed: out rel. error")
    assert not cu.use_lean(torch.bfloat16) and not cu.use_lean(torch.float32, training=True)


def test_paired_build_gate(status, monkeypatch):
    """The forward's build: 0 plain, 1 lean, 2 lean with states in pairs; pairs only where the lean
    build runs, only when asked for (1, or -1 in a training forward), and only if their own self-test
    part passed."""
    monkeypatch.delenv("GENOMAMBA_CUDA_UNVERIFIED", raising=False)
    saved = dict(cu.CONFIG)
    try:
        status.update(v1=True, v2=True, bwd=True, lean=True, pair=True)
        cu.CONFIG.update(fwd_lean=-1, fwd_pair_states=0)
        assert cu.fwd_build(torch.bfloat16) == 1 and cu.fwd_build(torch.float32) == 0
        cu.CONFIG.update(fwd_pair_states=1)
        assert cu.fwd_build(torch.bfloat16) == 2 and cu.fwd_build(torch.float32, training=True) == 2
        assert cu.fwd_build(torch.float32) == 0  # no lean build there, so no pairs either
        cu.CONFIG.update(fwd_pair_states=-1)  # auto: pairs in training forwards only
        assert cu.fwd_build(torch.bfloat16, training=True) == 2 and cu.fwd_build(torch.bfloat16) == 1
        assert cu.fwd_build(torch.float32, training=True) == 2 and cu.fwd_build(torch.float32) == 0
        status.update(pair="pair out rel. error")
        assert cu.fwd_build(torch.bfloat16) == 1 and cu.fwd_build(torch.bfloat16, training=True) == 1
        status.update(pair=True, lean="lean out rel. error")
        assert cu.fwd_build(torch.bfloat16) == 0
    finally:
        cu.CONFIG.clear()
        cu.CONFIG.update(saved)


def test_lane_per_channel_gate_and_plan(status, monkeypatch):
    """Which calls take the lane-per-channel forward: only with its own self-test part passed,
    n <= 16, in auto half-precision training forwards and large inference calls; and its plan
    (segments, staging tile) for the shapes it was timed on, on a 132-SM GPU."""
    from types import SimpleNamespace

    from genomamba.ops.cuda.knobs import chan_lanes, chan_plan, chan_wanted

    monkeypatch.delenv("GENOMAMBA_CUDA_UNVERIFIED", raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(multi_processor_count=132))
    bf16, f32 = torch.bfloat16, torch.float32
    status.update(v1=True, v2=True, bwd=True, chan=True, chan2="chan2 out rel. error")
    cu.CONFIG.update(chan_resident=8, chan_min_seg_tokens=1024, chan_tile32_above=4, chan_min_warps_per_sm=2,
                     chan_min_warps_per_sm_inference=3)
    cu.CONFIG.update(fwd_chan=-1, chan_lanes=1, chan_min_channels=8192, chan_min_len=32768)
    assert chan_wanted(4, 512, 16384, 16, bf16, training=True)  # every half-precision training forward
    assert not chan_wanted(4, 512, 16384, 16, bf16)  # a small inference call: lanes over tokens
    assert chan_wanted(16, 1536, 2048, 16, bf16) and chan_wanted(1, 512, 1 << 20, 16, bf16)
    # 384 warps (2.9 per SM): enough for a training forward, too few for an inference one
    assert chan_wanted(8, 1536, 2048, 16, bf16, training=True) and not chan_wanted(8, 1536, 2048, 16, bf16)
    assert chan_wanted(16, 1024, 2048, 16, bf16)  # 512 warps (3.9 per SM)
    assert not chan_wanted(8, 1536, 2048, 16, f32, training=True)  # auto: never fp32
    assert not chan_wanted(8, 1536, 2048, 17, bf16, training=True)  # more states than a lane holds
    assert not chan_wanted(1, 512, 2048, 16, bf16, training=True)  # 32 warps: too little to spread
    cu.CONFIG.update(fwd_chan=1)
    assert chan_wanted(1, 16, 64, 16, f32)  # forced: wherever it can run
    cu.CONFIG.update(chan_lanes=2)
    assert not chan_wanted(1, 16, 64, 16, f32)  # two lanes per channel: its own part did not pass
    cu.CONFIG.update(chan_lanes=4)
    assert not chan_wanted(1, 16, 64, 16, f32)  # four: the same, until its part passes
    status.update(chan4=True)
    assert chan_wanted(1, 16, 64, 16, f32)
    cu.CONFIG.update(fwd_chan=0, chan_lanes=1)
    assert not chan_wanted(8, 1536, 2048, 16, bf16, training=True)
    status.update(chan="chan out rel. error")
    cu.CONFIG.update(fwd_chan=1)
    assert not chan_wanted(8, 1536, 2048, 16, bf16)

    assert chan_plan(8, 1536, 2048, 16) == (4, 3)  # 384 warps: one segment, 64-token tiles
    assert chan_plan(64, 1536, 2048, 16) == (4, 4)  # 3072 warps: 32-token tiles
    assert chan_plan(32, 512, 1024, 8) == (4, 3)
    assert chan_plan(1, 512, 1 << 20, 16) == (32, 4)  # 64 segments of 16K tokens, 1024 warps
    assert chan_plan(1, 1536, 65536, 16) == (6, 4)  # 22 segments
    assert chan_plan(8, 1536, 2048, 8) == (8, 3)  # the training tile: one segment while a fix-up costs 2048 tokens
    cu.CONFIG.update(fixup_tokens=512)
    assert chan_plan(8, 1536, 2048, 8) == (4, 4)  # two 1024-token segments, 768 warps: 32-token tiles
    cu.CONFIG.update(fixup_tokens=2048, chan_lanes=2)
    assert chan_plan(8, 1536, 2048, 16) == (4, 6)  # 768 warps at two lanes a channel: 32-token tiles
    cu.CONFIG.update(chan_lanes=4)
    assert chan_plan(8, 1536, 2048, 16) == (4, 8)  # 1536 warps at four lanes a channel
    assert chan_plan(1, 64, 2048, 16) == (4, 7)  # 8 warps: 64-token tiles
    cu.CONFIG.update(chan_lanes=3)
    assert chan_plan(8, 1536, 2048, 16) == (4, 3)  # not a lane count it has: one lane
    # auto: four lanes from 8192 channels (b * d) on, once part chan4 passed; one lane below
    cu.CONFIG.update(chan_lanes=-1, chan_lanes4_min_channels=8192, chan_lanes4_max_channels=32768)
    assert chan_lanes() == 1 and chan_lanes(8, 1536) == 4 and chan_lanes(32, 512) == 4
    assert chan_lanes(1, 1536) == 1 and chan_lanes(4, 512) == 1 and chan_lanes(8, 1023) == 1
    assert chan_lanes(16, 2048) == 4 and chan_lanes(64, 1536) == 1  # above 32768 channels: one lane
    assert chan_plan(8, 1536, 2048, 16) == (4, 8) and chan_plan(1, 1536, 65536, 16) == (6, 4)
    cu.CONFIG.update(fwd_chan=-1)
    # the (8, 1536, 2048) inference forward: 1536 warps at four lanes, enough for the lane-per-channel build
    assert chan_wanted(8, 1536, 2048, 16, bf16)
    status.update(chan4="chan4 out rel. error")
    assert chan_lanes(8, 1536) == 1 and chan_plan(8, 1536, 2048, 16) == (4, 3)
    assert not chan_wanted(8, 1536, 2048, 16, bf16)  # back to one lane: 384 warps, too few
    status.update(chan4=True)
    cu.CONFIG.update(fwd_chan=1)
    from genomamba.ops.cuda.knobs import forward_layout

    status.update(chan=True)
    cu.CONFIG.update(fwd_chan=-1, chan_lanes=1)
    assert forward_layout(8, 1536, 16, 2048, bf16).startswith("lane per tokens")  # 2.9 warps per SM
    assert forward_layout(16, 1024, 16, 2048, bf16) == "lane per channel (build 3, 1 segments)"
    assert forward_layout(1, 512, 16, 1 << 20, bf16) == "lane per channel (build 4, 64 segments)"
    assert forward_layout(8, 1536, 16, 2048, f32).startswith("lane per tokens")


def test_backward_block_width(monkeypatch):
    """The wide backward build takes 8-token lanes only: a 16-warp setting falls back to 8 warps for
    forwards whose lanes hold 16 tokens; a width of up to 8 is kept for either."""
    from genomamba.ops.cuda.knobs import bwd_warps

    monkeypatch.setitem(cu.CONFIG, "warps_bwd", 16)
    assert bwd_warps(8) == 16 and bwd_warps(16) == 8
    monkeypatch.setitem(cu.CONFIG, "warps_bwd", 4)
    assert bwd_warps(8) == 4 and bwd_warps(16) == 4


def test_selftest_verdict_is_cached(tmp_path):
    verdict = {"v1": True, "v2": True, "bwd": "bwd ddelta rel. error 1e-1"}
    (tmp_path / "selftest.json").write_text(json.dumps(verdict))
    assert selftest.verdicts(tmp_path) == verdict


_SLOW_CHILD = """
import json, time
from pathlib import Path
Path(PATH).write_text(json.dumps({"v1": "running", "v2": "not run", "bwd": "not run", "lean": "not run"}))
with open(Path(PATH).parent / "children.txt", "a") as fh:
    fh.write("1")
time.sleep(1.5)
Path(PATH).write_text(json.dumps({"v1": True, "v2": True, "bwd": True, "lean": "lean out rel. error"}))
"""

_VERDICT_CALL = """
import json, sys
from pathlib import Path
from genomamba.ops.cuda import selftest
print(json.dumps(selftest.verdicts(Path(sys.argv[1]), child_code=sys.argv[2])))
"""


def test_selftest_runs_once_when_processes_start_together(tmp_path):
    """Three processes asking for the verdict at once (the ranks of a multi-GPU run): one child runs
    the test, and every process gets its finished verdict, never a test still in progress."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", _VERDICT_CALL, str(tmp_path), _SLOW_CHILD], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    want = {"v1": True, "v2": True, "bwd": True, "lean": "lean out rel. error"}
    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err
        assert json.loads(out) == want
    assert (tmp_path / "children.txt").read_text() == "1", "the self-test must run once"
    assert json.loads((tmp_path / "selftest.json").read_text()) == want
    assert not (tmp_path / "selftest.partial.json").exists()


def test_a_crashed_selftest_is_recorded_and_not_selected(tmp_path):
    crash = "import json, os\nfrom pathlib import Path\n" \
            "Path(PATH).write_text(json.dumps({'v1': True, 'v2': 'running', 'bwd': 'not run', 'lean': 'not run', " \
            "'pair': 'not run'}))\n" \
            "os._exit(3)"
    status = selftest.verdicts(tmp_path, child_code=crash)
    assert status["v1"] is True
    for part in ("v2", "bwd", "lean", "pair"):
        assert status[part].startswith("self-test process exited 3"), status
    assert selftest.verdicts(tmp_path) == status, "the crash verdict is cached, not re-run"


def test_run_time_settings_reach_the_extension_once(monkeypatch):
    """Before a scan the process's settings (per-state exit, prefetch, dB/dC reduction mode) are
    passed to the extension, and passed again only after one of them changed."""
    calls = []

    class Ext:
        def set_state_exit(self, on):
            calls.append(("exit", on))

        def set_prefetch(self, bwd, fix, l2):
            calls.append(("prefetch", bwd, fix, l2))

        def set_bc_reduce(self, mode):
            calls.append(("bc_reduce", mode))

    ext = Ext()
    monkeypatch.setattr(kernels, "extension", lambda: ext)
    monkeypatch.setattr(kernels, "_SET", {})
    monkeypatch.setitem(cu.CONFIG, "bc_reduce", 1)
    assert kernels._v2(torch.bfloat16) is ext
    assert ("bc_reduce", 1) in calls and any(c[0] == "prefetch" for c in calls)
    calls.clear()
    kernels._v2(torch.bfloat16)
    assert calls == [], "unchanged settings are not passed again"
    monkeypatch.setitem(cu.CONFIG, "bc_reduce", 0)
    kernels._v2(torch.bfloat16)
    assert ("bc_reduce", 0) in calls


def test_fake_kernels_shapes():
    """The torch.library registrations parse and their fake kernels give the right shapes (what
    torch.compile traces with), without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    b, d, n, l, g = 2, 6, 5, 1000, 3
    with FakeTensorMode():
        u = torch.empty(b, d, l, dtype=torch.bfloat16)
        A = torch.empty(d, n)
        B = torch.empty(b, g, n, l, dtype=torch.bfloat16)
        D = torch.empty(d)
        out, final, ts = kernels._v2_fwd_op(u, u, A, B, B, D, u, D, True, None, 8, 4, 8, 2, 0, True, 2)
        assert out.shape == (b, d, l) and out.dtype == torch.bfloat16
        assert final.shape == (b, d, n) and final.dtype == torch.float32
        assert ts.shape == (b, d, 4, n + 1)  # 4 tiles of 256 tokens
        grads = kernels._v2_bwd_op(u, u, A, B, B, D, u, D, True, ts, u, final, True, 8, 8, 2, 2, 4, True)
        assert [tuple(x.shape) for x in grads] == [
            (b, d, l), (b, d, l), (d, n), (b, g, n, l), (b, g, n, l), (d,), (b, d, l), (d,), (b, d, n)
        ]
        out1, fin1 = kernels._scan_fwd_op(u, u, A, B, B, D, u, D, True, None)
        assert out1.shape == (b, d, l) and fin1.shape == (b, d, n)


# ----------------------------------------------------------------------------- the v2 algorithm on CPU
# A line-by-line model of selective_scan_v2.cu for one (batch, channel): 32 lanes of K tokens, the
# per-lane affine maps, the shuffle scans (prefix with shfl_up, suffix with shfl_down, carries
# folded into lane 0 / lane 31), segments with combine + early-exit fix-up, backward summaries and
# the reverse combine. It cannot catch indexing bugs of the CUDA code, but it checks the algebra
# the kernels rely on against the fp64 oracle, on a machine without a GPU.

LOG2E = 1.4426950408889634
CUT = 64.0


def _shfl_up(x, off):  # lane i reads lane i - off; lanes < off read themselves (unused there)
    return torch.cat([x[..., :off], x[..., :-off]], -1)


def _shfl_down(x, off):
    return torch.cat([x[..., off:], x[..., -off:]], -1)


def _prefix_maps(Aa, Bb, carry):
    """Inclusive scan of lane maps h -> Aa h + Bb (n, 32) with `carry` folded into lane 0; returns
    the state after each lane's last token."""
    Bb = Bb.clone()
    Bb[:, 0] = Aa[:, 0] * carry + Bb[:, 0]
    lane = torch.arange(32)
    for off in (1, 2, 4, 8, 16):
        pa, pb = _shfl_up(Aa, off), _shfl_up(Bb, off)
        m = lane >= off
        Bb = torch.where(m, Aa * pb + Bb, Bb)
        Aa = torch.where(m, Aa * pa, Aa)
    return Bb


def _suffix_maps(P, Q, R):
    Q = Q.clone()
    Q[:, 31] = P[:, 31] * R + Q[:, 31]
    lane = torch.arange(32)
    for off in (1, 2, 4, 8, 16):
        pn, qn = _shfl_down(P, off), _shfl_down(Q, off)
        m = lane + off < 32
        Q = torch.where(m, P * qn + Q, Q)
        P = torch.where(m, P * pn, P)
    return Q


def _model(u, dl, A, B, C, D, z, h0, dout, dfinal, K, seg_tiles):
    """Forward and backward of one channel as the v2 kernels compute them. dl: delta after
    bias/softplus. Returns out, final, du, ddl (w.r.t. dl), dA, dB, dC, dD, dz, dh0."""
    n, l = B.shape
    T = 32 * K
    ntiles = max(1, -(-l // T))
    L = ntiles * T
    nseg = -(-ntiles // seg_tiles)

    def pad(x):
        return torch.nn.functional.pad(x, (0, L - l))

    u, dl, z, dout, B, C = pad(u), pad(dl), pad(z), pad(dout), pad(B), pad(C)
    A2 = A * LOG2E
    sig = torch.sigmoid(z)
    out = torch.zeros(L, dtype=u.dtype)
    tstate = torch.zeros(ntiles, n + 1, dtype=u.dtype)
    hend = torch.zeros(nseg, n, dtype=u.dtype)
    dsum = torch.zeros(nseg, dtype=u.dtype)
    tiles = [range(s * seg_tiles, min((s + 1) * seg_tiles, ntiles)) for s in range(nseg)]

    def view(x, t):
        return x[..., t * T:(t + 1) * T].reshape(*x.shape[:-1], 32, K)

    # forward kernel: every segment from zero (segment 0 from h0)
    for s in range(nseg):
        h = h0.clone() if s == 0 else torch.zeros(n, dtype=u.dtype)
        for t in tiles[s]:
            d_, du_ = view(dl, t), view(dl * u, t)
            tstate[t, :n], tstate[t, n] = h, d_.sum()
            a = torch.exp2(A2[:, None, None] * d_)
            b = du_ * view(B, t)
            # the lane's decay product as one exp2 of the summed delta (forward and reverse map alike)
            Al = torch.exp2(A2[:, None] * d_.sum(-1))
            Aa, Bb = Al.clone(), torch.zeros(n, 32, dtype=u.dtype)
            for k in range(K):
                Bb = a[..., k] * Bb + b[..., k]
            incl = _prefix_maps(Aa, Bb, h)
            hh = torch.cat([h[:, None], incl[:, :31]], 1)
            y = D * view(u, t).clone()
            Cv = view(C, t)
            for k in range(K):
                hh = a[..., k] * hh + b[..., k]
                y[:, k] += (Cv[..., k] * hh).sum(0)
            h = incl[:, 31]
            out[t * T:(t + 1) * T] = (y * view(z * sig, t)).reshape(-1)
        hend[s], dsum[s] = h, dl[tiles[s][0] * T:(tiles[s][-1] + 1) * T].sum()
    # combine + fix-up
    h = hend[0]
    carry = torch.zeros(nseg, n, dtype=u.dtype)
    for s in range(1, nseg):
        carry[s] = h
        h = torch.exp2(dsum[s] * A2) * h + hend[s]
    final = h
    amax = A2.max()
    for s in range(1, nseg):
        cum = 0.0
        for t in tiles[s]:
            tstate[t, :n] += torch.exp2(A2 * cum) * carry[s]
            cs = cum + torch.cumsum(dl[t * T:(t + 1) * T], 0)
            live = (A2 * cum >= -CUT).to(u.dtype)[:, None]  # states whose decay is complete drop out
            fix = (C[:, t * T:(t + 1) * T] * torch.exp2(A2[:, None] * cs) * carry[s][:, None] * live).sum(0)
            out[t * T:(t + 1) * T] += fix * (z * sig)[t * T:(t + 1) * T]
            cum = cum + dl[t * T:(t + 1) * T].sum()
            if amax * cum < -CUT:
                break
    # backward: summaries, reverse combine, main
    dy = dout * z * sig
    zfac = dout * sig * (1 + z * (1 - sig))
    P = torch.zeros(nseg, n, dtype=u.dtype)
    for s in range(1, nseg):
        cum = 0.0
        for t in tiles[s]:
            cs = cum + torch.cumsum(dl[t * T:(t + 1) * T], 0)
            live = (A2 * cum >= -CUT).to(u.dtype)
            P[s] += (torch.exp2(A2[:, None] * cs) * C[:, t * T:(t + 1) * T] * dy[t * T:(t + 1) * T]).sum(1) * live
            cum = cum + dl[t * T:(t + 1) * T].sum()
            if amax * cum < -CUT:
                break
    Rs = torch.zeros(nseg, n, dtype=u.dtype)
    R = dfinal.clone()
    for s in range(nseg - 1, 0, -1):
        Rs[s] = R
        ds = tstate[tiles[s][0]:tiles[s][-1] + 1, n].sum()
        R = P[s] + torch.exp2(ds * A2) * R
    Rs[0] = R
    gu, gd, yfull = torch.zeros(L, dtype=u.dtype), torch.zeros(L, dtype=u.dtype), D * u.clone()
    dA, dB, dC = torch.zeros(n, dtype=u.dtype), torch.zeros(n, L, dtype=u.dtype), torch.zeros(n, L, dtype=u.dtype)
    dh0 = None
    for s in range(nseg):
        R = Rs[s].clone()
        for t in reversed(tiles[s]):
            d_, u_, dy_ = view(dl, t), view(u, t), view(dy, t)
            a = torch.exp2(A2[:, None, None] * d_)
            Bv, Cv = view(B, t), view(C, t)
            b = d_ * u_ * Bv
            # the lane's decay product as one exp2 of the summed delta (forward and reverse map alike)
            Al = torch.exp2(A2[:, None] * d_.sum(-1))
            Aa, Bb = Al.clone(), torch.zeros(n, 32, dtype=u.dtype)
            for k in range(K):
                Bb = a[..., k] * Bb + b[..., k]
            incl = _prefix_maps(Aa, Bb, tstate[t, :n])
            hh = torch.cat([tstate[t, :n, None], incl[:, :31]], 1)
            hp = torch.zeros(n, 32, K, dtype=u.dtype)
            for k in range(K):
                hp[..., k] = hh
                hh = a[..., k] * hh + b[..., k]
                view(yfull, t)[:, k] += (Cv[..., k] * hh).sum(0)
                view(dC, t)[..., k] += dy_[:, k] * hh
            Pm, Qm = Al.clone(), torch.zeros(n, 32, dtype=u.dtype)
            for k in range(K - 1, -1, -1):
                Qm = a[..., k] * (Cv[..., k] * dy_[:, k] + Qm)
            inclr = _suffix_maps(Pm, Qm, R)
            G = torch.cat([inclr[:, 1:], R[:, None]], 1)
            S = torch.zeros(32, K, dtype=u.dtype)  # sum over states of g_t B_t, per token
            for k in range(K - 1, -1, -1):
                g = Cv[..., k] * dy_[:, k] + G
                w = g * a[..., k] * hp[..., k]
                view(gd, t)[:, k] += (w * A[:, None]).sum(0)
                S[:, k] += (g * Bv[..., k]).sum(0)
                dA += (w * d_[:, k]).sum(1)
                view(dB, t)[..., k] += g * d_[:, k] * u_[:, k]
                G = a[..., k] * g
            view(gu, t)[:] += d_ * S  # du = delta S (+ D dy below), ddelta = sum w A + u S
            view(gd, t)[:] += u_ * S
            R = inclr[:, 0]
        if s == 0:
            dh0 = R
    dz = zfac * yfull
    du = gu + dy * D
    dD = (dy * u).sum()
    return (out[:l], final, du[:l], gd[:l], dA, dB[:, :l], dC[:, :l], dD, dz[:l], dh0)


@pytest.mark.parametrize("l,K,seg_tiles,slow,spread", [(1, 8, 1, False, False), (300, 8, 1, False, False),
                                                        (700, 8, 2, True, False), (1100, 16, 1, True, False),
                                                        (513, 16, 5, False, False), (2000, 8, 3, False, False),
                                                        (3000, 8, 4, True, True)])
def test_v2_algorithm_model(l, K, seg_tiles, slow, spread):
    """spread: decays from -0.5 to -300, so within a segment the fast states drop out of the fix-up
    and the reverse summaries tiles before the slow ones."""
    from genomamba.ops.reference import selective_scan_ref

    g = torch.Generator().manual_seed(l)
    n = 5
    u, z, dout = (torch.randn(1, 1, l, generator=g, dtype=torch.float64) for _ in range(3))
    raw = torch.randn(1, 1, l, generator=g, dtype=torch.float64) * (0.1 if slow else 1.0)
    bias = torch.tensor([-6.0 if slow else 0.3], dtype=torch.float64)
    A = -(torch.rand(1, n, generator=g, dtype=torch.float64) + 0.5)
    if spread:
        A = -torch.tensor([[0.5, 2.0, 20.0, 100.0, 300.0]], dtype=torch.float64)
    B, C = (torch.randn(1, n, l, generator=g, dtype=torch.float64) for _ in range(2))
    D = torch.randn(1, dtype=torch.float64)
    h0, dfinal = (torch.randn(1, 1, n, generator=g, dtype=torch.float64) for _ in range(2))
    leaves = [x.clone().requires_grad_(True) for x in (u, raw, A, B, C, D, z, bias, h0)]
    rout, rst = selective_scan_ref(*leaves[:8], True, leaves[8], True)
    rg = torch.autograd.grad((rout, rst), leaves, (dout, dfinal))
    x = raw[0, 0] + bias
    dl = torch.nn.functional.softplus(x)
    out, final, du, ddl, dA, dB, dC, dD, dz, dh0 = _model(
        u[0, 0], dl, A[0], B[0], C[0], D, z[0, 0], h0[0, 0], dout[0, 0], dfinal[0, 0], K, seg_tiles
    )
    ddraw = ddl * torch.sigmoid(x)
    got = dict(out=out, final=final, du=du, ddelta=ddraw, dA=dA, dB=dB, dC=dC, dD=dD, dz=dz, dbias=ddraw.sum(),
               dh0=dh0)
    want = dict(out=rout[0, 0], final=rst[0, 0], du=rg[0][0, 0], ddelta=rg[1][0, 0], dA=rg[2][0], dB=rg[3][0],
                dC=rg[4][0], dD=rg[5], dz=rg[6][0, 0], dbias=rg[7], dh0=rg[8][0, 0])
    for k in want:
        torch.testing.assert_close(got[k].reshape(want[k].shape), want[k], rtol=1e-9, atol=1e-9, msg=k)


class _Ring:
    """The prefetch ring of ``selective_scan_v2.cu`` as its kernels drive it: ``depth + 1`` slots, one
    copy group committed per issue, ``cp.async.wait_group depth`` before each read. Records what each
    read finds and fails if a slot is overwritten before it was read or read before its group is done."""

    def __init__(self, depth):
        self.depth, self.slots, self.put, self.get = depth, [None] * (depth + 1), 0, 0
        self.groups, self.reads = 0, 0  # groups committed, slots read
        self.unread = set()

    def issue(self, item):
        if item is not None:
            assert self.put not in self.unread, "a slot overwritten before it was read"
            self.slots[self.put] = item
            self.unread.add(self.put)
        self.groups += 1
        self.put = 0 if self.put == self.depth else self.put + 1

    def read(self):
        # wait_group(depth): every group but the newest `depth` is complete; this read's group is the
        # (reads)-th one committed
        assert self.reads <= self.groups - 1 - self.depth, "read before its copy group was waited for"
        item = self.slots[self.get]
        self.unread.discard(self.get)
        self.reads += 1
        self.get = 0 if self.get == self.depth else self.get + 1
        return item


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("n,tiles", [(1, 5), (2, 1), (5, 3), (16, 4)])
def test_backward_prefetch_ring_order(depth, n, tiles):
    """The main backward's ring (bwd_kernel with PF): issues run ``depth`` (tile, state) pairs ahead of
    the loops, across tile boundaries (tiles right to left), and every read finds its own pair."""
    tile0, tile1 = 3, 3 + tiles
    ring, cursor = _Ring(depth), [tile1 - 1, 0]

    def issue():
        item = None
        if cursor[0] >= tile0:
            item = tuple(cursor)
            cursor[1] += 1
            if cursor[1] == n:
                cursor[:] = [cursor[0] - 1, 0]
        ring.issue(item)

    for _ in range(depth):
        issue()
    for tile in range(tile1 - 1, tile0 - 1, -1):
        for nn in range(n):
            issue()
            assert ring.read() == (tile, nn)
    assert ring.unread == set()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_fixup_prefetch_ring_order(depth):
    """The fix-up and reverse-summary rings: within a tile, issues skip the states whose decay is
    complete by the tile's start (the same test as the loop's), so reads stay in step with the states
    the loop runs, whichever drop out."""
    a2 = [-0.5, -300.0, -2.0, -90.0, -20.0]  # per state, log2 decay per unit of delta
    cut = 64.0
    for cum in (0.0, 0.25, 1.0, 5.0, 40.0, 200.0):  # the tile's starting sum of delta
        ring, nxt = _Ring(depth), [0]

        def issue():
            j = nxt[0]
            while j < len(a2) and a2[j] * cum < -cut:
                j += 1
            ring.issue(j if j < len(a2) else None)
            nxt[0] = j + 1

        for _ in range(depth):
            issue()
        ran = []
        for nn in range(len(a2)):
            if a2[nn] * cum < -cut:
                continue
            issue()
            assert ring.read() == nn
            ran.append(nn)
        assert ran == [j for j in range(len(a2)) if a2[j] * cum >= -cut]
        assert ring.unread == set()


def test_a_knob_that_is_not_an_integer_is_named(monkeypatch):
    from genomamba.ops.cuda.knobs import _env_int

    monkeypatch.setenv("GENOMAMBA_CUDA_BWD_PREFETCH", "two")
    with pytest.raises(ValueError, match="GENOMAMBA_CUDA_BWD_PREFETCH='two': expected an integer"):
        _env_int("GENOMAMBA_CUDA_BWD_PREFETCH", -1)
    monkeypatch.setenv("GENOMAMBA_CUDA_BWD_PREFETCH", " 2 ")
    assert _env_int("GENOMAMBA_CUDA_BWD_PREFETCH", -1) == 2
    monkeypatch.delenv("GENOMAMBA_CUDA_BWD_PREFETCH")
    assert _env_int("GENOMAMBA_CUDA_BWD_PREFETCH", -1) == -1


def test_prefetch_gate(status, monkeypatch):
    """The prefetch settings reach the kernels only when the self-test part "prefetch" passed, clamped
    to -1..3 (backward; -1 the shipped build), 0..3 (fix-up) and 0..2 (L2 hint mode)."""
    monkeypatch.delenv("GENOMAMBA_CUDA_UNVERIFIED", raising=False)
    status.update(v1=True, v2=True, bwd=True, prefetch="failed: bwd dB rel. error")
    cu.CONFIG.update(bwd_prefetch=2, fix_prefetch=1, l2_prefetch=1)
    assert cu.prefetch_settings() == (-1, 0, 0)  # the shipped kernels
    status.update(prefetch=True)
    assert cu.prefetch_settings() == (2, 1, 1)
    cu.CONFIG.update(bwd_prefetch=7, fix_prefetch=-1, l2_prefetch=0)
    assert cu.prefetch_settings() == (3, 0, 0)
    cu.CONFIG.update(bwd_prefetch=-4, fix_prefetch=9)
    assert cu.prefetch_settings() == (-1, 3, 0)
    cu.CONFIG.update(l2_prefetch=2)  # hints in the backward only
    assert cu.prefetch_settings()[2] == 2
    cu.CONFIG.update(l2_prefetch=5)
    assert cu.prefetch_settings()[2] == 2
    cu.CONFIG.update(l2_prefetch=0)
    # the backward's depth follows the dtype: 16-bit runs take bwd_prefetch, 32/64-bit bwd_prefetch_fp32
    cu.CONFIG.update(bwd_prefetch=2, bwd_prefetch_fp32=-1, fix_prefetch=0)
    assert cu.prefetch_settings(torch.bfloat16) == cu.prefetch_settings(torch.float16) == (2, 0, 0)
    assert cu.prefetch_settings(torch.float32) == cu.prefetch_settings(torch.float64) == (-1, 0, 0)
    cu.CONFIG.update(bwd_prefetch_fp32=5)
    assert cu.prefetch_settings(torch.float32) == (3, 0, 0)
    status.update(prefetch="failed: bwd dB rel. error")
    assert cu.prefetch_settings(torch.bfloat16) == (-1, 0, 0)


def test_unit_stride_copies_a_one_token_view_that_contiguous_leaves_alone():
    """A one-token chunk of a transposed tensor is 'contiguous' with a non-unit last stride; the
    kernels read l with unit stride, so the wrapper must copy it."""
    t = torch.randn(2, 1, 6).transpose(1, 2)  # (b, d, l=1), strides (6, 1, 6)
    assert t.is_contiguous() and t.contiguous().stride(-1) == 6
    got = kernels.unit_stride(t)
    assert got.stride(-1) == 1 and torch.equal(got, t)
    wide = torch.randn(2, 5, 6).transpose(1, 2)
    assert kernels.unit_stride(wide).stride(-1) == 1 and torch.equal(kernels.unit_stride(wide), wide)
    same = torch.randn(2, 6, 3)
    assert kernels.unit_stride(same) is same and kernels.unit_stride(None) is None


def test_wave_segments_fill_whole_waves():
    """Long sequences are cut into as many segments as make one full wave of resident warps (132 SMs
    x 16 warps = 2112 here), not more: a second, mostly idle wave costs more than the longer segments."""
    from genomamba.ops.cuda.knobs import wave_segments

    resident, tile = 16 * 132, 256

    def segs(b, d, l, min_seg=4096):
        ntiles = -(-l // tile)
        return wave_segments(b * d, ntiles, tile, min(max(1, l // max(tile, min_seg)), ntiles), resident, 2048)

    assert segs(1, 512, 1 << 20) == 4  # 2048 warps: one wave
    assert segs(1, 256, 1 << 20) == 8
    assert segs(1, 1536, 65536) == 4  # 6144 warps in 3 waves beat 2 segments' 3072 warps in 2 half-empty waves
    assert segs(4, 512, 16384) == 1  # 2048 warps already fill a wave
    assert segs(8, 1536, 2048) == 1
    assert segs(1, 512, 16384) == 4  # a single record: segments of the 4K floor
    assert segs(1, 512, 16384, min_seg=16384) == 1
    assert segs(1, 1, 1 << 20) == (1 << 20) // 4096  # one channel: every segment the floor allows (256)


def test_build_flags_split_the_optimiser_only_where_nvcc_has_it():
    import shutil

    from genomamba.ops.cuda.build import cuda_flags, nvcc_version

    base = ["-O3", "-lineinfo", "-gencode=arch=compute_90,code=sm_90"]
    assert cuda_flags("90", None) == base
    assert cuda_flags("90", (12, 1)) == base
    assert cuda_flags("90", (12, 4)) == base + ["-split-compile=0"]
    assert cuda_flags("80", (13, 0))[2] == "-gencode=arch=compute_80,code=sm_80"
    assert nvcc_version("/nonexistent/nvcc") is None
    nvcc = shutil.which("nvcc")
    if nvcc is not None:  # the real compiler where there is one
        major, minor = nvcc_version(nvcc)
        assert major >= 10 and minor >= 0


def test_lane_per_channel_backward_gate_and_segments(status, monkeypatch, capsys):
    """Which backward runs: the lane-per-channel one (one or two lanes a channel) only when asked
    for, with its own self-test part passed and n <= 16 (asked for with a failed self-test: a
    notice, then lanes over tokens);
    its segments bring its warps to about bwd_chan_resident per SM on a 132-SM GPU and are never
    shorter than chan_min_seg_tokens."""
    from types import SimpleNamespace

    from genomamba.ops.cuda import knobs
    from genomamba.ops.cuda.knobs import bwd_chan_seg_tiles, bwd_layout

    monkeypatch.delenv("GENOMAMBA_CUDA_UNVERIFIED", raising=False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(multi_processor_count=132))
    status.update(v1=True, v2=True, bwd=True, bwdchan=True)
    cu.CONFIG.update(bwd_chan=0, bwd_chan_resident=8, chan_min_seg_tokens=1024)
    assert bwd_layout(16) == 0  # the default: lanes over tokens
    cu.CONFIG.update(bwd_chan=1)
    assert bwd_layout(16) == 1 and bwd_layout(5) == 1
    assert bwd_layout(17) == 0  # more states than a lane holds
    status.update(bwdchan="bwdchan dB rel. error", bwdchan2=True)
    knobs._noticed.discard("bwdchan")
    assert bwd_layout(16) == 0
    assert "did not pass its self-test" in capsys.readouterr().err
    cu.CONFIG.update(bwd_chan=2)  # two lanes per channel: its own self-test part
    assert bwd_layout(16) == 2
    # (2, 1536, 65536): 192 warps a segment with two lanes a channel, 96 with one: 6 or 11 segments
    assert bwd_chan_seg_tiles(2, 1536, 65536, 8) == 43
    cu.CONFIG.update(bwd_chan=1)
    assert bwd_chan_seg_tiles(2, 1536, 65536, 8) == 24
    # (8, 1536, 2048): 384 warps a segment; 1056 wanted, but no segment under 1024 tokens: two
    assert bwd_chan_seg_tiles(8, 1536, 2048, 8) == 4
    cu.CONFIG.update(chan_min_seg_tokens=512)
    assert bwd_chan_seg_tiles(8, 1536, 2048, 8) == 3  # three segments (3, 3 and 2 tiles)
    # (1, 256, 2^20): 8 warps a segment, 132 segments of 32 tiles (8192 tokens)
    assert bwd_chan_seg_tiles(1, 256, 1 << 20, 8) == 32


@pytest.mark.parametrize("tpc", [2, 4])
def test_lanes_per_channel_sharing_model(tpc):
    """A lane-by-lane model of how the TPC lanes of a channel share its tokens in the lane-per-channel
    forward (fwd_chan_kernel, TPC > 1), with the kernel's loops and index expressions: each lane
    computes the activation of the tokens k = j * TPC + sub of an 8-token group, every lane then
    holds all 8 after the shuffles, and the reduce-scatter (recursive halving over the lane bits)
    leaves each lane the channel's sum for exactly its own tokens."""
    rng = torch.Generator().manual_seed(tpc)
    lanes = range(32)
    sub = {lane: lane % tpc for lane in lanes}
    delta = torch.randn(32 // tpc, 8, generator=rng, dtype=torch.float64)  # per channel and token
    # shares: mine[j] = activation of token j * TPC + sub of the lane's channel
    mine = {lane: [delta[lane // tpc, j * tpc + sub[lane]] for j in range(8 // tpc)] for lane in lanes}
    for lane in lanes:  # dl[k] = shfl(mine[k / TPC], owner0 + k % TPC)
        owner0 = lane - sub[lane]
        dl = [mine[owner0 + k % tpc][k // tpc] for k in range(8)]
        assert torch.equal(torch.stack(dl), delta[lane // tpc])
    # per-lane partial outputs (its share of the states), reduce-scattered as reduce_scatter8<TPC>
    part = {lane: list(torch.randn(8, generator=rng, dtype=torch.float64)) for lane in lanes}
    v = {lane: list(part[lane]) for lane in lanes}
    m = tpc // 2
    while m >= 1:
        new = {lane: list(v[lane]) for lane in lanes}
        for k in range(8):
            if (k % tpc) & (tpc - m):
                continue
            for lane in lanes:
                hi = (sub[lane] & m) != 0
                other = lane ^ m  # __shfl_xor_sync(kFull, send, m): the partner's send
                o_hi = (sub[other] & m) != 0
                send_other = v[other][k] if o_hi else v[other][k + m]
                keep = v[lane][k + m] if hi else v[lane][k]
                new[lane][k] = keep + send_other
        v = new
        m //= 2
    for lane in lanes:
        group = [lane - sub[lane] + s for s in range(tpc)]
        for j in range(8 // tpc):
            k = j * tpc + sub[lane]
            want = sum(part[g][k] for g in group)
            assert torch.allclose(v[lane][j * tpc], want, rtol=0, atol=1e-12), (tpc, lane, j)


def test_a_knob_outside_its_values_is_named(monkeypatch):
    from genomamba.ops.cuda.knobs import CHOICES, CONFIG, _env_int, _env_str

    # every limited knob is a knob, and what it holds now (its default, unless the environment of
    # the test run set it) is one of its values
    assert set(CHOICES) <= set(CONFIG)
    assert all(CONFIG[k] in values for k, values in CHOICES.items())
    monkeypatch.delenv("GENOMAMBA_CUDA_BC_REDUCE", raising=False)
    assert _env_int("GENOMAMBA_CUDA_BC_REDUCE", 1, CHOICES["bc_reduce"]) == 1
    monkeypatch.setenv("GENOMAMBA_CUDA_BC_REDUCE", "2")
    with pytest.raises(ValueError, match=r"GENOMAMBA_CUDA_BC_REDUCE='2': expected one of 0, 1 \(default 1\)"):
        _env_int("GENOMAMBA_CUDA_BC_REDUCE", 1, CHOICES["bc_reduce"])
    monkeypatch.setenv("GENOMAMBA_CUDA_BWD_PREFETCH", "4")
    with pytest.raises(ValueError, match=r"expected one of -1\.\.3"):
        _env_int("GENOMAMBA_CUDA_BWD_PREFETCH", 2, CHOICES["bwd_prefetch"])
    monkeypatch.setenv("GENOMAMBA_CUDA_BWD_PREFETCH", "-1")
    assert _env_int("GENOMAMBA_CUDA_BWD_PREFETCH", 2, CHOICES["bwd_prefetch"]) == -1
    monkeypatch.setenv("GENOMAMBA_CUDA_VARIANT", "V3")
    with pytest.raises(ValueError, match="GENOMAMBA_CUDA_VARIANT='V3': expected one of auto, v1, v2"):
        _env_str("GENOMAMBA_CUDA_VARIANT", "auto", ("auto", "v1", "v2"))
    monkeypatch.setenv("GENOMAMBA_CUDA_VARIANT", " V2 ")
    assert _env_str("GENOMAMBA_CUDA_VARIANT", "auto", ("auto", "v1", "v2")) == "v2"


def test_the_backend_does_not_import_with_a_bad_knob(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, GENOMAMBA_CUDA_FIX_STATE_EXIT="yes please")
    r = subprocess.run([sys.executable, "-c", "import genomamba.ops.cuda"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0 and "GENOMAMBA_CUDA_FIX_STATE_EXIT='yes please': expected an integer" in r.stderr
    env["GENOMAMBA_CUDA_FIX_STATE_EXIT"] = "3"
    r = subprocess.run([sys.executable, "-c", "import genomamba.ops.cuda"], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0 and "GENOMAMBA_CUDA_FIX_STATE_EXIT='3': expected one of 0, 1" in r.stderr
