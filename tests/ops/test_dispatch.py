"""The dispatch table: one row per op and device, one loop that picks, and fallbacks that say why."""

import pytest
import torch

import genomamba.ops as ops
from genomamba.ops import dispatch
from genomamba.ops.backend import FAST_FLOATS, Backend
from genomamba.ops.reference import selective_scan_ref


def _scan_inputs(dtype=torch.float32, n=4, l=9, grad=False):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, 6, l, generator=g, dtype=dtype).requires_grad_(grad)
    delta = torch.rand(1, 6, l, generator=g, dtype=dtype)
    A = -torch.rand(6, n, generator=g, dtype=dtype) - 0.5
    B, C = (torch.randn(1, n, l, generator=g, dtype=dtype) for _ in range(2))
    return u, delta, A, B, C


def test_every_op_has_a_row_per_device_ending_in_its_reference():
    for op, rows in dispatch.TABLE.items():
        assert set(rows) >= {"cpu", "cuda", "*"}
        for names in rows.values():
            assert names[-1] == "ref", (op, names)
            for name in names:
                assert op in dispatch.BACKENDS[name].ops, (op, name)
    rows = ops.table(("cpu",))
    assert {(r["op"], r["device"]) for r in rows} == {(op, "cpu") for op in dispatch.TABLE}
    text = ops.format_table(rows)
    assert "selective_scan" in text and "cpp" in text and "ref" in text


def test_backend_for_names_the_backend_that_runs():
    u, delta, A, B, C = _scan_inputs()
    want = "cpp" if dispatch.BACKENDS["cpp"].available("cpu") else "torch"
    assert ops.backend_for("selective_scan", u, delta, A, B, C) == want
    assert ops.backend_for(torch.device("cpu")) == want
    x, w = torch.randn(1, 6, 9), torch.randn(6, 4)
    assert ops.backend_for("causal_conv1d", x, w) == "torch"
    state = torch.zeros(1, 6, 4)
    assert ops.backend_for("selective_state_update", state, x[..., 0], x[..., 1], A, B[..., 0], C[..., 0]) == "ref"
    with ops.use_backend("ref"):
        assert ops.backend_for("selective_scan", u, delta, A, B, C) == "ref"
    with ops.use_backend("torch"):
        assert ops.backend_for("selective_scan", u, delta, A, B, C) == "torch"


def test_forced_backend_that_cannot_run_the_op_hands_it_down_and_says_why_once(capsys):
    x, w = torch.randn(1, 6, 9), torch.randn(6, 4)
    dispatch._notices.discard(("cpp", "causal_conv1d", "has no causal_conv1d"))
    with ops.use_backend("cpp"):
        if not dispatch.BACKENDS["cpp"].available("cpu"):
            pytest.skip("C++ scan not built here")
        out = ops.causal_conv1d(x, w, activation="silu")
        ops.causal_conv1d(x, w, activation="silu")
    torch.testing.assert_close(out, ops.causal_conv1d_ref(x, w, activation="silu"))
    err = [ln for ln in capsys.readouterr().err.splitlines() if "causal_conv1d" in ln]
    assert err == ["genomamba: causal_conv1d on cpu: cpp has no causal_conv1d; using torch"]


def test_forced_backend_not_available_here_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("checks a machine without CUDA")
    u, delta, A, B, C = _scan_inputs()
    with ops.use_backend("cuda"), pytest.raises(RuntimeError, match="'cuda' was requested"):
        ops.selective_scan(u, delta, A, B, C)
    with pytest.raises(ValueError, match="expected one of"):
        with ops.use_backend("fastest"):
            pass


