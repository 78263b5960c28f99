"""The backend interface, written once: the three op signatures every backend implements, and the
declaration of what a backend supports, which the dispatch table reads to pick one per call.

Tensor shapes (einops notation), for every backend:

* ``selective_scan``: u, delta, z: (b, d, l); A: (d, n); B, C: (b, n, l) or (b, g, n, l);
  D, delta_bias: (d,); initial_state / final state: (b, d, n). Returns out (b, d, l) in u's dtype,
  or (out, final_state) with ``return_final_state``.
* ``causal_conv1d``: x: (b, d, l); weight: (d, w); bias: (d,); initial_state / final state:
  (b, d, w - 1); activation None or "silu".
* ``selective_state_update``: state (b, d, n), updated in place; x, dt, z: (b, d); A: (d, n);
  B, C: (b, n) or (b, g, n); D, dt_bias: (d,). Returns out (b, d).
* ``mamba_step``: one token through a pre-norm Mamba block (residual add, RMSNorm, the mixer).
  hidden, residual: (b, 1, d_model) (residual None for the first block); conv_state
  (b, d_inner, d_conv - 1) and ssm_state (b, d_inner, n), updated in place; the block's weights as
  :class:`StepWeights`. Returns (out, residual'), both (b, 1, d_model): out in hidden's dtype,
  residual' = hidden + residual (in fp32 with ``StepWeights.residual_in_fp32``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Protocol

import torch

OPS = ("selective_scan", "causal_conv1d", "selective_state_update", "mamba_step")
FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
FAST_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


class SelectiveScan(Protocol):
    def __call__(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                 initial_state=None, return_final_state=False): ...


class CausalConv1d(Protocol):
    def __call__(self, x, weight, bias=None, initial_state=None, activation=None, return_final_state=False): ...


class SelectiveStateUpdate(Protocol):
    def __call__(self, state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False): ...


class StepWeights(NamedTuple):
    """A pre-norm Mamba block's weights, as ``mamba_step`` reads them (biases may be None)."""

    norm_weight: torch.Tensor  # (d_model,)
    norm_eps: float
    in_proj_weight: torch.Tensor  # (2 d_inner, d_model)
    in_proj_bias: Optional[torch.Tensor]  # (2 d_inner,)
    conv_weight: torch.Tensor  # (d_inner, d_conv)
    conv_bias: Optional[torch.Tensor]  # (d_inner,)
    x_proj_weight: torch.Tensor  # (dt_rank + 2 n, d_inner)
    dt_proj_weight: torch.Tensor  # (d_inner, dt_rank)
    dt_proj_bias: torch.Tensor  # (d_inner,)
    A: torch.Tensor  # (d_inner, n), negative
    D: torch.Tensor  # (d_inner,)
    out_proj_weight: torch.Tensor  # (d_model, d_inner)
    out_proj_bias: Optional[torch.Tensor]  # (d_model,)
    # log(-A), (d_inner, n), when the caller has it: the reference and Triton steps then compute
    # A = -exp(A_log) at every call (a step replayed from a CUDA graph sees A_log change in place);
    # A must equal -exp(A_log) for the backends that read A.
    A_log: Optional[torch.Tensor] = None
    residual_in_fp32: bool = False  # residual' in fp32 whatever hidden's dtype (fp64 stays fp64)

    def tensors(self) -> tuple:
        return tuple(t for t in self if isinstance(t, torch.Tensor))


class MambaStep(Protocol):
    def __call__(self, hidden, residual, conv_state, ssm_state, weights: StepWeights): ...


class Call(NamedTuple):
    """What one call asks of a backend, read off its (validated) tensors."""

    op: str
    device: str  # device type: "cpu", "cuda", ...
    dtypes: tuple  # every tensor's dtype
    mixed: bool  # the per-token tensors (u/x, delta, B, C, z) do not share one dtype
    state_size: int  # n
    grouped: bool  # B/C carry a group axis
    needs_grad: bool  # autograd will ask for a backward


def describe(op: str, tensors: tuple, data: tuple, state_size: int, grouped: bool) -> Call:
    """The :class:`Call` for ``op`` on ``tensors`` (None entries skipped); ``data``: the per-token ones."""
    present = tuple(t for t in tensors if t is not None)
    first = data[0]
    return Call(
        op=op,
        device=first.device.type,
        dtypes=tuple(t.dtype for t in present),
        mixed=any(t is not None and t.dtype != first.dtype for t in data),
        state_size=state_size,
        grouped=grouped,
        needs_grad=torch.is_grad_enabled() and any(t.requires_grad for t in present),
    )


def _always(device: str) -> bool:
    return True


@dataclass(frozen=True)
class Backend:
    """One backend and what it supports. ``ops`` maps an op name to a loader returning the function
    (loaders import lazily, so an optional dependency is touched only when its backend is chosen)."""

    name: str
    summary: str
    devices: tuple  # device types it can run on (``available`` may still say no)
    ops: dict  # op name -> () -> function
    dtypes: tuple = FLOATS
    max_state: Optional[int] = None  # largest n
    grouped: bool = True  # B/C with a group axis
    mixed_dtypes: bool = True
    backward: bool = True  # has a backward at all
    backward_verified: Callable[[], bool] = field(default=lambda: True)  # ... that passed on this machine
    compiled: bool = False  # built or compiled on first use (C++/CUDA/Triton)
    available: Callable[[str], bool] = _always  # device type -> usable here (may build on first call)
    why_unavailable: Callable[[], str] = field(default=lambda: "not available on this machine")
    # exception -> True if it means "failed to compile" (None: the backend raises no such errors)
    build_error: Optional[Callable[[BaseException], bool]] = None
    # op -> (call -> why this backend cannot run it, or None): limits of one op beyond those above
    op_limits: dict = field(default_factory=dict)

    def refuses(self, call: Call) -> Optional[str]:
        """Why this backend cannot run ``call`` (None: it can). Availability is checked separately."""
        if call.op not in self.ops:
            return f"has no {call.op}"
        if call.device not in self.devices:
            return f"does not run on {call.device}"
        for dt in call.dtypes:
            if dt not in self.dtypes:
                return f"does not take {str(dt).replace('torch.', '')}"
        if call.mixed and not self.mixed_dtypes:
            return "needs one dtype for all per-token inputs"
        if self.max_state is not None and call.state_size > self.max_state:
            return f"takes n <= {self.max_state}, got n={call.state_size}"
        if call.grouped and not self.grouped:
            return "does not take grouped B/C"
        if call.needs_grad and not self.backward:
            return "has no backward"
        limit = self.op_limits.get(call.op)
        why = None if limit is None else limit(call)
        return why if why is not None else self.unverified(call)

    def unverified(self, call: Call) -> Optional[str]:
        """Why this backend, available, may still not run ``call``: its backward did not pass its
        self-test. Only meaningful once ``available`` has run (a compiled backend's verdicts are
        known after its first build), which is why ``choose`` asks it last."""
        if call.needs_grad and not self.backward_verified():
            return "backward did not pass its self-test here"
        return None

    def function(self, op: str):
        return self.ops[op]()
