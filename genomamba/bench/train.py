"""``genomamba bench train``: training-step throughput and peak memory; and embedding memory at 1 Mb.

Training: next-token cross-entropy, AdamW, one optimizer step per batch of ``(b, l)`` random DNA
tokens (throughput does not depend on the token values), timed after warm-up steps. Reports
tokens/s and peak memory: on CPU the process's peak resident set (``VmHWM``, reset before the
timed steps through ``/proc/self/clear_refs``), on CUDA ``torch.cuda.max_memory_allocated``.

Embedding (``--embed-bases N``, default 1,000,000 with ``--embed``): runs ``GenomeModel.embed`` on
one real record of N bases (D. melanogaster chr2R from the ``fly`` dataset, fetched, or ``--fasta``)
in a fresh subprocess per setting and reports its peak RSS next to the RSS before embedding,
for pooled and per-token output: memory is bounded by ``chunk_size``, not by the record length.

    genomamba bench train                                    # presets tiny / 1.4M on CPU
    genomamba bench train --preset 7M --batch-size 2 --seq-len 16384 --device cuda
    genomamba bench train --embed                            # 1 Mb embedding memory on CPU
    genomamba bench train --device cuda --memory-sweep       # memory vs length, 2^14 .. 2^23 tokens

A million-token window in segments of 2^19 next to mamba_ssm's whole window, one process:

    genomamba bench train --device cuda --d-model 256 --n-layer 8 --batch-size 1 --seq-len 1048576
        --segment-len 524288 --vs-mamba-ssm   (one command line)

Kernel variants on one machine (``--knob``, CUDA; each setting a fresh model, so captured graphs
replay it; ``--rounds`` interleaves the settings to spread the machine's drift over all of them):

    genomamba bench train --device cuda --d-model 256 --n-layer 8 --batch-size 4 --seq-len 16384
        --knob bwd_prefetch=-1,0,2 --rounds 2   (one command line)

With ``--vs-mamba-ssm`` (CUDA, mamba_ssm importable) each shape and length also trains whole through
mamba_ssm's ``MambaLMHeadModel`` in the same process, with the same weights (the state-dict keys
are shared), data, optimizer groups and clipping; genomamba's rows get ``ratio_vs_mamba_ssm``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from genomamba.api import GenomeModel
from genomamba.bench.common import (
    add_results_args,
    cuda_requested,
    knob_settings,
    knobs_set,
    machine_facts,
    nonnegative_count,
    positive_count,
    print_table,
    write_results,
)
from genomamba.config import MambaConfig
from genomamba.data.fasta import read_fasta
from genomamba.data.fetch import assets_dir, fetch
from genomamba.models.lm import MambaLM, optimizer_param_groups
from genomamba.models.segmented import next_token_loss, segmented_loss

# the paper's DNA shapes (Mamba uses twice the blocks of the Transformer/HyenaDNA shapes 6x128, 8x256)
PRESETS = {
    "tiny": dict(d_model=64, n_layer=2),
    "1.4M": dict(d_model=128, n_layer=12),
    "7M": dict(d_model=256, n_layer=16),
    "3.5M": dict(d_model=256, n_layer=8),
}


# ----------------------------------------------------------------------------- memory measurement


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- training throughput

REBUILD = {"auto": None, "on": True, "off": False}


def mamba_ssm_twin(model: MambaLM):
    """mamba_ssm's ``MambaLMHeadModel`` of ``model``'s shape with ``model``'s weights (the state-dict
    keys are the same), on its device, and its AdamW groups (the same parameters decay)."""
    from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    c = model.config
    twin = MambaLMHeadModel(SsmConfig(d_model=c.d_model, n_layer=c.n_layer, vocab_size=c.vocab_size, ssm_cfg={},
                                      rms_norm=c.rms_norm, residual_in_fp32=c.residual_in_fp32, fused_add_norm=True,
                                      pad_vocab_size_multiple=c.pad_vocab_size_multiple),
                            device=next(model.parameters()).device)
    missing, _ = twin.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"mamba_ssm's model has weights genomamba's lacks: {missing[:5]}")
    no_decay = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    named = dict(twin.named_parameters())
    groups = [{"params": [p for n, p in named.items() if n not in no_decay], "weight_decay": 0.1},
              {"params": [p for n, p in named.items() if n in no_decay], "weight_decay": 0.0}]
    return twin.train(), groups


def bench_train(cfg: MambaConfig, batch_size: int, seq_len: int, steps: int = 5, warmup: int = 2,
                device: str = "cpu", amp: bool = True, grad_checkpointing: bool = False,
                segment_len: Optional[int] = None, rebuild: Optional[bool] = None, impl: str = "genomamba") -> dict:
    """``rebuild``: the layers' ``rebuild_inputs`` (None: the default, on for GPUs). ``impl="mamba_ssm"``:
    the same step (same weights, data, optimizer and clipping) through mamba_ssm's model, whole
    windows only. Peak memory is this call's own: on CUDA the blocks an earlier row left cached go
    back to the driver first, and the reserved peak covers the warm-up steps (where graphs are captured)."""
    if device.startswith("cuda"):
        gc.collect()  # an earlier row's model (its captured graphs refer back to it) and optimizer
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = MambaLM(cfg).to(device).train()
    if grad_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    for layer in model.backbone.layers:
        layer.mixer.rebuild_inputs = rebuild
    groups = optimizer_param_groups(model, 0.1)
    if impl == "mamba_ssm":
        if segment_len or grad_checkpointing:
            raise ValueError("the mamba_ssm row trains whole windows without checkpointing")
        model, groups = mamba_ssm_twin(model)
    elif impl != "genomamba":
        raise ValueError(f"impl: expected genomamba or mamba_ssm, got {impl!r}")
    opt = torch.optim.AdamW(groups, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 10, (batch_size, seq_len + 1), generator=gen).to(device)  # A/C/G/T ids
    cuda = device.startswith("cuda")
    use_amp = cuda and amp

    segment = next_token_loss(ids)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            if segment_len:  # the loss inside each segment: only one segment's logits exist at a time
                loss, _ = segmented_loss(model, ids[:, :-1], segment_len, segment, normalizer=ids[:, 1:].numel())
            else:
                logits = model(ids[:, :-1])
                logits = getattr(logits, "logits", logits)  # mamba_ssm returns a named tuple
        if not segment_len:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(warmup):
        step()
    reserved_warmup = 0
    if cuda:
        torch.cuda.synchronize()
        reserved_warmup = torch.cuda.max_memory_reserved()
        torch.cuda.reset_peak_memory_stats()
    reset_ok = reset_peak_rss()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"impl": impl, "d_model": cfg.d_model, "n_layer": cfg.n_layer,
           "params": sum(p.numel() for p in model.parameters()),
           "batch": batch_size, "seq_len": seq_len, "steps": steps, "sec_per_step": round(dt / steps, 4),
           "tokens_per_s": round(batch_size * seq_len * steps / dt, 1), "device": device,
           "amp_bf16": use_amp, "segment_len": segment_len, "grad_checkpointing": grad_checkpointing,
           "rebuild_inputs": rebuild}
    if cuda:
        out["peak_mem_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_mem_kind"] = "cuda max_memory_allocated"
        # replayed CUDA graphs allocate from their own pools, which only the reserved figure counts
        out["peak_reserved_mb"] = round(max(reserved_warmup, torch.cuda.max_memory_reserved()) / 2**20, 1)
    else:
        out["peak_mem_mb"] = round(peak_rss_mb(), 1)
        out["peak_mem_kind"] = "process peak RSS (VmHWM" + (", reset before timing)" if reset_ok else ")")
    return out


def _version(package: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


def mamba_ssm_unavailable(cuda: bool) -> Optional[str]:
    """Why a mamba_ssm row cannot run here, or None."""
    if not cuda:
        return "mamba_ssm trains on CUDA only (add --device cuda)"
    try:
        import mamba_ssm.models.mixer_seq_simple  # noqa: F401
    except Exception as exc:  # not installed, or its compiled extensions do not load
        return f"mamba_ssm does not import here ({type(exc).__name__}: {exc})"
    return None


def _row(name: str, batch: int, seq_len: int, rows: list, run, variant: Optional[str] = None) -> Optional[dict]:
    """One measured row (an out-of-memory run recorded as such), printed and appended to ``rows``;
    ``variant``: the knob setting it ran with, if any."""
    shown = name if variant is None else f"{name} {variant}"
    try:
        r = run()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        print(f"  {shown}: b={batch} l={seq_len}  out of memory", flush=True)
        rows.append({"preset": name, "batch": batch, "seq_len": seq_len, "oom": True}
                    | ({"variant": variant} if variant else {}))
        return None
    r["preset"] = name
    if variant:
        r["variant"] = variant
    rows.append(r)
    # on CUDA also the reserved peak: a step replayed from a CUDA graph allocates from the graph's
    # pool, which only the reserved figure counts
    reserved = f" allocated, {r['peak_reserved_mb']:,.0f} MB reserved" if "peak_reserved_mb" in r else ""
    print(f"  {r['impl']} {shown}: b={batch} l={seq_len}  {r['tokens_per_s']:,.0f} tok/s  {r['sec_per_step']} s/step  "
          f"peak {r['peak_mem_mb']:,.0f} MB{reserved}", flush=True)
    return r


# ----------------------------------------------------------------------------- memory vs length


def memory_sweep(cfg: MambaConfig, lengths: list[int], segment_len: int, device: str, steps: int = 2,
                 warmup: int = 1, amp: bool = True) -> list[dict]:
    """One sequence per step at each length, whole-window and segment-wise; a whole-window length
    that runs out of memory is recorded as such and longer ones are not tried."""
    rows, whole_fits = [], True
    for L in lengths:
        for mode in ("whole", "segments"):
            if mode == "whole" and not whole_fits:
                continue
            seg = segment_len if mode == "segments" and L > segment_len else None
            if mode == "segments" and seg is None:
                continue  # a window that fits in one segment is the whole-window row
            try:
                r = bench_train(cfg, 1, L, steps, warmup, device, amp, segment_len=seg)
            except torch.cuda.OutOfMemoryError:
                r = {"seq_len": L, "oom": True, "segment_len": seg}
                whole_fits = False
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            r["mode"] = mode
            rows.append(r)
            mem = "out of memory" if r.get("oom") else \
                f"peak {r['peak_mem_mb']:,.0f} MB, {r['tokens_per_s']:,.0f} tok/s"
            print(f"  l={L:>9,} {mode:<8}: {mem}", flush=True)
    return rows


def plot_memory(rows: list[dict], segment_len: int, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for mode, label in (("whole", "whole window"), ("segments", "segment-wise")):
        pts = [(r["seq_len"], r["peak_mem_mb"] / 1024) for r in rows if r["mode"] == mode and not r.get("oom")]
        if mode == "segments":  # a window of at most one segment is read whole
            pts = sorted(pts + [(r["seq_len"], r["peak_mem_mb"] / 1024) for r in rows if r["mode"] == "whole"
                                and not r.get("oom") and r["seq_len"] <= segment_len])
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    for r in rows:
        if r.get("oom"):
            ax.axvline(r["seq_len"], color="grey", linestyle=":",
                       label=f"whole window out of memory at {r['seq_len']:,}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens per sequence (batch 1)")
    ax.set_ylabel("peak memory (GiB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- embedding memory


def _embed_child(spec: dict) -> dict:
    """Runs in a fresh interpreter: load a record, embed it, report RSS before and peak during."""
    torch.set_num_threads(spec.get("threads") or torch.get_num_threads())
    torch.manual_seed(0)
    lm = MambaLM(MambaConfig(**spec["model"], vocab_size=11))
    gm = GenomeModel(lm)
    need = spec["bases"]
    parts, have = [], 0
    for path in spec["fasta"]:
        for rec in read_fasta(path):
            parts.append(rec.sequence[: need - have])
            have += len(parts[-1])
            if have >= need:
                break
        if have >= need:
            break
    seq = "".join(parts)
    del parts
    before = rss_mb()
    reset_peak_rss()
    t0 = time.perf_counter()
    pooling = None if spec["pooling"] == "none" else spec["pooling"]
    out = gm.embed(seq, pooling=pooling, chunk_size=spec["chunk"])
    dt = time.perf_counter() - t0
    arr = out[0]
    return {"bases": len(seq), "pooling": spec["pooling"], "chunk_size": spec["chunk"],
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "output_mb": round(arr.nbytes / 2**20, 1), "seconds": round(dt, 1),
            "bases_per_s": round(len(seq) / dt, 1), "finite": bool(np.isfinite(arr).all())}


def _default_fasta() -> tuple[list[str], str]:
    """A real >= 1 Mb record: D. melanogaster chr2R (fetched); else the shipped slices joined."""
    try:
        d = fetch("fly", quiet=True)
        files = sorted(str(p) for p in d.iterdir() if p.suffix in (".fa", ".fasta", ".gz") and p.is_file())
        if files:
            return files, "D. melanogaster chr2R (dm3), first bases"
    except Exception as exc:  # offline machine: fall back to shipped real slices
        print(f"  (fly fetch failed: {exc}; using the shipped genome slices joined into one record)")
    a = assets_dir()
    files = sorted(str(p) for p in a.glob("*.f*a.gz"))
    return files, "shipped real slices (U. maydis, D. melanogaster, bacteria) joined"


def bench_embed(model_kw: dict, bases_list: list[int], chunk: int, poolings: list[str], fasta: Optional[list[str]],
                threads: Optional[int]) -> tuple[list[dict], str]:
    files, source = (fasta, "user FASTA") if fasta else _default_fasta()
    rows = []
    for pooling in poolings:
        for bases in bases_list:
            spec = {"model": model_kw, "bases": bases, "chunk": chunk, "pooling": pooling, "fasta": files,
                    "threads": threads}
            code = ("import json,sys; from genomamba.bench.train import _embed_child; "
                    "print('RESULT' + json.dumps(_embed_child(json.loads(sys.argv[1]))))")
            proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"embed child failed ({bases} bases, {pooling}):\n{proc.stderr[-2000:]}")
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
            r = json.loads(line[len("RESULT"):])
            r["growth_mb"] = round(r["peak_rss_mb"] - r["rss_before_mb"], 1)
            rows.append(r)
            print(f"  embed {r['bases']:>9,} bases  pooling={pooling:<5} peak RSS {r['peak_rss_mb']} MB "
                  f"(before {r['rss_before_mb']} MB, +{r['growth_mb']} MB; output {r['output_mb']} MB)  "
                  f"{r['seconds']}s", flush=True)
    return rows, source


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba bench train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", action="append", choices=list(PRESETS),
                   help="model shape(s) (repeatable; default tiny and 1.4M on cpu, 1.4M and 7M on cuda)")
    p.add_argument("--d-model", type=positive_count, default=None, help="custom shape instead of a preset")
    p.add_argument("--n-layer", type=positive_count, default=None)
    p.add_argument("--batch-size", type=positive_count, default=None, help="default 4 on cpu, 8 on cuda")
    p.add_argument("--seq-len", type=positive_count, action="append", default=None,
                   help="sequence length(s) (repeatable; default 1024 on cpu, 1024 and 16384 on cuda)")
    p.add_argument("--steps", type=positive_count, default=None, help="timed steps (default 3 on cpu, 20 on cuda)")
    p.add_argument("--warmup", type=nonnegative_count, default=None,
                   help="untimed steps first (default 1 on cpu, 3 on cuda: a shape's CUDA graphs are captured "
                        "on its second step)")
    p.add_argument("--no-amp", action="store_true", help="fp32 on cuda (default: bf16 autocast)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--rebuild-inputs", choices=list(REBUILD), default="auto",
                   help="rebuild each layer's normed input, conv output and delta in the backward instead of "
                        "keeping them (auto: on GPUs); 'off' keeps them all (faster, more memory)")
    p.add_argument("--segment-len", type=positive_count, default=None,
                   help="read each window in segments of this many tokens (segment-wise training)")
    p.add_argument("--vs-mamba-ssm", action="store_true",
                   help="also train each shape and length whole through mamba_ssm's model in this process (CUDA, "
                        "mamba_ssm importable): same weights, data and step; genomamba rows get the ratio")
    p.add_argument("--memory-sweep", action="store_true",
                   help="peak memory vs length at batch 1, whole-window and segment-wise (--seq-len values; "
                        "default 2^14 .. 2^23 on cuda, 2^10 .. 2^14 on cpu), with a PNG plot")
    p.add_argument("--knob", action="append", default=[], metavar="NAME=V1,V2",
                   help="CUDA: train each shape once per value of a knob of genomamba.ops.cuda.CONFIG (repeatable: "
                        "every combination), each with a fresh model, so captured graphs use the setting; e.g. "
                        "--knob bwd_prefetch=-1,2")
    p.add_argument("--rounds", type=positive_count, default=1,
                   help="with --knob: run the settings this many times, interleaved (A B A B), so drift of the "
                        "machine's speed falls on every setting alike")
    p.add_argument("--threads", type=positive_count, default=None)
    p.add_argument("--embed", action="store_true", help="also measure embedding memory on one long record")
    p.add_argument("--embed-only", action="store_true", help="only the embedding memory measurement")
    p.add_argument("--embed-bases", type=positive_count, action="append", default=None,
                   help="record length(s) to embed (default 100,000 and 1,000,000)")
    p.add_argument("--embed-preset", choices=list(PRESETS), default="1.4M")
    p.add_argument("--embed-chunk", type=positive_count, default=16384)
    p.add_argument("--embed-pooling", action="append", choices=("mean", "last", "max", "none"), default=None,
                   help="pooling(s) to measure (default mean; none = per-token, whose output alone is "
                        "bases * d_model * 4 bytes)")
    p.add_argument("--fasta", action="append", default=None, help="FASTA file(s) for the embedding record")
    add_results_args(p, "train_cpu / train_cuda; train_memory_<device> with --memory-sweep")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cuda = cuda_requested("train", args.device)
    if cuda is None:
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"bench": "train", "machine": machine_facts(args.device)}
    # shared CPUs: the 1-minute load average says how much of the machine this run really had
    results["machine"]["loadavg_1min_at_start"] = round(os.getloadavg()[0], 2)
    if args.memory_sweep:
        kw = dict(d_model=args.d_model or 256, n_layer=args.n_layer or 8) if (args.d_model or args.n_layer) \
            else PRESETS[(args.preset or ["3.5M" if cuda else "tiny"])[0]]
        cfg = MambaConfig(**kw, vocab_size=11)
        lengths = args.seq_len or [2**k for k in (range(14, 24) if cuda else range(10, 15))]
        seg = args.segment_len or (65536 if cuda else 2048)
        rows = memory_sweep(cfg, lengths, seg, args.device, steps=args.steps or 2,
                            warmup=1 if args.warmup is None else args.warmup,
                            amp=not args.no_amp)
        print()
        print_table(rows, ["mode", "seq_len", "segment_len", "sec_per_step", "tokens_per_s", "peak_mem_mb", "oom"])
        results["memory_sweep"] = {"model": kw, "segment_len": seg, "rows": rows}
        name = args.name or f"train_memory_{'cuda' if cuda else 'cpu'}"
        path = write_results(name, results, args.out)
        png = path.with_suffix(".png")
        plot_memory(rows, seg, png, f"training memory vs length, d_model {kw['d_model']} x {kw['n_layer']} layers, "
                               f"segments of {seg:,} ({results['machine']['device_name']})")
        print(f"wrote {path} and {png}")
        return 0
    if not args.embed_only:
        if args.d_model or args.n_layer:
            shapes = {"custom": dict(d_model=args.d_model or 256, n_layer=args.n_layer or 8)}
        else:
            names = args.preset or (["1.4M", "7M"] if cuda else ["tiny", "1.4M"])
            shapes = {n: PRESETS[n] for n in names}
        seq_lens = args.seq_len or ([1024, 16384] if cuda else [1024])
        batch = args.batch_size or (8 if cuda else 4)
        steps = args.steps or (20 if cuda else 3)
        warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
        settings = [({}, None)]
        if args.knob:
            if not cuda:
                print("genomamba bench train: --knob sets CUDA kernel knobs; add --device cuda", file=sys.stderr)
                return 2
            settings = knob_settings(args.knob, "train")
        if args.vs_mamba_ssm:
            why = mamba_ssm_unavailable(cuda)
            if why:
                print(f"genomamba bench train: --vs-mamba-ssm: {why}", file=sys.stderr)
                return 2
            results["machine"]["mamba_ssm"] = _version("mamba_ssm")
        rows = []
        for name, kw in shapes.items():
            for L in seq_lens:
                cfg = MambaConfig(**kw, vocab_size=11)
                ref = None
                if args.vs_mamba_ssm:
                    ref = _row(name, batch, L, rows, lambda: bench_train(
                        cfg, batch, L, steps, warmup, args.device, not args.no_amp, impl="mamba_ssm"))
                for rnd in range(args.rounds if args.knob else 1):
                    for update, label in settings:
                        with knobs_set(update):
                            r = _row(name, batch, L, rows, lambda: bench_train(
                                cfg, batch, L, steps, warmup, args.device, not args.no_amp, args.grad_checkpointing,
                                args.segment_len, REBUILD[args.rebuild_inputs]), label)
                        if r and label:
                            r.update(knobs=update, round=rnd)
                        if ref and r and ref.get("tokens_per_s") and r.get("tokens_per_s"):
                            r["ratio_vs_mamba_ssm"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 3)
        print()
        print_table(rows, ["impl", "preset"] + (["variant"] if args.knob else [])
                    + ["params", "batch", "seq_len", "segment_len", "sec_per_step", "tokens_per_s", "peak_mem_mb"]
                    + (["peak_reserved_mb"] if any("peak_reserved_mb" in r for r in rows) else [])
                    + (["ratio_vs_mamba_ssm"] if args.vs_mamba_ssm else []))
        results["train"] = rows
        if cuda:  # which kernels ran: a knob whose self-test part failed falls back to the shipped kernel
            from genomamba.ops.cuda.knobs import CONFIG, STATUS

            results["cuda"] = {"self_test": {k: v if v is True else str(v) for k, v in STATUS.items()},
                               "config": dict(CONFIG)}
            failed = [f"{k} ({v})" for k, v in STATUS.items() if v is not True and v != "not built"]
            if args.knob and failed:
                print(f"note: CUDA self-test parts not passed, their knobs had no effect: {'; '.join(failed)}",
                      flush=True)
    if args.embed or args.embed_only:
        bases = args.embed_bases or [100_000, 1_000_000]
        args.embed_pooling = args.embed_pooling or ["mean"]
        print(f"\nembedding memory ({args.embed_preset} model shape, random weights, chunk {args.embed_chunk}):")
        rows, source = bench_embed(PRESETS[args.embed_preset], bases, args.embed_chunk, args.embed_pooling,
                                   args.fasta, args.threads)
        print()
        print_table(rows, ["bases", "pooling", "chunk_size", "rss_before_mb", "peak_rss_mb", "growth_mb",
                           "output_mb", "seconds"])
        results["embed"] = {"model": PRESETS[args.embed_preset], "source": source, "rows": rows}
    name = args.name or ("train_cuda" if cuda else "train_cpu")
    path = write_results(name, results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
