"""genomamba's kernels behind five functionals; model code imports only these.

Each call is validated here once (:mod:`~genomamba.ops.checks`), described by what it asks of a
backend (device, dtypes, state size, grouped B/C, gradients), and run by the backend the dispatch
table picks (:mod:`~genomamba.ops.dispatch`; print it with ``genomamba bench verify``):

    selective_scan          cuda: cuda -> triton -> torch -> ref      cpu: cpp -> torch -> ref
    causal_conv1d           cuda: triton -> torch -> ref              cpu: torch -> ref
    selective_state_update  cuda: triton -> ref                       cpu: ref
    mamba_step              cuda: triton -> ref                       cpu: cpp -> ref
    add_rms_norm            cuda: triton -> ref                       cpu: ref

``mamba_step`` is a whole pre-norm block's decode step in one call. For token after token with the
same states, :func:`mamba_step_plan` validates and picks the backend once and returns the step to
call; a plan that would run only the reference tells its caller to compose the step from the
other functionals instead (``plan.fused`` is False), which pick their own fast backends. On CUDA the
Triton step (:mod:`genomamba.ops.triton.step`) runs a block's token in seven launches (norm, conv
step and state update kernels, four cuBLAS matmuls), fit for a captured decode graph; on CPU the
C++ one runs it in one call.

``GENOMAMBA_SCAN_BACKEND`` (environment) or :func:`use_backend` puts one backend first, for
benchmarks and tests; :func:`backend_for` says which backend a call would really run on.
"""

from __future__ import annotations

import torch

from genomamba.ops.backend import Call, StepWeights, describe
from genomamba.ops.checks import (
    check_add_rms_norm_args,
    check_conv_args,
    check_scan_args,
    check_state_update_args,
    check_step_args,
    first_mismatch,
)
from genomamba.ops.dispatch import choose, distrust, drop, format_table, requested_backend, run, table, use_backend
from genomamba.ops.reference import (
    add_rms_norm_ref,
    causal_conv1d_ref,
    mamba_step_ref,
    selective_scan_ref,
    selective_state_update_ref,
)


def _scan_call(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None) -> Call:
    return describe("selective_scan", (u, delta, A, B, C, D, z, delta_bias, initial_state), (u, delta, B, C, z),
                    A.shape[1], B.dim() == 4 or C.dim() == 4)


def _conv_call(x, weight, bias=None, initial_state=None) -> Call:
    return describe("causal_conv1d", (x, weight, bias, initial_state), (x,), 0, False)


def _update_call(state, x, dt, A, B, C, D=None, z=None, dt_bias=None) -> Call:
    return describe("selective_state_update", (state, x, dt, A, B, C, D, z, dt_bias), (x, dt, B, C, z),
                    state.shape[2], B.dim() == 3 or C.dim() == 3)


def _step_call(hidden, residual, conv_state, ssm_state, weights) -> Call:
    data = (hidden, residual, conv_state) + weights.tensors()
    return describe("mamba_step", data + (ssm_state,), data, ssm_state.shape[2], False)


def _norm_call(hidden, residual, weight) -> Call:
    return describe("add_rms_norm", (hidden, residual, weight), (hidden,), 0, False)


_CALLS = {"selective_scan": _scan_call, "causal_conv1d": _conv_call, "selective_state_update": _update_call,
          "mamba_step": _step_call, "add_rms_norm": _norm_call}


def backend_for(op="selective_scan", *tensors, **named) -> str:
    """The backend that will really run ``op`` on these arguments, e.g.
    ``backend_for("selective_scan", u, delta, A, B, C)`` (positional or named as in the op).

    ``backend_for(device)`` (or ``backend_for(device, op)``) answers for an fp32 call without
    gradients on that device."""
    if isinstance(op, (torch.device, str)) and op not in _CALLS:
        device = torch.device(op)
        name = tensors[0] if tensors else named.get("op", "selective_scan")
        call = Call(name, device.type, (torch.float32,), False, 16, False, False)
    else:
        call = _CALLS[op](*tensors, **named)
    return choose(call).name


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
    """Selective scan (Mamba, Algorithm 2) with mamba_ssm's ``selective_scan_fn`` semantics.

    u, delta, z: (b, d, l); A: (d, n) real; B, C: (b, n, l) or (b, g, n, l); D, delta_bias: (d,);
    initial_state / final state: (b, d, n), fp32 (fp64 for fp64 inputs). Differentiable in every
    tensor argument, initial_state included. Returns out (b, d, l) in u's dtype, or (out, final_state).
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    call = _scan_call(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return run(call, u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state,
               bool(return_final_state))


def causal_conv1d(x, weight, bias=None, initial_state=None, activation=None, return_final_state=False):
    """Depthwise causal conv1d. x: (b, d, l); weight: (d, w), w <= 4; bias: (d,);
    initial_state / final state: (b, d, w - 1); activation: None or "silu"."""
    activation = check_conv_args(x, weight, bias, initial_state, activation)
    return run(_conv_call(x, weight, bias, initial_state), x, weight, bias, initial_state, activation,
               return_final_state)


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One recurrent step; updates ``state`` (b, d, n) in place and returns out (b, d).

    x, dt, z: (b, d); A: (d, n); B, C: (b, n) or (b, g, n); D, dt_bias: (d,).
    """
    check_state_update_args(state, x, dt, A, B, C, D, z, dt_bias)
    return run(_update_call(state, x, dt, A, B, C, D, z, dt_bias), state, x, dt, A, B, C, D, z, dt_bias,
               dt_softplus)


