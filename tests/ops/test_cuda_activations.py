"""The CUDA scan's softplus, read from its source and evaluated in fp32 the way the kernel does it.

The kernels compute ``log(1 + e^x)`` as ``max(x, 0) + e q(e)`` with ``e = e^-|x|`` and ``q`` a
polynomial in Horner form (one exponential, nine FMAs, no branch). The coefficients live only in
``csrc/selective_scan/selective_scan_v2.cu``; this test parses them from there, so a mistyped or
reordered coefficient fails here, on any machine, before a GPU ever runs it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from genomamba.ops._sources import csrc_dir

SOURCE = csrc_dir("selective_scan") / "selective_scan_v2.cu"


def _coefficients() -> list[float]:
    """q's coefficients, highest degree first, as the kernel's Horner steps use them."""
    text = SOURCE.read_text()
    m = re.search(r"float softplus_f\(float x\) \{(.*?)\n\}", text, re.S)
    assert m, f"{SOURCE.name}: no softplus_f definition"
    body = m.group(1)
    first = re.search(r"float q = ([-+0-9.e]+)f;", body)
    steps = re.findall(r"q = fmaf\(q, e, ([-+0-9.e]+)f\);", body)
    assert first and steps, f"{SOURCE.name}: softplus_f is not a Horner polynomial in e"
    return [float(first.group(1))] + [float(c) for c in steps]


def _fma32(a, b, c):
    """fp32 fused multiply-add: the product of two fp32 values is exact in fp64, one rounding to fp32."""
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(np.float32)


def _log1p_part(e: np.ndarray, coeffs) -> np.ndarray:
    """q(e) in fp32, Horner order (the kernel's final FMA then adds e q(e) to max(x, 0))."""
    q = np.full_like(e, np.float32(coeffs[0]))
    for c in coeffs[1:]:
        q = _fma32(q, e, np.full_like(e, np.float32(c)))
    return q


def _softplus32(x: np.ndarray, coeffs) -> np.ndarray:
    x = x.astype(np.float32)
    e = np.exp2(-np.abs(x) * np.float32(1.4426950408889634)).astype(np.float32)
    q = _log1p_part(e, coeffs)
    return _fma32(e, q, np.maximum(x, np.float32(0)))


def test_polynomial_matches_log1p_over_its_whole_range():
    coeffs = _coefficients()
    assert len(coeffs) == 9  # degree 8
    # normal fp32 only (e down to 1e-37): a process may flush denormals to zero (torch.set_flush_denormal)
    e = np.concatenate([np.linspace(0, 1, 200_001)[1:], np.logspace(-37, 0, 4_001)]).astype(np.float32)
    q = _log1p_part(e, coeffs)
    got = e.astype(np.float64) * q.astype(np.float64)
    want = np.log1p(e.astype(np.float64))
    rel = np.abs(got / want - 1)
    assert rel.max() < 2e-7, f"max relative error {rel.max():.3g} at e = {e[rel.argmax()]!r}"


@pytest.mark.parametrize("lo,hi", [(-87.0, -20.0), (-20.0, 20.0), (20.0, 90.0)])
def test_softplus_matches_fp64(lo, hi):
    coeffs = _coefficients()
    x = np.linspace(lo, hi, 100_001).astype(np.float32)
    got = _softplus32(x, coeffs).astype(np.float64)
    xd = x.astype(np.float64)
    want = np.maximum(xd, 0) + np.log1p(np.exp(-np.abs(xd)))
    # the fp32 rounding of the exponent's argument -|x| log2(e) alone is worth up to ~|x| * 6e-8
    # relative in e (as in any fp32 exponential); the rest is the polynomial's 2e-7
    excess = np.abs(got - want) / want / (3e-7 + 1e-7 * np.abs(xd))
    assert excess.max() < 1, f"relative error {excess.max():.3g} x its bound at x = {x[excess.argmax()]!r}"
    if lo >= 20.0:  # torch's threshold: softplus(x) == x above 20, and so here
        assert np.array_equal(got, xd)


def test_softplus_edges():
    coeffs = _coefficients()
    x = np.array([0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0, -104.0], dtype=np.float32)  # normal e down to -87
    got = _softplus32(x, coeffs)
    assert abs(float(got[0]) - math.log(2)) < 1e-7 and got[0] == got[1]
    assert got[4] == np.float32(88.0)
    assert 0 <= float(got[6]) < 1e-37  # far below zero: e underflows (flushed to zero on the GPU), softplus 0


def test_a_wrong_coefficient_is_caught():
    """The checks above are sharp enough to see one coefficient off by a part in 10^4."""
    coeffs = _coefficients()
    bad = list(coeffs)
    bad[4] *= 1.0001
    e = np.linspace(0, 1, 10_001)[1:].astype(np.float32)
    q = _log1p_part(e, bad)
    rel = np.abs(e.astype(np.float64) * q / np.log1p(e.astype(np.float64)) - 1)
    assert rel.max() > 2e-7
