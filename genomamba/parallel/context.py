"""Context parallelism: one sequence split along its length over the P ranks of a process group.

Layout. With W processes and context-parallel size P, world ranks ``[k P, ..., k P + P - 1]`` form
context-parallel group k (consecutive ranks: a group sits on one node whenever P divides the
processes per node), and group k is data-parallel replica k of ``W / P``. Rank ``k P + r`` holds
slice r of the sequences of replica k.

What crosses ranks, per Mamba layer (b sequences, d = d_inner, n = d_state, w = d_conv):

* the halo: rank r sends the last ``w - 1`` conv inputs of its slice, (b, d, w - 1), to rank r + 1
  (point to point); backward sends their gradient back from r + 1 to r.
* the state summaries: every rank scans its slice from a zero state and publishes
  ``(exp(A * sum(delta over the slice)), final state)``, each (b, d, n), with one all_gather; the
  exclusive combine ``h_in[r] = decay[r-1] * h_in[r-1] + final[r-1]`` then gives every rank the true
  state entering its slice, and the slice's scan is re-run from it (rank 0 starts from zero and
  keeps its first scan; the last rank's own summary is never read, so it skips its first scan).
  Backward reduces the summaries' gradients over the group (reduce-scatter on NCCL, all-reduce
  elsewhere).

Both exchanges are ``torch.autograd.Function``\\ s, so the gradients are those of the single-process
computation, to float rounding. The scan is linear in its state, which is why the combine is exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from genomamba.ops import selective_scan


class ContextParallelError(ValueError):
    """A context-parallel layout that cannot work (sizes that do not divide, slices too short)."""


@dataclass(frozen=True)
class ContextParallel:
    """This process's place in a context-parallel layout.

    ``group``: the process group of the P ranks that share one sequence; ``rank``: this process's
    slice index in it; ``ranks``: the group's world ranks in slice order; ``dp_rank`` / ``dp_size``:
    the data-parallel replica this group is, and how many replicas there are.
    """

    group: object
    rank: int
    size: int
    ranks: tuple
    dp_rank: int
    dp_size: int

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def last(self) -> bool:
        return self.rank == self.size - 1

    def bounds(self, length: int) -> tuple[int, int]:
        """[start, stop) of this rank's slice of a sequence of ``length`` tokens (near-even split)."""
        return slice_bounds(length, self.size, self.rank)

    def device(self) -> torch.device:
        """Where this group's messages live: the current CUDA device on NCCL, else the CPU."""
        return _group_device(self.group)