def add_rms_norm(hidden, residual, weight, eps=1e-5, residual_in_fp32=False, out_dtype=None):
    """A pre-norm block's entry in one pass: ``res = hidden + residual`` (``hidden`` alone when
    residual is None), then RMSNorm of ``res`` (read in the weight's dtype, computed in fp32, output
    in the weight's dtype, or in ``out_dtype``: e.g. the autocast dtype the next matmul reads, without
    a separate cast). Returns (normed, res); res is fp32 with ``residual_in_fp32``.

    hidden, residual: (..., d); weight: (d,). Differentiable in all three.
    """
    check_add_rms_norm_args(hidden, residual, weight, eps, out_dtype)
    return run(_norm_call(hidden, residual, weight), hidden, residual, weight, eps, bool(residual_in_fp32),
               out_dtype)


class StepPlan:
    """``mamba_step`` for one block's states, validated and dispatched once: ``plan(hidden, residual)``
    -> (out, residual'), updating ``conv_state`` and ``ssm_state`` in place. Valid while the states,
    the shapes and dtypes of hidden and residual, the weights and the grad mode stay as they were."""

    __slots__ = ("backend", "fused", "conv_state", "ssm_state", "weights", "_fn", "_first")

    def __init__(self, backend, conv_state, ssm_state, weights: StepWeights, call: Call):
        self.backend = backend.name
        self.fused = backend.compiled  # a compiled kernel runs the whole step
        self.conv_state, self.ssm_state, self.weights = conv_state, ssm_state, weights
        self._fn = backend.function("mamba_step")
        # a compiled backend's first token is checked: its kernels may fail to compile there (the
        # step then goes down the table), and once per process and dtype it is compared with the
        # reference twin (a disagreement drops the backend for mamba_step, with one line)
        self._first = (backend, call) if backend.compiled else None

    def __call__(self, hidden, residual):
        if self._first is not None:
            return self._first_call(hidden, residual)
        return self._fn(hidden, residual, self.conv_state, self.ssm_state, self.weights)

    def _first_call(self, hidden, residual):
        """The first token, as the class says; the states are put back as they were before the step
        runs again on the next backend."""
        (backend, call), self._first = self._first, None
        saved = (self.conv_state.clone(), self.ssm_state.clone())
        try:
            got = self._fn(hidden, residual, self.conv_state, self.ssm_state, self.weights)
            key = (backend.name, hidden.dtype, hidden.device.type)
            if key in _VERIFIED:
                return got
            why = self._differs_from_reference(hidden, residual, saved, got)
            if why is None:
                _VERIFIED.add(key)
                return got
            distrust(backend, "mamba_step", why)
        except Exception as exc:
            if backend.build_error is None or not backend.build_error(exc):
                raise
            drop(backend, "mamba_step", exc)
        self.conv_state.copy_(saved[0])
        self.ssm_state.copy_(saved[1])
        nxt = choose(call)
        self.backend, self._fn = nxt.name, nxt.function("mamba_step")
        self.fused = nxt.compiled
        self._first = (nxt, call) if nxt.compiled else None
        return self(hidden, residual)

    def _differs_from_reference(self, hidden, residual, saved, got) -> "str | None":
        """None if one step from ``saved`` states matches ``mamba_step_ref``; else what differs."""
        conv, ssm = saved[0].clone(), saved[1].clone()
        ref = mamba_step_ref(hidden, residual, conv, ssm, self.weights)
        tol = 5e-2 if hidden.dtype in (torch.bfloat16, torch.float16) else 1e-3
        bad = first_mismatch((("out", got[0], ref[0]), ("residual", got[1], ref[1]),
                              ("conv_state", self.conv_state, conv), ("ssm_state", self.ssm_state, ssm)), tol)
        return None if bad is None else f"gave {bad[0]} values that differ from the reference (max |diff| {bad[1]:.3g})"


_VERIFIED: set = set()  # (backend, dtype, device type) whose first step matched the reference


def mamba_step_plan(hidden, residual, conv_state, ssm_state, weights: StepWeights) -> StepPlan:
    """Validate a ``mamba_step`` call and choose its backend, once, for the tokens that follow."""
    check_step_args(hidden, residual, conv_state, ssm_state, weights)
    call = _step_call(hidden, residual, conv_state, ssm_state, weights)
    return StepPlan(choose(call), conv_state, ssm_state, weights, call)


def mamba_step(hidden, residual, conv_state, ssm_state, weights: StepWeights):
    """One token through a pre-norm Mamba block (residual add, RMSNorm, mixer); updates conv_state and
    ssm_state in place and returns (out, residual').

    hidden, residual: (b, 1, d_model) (residual None for the first block); conv_state
    (b, d_inner, d_conv - 1); ssm_state (b, d_inner, n) fp32 (or the model's dtype); ``weights``: a
    :class:`~genomamba.ops.backend.StepWeights`. Not differentiable on the compiled backend.
    """
    return tuple(mamba_step_plan(hidden, residual, conv_state, ssm_state, weights)(hidden, residual))


__all__ = [
    "selective_scan",
    "causal_conv1d",
    "selective_state_update",
    "mamba_step",
    "mamba_step_plan",
    "add_rms_norm",
    "add_rms_norm_ref",
    "StepPlan",
    "StepWeights",
    "selective_scan_ref",
    "causal_conv1d_ref",
    "selective_state_update_ref",
    "mamba_step_ref",
    "use_backend",
    "backend_for",
    "requested_backend",
    "check_scan_args",
    "table",
    "format_table",
]