def test_triton_forced_on_cpu_tensors_says_why_on_either_machine(monkeypatch):
    """Forcing the Triton backend for CPU tensors without its interpreter is an error naming the
    setting and the reason: no CUDA device, or (on a GPU machine) that the tensors are on the CPU."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton not installed")
    u, delta, A, B, C = _scan_inputs()
    for gpu, says in ((False, "no CUDA device"), (True, "the tensors are on the CPU")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda gpu=gpu: gpu)
        with ops.use_backend("triton"), pytest.raises(RuntimeError, match="'triton' was requested") as e:
            ops.selective_scan(u, delta, A, B, C)
        assert says in str(e.value) and "TRITON_INTERPRET=1" in str(e.value)


def test_triton_hands_fp64_down_the_table(capsys):
    """Triton keeps an fp32 state: a forced fp64 call runs on the next backend, equal to the oracle."""
    if not dispatch.BACKENDS["triton"].available("cpu"):
        pytest.skip("triton (interpreter) not available")
    u, delta, A, B, C = _scan_inputs(torch.float64)
    with ops.use_backend("triton"):
        name = ops.backend_for("selective_scan", u, delta, A, B, C)
        out = ops.selective_scan(u, delta, A, B, C, delta_softplus=True)
    assert name in ("cpp", "torch")
    torch.testing.assert_close(out, selective_scan_ref(u, delta, A, B, C, delta_softplus=True))
    assert "triton does not take float64; using " + name in capsys.readouterr().err


class _CompileFailed(Exception):
    pass


def test_a_backend_that_fails_to_compile_is_dropped_for_that_op(monkeypatch, capsys):
    """The compile-failure fallback lives in the dispatch loop: the call runs on the next backend,
    and the broken one is not tried again."""
    calls = []

    def broken_scan(*args):
        calls.append(1)
        raise _CompileFailed("kernel did not compile")

    flaky = Backend(name="flaky", summary="a backend whose kernel fails to compile", devices=("cpu",),
                    ops={"selective_scan": lambda: broken_scan}, dtypes=FAST_FLOATS, compiled=True,
                    build_error=lambda exc: isinstance(exc, _CompileFailed))
    monkeypatch.setitem(dispatch.BACKENDS, "flaky", flaky)
    monkeypatch.setitem(dispatch.TABLE, "selective_scan", {**dispatch.TABLE["selective_scan"],
                                                           "cpu": ("flaky", "torch", "ref")})
    u, delta, A, B, C = _scan_inputs()
    for _ in range(2):
        out = ops.selective_scan(u, delta, A, B, C)
        torch.testing.assert_close(out, selective_scan_ref(u, delta, A, B, C), rtol=1e-5, atol=1e-5)
    assert len(calls) == 1
    err = capsys.readouterr().err
    assert err.count("flaky selective_scan failed to compile (_CompileFailed)") == 1
    # an ordinary error inside a backend is the caller's error, never swallowed
    dispatch._broken.discard(("flaky", "selective_scan"))
    monkeypatch.setitem(dispatch.BACKENDS, "flaky", Backend(
        name="flaky", summary="", devices=("cpu",), ops={"selective_scan": lambda: broken_scan},
        build_error=lambda exc: False))
    with pytest.raises(_CompileFailed):
        ops.selective_scan(u, delta, A, B, C)
    dispatch._broken.discard(("flaky", "selective_scan"))


def test_gradients_only_where_a_backward_exists():
    u, delta, A, B, C = _scan_inputs(grad=True)
    call = ops._scan_call(u, delta, A, B, C)
    assert call.needs_grad
    nobwd = Backend(name="fwd-only", summary="", devices=("cpu",), ops={"selective_scan": lambda: None},
                    backward=False)
    assert nobwd.refuses(call) == "has no backward"
    with torch.no_grad():
        assert nobwd.refuses(ops._scan_call(u, delta, A, B, C)) is None


def test_a_backward_verified_at_first_build_is_chosen_for_the_first_call(monkeypatch):
    """A compiled backend learns whether its backward passed its self-test when it is first built
    (``available``). A process whose first call needs gradients must still get that backward."""
    state = {"built": False, "ran": 0}

    def build(_device):
        state["built"] = True
        return True

    def scan(u, delta, A, B, C, *args, **kwargs):
        state["ran"] += 1
        return selective_scan_ref(u, delta, A, B, C, *args, **kwargs)

    late = Backend(name="late", summary="", devices=("cpu",), ops={"selective_scan": lambda: scan},
                   compiled=True, available=build, backward_verified=lambda: state["built"])
    monkeypatch.setitem(dispatch.BACKENDS, "late", late)
    monkeypatch.setitem(dispatch.TABLE, "selective_scan", {**dispatch.TABLE["selective_scan"],
                                                           "cpu": ("late", "torch", "ref")})
    u, delta, A, B, C = _scan_inputs(grad=True)
    assert ops.backend_for("selective_scan", u, delta, A, B, C) == "late"
    ops.selective_scan(u, delta, A, B, C).sum().backward()
    assert state["built"] and state["ran"] == 1 and u.grad is not None