def slice_bounds(length: int, size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of slice ``rank`` of ``size`` near-equal slices of ``length`` tokens (the first
    ``length % size`` slices are one token longer)."""
    base, extra = divmod(int(length), int(size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def layout(world_size: int, rank: int, context_parallel: int) -> tuple[int, int, int]:
    """(slice index, data-parallel rank, data-parallel size) of world rank ``rank``."""
    p = int(context_parallel)
    if p < 1:
        raise ContextParallelError(f"context_parallel: expected a positive int, got {context_parallel}")
    if world_size % p:
        raise ContextParallelError(f"context_parallel={p} must divide the number of processes ({world_size}: "
                                   "devices x num_nodes)")
    return rank % p, rank // p, world_size // p


def data_shard(context_parallel: int = 1) -> tuple[int, int]:
    """(data-parallel rank, data-parallel size) of this process: the ranks of one context-parallel
    group share a shard (they read the same sequences); (0, 1) outside torch.distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    _, dp_rank, dp_size = layout(dist.get_world_size(), dist.get_rank(), context_parallel)
    return dp_rank, dp_size


def _group_device(group) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_context_parallel(size: int) -> Optional[ContextParallel]:
    """Create the context-parallel groups of the running job (torch.distributed must be initialised;
    every process calls this, in the same order as its other collectives). None for ``size == 1``."""
    size = int(size)
    if size == 1:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise ContextParallelError(f"context_parallel={size} needs torch.distributed (run {size} or more "
                                   "processes: trainer.devices x trainer.num_nodes)")
    world, me = dist.get_world_size(), dist.get_rank()
    r, dp_rank, dp_size = layout(world, me, size)
    mine = None
    for k in range(dp_size):  # every process creates every group, in the same order
        ranks = tuple(range(k * size, (k + 1) * size))
        group = dist.new_group(list(ranks))
        if k == dp_rank:
            mine = ContextParallel(group, r, size, ranks, dp_rank, dp_size)
    # a first collective on the group sets its communicator up before any point-to-point message
    dist.all_reduce(torch.zeros(1, device=mine.device()), group=mine.group)
    return mine


def init_context_parallel(size: Optional[int] = None, backend: Optional[str] = None,
                          timeout_minutes: float = 30.0) -> Optional[ContextParallel]:
    """For a script started by ``torchrun``: initialise torch.distributed from the environment if it
    is not yet (NCCL with CUDA, else gloo; each process on GPU ``LOCAL_RANK``) and build groups of
    ``size`` ranks (default: all of them, one sequence over every process). With groups of one
    (one process, or ``size=1``) each process runs whole records: a group of one, whose ``device()``
    still says where the model goes."""
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
    size = size or dist.get_world_size()
    if int(size) == 1:
        me, world = dist.get_rank(), dist.get_world_size()
        return ContextParallel(dist.group.WORLD, 0, 1, (me,), me, world)
    return build_context_parallel(size)


# ----------------------------------------------------------------------------- the halo
def _p2p(sends, recvs, group) -> None:
    ops = [dist.P2POp(dist.isend, t, peer, group) for t, peer in sends]
    ops += [dist.P2POp(dist.irecv, t, peer, group) for t, peer in recvs]
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


class _Halo(torch.autograd.Function):
    """Send this slice's tail to the next rank, receive the previous rank's (zeros on rank 0)."""

    @staticmethod
    def forward(ctx, tail, cp: ContextParallel):
        ctx.cp = cp
        tail = tail.contiguous()
        halo = torch.zeros_like(tail)
        _p2p([(tail, cp.ranks[cp.rank + 1])] if not cp.last else [],
             [(halo, cp.ranks[cp.rank - 1])] if not cp.first else [], cp.group)
        return halo

    @staticmethod
    def backward(ctx, grad_halo):
        cp = ctx.cp
        grad_tail = torch.zeros_like(grad_halo)
        _p2p([(grad_halo.contiguous(), cp.ranks[cp.rank - 1])] if not cp.first else [],
             [(grad_tail, cp.ranks[cp.rank + 1])] if not cp.last else [], cp.group)
        return grad_tail, None


def halo_exchange(tail: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """tail: (b, d, w - 1), the last inputs of this rank's slice -> the previous rank's, the
    ``initial_state`` of this slice's causal conv (zeros on rank 0). Differentiable."""
    return _Halo.apply(tail, cp)


# ----------------------------------------------------------------------------- the state combine
def _prefix(gathered: torch.Tensor, upto: int) -> list:
    """h_in[0..upto] from gathered summaries (P, 2, b, d, n): h_in[k+1] = decay[k] h_in[k] + final[k]."""
    h = torch.zeros_like(gathered[0, 0])
    hs = [h]
    for k in range(upto):
        h = gathered[k, 0] * h + gathered[k, 1]
        hs.append(h)
    return hs


class _CombineStates(torch.autograd.Function):
    """all_gather of the (decay, final state) summaries, then the exclusive combine for this rank."""

    @staticmethod
    def forward(ctx, summary, cp: ContextParallel):
        ctx.cp = cp
        summary = summary.contiguous()
        parts = [torch.empty_like(summary) for _ in range(cp.size)]
        dist.all_gather(parts, summary, group=cp.group)
        gathered = torch.stack(parts)
        ctx.save_for_backward(gathered)
        return _prefix(gathered, cp.rank)[-1]

    @staticmethod
    def backward(ctx, grad_h):
        cp = ctx.cp
        (gathered,) = ctx.saved_tensors
        hs = _prefix(gathered, cp.rank)
        grads = torch.zeros_like(gathered)  # d(this rank's loss)/d(every rank's summary)
        g = grad_h
        for k in range(cp.rank - 1, -1, -1):
            grads[k, 0] = g * hs[k]
            grads[k, 1] = g
            g = g * gathered[k, 0]
        if dist.get_backend(cp.group) == "nccl":
            mine = torch.empty_like(grads[0])
            dist.reduce_scatter_tensor(mine, grads.reshape(-1), group=cp.group)
        else:
            dist.all_reduce(grads, group=cp.group)
            mine = grads[cp.rank].clone()
        return mine, None


def combine_states(decay: torch.Tensor, final: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """decay, final: (b, d, n) summaries of this rank's slice scanned from zero -> the true state
    entering this slice (zeros on rank 0). Differentiable in every rank's summaries."""
    return _CombineStates.apply(torch.stack([decay, final]), cp)


class _DependsOn(torch.autograd.Function):
    """``y`` unchanged, with ``h`` in its graph (zero gradient): a collective's backward that must run
    on every rank of a group stays reachable on the ranks that do not otherwise use its output."""

    @staticmethod
    def forward(ctx, y, h):
        ctx.h_like = (h.shape, h.dtype, h.device)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad_y):
        shape, dtype, device = ctx.h_like
        return grad_y, torch.zeros(shape, dtype=dtype, device=device)


# ----------------------------------------------------------------------------- the scan
def _state_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def context_parallel_scan(u, delta, A, B, C, D, z, delta_bias, cp: ContextParallel, delta_softplus: bool = True):
    """``selective_scan`` of this rank's slice of a sequence split over ``cp``: the result is the
    slice of the single-process scan of the whole sequence (shapes as in ``selective_scan``)."""
    sd = _state_dtype(u, delta, A, B, C, delta_bias)
    dl = delta.to(sd)
    if delta_bias is not None:
        dl = dl + delta_bias.to(sd)[:, None]
    if delta_softplus:
        dl = F.softplus(dl)
    decay = torch.exp(A.to(sd)[None] * dl.sum(-1)[..., None])  # (b, d, n): the slice's total decay
    if cp.first:
        y, final = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                  return_final_state=True)
    elif not cp.last:
        _, final = selective_scan(u, delta, A, B, C, None, z=None, delta_bias=delta_bias,
                                  delta_softplus=delta_softplus, return_final_state=True)
    else:
        final = torch.zeros_like(decay)  # nobody reads the last slice's summary
    h_in = combine_states(decay, final.to(sd), cp)
    if cp.first:
        return _DependsOn.apply(y, h_in)
    return selective_scan(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                          initial_state=h_in)


def check_slice(length: int, d_conv: int, where: str = "context parallelism") -> None:
    """A slice must hold the ``d_conv - 1`` inputs the next slice's conv reads."""
    if length < max(1, d_conv - 1):
        raise ContextParallelError(f"{where}: a slice of {length} tokens is shorter than the conv's "
                                   f"{d_conv - 1}-token halo; use fewer ranks or longer sequences")
