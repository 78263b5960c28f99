"""``genomamba pretrain``: fit (and test) a language model from a pretrain config: next base for DNA,
next byte for text (``adapter: text``), next mu-law sample for audio (``adapter: audio``).

Options come from the YAML config (``--config configs/pretrain/x.yaml``), then ``--set
section.key=value`` overrides, then the few flags of ``genomamba.commands.run_args``. What a run
writes is listed in ``genomamba.lit.trainer``.
"""

from __future__ import annotations

import argparse
import time
from typing import Optional

import torch

from genomamba.baselines import markov_baseline
from genomamba.commands.run_args import add_run_args, config_from_args
from genomamba.errors import UserError, report
from genomamba.files import write_json
from genomamba.lit.callbacks import SeqLenWarmup
from genomamba.lit.config import PretrainConfig, adapter_of, to_plain
from genomamba.lit.datamodules import PretrainDataModule
from genomamba.lit.evaluate import stream_test
from genomamba.lit.pretrain import PretrainModule
from genomamba.lit.trainer import (
    after_fit,
    build_trainer,
    final_checkpoint,
    final_validation,
    fit,
    keep_weights,
    owns_run_dir,
    prepare_run_dir,
    resolve_precision,
    throughput,
)
from genomamba.models.recompute import keep_activations


