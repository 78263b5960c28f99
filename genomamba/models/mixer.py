"""The Mamba block (selective SSM mixer), its pre-norm residual wrapper, and RMSNorm.

Parameter names and shapes follow mamba_ssm's ``Mamba`` / ``Block`` so official checkpoints load by key.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from genomamba.config import MambaConfig
from genomamba.models.recompute import rebuilt
from genomamba.ops import (
    StepWeights,
    add_rms_norm,
    causal_conv1d,
    mamba_step_plan,
    requested_backend,
    selective_scan,
    selective_state_update,
)
from genomamba.ops.mixer_fn import kernels_for, mixer_forward
from genomamba.parallel.context import check_slice, context_parallel_scan, halo_exchange


def _up(t: torch.Tensor) -> torch.Tensor:
    """fp32 for the SSM parameters and norms (fp64 stays fp64: an fp64 model computes in fp64)."""
    return t if t.dtype == torch.float64 else t.float()


def _autocast_input(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a matmul under the current autocast would read it (cast once here, so that the
    tensor the matmul keeps for its backward is this one)."""
    dtype = _autocast_dtype(t)
    return t if dtype is None else t.to(dtype)


def _autocast_dtype(t: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype a matmul under the current autocast reads ``t`` in, where it would cast it; else None."""
    dev = t.device.type
    if t.dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return None


def _version(t: torch.Tensor) -> int:
    """``t``'s in-place version counter; 0 for a tensor made under ``torch.inference_mode`` (a model
    built there), which keeps none."""
    return 0 if t.is_inference() else t._version


def _no_decay(p: nn.Parameter) -> nn.Parameter:
    p._no_weight_decay = True
    return p


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (as mamba_ssm's fused kernel does), output in the input's dtype."""

    def __init__(self, d: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = _no_decay(nn.Parameter(torch.ones(d, device=device, dtype=dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = _up(x)
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * _up(self.weight)).to(x.dtype)


def channels_first(t: torch.Tensor) -> bool:
    """Whether a layer computes its projections as (b, ·, l) products (on GPUs: the conv and scan
    kernels then read x, z, delta, B and C with l as the unit-stride axis, no transposed copies) or
    as one (b * l, ·) GEMM each (elsewhere: faster on CPUs, whose kernels copy to their own layout)."""
    return t.device.type == "cuda"


def channel_proj(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight`` (o, i) applied along axis 1 of ``x`` (b, i, l): (b, o, l), contiguous, l the unit-stride
    axis. One batched GEMM over the shared weight; ``torch.matmul`` would instead compute it as
    (x^T W^T)^T, whose result has l as its slowest axis, so every kernel after it paid a transposed copy."""
    weight = _autocast_input(weight)  # cast once, before the expand (a cast after it copies b times)
    return torch.bmm(weight.unsqueeze(0).expand(x.shape[0], -1, -1), x)


def token_proj(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``weight`` (o, i) applied to the channels of ``x`` (b, i, l): (b, l, o), contiguous, read straight
    from the channels-first layout (a linear layer on its transposed view copies it first when b > 1)."""
    weight = _autocast_input(weight)
    out = torch.bmm(x.transpose(1, 2), weight.t().unsqueeze(0).expand(x.shape[0], -1, -1))
    return out if bias is None else out + bias.to(out.dtype)


class LayerCache:
    """Recurrent state of one Mamba layer: conv_state (b, d_inner, d_conv - 1), ssm_state (b, d_inner, n)
    in fp32 (fp64 in an fp64 model).

    ``step_plan`` is the decode step prepared for these states (see ``Block.step``), with the key it
    was prepared under; it is rebuilt whenever the states or the key change."""

    __slots__ = ("conv_state", "ssm_state", "step_plan")

    def __init__(self, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        self.conv_state = conv_state
        self.ssm_state = ssm_state
        self.step_plan = None


class Mamba(nn.Module):
    """Selective SSM mixer: in_proj -> causal conv1d -> SiLU -> x_proj -> (dt, B, C) -> scan -> gate -> out_proj."""

    # A ``genomamba.parallel.ContextParallel`` while the sequence is split over its ranks (see
    # ``MambaLM.set_context_parallel``): forward then takes this rank's slice.
    context_parallel = None
    # Training: keep the block's normed input, the conv's output and delta for the backward (False:
    # the fastest, the one-node mixer then computes nothing again), or rebuild them there from what
    # stays saved anyway (True; genomamba.models.recompute; the one-node mixer then also runs in_proj
    # again instead of keeping its output). None: rebuild on GPUs, whose memory bounds the context
    # length (in_proj again only in segment-wise training); keep on CPUs. Same gradients either way.
    rebuild_inputs: Optional[bool] = None

    def __init__(self, config: MambaConfig, layer_idx: int = 0, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.d_model = config.d_model
        self.d_state = config.d_state
        self.d_conv = config.d_conv
        self.d_inner = config.d_inner
        self.dt_rank = config.resolved_dt_rank
        self.layer_idx = layer_idx

        self.in_proj = nn.Linear(self.d_model, 2 * self.d_inner, bias=config.bias, **fk)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, config.d_conv, groups=self.d_inner,
                                padding=config.d_conv - 1, bias=config.conv_bias, **fk)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False, **fk)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **fk)
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=config.bias, **fk)
        for lin in (self.in_proj, self.out_proj, self.conv1d):
            if lin.bias is not None:
                _no_decay(lin.bias)
        _no_decay(self.dt_proj.bias)

        # Delta initialisation (paper 3.6): dt ~ LogUniform[dt_min, dt_max], stored as softplus^-1(dt)
        dt_init_std = self.dt_rank**-0.5 * config.dt_scale
        with torch.no_grad():
            if config.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, dt_init_std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
            dt = torch.exp(torch.rand(self.d_inner, device=device, dtype=torch.float32)
                           * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min))
            dt = dt.clamp(min=config.dt_init_floor)
            inv_softplus = dt + torch.log(-torch.expm1(-dt))  # softplus^-1, stable for small dt
            self.dt_proj.bias.copy_(inv_softplus)
        self.dt_proj.bias._no_reinit = True

        # S4D-real: A_n = -(n + 1), stored as log for positivity under gradient steps
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)
        self.A_log = _no_decay(nn.Parameter(torch.log(A)))  # (d_inner, n)
        self.D = _no_decay(nn.Parameter(torch.ones(self.d_inner, device=device)))  # (d_inner,)

    def _ssm_inputs(self, x: torch.Tensor, recipe=None):
        """x: (b, d_inner, l) after conv+SiLU -> dt (b, d_inner, l), B, C (b, n, l). ``recipe``
        (see ``genomamba.models.recompute``) learns how to rebuild dt from x_proj's small output."""
        cf = channels_first(x)
        if cf:  # (b, ·, l) products: no transposed copy of x
            x_dbl = channel_proj(self.x_proj.weight, x)  # (b, dt_rank + 2n, l)
            dt_in, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
            B, C = B.contiguous(), C.contiguous()
        else:
            x_dbl = self.x_proj(rearrange(x, "b d l -> (b l) d"))  # (b*l, dt_rank + 2n): one GEMM
            dt_in, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            B = rearrange(B, "(b l) n -> b n l", l=x.shape[-1]).contiguous()
            C = rearrange(C, "(b l) n -> b n l", l=x.shape[-1]).contiguous()
        l = x.shape[-1]
        dt = self._dt(dt_in, l, cf)
        if recipe is not None:  # the recipe must not hold x: that would keep u alive
            recipe(dt, lambda: self._dt(dt_in, l, cf))
        return dt, B, C

    def _dt(self, dt_in: torch.Tensor, l: int, cf: bool) -> torch.Tensor:
        """dt_proj without its bias (that goes into the scan as delta_bias): (b, d_inner, l)."""
        if cf:
            return channel_proj(self.dt_proj.weight, dt_in)
        return rearrange(self.dt_proj.weight @ dt_in.t(), "d (b l) -> b d l", l=l)

    def _rebuilds(self, x: torch.Tensor) -> bool:
        """Whether this forward saves recipes for u and delta instead of the tensors (training only)."""
        want = self.rebuild_inputs
        if want is None:
            want = x.device.type == "cuda"
        return bool(want) and torch.is_grad_enabled() and self.A_log.requires_grad

    def _fused_kernels(self, hidden: torch.Tensor):
        """The kernels of the one-node training mixer (``genomamba.ops.mixer_fn``) for this call, or None
        (the per-op path): training on CUDA, where the CUDA scan backward and the Triton conv run."""
        if not (torch.is_grad_enabled() and self.A_log.requires_grad and hidden.dim() == 3):
            return None
        dev = hidden.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) and hidden.dtype != torch.float64 \
            else hidden.dtype
        return kernels_for(hidden.device, dtype, self.d_state, self.d_conv)

    def forward(self, hidden: torch.Tensor, cache: Optional[LayerCache] = None) -> torch.Tensor:
        """hidden: (b, l, d_model). With ``cache``, start from its states and leave the final ones in it."""
        if self.context_parallel is None:
            kernels = self._fused_kernels(hidden)
            if kernels is not None:
                args = (hidden, self.in_proj.weight, self.in_proj.bias, rearrange(self.conv1d.weight, "d 1 w -> d w"),
                        self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight, _up(self.dt_proj.bias),
                        -torch.exp(_up(self.A_log)), _up(self.D), self.out_proj.weight, self.out_proj.bias,
                        self.d_state, kernels)
                # in_proj's output computed again in the backward instead of kept: asked for, or by default
                # in segment-wise training on GPUs (memory is what segments are for)
                rebuilds = self._rebuilds(hidden)
                lean = rebuilds and (self.rebuild_inputs is True or cache is not None)
                if cache is None:  # nothing rebuilt: the conv output and delta kept too
                    return mixer_forward(*args, lean=lean, keep=not rebuilds)
                # a segment of a longer window (segment-wise training): from the cache's states, leaving
                # the final ones there, differentiable both ways
                out, conv_state, ssm_state = mixer_forward(*args, conv_state=cache.conv_state,
                                                           ssm_state=cache.ssm_state, states=True, lean=lean,
                                                           keep=not rebuilds)
                cache.conv_state = conv_state.to(cache.conv_state.dtype)
                cache.ssm_state = ssm_state.to(cache.ssm_state.dtype)
                return out
        cf = channels_first(hidden)
        if cf:  # in_proj straight into (b, 2 * d_inner, l), l the unit-stride axis
            xz = channel_proj(self.in_proj.weight, hidden.transpose(1, 2))
            if self.in_proj.bias is not None:
                xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        else:
            xz = rearrange(self.in_proj(hidden), "b l d -> b d l")
        x, z = xz.chunk(2, dim=1)  # (b, d_inner, l) each
        A = -torch.exp(_up(self.A_log))  # (d_inner, n)
        conv_w = rearrange(self.conv1d.weight, "d 1 w -> d w")
        if cache is None and self.context_parallel is not None:
            y = self._slice_forward(x, z, A, conv_w, self.context_parallel)
        elif cache is None:
            xin = x
            x = causal_conv1d(xin, conv_w, self.conv1d.bias, activation="silu")
            with rebuilt(self._rebuilds(x)) as recipe:  # u and delta: rebuilt in the backward, not kept
                recipe(x, lambda: causal_conv1d(xin, conv_w, self.conv1d.bias, activation="silu"))
                dt, B, C = self._ssm_inputs(x, recipe)
                y = selective_scan(x, dt, A, B, C, _up(self.D), z=z, delta_bias=_up(self.dt_proj.bias),
                                   delta_softplus=True)
        else:
            x, conv_state = causal_conv1d(x, conv_w, self.conv1d.bias, initial_state=cache.conv_state.to(x.dtype),
                                          activation="silu", return_final_state=True)
            dt, B, C = self._ssm_inputs(x)
            y, ssm_state = selective_scan(x, dt, A, B, C, _up(self.D), z=z,
                                          delta_bias=_up(self.dt_proj.bias), delta_softplus=True,
                                          initial_state=cache.ssm_state, return_final_state=True)
            cache.conv_state = conv_state.to(cache.conv_state.dtype)
            cache.ssm_state = ssm_state.to(cache.ssm_state.dtype)
        if cf:
            return token_proj(y, self.out_proj.weight, self.out_proj.bias)
        return self.out_proj(rearrange(y, "b d l -> b l d"))

    def _slice_forward(self, x, z, A, conv_w, cp):
        """This rank's slice of a sequence split over ``cp``: the conv reads the previous slice's last
        d_conv - 1 inputs (the halo), the scan starts from the state the previous slices leave. The
        callers check the group's shortest slice first (every rank alike); this check of the rank's
        own slice only guards direct use."""
        check_slice(x.shape[-1], self.d_conv)
        halo = halo_exchange(x[:, :, x.shape[-1] - (self.d_conv - 1):], cp) if self.d_conv > 1 else None
        x = causal_conv1d(x, conv_w, self.conv1d.bias, initial_state=halo, activation="silu")
        dt, B, C = self._ssm_inputs(x)
        return context_parallel_scan(x, dt, A, B, C, _up(self.D), z, _up(self.dt_proj.bias), cp)

    def step(self, hidden: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One token. hidden: (b, 1, d_model) -> (b, 1, d_model); updates ``cache`` in place."""
        xz = self.in_proj(hidden.squeeze(1))  # (b, 2*d_inner)
        x, z = xz.chunk(2, dim=-1)
        window = torch.cat([cache.conv_state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (b, d_inner, d_conv)
        w = rearrange(self.conv1d.weight, "d 1 w -> d w")
        x = (window * w).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        cache.conv_state.copy_(window[:, :, 1:])  # in place: a captured decode graph reads the same storage
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = dt @ self.dt_proj.weight.t()  # (b, d_inner)
        A = -torch.exp(_up(self.A_log))
        y = selective_state_update(cache.ssm_state, x, dt, A, B, C, _up(self.D), z=z,
                                   dt_bias=_up(self.dt_proj.bias), dt_softplus=True)
        return self.out_proj(y).unsqueeze(1)

    def allocate_cache(self, batch_size: int, device=None, dtype=None) -> LayerCache:
        device = device or self.A_log.device
        dtype = dtype or self.in_proj.weight.dtype
        return LayerCache(
            torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                        dtype=torch.float64 if self.A_log.dtype == torch.float64 else torch.float32),
        )


class Block(nn.Module):
    """Pre-norm residual block: residual += hidden; hidden = mixer(norm(residual)). Keys: norm, mixer."""

    def __init__(self, config: MambaConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype) if config.rms_norm \
            else _layer_norm(config, device, dtype)
        self.mixer = Mamba(config, layer_idx, device=device, dtype=dtype)

    def _pre(self, hidden, residual):
        if isinstance(self.norm, RMSNorm):  # one pass on GPUs (genomamba.ops.add_rms_norm)
            # written in the dtype in_proj reads under autocast: no separate cast of the normed rows
            return add_rms_norm(hidden, residual, self.norm.weight, self.norm.eps, self.residual_in_fp32,
                                _autocast_dtype(self.norm.weight))
        residual = hidden if residual is None else residual + hidden
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = _up(residual)
        return hidden, residual

    def forward(self, hidden, residual=None, cache: Optional[LayerCache] = None):
        first, hidden_dtype = residual is None, hidden.dtype
        hidden, residual = self._pre(hidden, residual)
        mixer = self.mixer
        rebuild = mixer.context_parallel is None and isinstance(self.norm, RMSNorm) and mixer._rebuilds(hidden)
        with rebuilt(rebuild) as recipe:  # in_proj's input: rebuilt from residual' (which the norm keeps)
            if rebuild:
                hidden = _autocast_input(hidden)
                recipe(hidden, lambda: _autocast_input(self._renorm(residual, first, hidden_dtype)))
            return mixer(hidden, cache), residual

    def _renorm(self, residual, first: bool, hidden_dtype: torch.dtype) -> torch.Tensor:
        """The norm's output again, from residual' alone, bit for bit: called as the forward called it
        (with a residual, here zeros + residual', where the forward had one), so the same kernel
        specialisation, with the same reduction order, computes it."""
        if first:
            return self._pre(residual, None)[0]
        return self._pre(torch.zeros(residual.shape, dtype=hidden_dtype, device=residual.device), residual)[0]

    def step(self, hidden, residual, cache: LayerCache):
        """One token: hidden, residual (b, 1, d_model) -> (mixer out, residual); updates ``cache`` in place.

        Where compiled kernels run the whole block step (``genomamba.ops.mamba_step`` with RMSNorm
        and no gradients: C++ in float32 or float64 on CPU, Triton in float32, bfloat16 or float16
        on CUDA), that is one call; otherwise the step is composed from the per-op functionals."""
        plan = self._step_plan(hidden, residual, cache)
        if plan is not None:
            out, residual = plan(hidden, residual)
            return out, residual
        hidden, residual = self._pre(hidden, residual)
        return self.mixer.step(hidden, cache), residual

    def _step_plan(self, hidden, residual, cache: LayerCache):
        """The fused step for ``cache``'s states, validated and dispatched once per generation (None:
        compose). Prepared again when the states are replaced (a cached forward does that), or when
        the input's shape or dtype, the grad mode, the forced backend or the SSM parameters change."""
        mixer = self.mixer
        a_log, d = mixer.A_log, mixer.D
        key = (hidden.shape, hidden.dtype, None if residual is None else residual.dtype, torch.is_grad_enabled(),
               requested_backend(), a_log.data_ptr(), _version(a_log), d.data_ptr(), _version(d))
        held = cache.step_plan
        if held is not None and held[0] == key:
            plan = held[1]
            if plan is None or (plan.conv_state is cache.conv_state and plan.ssm_state is cache.ssm_state):
                return plan
        plan = None
        if isinstance(self.norm, RMSNorm):
            plan = mamba_step_plan(hidden, residual, cache.conv_state, cache.ssm_state, self._step_weights(hidden))
            if not plan.fused:
                plan = None
        cache.step_plan = (key, plan)
        return plan

    def _step_weights(self, hidden) -> StepWeights:
        m = self.mixer
        ct = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        return StepWeights(
            norm_weight=self.norm.weight, norm_eps=self.norm.eps,
            in_proj_weight=m.in_proj.weight, in_proj_bias=m.in_proj.bias,
            conv_weight=rearrange(m.conv1d.weight, "d 1 w -> d w"), conv_bias=m.conv1d.bias,
            x_proj_weight=m.x_proj.weight, dt_proj_weight=m.dt_proj.weight, dt_proj_bias=m.dt_proj.bias,
            # A for the backends that take it; the parameters themselves otherwise, so that a step
            # replayed from a CUDA graph reads A_log and D as they are now (backends upcast D)
            A=(-torch.exp(_up(m.A_log))).to(ct), A_log=m.A_log, D=m.D,
            out_proj_weight=m.out_proj.weight, out_proj_bias=m.out_proj.bias,
            residual_in_fp32=self.residual_in_fp32,
        )


def _layer_norm(config, device, dtype):
    ln = nn.LayerNorm(config.d_model, eps=config.norm_epsilon, device=device, dtype=dtype)
    _no_decay(ln.weight)
    _no_decay(ln.bias)
    return ln
