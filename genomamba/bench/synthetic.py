"""``genomamba bench synthetic``: the Mamba paper's selectivity tasks (section 4.1).

Two synthetic tasks that a time-invariant (non-selective) model cannot solve, and that test length
extrapolation when the model is trained at one length and evaluated at much longer ones:

**Induction heads** (``induction``): a sequence of random tokens; somewhere a special token ``S`` is
followed by a token ``v``; the sequence ends with ``S`` and the model must predict ``v`` (recall the
token that followed the trigger last time). Vocabulary 16 as in the paper (``S`` = id 0, data
tokens 1..15). Loss and accuracy on the final position only.

**Selective copying** (``copying``): ``k`` = 16 data tokens (ids 1..14) placed at random positions
among noise tokens (id 0), followed by ``k`` marker tokens (id 15); at each marker the model must
output the data tokens in order. The spacing is random, so a fixed convolution cannot solve it:
the model must select by content. Accuracy is per output token.

A 2-layer Mamba is trained at length 256 (``--train-len``) and evaluated at 256, 512, ... up to
``--max-len`` (2^16 by default; 2^20 by default with ``--device cuda``). Evaluation runs the
sequence through the recurrent state in chunks (``--eval-chunk``), so memory does not grow with
the evaluation length. Prints a table and writes JSON to ``bench/results/synthetic[_cuda].json``.

The paper trains for far longer on a GPU; the CPU defaults here are sized for a small CPU, and
``--steps`` / ``--d-model`` / ``--batch-size`` scale it up.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from genomamba.bench.common import (
    add_results_args,
    cuda_requested,
    machine_facts,
    nonnegative_count,
    positive_count,
    print_table,
    write_results,
)
from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM, optimizer_param_groups

VOCAB = 16
TASKS = ("induction", "copying")
INDUCTION_TRIGGER = 0  # the special token S
COPY_NOISE = 0
COPY_MARKER = VOCAB - 1
COPY_TOKENS = 16  # number of tokens to memorise (paper: 16)
# first length of the sequence-length warmup: copying starts at 64 so that every stage has noise to skip
WARMUP_START = {"induction": 32, "copying": 64}


# ----------------------------------------------------------------------------- data


def induction_batch(batch: int, length: int, rng: np.random.Generator):
    """-> ids (batch, length) int64, targets (batch,) : the token after the first trigger."""
    if length < 4:
        raise ValueError(f"length: induction heads needs length >= 4, got {length}")
    ids = rng.integers(1, VOCAB, size=(batch, length), dtype=np.int64)
    pos = rng.integers(0, length - 2, size=batch)  # trigger position; its value sits at pos + 1 < length - 1
    rows = np.arange(batch)
    ids[rows, pos] = INDUCTION_TRIGGER
    ids[:, -1] = INDUCTION_TRIGGER
    targets = ids[rows, pos + 1].copy()
    return torch.from_numpy(ids), torch.from_numpy(targets)


def copying_batch(batch: int, length: int, rng: np.random.Generator, k: int = COPY_TOKENS):
    """-> ids (batch, length), targets (batch, k): the data tokens in order, due at the last k positions."""
    ctx = length - k
    if ctx < k:
        raise ValueError(f"length: selective copying with {k} tokens needs length >= {2 * k}, got {length}")
    ids = np.full((batch, length), COPY_NOISE, dtype=np.int64)
    ids[:, ctx:] = COPY_MARKER
    targets = rng.integers(1, VOCAB - 1, size=(batch, k), dtype=np.int64)
    for r in range(batch):
        # k distinct sorted positions in [0, ctx): sample from a permutation only when ctx is small
        if ctx <= 4 * k * 8:
            pos = np.sort(rng.choice(ctx, size=k, replace=False))
        else:
            pos = np.unique(rng.integers(0, ctx, size=2 * k))
            while pos.size < k:
                pos = np.unique(np.concatenate([pos, rng.integers(0, ctx, size=k)]))
            pos = np.sort(rng.choice(pos, size=k, replace=False))
        ids[r, pos] = targets[r]
    return torch.from_numpy(ids), torch.from_numpy(targets)


def make_batch(task: str, batch: int, length: int, rng: np.random.Generator):
    if task == "induction":
        return induction_batch(batch, length, rng)
    if task == "copying":
        return copying_batch(batch, length, rng)
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


def n_out(task: str) -> int:
    return 1 if task == "induction" else COPY_TOKENS


# ----------------------------------------------------------------------------- model, train, eval


def build_model(d_model: int = 64, n_layer: int = 2, d_state: int = 16, seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    cfg = MambaConfig(d_model=d_model, n_layer=n_layer, vocab_size=VOCAB, d_state=d_state,
                      extra={"task": "synthetic"})
    return MambaLM(cfg)


def length_stages(train_len: int, start: Optional[int]) -> list[int]:
    """Sequence-length warmup: start, 2*start, ..., train_len (just [train_len] when start is None)."""
    if not start or start >= train_len:
        return [train_len]
    out, length = [], start
    while length < train_len:
        out.append(length)
        length *= 2
    return out + [train_len]


def train(model: MambaLM, task: str, steps: int, batch_size: int = 16, length: int = 256, lr: float = 2e-3,
          warmup: int = 50, seed: int = 0, device: str = "cpu", log_every: int = 50,
          target_acc: Optional[float] = None, patience_batches: int = 3, verbose: bool = True,
          warmup_start: Optional[int] = None, min_final_steps: int = 0, weight_decay: float = 0.1) -> dict:
    """Train on fresh random batches. Loss on the answer positions only (the rest is unpredictable noise).

    ``warmup_start``: sequence-length warmup (the Mamba paper's schedule for long DNA): train at
    ``warmup_start``, then double the length each time the training accuracy of ``patience_batches``
    consecutive batches reaches ``target_acc``, ending at ``length``. ``target_acc`` at the final
    length stops training early, but only after ``min_final_steps`` steps there (more training at
    the final length sharpens the selection, which is what carries to longer sequences).
    ``steps`` bounds all stages together. Returns a training log.
    """
    rng = np.random.default_rng(seed)
    model.to(device).train()
    # no weight decay on A_log, D, norms, biases (dt_proj.bias sets the baseline step size: decaying it
    # towards 0 means softplus(0) = 0.69, i.e. fast forgetting, the opposite of what recall needs)
    opt = torch.optim.AdamW(optimizer_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    stages = length_stages(length, warmup_start)
    stage = 0
    k = n_out(task)
    hist, good, stopped_at, stage_log = [], 0, None, []
    t0 = time.time()
    stage_start = 1
    for step in range(1, steps + 1):
        cur = stages[stage]
        ids, targets = make_batch(task, batch_size, cur, rng)
        ids, targets = ids.to(device), targets.to(device)
        logits = model(ids, num_last_tokens=k)[..., :VOCAB]  # (b, k, V)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        acc = (logits.argmax(-1).reshape(targets.shape) == targets).float().mean().item()
        hist.append((step, loss.item(), acc, cur))
        if verbose and (step % log_every == 0 or step == 1):
            recent = [h for h in hist[-log_every:] if h[3] == cur]
            print(f"  [{task}] step {step:5d}  len {cur:4d}  loss {np.mean([h[1] for h in recent]):.3f}  "
                  f"acc {np.mean([h[2] for h in recent]):.3f}  ({time.time() - t0:.0f}s)", flush=True)
        good = good + 1 if (target_acc is not None and acc >= target_acc) else 0
        final = stage + 1 == len(stages)
        if target_acc is not None and good >= patience_batches and (
                not final or step - stage_start + 1 >= min_final_steps):
            stage_log.append({"length": cur, "steps": step - stage_start + 1, "reached_target": True})
            if final:
                stopped_at = step
                break
            stage, good, stage_start = stage + 1, 0, step + 1
            if verbose:
                print(f"  [{task}] step {step:5d}: {target_acc:.0%} reached at length {cur}, "
                      f"moving to {stages[stage]}", flush=True)
    if not stage_log or stage_log[-1]["length"] != stages[stage]:
        stage_log.append({"length": stages[stage], "steps": len(hist) - stage_start + 1, "reached_target": False})
    model.eval()
    at_final = [h for h in hist if h[3] == length]
    return {"steps": len(hist), "stopped_at": stopped_at, "seconds": round(time.time() - t0, 1),
            "length_stages": stage_log, "steps_at_train_len": len(at_final),
            "final_loss": float(np.mean([h[1] for h in hist[-20:]])) if hist else None,
            "final_train_acc": float(np.mean([h[2] for h in hist[-20:]])) if hist else None}


@torch.no_grad()
def answer_logits(model: MambaLM, ids: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Logits at the last ``k`` positions, running the sequence through the recurrent state in chunks
    of ``chunk`` tokens: memory is O(batch * chunk), whatever the length."""
    b, length = ids.shape
    if length <= chunk:
        return model(ids, num_last_tokens=k)
    cache = model.allocate_cache(b, device=ids.device)
    start, end = 0, length
    # the last chunk must hold all k answer positions
    last_start = max(0, end - max(chunk, k))
    while start < last_start:
        stop = min(start + chunk, last_start)
        model.backbone(ids[:, start:stop], cache=cache)
        start = stop
    return model(ids[:, last_start:], cache=cache, num_last_tokens=k)


@torch.no_grad()
def evaluate(model: MambaLM, task: str, length: int, n_samples: int, batch_size: int = 8, seed: int = 1234,
             device: str = "cpu", chunk: int = 16384) -> float:
    """Accuracy on ``n_samples`` fresh sequences of ``length`` (per answer token)."""
    rng = np.random.default_rng(seed + length)
    model.eval()
    k = n_out(task)
    correct = total = 0
    done = 0
    while done < n_samples:
        b = min(batch_size, n_samples - done)
        ids, targets = make_batch(task, b, length, rng)
        logits = answer_logits(model, ids.to(device), k, chunk)[..., :VOCAB]
        pred = logits.argmax(-1).reshape(targets.shape).cpu()
        correct += int((pred == targets).sum())
        total += targets.numel()
        done += b
    return correct / total


def eval_lengths(train_len: int, max_len: int) -> list[int]:
    out, length = [], train_len
    while length <= max_len:
        out.append(length)
        length *= 2
    return out


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba bench synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("both",) + TASKS, default="both")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--steps", type=positive_count, default=None,
                   help="most training steps per task, all stages (default: 1500 on cpu, 10000 on cuda)")
    p.add_argument("--min-final-steps", type=nonnegative_count, default=None,
                   help="train at least this many steps at --train-len before stopping early "
                        "(default 400 on cpu, 2000 on cuda)")
    p.add_argument("--target-acc", type=float, default=0.98,
                   help="stop training once this many consecutive batches reach this accuracy")
    p.add_argument("--d-model", type=positive_count, default=64)
    p.add_argument("--n-layer", type=positive_count, default=2)
    p.add_argument("--d-state", type=positive_count, default=16)
    p.add_argument("--batch-size", type=positive_count, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay of the matrices")
    p.add_argument("--train-len", type=positive_count, default=256)
    p.add_argument("--warmup-start", type=nonnegative_count, default=None,
                   help="sequence-length warmup: start at this length and double once learned, up to "
                        "--train-len (default 32 for induction, 64 for copying; 0 = train at --train-len "
                        "from the first step)")
    p.add_argument("--max-len", type=positive_count, default=None,
                   help="longest evaluation length (2^16; 2^20 on cuda)")
    p.add_argument("--eval-samples", type=positive_count, default=64, help="sequences per evaluation length (at most)")
    p.add_argument("--eval-tokens", type=positive_count, default=None,
                   help="token budget per evaluation length: fewer samples at long lengths "
                        "(default 2^19 on cpu, 2^24 on cuda); at least --min-eval-samples")
    p.add_argument("--min-eval-samples", type=positive_count, default=16)
    p.add_argument("--eval-chunk", type=positive_count, default=16384,
                   help="tokens per chunk through the recurrent state")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_count, default=None,
                   help="torch CPU threads (default 1 on cpu: these matrices are too small for more "
                        "threads to pay off)")
    add_results_args(p, "synthetic / synthetic_cuda")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cuda = cuda_requested("synthetic", args.device)
    if cuda is None:
        return 2
    threads = args.threads or (None if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    steps = args.steps if args.steps is not None else (10000 if cuda else 1500)
    min_final = args.min_final_steps if args.min_final_steps is not None else (2000 if cuda else 400)
    max_len = args.max_len or (2**20 if cuda else 2**16)
    eval_tokens = args.eval_tokens or (2**24 if cuda else 2**19)
    tasks = TASKS if args.task == "both" else (args.task,)
    lengths = eval_lengths(args.train_len, max_len)

    results = {"bench": "synthetic", "machine": machine_facts(args.device), "config": {
        "d_model": args.d_model, "n_layer": args.n_layer, "d_state": args.d_state, "vocab": VOCAB,
        "train_len": args.train_len, "warmup_start": args.warmup_start, "batch_size": args.batch_size,
        "lr": args.lr, "weight_decay": args.weight_decay,
        "max_steps": steps, "min_final_steps": min_final,
        "target_acc": args.target_acc, "eval_lengths": lengths, "eval_samples": args.eval_samples,
        "eval_tokens": eval_tokens, "seed": args.seed}, "tasks": {}}
    rows = []
    for task in tasks:
        model = build_model(args.d_model, args.n_layer, args.d_state, seed=args.seed)
        print(f"training {task}: 2-layer Mamba d_model={args.d_model} ({model.num_parameters():,} params) "
              f"at length {args.train_len}, up to {steps} steps", flush=True)
        log = train(model, task, steps, args.batch_size, args.train_len, args.lr, seed=args.seed,
                    device=args.device, target_acc=args.target_acc,
                    warmup_start=(args.warmup_start if args.warmup_start is not None
                                  else WARMUP_START[task]) or None,
                    min_final_steps=min_final, weight_decay=args.weight_decay)
        accs = {}
        for length in lengths:
            n = max(args.min_eval_samples, min(args.eval_samples, eval_tokens // length))
            t = time.time()
            acc = evaluate(model, task, length, n, device=args.device, chunk=args.eval_chunk)
            accs[length] = acc
            x = length / args.train_len
            print(f"  eval {task} L={length:>8} ({x:g}x): acc {acc:.3f}  n={n}  ({time.time() - t:.1f}s)",
                  flush=True)
        results["tasks"][task] = {"train": log, "params": model.num_parameters(),
                                  "accuracy": {str(k): v for k, v in accs.items()},
                                  "eval_samples": {str(L): max(args.min_eval_samples,
                                                               min(args.eval_samples, eval_tokens // L))
                                                   for L in lengths}}
    results["machine"]["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    for length in lengths:
        row = {"length": length, "x_train": f"{length // args.train_len}x"}
        for task in tasks:
            row[task] = f"{results['tasks'][task]['accuracy'][str(length)]:.3f}"
        rows.append(row)
    print()
    print_table(rows, ["length", "x_train", *tasks])
    if "induction" in tasks:
        acc = results["tasks"]["induction"]["accuracy"]
        summary = {f"{m}x": acc.get(str(args.train_len * m)) for m in (4, 64)}
        results["induction_heads_at"] = summary
        print(f"\ninduction heads accuracy: 4x train length {summary['4x']}, 64x {summary['64x']}")
    name = args.name or ("synthetic_cuda" if cuda else "synthetic")
    path = write_results(name, results, args.out)
    print(f"wrote {path}")
    return 0
