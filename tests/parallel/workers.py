"""Process bodies for the multi-process tests (module level, so ``torch.multiprocessing.spawn`` can
import them in fresh interpreters). Every worker runs on one CPU thread over gloo."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM
from genomamba.parallel import build_context_parallel

TINY = {"d_model": 16, "n_layer": 2, "d_state": 4, "vocab_size": 11, "expand": 2}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def init_gloo(rank: int, world: int, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def tiny_model(dtype: torch.dtype, checkpointing: bool = False) -> MambaLM:
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(**TINY)).to(dtype)
    # random (not the init's constant) norms and D, so every parameter's gradient is non-trivial
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight") or name.endswith(".D"):
                p.add_(0.1 * torch.randn_like(p))
    return model.gradient_checkpointing_enable(checkpointing).train()


def batch(rows: int, length: int) -> torch.Tensor:
    return torch.randint(0, 11, (rows, length), generator=torch.Generator().manual_seed(1))


def lm_nll(logits: torch.Tensor, ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Summed next-token NLL of positions [start, stop) of ``ids`` (logits for those positions)."""
    n_pred = min(stop, ids.shape[1] - 1) - start
    lg = logits[:, :n_pred].double()
    return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, start + 1:start + 1 + n_pred].reshape(-1),
                           reduction="sum")


def single_process(dtype_name: str, rows: int, length: int, checkpointing: bool = False) -> dict:
    """The reference: loss and gradients of whole sequences in one process."""
    model = tiny_model(DTYPES[dtype_name], checkpointing)
    ids = batch(rows, length)
    loss = lm_nll(model(ids), ids, 0, length) / (rows * (length - 1))
    loss.backward()
    return {"loss": loss.detach(), "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


def context_parallel_cases(rank: int, world: int, init_file: str, out_dir: str, cases: list) -> None:
    """One rank of a world running several cases ``(tag, size, dtype, rows per replica, length,
    checkpointing)``: world / size replicas, each on its rows, each rank on its slice. Each group's
    loss and summed gradients go to ``out_dir/<tag>_replica<k>.pt``."""
    init_gloo(rank, world, init_file)
    groups = {}
    for tag, size, dtype_name, rows, length, checkpointing in cases:
        if size not in groups:
            groups[size] = build_context_parallel(size)
        cp = groups[size]
        model = tiny_model(DTYPES[dtype_name], checkpointing).set_context_parallel(cp)
        ids = batch(rows * cp.dp_size, length)[cp.dp_rank * rows:(cp.dp_rank + 1) * rows]
        start, stop = cp.bounds(length)
        loss = lm_nll(model(ids[:, start:stop]), ids, start, stop) / (rows * (length - 1))
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total, group=cp.group)
        grads = {}
        for name, p in model.named_parameters():
            g = p.grad.detach().clone()
            dist.all_reduce(g, group=cp.group)
            grads[name] = g
        if cp.first:
            torch.save({"loss": total, "grads": grads}, f"{out_dir}/{tag}_replica{cp.dp_rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def inference_run(rank: int, world: int, init_file: str, out_dir: str, seq: str) -> None:
    """One rank of an embed / score of one record over all ``world`` processes."""
    from genomamba.api import GenomeModel
    from genomamba.parallel import embed_long, score_long

    init_gloo(rank, world, init_file)
    from genomamba.parallel import ContextParallelError

    cp = build_context_parallel(world)
    model = GenomeModel(tiny_model(torch.float32).eval())
    out = {"short": None}
    try:  # a record too short for 3 ranks (slices 3, 2, 2 against the 3-token halo): every rank refuses it
        embed_long(model, seq[:7], cp)
    except ContextParallelError as e:
        out["short"] = str(e)
    # then the loop goes on to the next record, with every rank in step
    out.update({p: torch.from_numpy(embed_long(model, seq, cp, p)) for p in ("mean", "last", "max")})
    start, tokens = embed_long(model, seq, cp, None)
    out["start"], out["tokens"] = start, torch.from_numpy(tokens)
    out["score"] = score_long(model, seq, cp)
    torch.save(out, f"{out_dir}/infer_rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def single_process_run(rank: int, port: int, out_dir: str, seq: str) -> None:
    """The documented torchrun script on one process: ``init_context_parallel()`` from the environment
    gives a group of one whose ``device()`` places the model; embed_long runs the whole record."""
    import os

    from genomamba.api import GenomeModel
    from genomamba.parallel import embed_long, init_context_parallel

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cp = init_context_parallel(backend="gloo")
    model = GenomeModel(tiny_model(torch.float32).eval().to(cp.device()))
    torch.save({"size": cp.size, "device": str(cp.device()), "mean": torch.from_numpy(embed_long(model, seq, cp))},
               f"{out_dir}/single.pt")
    dist.destroy_process_group()
