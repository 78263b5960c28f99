"""The tensor-core decode kernel's layout arithmetic, checked on the CPU (the kernel itself runs in
tests/gpu/test_model_step_gpu.py).

1. Fragments: each lane loads 8 consecutive columns of its weight rows and of its batch row and
   feeds them to mma.sync m16n8k16 as the k = {2t, 2t+1, 2t+8, 2t+9} entries of two k16 steps
   (registers in the order the kernel passes them). Emulating the instruction's documented operand
   layout, the two steps must give the plain product, whatever the values.
2. Work splits: the chunks of d_model per warp in phase A, the d_inner slices and quarter-slices of
   phase D1 and the (batch row, channel) ranges of phase C cover their index sets exactly once, and
   phase C's rows per block stay within what the shared-memory size allows for.
"""

import numpy as np
import pytest

from genomamba.ops.cuda.model_step import mma_out_slices


def mma_m16n8k16(a_regs, b_regs, c):
    """D = A B + C for one warp, from per-lane registers laid out as PTX's mma.m16n8k16 (.row.col):
    a_regs[lane] = 4 pairs (rows g / g+8, columns 2t.. / 2t+8..), b_regs[lane] = 2 pairs (rows 2t.. /
    2t+8.., column g); c (16, 8)."""
    a = np.zeros((16, 16))
    b = np.zeros((16, 8))
    for lane in range(32):
        g, t = lane // 4, lane % 4
        r0, r1, r2, r3 = a_regs[lane]
        a[g, 2 * t:2 * t + 2] = r0
        a[g + 8, 2 * t:2 * t + 2] = r1
        a[g, 2 * t + 8:2 * t + 10] = r2
        a[g + 8, 2 * t + 8:2 * t + 10] = r3
        b0, b1 = b_regs[lane]
        b[2 * t:2 * t + 2, g] = b0
        b[2 * t + 8:2 * t + 10, g] = b1
    return a @ b + c


def as_accumulators(d):
    """The (16, 8) result as each lane holds it: c0, c1 at row g, c2, c3 at row g + 8, columns 2t, 2t+1."""
    return {lane: (d[lane // 4, 2 * (lane % 4)], d[lane // 4, 2 * (lane % 4) + 1],
                   d[lane // 4 + 8, 2 * (lane % 4)], d[lane // 4 + 8, 2 * (lane % 4) + 1]) for lane in range(32)}


@pytest.mark.parametrize("seed", range(3))
def test_sixteen_byte_loads_as_two_k16_steps_give_the_plain_product(seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((16, 32))  # one weight tile, one 32-column chunk
    x = rng.standard_normal((8, 32))  # one n-tile of batch rows
    acc = np.zeros((16, 8))
    for step in range(2):
        a_regs, b_regs = {}, {}
        for lane in range(32):
            g, t = lane // 4, lane % 4
            lo, hi, bv = w[g, 8 * t:8 * t + 8], w[g + 8, 8 * t:8 * t + 8], x[g, 8 * t:8 * t + 8]
            k = 4 * step  # .x, .y of the uint4 for step 0; .z, .w for step 1
            # mma_step: Mma::run(c, lo.x, hi.x, lo.y, hi.y, bv.x, bv.y)
            a_regs[lane] = (lo[k:k + 2], hi[k:k + 2], lo[k + 2:k + 4], hi[k + 2:k + 4])
            b_regs[lane] = (bv[k:k + 2], bv[k + 2:k + 4])
        acc = mma_m16n8k16(a_regs, b_regs, acc)
    np.testing.assert_allclose(acc, w @ x.T, rtol=1e-12, atol=1e-12)
    held = as_accumulators(acc)
    assert held[5] == pytest.approx(((w @ x.T)[1, 2], (w @ x.T)[1, 3], (w @ x.T)[9, 2], (w @ x.T)[9, 3]))


def test_eight_byte_loads_as_one_k16_step_give_the_plain_product():
    """The x_proj share of phase A: 16 channels, one k16 step, 4 columns per lane."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 16))
    x = rng.standard_normal((8, 16))
    a_regs, b_regs = {}, {}
    for lane in range(32):
        g, t = lane // 4, lane % 4
        lo, hi, bv = w[g, 4 * t:4 * t + 4], w[g + 8, 4 * t:4 * t + 4], x[g, 4 * t:4 * t + 4]
        a_regs[lane] = (lo[0:2], hi[0:2], lo[2:4], hi[2:4])
        b_regs[lane] = (bv[0:2], bv[2:4])
    np.testing.assert_allclose(mma_m16n8k16(a_regs, b_regs, np.zeros((16, 8))), w @ x.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d, e", [(64, 128), (256, 512), (768, 1536), (1024, 2048), (2560, 5120), (96, 192)])
@pytest.mark.parametrize("blocks", [1, 46, 108, 132])
def test_work_splits_cover_every_index_once(d, e, blocks):
    # phase A: warp kg of 8 takes chunks kg, kg + 8, ... of d_model's 32-column chunks
    kc = d // 32
    seen = [kg + 8 * j for kg in range(8) for j in range((kc - kg + 7) // 8 if kg < kc else 0)]
    assert sorted(seen) == list(range(kc))
    # phase D1: slice s of S, quarter kq of the slice's chunks
    s_count, kc_e = mma_out_slices(d, e, blocks), e // 32
    seen = []
    for s in range(s_count):
        kc0, nk = s * kc_e // s_count, (s + 1) * kc_e // s_count - s * kc_e // s_count
        assert nk <= -(-kc_e // s_count)  # the staging area holds the widest slice
        seen += [kc0 + kq + 4 * j for kq in range(4) if kq < nk for j in range((nk - kq + 3) // 4)]
    assert sorted(seen) == list(range(kc_e))
    # phase C: contiguous (batch row, channel) ranges, rows per block within the staged bound
    for b in (5, 16, 33, 64):
        pairs, per = b * e, -(-(b * e) // blocks)
        covered = 0
        for blk in range(blocks):
            p0, p1 = blk * per, min(pairs, blk * per + per)
            if p0 >= p1:
                continue
            assert p0 == covered
            covered = p1
            assert (p1 - 1) // e - p0 // e + 1 <= per // e + 2
        assert covered == pairs