def _scalar_metrics(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


@owns_run_dir
def run_pretrain(cfg: PretrainConfig, resume: Optional[str] = None, quiet: bool = False, force: bool = False) -> dict:
    """Fit (and test) a language model from a PretrainConfig; returns the results dict (also results.json).
    ``force``: replace an earlier run in ``cfg.run_dir`` (else one there is refused unless ``resume``)."""
    adapter = adapter_of(cfg)
    run_dir, ckpt_path = prepare_run_dir(cfg, resume, force=force)
    dna = adapter.name == "dna"
    tok = adapter.tokenizer if dna else adapter  # DNA: the adapter's tokenizer (its IUPAC policy); else the adapter
    d = cfg.data
    dm = PretrainDataModule(d.sources, d.seq_len, d.batch_size, d.train_samples, d.val_windows, d.test_windows,
                            d.rc_prob, d.max_n_frac, d.num_workers, cfg.trainer.seed, tok,
                            context_parallel=cfg.trainer.context_parallel)
    t0 = time.time()
    dm.setup("fit")
    if not quiet:
        s = dm.summary()
        unit = f"{adapter.unit}s"
        print(f"corpus: {s['sources']} sources, {s['contigs']} contigs; {unit} train {s['bases']['train']:,} "
              f"val {s['bases']['val']:,} test {s['bases']['test']:,} ({time.time() - t0:.1f}s)", flush=True)
    model_cfg = {"vocab_size": tok.vocab_size, **cfg.model.to_dict()}
    optim = {k: v for k, v in to_plain(cfg.optim).items() if k != "head_lr_mult"}
    module = PretrainModule(model_cfg, optim, tok.to_dict() if dna else None,
                            gradient_checkpointing=cfg.trainer.gradient_checkpointing,
                            adapter=None if dna else adapter.to_dict())
    module.context_parallel = cfg.trainer.context_parallel
    module.segment_len = cfg.trainer.segment_len
    keep_activations(module, cfg.trainer.keep_activations)
    bits = module.bits_key
    callbacks = []
    if cfg.seqlen_warmup is not None:
        callbacks.append(SeqLenWarmup(d.seq_len, cfg.seqlen_warmup.start, cfg.seqlen_warmup.stage_steps))
    title = f"{cfg.name or 'pretrain'}: {module.model.num_parameters():,} params, L={d.seq_len}"
    trainer = build_trainer(cfg.trainer, run_dir, callbacks, title, ("train/loss", f"train/{bits}"),
                            ("val/loss", f"val/{bits}", "val/acc"), has_val=dm.val_ds is not None, quiet=quiet)
    t0 = time.time()
    fit(trainer, module, dm, ckpt_path)
    fit_s = time.time() - t0
    final_checkpoint(trainer, run_dir)
    final_validation(trainer, module, dm, run_dir)
    kept = keep_weights(trainer, module)
    results = {"kind": "pretrain", "name": cfg.name, "global_step": int(trainer.global_step),
               "params": module.model.num_parameters(), "fit_seconds": round(fit_s, 1),
               "precision": resolve_precision(cfg.trainer), "seq_len": d.seq_len,
               "segment_len": cfg.trainer.segment_len, "keep_activations": cfg.trainer.keep_activations,
               "device": str(trainer.strategy.root_device), "metrics": _scalar_metrics(trainer.callback_metrics),
               "kept": kept, "throughput": throughput(trainer)}
    steps = int(kept.get("step", trainer.global_step))  # the steps behind the saved weights
    if trainer.world_size > 1:
        results.update(processes=trainer.world_size, context_parallel=cfg.trainer.context_parallel)
    if trainer.interrupted:
        results["interrupted"] = True
    if dna:
        module.model.config.extra.update({"task": "dna-lm", "tokenizer": "genomamba.DNATokenizer",
                                          "train_seq_len": d.seq_len, "trained_steps": steps})
    else:
        module.model.config.extra.update({"task": f"{adapter.name}-lm", "adapter": adapter.name,
                                          "train_seq_len": d.seq_len, "trained_steps": steps})
        results["adapter"] = adapter.to_dict()
    out = run_dir / "model"
    if trainer.is_global_zero:  # one writer; every rank holds the same weights
        module.model.save_pretrained(out)
        tok.save_pretrained(out) if dna else adapter.save(out)  # adapter.json: what genomamba.load reads
    if cfg.test_after_fit and dm.test_ds is not None:
        with after_fit(trainer, "the test"):
            test = trainer.test(module, datamodule=dm, verbose=not quiet)
        results["test"] = test[0] if test else {}
        st = cfg.stream_test
        if st is not None and trainer.world_size == 1:
            results["test_stream"] = stream_test(module.model, dm.store, dm.splits, module.target_ok, st.chunk_len,
                                                 st.adapt_lr, bits_key=module.bits_key,
                                                 device=trainer.strategy.root_device)
        elif st is not None:
            results["test_stream"] = {"skipped": "stream_test runs in single-process runs only; score the "
                                                 "saved model with one process"}
        if not dna:  # the reference point on the very same split: an order-2 Markov model of the tokens
            results["baselines"] = {"markov2": markov_baseline(dm.store, dm.splits, order=2,
                                                               alphabet=len(adapter.data_ids))}
    results["model_dir"] = str(out)
    if trainer.is_global_zero:
        write_json(run_dir / "results.json", results)
    results["global_rank"] = trainer.global_rank
    if torch.cuda.is_available():
        results["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="genomamba pretrain",
                                 description="Pretrain a language model: DNA (next base), text (next byte) or "
                                             "audio (next sample), as the config's adapter says.")
    add_run_args(ap)
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args, "pretrain")
        res = run_pretrain(cfg, resume=args.resume, force=args.force)
    except (UserError, OSError, ValueError) as e:
        return report("pretrain", e, 2)
    if res.get("global_rank", 0):
        return 0  # one line per run, from rank 0
    unit = res.get("adapter", {}).get("name", "dna")
    key, unit = {"dna": ("bpb", "base"), "text": ("bits_per_byte", "byte"),
                 "audio": ("bits_per_sample", "sample")}.get(unit, ("bpb", "token"))
    bpb = res.get("test", {}).get(f"test/{key}")
    line = f"done: step {res['global_step']}, model saved to {res['model_dir']}"
    line += f", held-out {bpb:.3f} bits/{unit}" if bpb is not None else ""
    markov = res.get("baselines", {}).get("markov2")
    line += f" (order-2 Markov on the same split: {markov['witten_bell']:.3f})" if markov else ""
    stream = res.get("test_stream", {})
    if stream and key in stream:
        line += f"; read as one stream: {stream[key]:.3f}"
        if "adaptive" in stream:
            line += f", adapting as it reads (lr {stream['adaptive']['lr']:g}): {stream['adaptive'][key]:.3f}"
    speed = (res.get("throughput") or {}).get("tokens_per_s")
    line += f"; trained at {speed:,.0f} tokens/s" if speed else ""
    print(line)
    return 0
