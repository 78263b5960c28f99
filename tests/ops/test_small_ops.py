"""causal_conv1d and selective_state_update: dispatch vs reference twins, states, and bad input."""

import pytest
import torch
import torch.nn.functional as F

from genomamba.ops import causal_conv1d, selective_scan, selective_state_update
from genomamba.ops.reference import causal_conv1d_ref, selective_scan_ref, selective_state_update_ref
from tests.ops.tolerances import assert_close


@pytest.mark.parametrize("w", [1, 2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_matches_torch_conv(w, activation):
    b, d, l = 2, 5, 37
    x, weight, bias = torch.randn(b, d, l, dtype=torch.float64), torch.randn(d, w, dtype=torch.float64), \
        torch.randn(d, dtype=torch.float64)
    expected = F.conv1d(x, weight.unsqueeze(1), bias, padding=w - 1, groups=d)[..., :l]
    if activation:
        expected = F.silu(expected)
    assert_close(causal_conv1d(x, weight, bias, activation=activation), expected, torch.float64, "conv")


@pytest.mark.parametrize("w", [2, 4])
def test_causal_conv1d_state_carries_across_chunks(w):
    b, d, l = 2, 3, 30
    x, weight = torch.randn(b, d, l, dtype=torch.float64), torch.randn(d, w, dtype=torch.float64)
    whole = causal_conv1d_ref(x, weight, activation="silu")
    a, s = causal_conv1d(x[..., :11], weight, activation="silu", return_final_state=True)
    c, s2 = causal_conv1d(x[..., 11:], weight, initial_state=s, activation="silu", return_final_state=True)
    assert_close(torch.cat([a, c], -1), whole, torch.float64, "conv halves")
    assert_close(s2, x[..., -(w - 1):], torch.float64, "final conv state")


@pytest.mark.parametrize("w", [1, 2, 3, 4])
def test_torch_conv_matches_reference_with_gradients(w):
    from genomamba.ops.torch_conv import causal_conv1d_torch

    b, d, l = 2, 5, 23
    ins = [torch.randn(b, d, l, dtype=torch.float64), torch.randn(d, w, dtype=torch.float64),
           torch.randn(d, dtype=torch.float64), torch.randn(b, d, w - 1, dtype=torch.float64)]
    ins = [t.requires_grad_() for t in ins]
    out, st = causal_conv1d_torch(*ins, activation="silu", return_final_state=True)
    ref, rst = causal_conv1d_ref(*ins, activation="silu", return_final_state=True)
    assert_close(out, ref, torch.float64, "out")
    assert_close(st, rst, torch.float64, "state")
    go = torch.randn_like(out)
    grads, ref_grads = torch.autograd.grad(out, ins, go), torch.autograd.grad(ref, ins, go)
    for g1, g2, name in zip(grads, ref_grads, ["x", "weight", "bias", "initial_state"]):
        assert_close(g1, g2, torch.float64, f"grad {name}")


def test_short_chunk_conv_state():
    """A chunk shorter than w - 1 still leaves the right (b, d, w - 1) state."""
    x, weight = torch.randn(1, 2, 10, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    s = torch.zeros(1, 2, 3, dtype=torch.float64)
    for t in range(10):
        _, s = causal_conv1d(x[..., t:t + 1], weight, initial_state=s, return_final_state=True)
    assert_close(s, x[..., -3:], torch.float64, "state")


@pytest.mark.parametrize("groups", [None, 2])
def test_state_update_equals_scan_steps(groups):
    b, d, n, l = 2, 4, 3, 9
    u, delta, z = torch.randn(b, d, l), torch.rand(b, d, l), torch.randn(b, d, l)
    A, D, bias = -torch.rand(d, n) - 0.1, torch.randn(d), torch.randn(d) * 0.1
    bc = (b, n, l) if groups is None else (b, groups, n, l)
    B, C = torch.randn(*bc), torch.randn(*bc)
    ref, ref_state = selective_scan_ref(u, delta, A, B, C, D, z, bias, True, return_final_state=True)
    state = torch.zeros(b, d, n)
    outs = [selective_state_update(state, u[..., t], delta[..., t], A, B[..., t], C[..., t], D, z[..., t], bias, True)
            for t in range(l)]
    assert_close(torch.stack(outs, -1), ref, torch.float32, "steps")
    assert_close(state, ref_state, torch.float32, "state")
    state2 = torch.zeros(b, d, n)
    out2 = selective_state_update_ref(state2, u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D, z[..., 0], bias,
                                      True)
    assert_close(out2, outs[0], torch.float32, "ref twin")


# ------------------------------------------------------------------------------------- bad input

def _good(b=2, d=4, n=3, l=5):
    return dict(u=torch.randn(b, d, l), delta=torch.rand(b, d, l), A=-torch.rand(d, n), B=torch.randn(b, n, l),
                C=torch.randn(b, n, l), D=torch.randn(d), z=torch.randn(b, d, l), delta_bias=torch.randn(d),
                initial_state=torch.zeros(b, d, n))


@pytest.mark.parametrize("arg,bad,expect", [
    ("u", torch.randn(2, 4), "u: expected a tensor of shape (b, d, l)"),
    ("delta", torch.rand(2, 4, 6), "delta: expected shape (2, 4, 5)"),
    ("A", -torch.rand(5, 3), "A: expected a real tensor of shape (4, n)"),
    ("B", torch.randn(2, 3, 6), "B: expected shape (2, 3, 5)"),
    ("C", torch.randn(2, 3, 3, 5), "C: expected groups g dividing d=4"),
    ("D", torch.randn(5), "D: expected shape (4,)"),
    ("z", torch.randn(1, 4, 5), "z: expected shape (2, 4, 5)"),
    ("delta_bias", torch.randn(4, 1), "delta_bias: expected shape (4,)"),
    ("initial_state", torch.zeros(2, 4, 2), "initial_state: expected shape (2, 4, 3)"),
    ("u", torch.randint(0, 3, (2, 4, 5)), "u: expected a floating-point tensor"),
    ("B", torch.randn(2, 3, 5, dtype=torch.complex64), "B: expected a floating-point tensor"),
])
def test_scan_rejects_bad_arguments(arg, bad, expect):
    kw = _good()
    kw[arg] = bad
    with pytest.raises(ValueError) as e:
        selective_scan(**kw)
    assert expect in str(e.value)


def test_scan_rejects_broadcastable_but_wrong_shapes():
    """(d, 1) D would broadcast silently in plain torch; here it must be refused."""
    kw = _good()
    kw["D"] = torch.randn(4, 1)
    with pytest.raises(ValueError, match="D: expected shape"):
        selective_scan(**kw)


def test_conv_and_update_reject_bad_arguments():
    with pytest.raises(ValueError, match="weight: expected width w in 1..4"):
        causal_conv1d(torch.randn(1, 3, 8), torch.randn(3, 5))
    with pytest.raises(ValueError, match="initial_state: expected shape"):
        causal_conv1d(torch.randn(1, 3, 8), torch.randn(3, 4), initial_state=torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(1, 3, 8), torch.randn(3, 4), activation="relu")
    with pytest.raises(ValueError, match="dt: expected shape"):
        selective_state_update(torch.zeros(2, 4, 3), torch.randn(2, 4), torch.randn(2, 5), -torch.rand(4, 3),
                               torch.randn(2, 3), torch.randn(2, 3))


def test_forced_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("GENOMAMBA_SCAN_BACKEND", "fast")
    with pytest.raises(ValueError, match="GENOMAMBA_SCAN_BACKEND='fast'"):
        selective_scan(**_good())


def test_forced_backend_that_cannot_run_here_is_a_user_error(monkeypatch):
    """A backend that does not run on the tensors' device: an error naming how it was asked for, which
    the command line prints as one line (not as an unexpected error)."""
    from genomamba.errors import is_user_error
    from genomamba.ops import use_backend

    x = _good()  # CPU tensors
    monkeypatch.setenv("GENOMAMBA_SCAN_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match=r"^GENOMAMBA_SCAN_BACKEND=cuda: backend 'cuda' .*does not run on cpu") as e:
        selective_scan(**x)
    assert is_user_error(e.value)
    monkeypatch.delenv("GENOMAMBA_SCAN_BACKEND")
    with use_backend("cuda"), pytest.raises(RuntimeError, match=r"^use_backend\('cuda'\): "):
        selective_scan(**x)
