"""``genomamba bench decode``: greedy decoding on CPU, genomamba against HF transformers' cached generate.

One model (random weights, seed 0), its HF ``MambaForCausalLM`` twin with identical weights
(``genomamba.models.lm.to_hf``; needs ``transformers``), one random prompt. Timed as medians over
``--repeats`` rounds, the implementations interleaved within each round so machine load hits all alike:

* ``prompt+decode``  ``generate`` of ``--new-tokens`` tokens after the prompt;
* ``decode``         per token: (that - ``generate`` of one token) / (new tokens - 1), the cost of
                     one cached step plus the sampling loop around it.

Rows: genomamba ``MambaLM.generate`` (whole-block steps where the C++ kernel runs them), genomamba
with every step composed from the per-op functionals (the step the table picks without a
compiled block step: prompt with the normal backends, then cached steps with the reference
backend forced; its decode loop is written out here as ``generate``'s is), and HF. Before timing,
genomamba's greedy tokens are checked against the argmax of its own full forward over the grown
sequence.

    genomamba bench decode                      # d_model 256 x 4 layers, vocab 16, prompt 256, 64 new
    genomamba bench decode --threads 2 --batch-size 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Optional

import torch

from genomamba.bench.common import add_results_args, machine_facts, positive_count, print_table, write_results
from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM, to_hf
from genomamba.ops import use_backend


def greedy_matches_full_forward(model: MambaLM, out: torch.Tensor, prompt_len: int, vocab: int) -> bool:
    """Each generated token is the argmax of the model's full forward over the tokens before it."""
    with torch.no_grad():
        logits = model(out[:, :-1])[:, prompt_len - 1:, :vocab]
    return bool(torch.equal(logits.argmax(-1), out[:, prompt_len:]))


def composed_generate(model: MambaLM, prompt: torch.Tensor, new_tokens: int, vocab: int) -> torch.Tensor:
    """Greedy decoding as ``generate`` does it, the cached steps composed from the per-op functionals."""
    b, l = prompt.shape
    out = torch.empty(b, l + new_tokens, dtype=prompt.dtype)
    out[:, :l] = prompt
    cache = model.allocate_cache(b)
    logits = model(prompt, cache=cache, num_last_tokens=1)[:, -1]
    with use_backend("ref"):
        for i in range(new_tokens):
            nxt = logits[:, :vocab].float().argmax(-1)
            out[:, l + i] = nxt
            if i + 1 < new_tokens:
                logits = model.step(nxt, cache)
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genomamba bench decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=positive_count, default=256)
    ap.add_argument("--n-layer", type=positive_count, default=4)
    ap.add_argument("--vocab-size", type=positive_count, default=16)
    ap.add_argument("--batch-size", type=positive_count, default=1)
    ap.add_argument("--prompt-len", type=positive_count, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=positive_count, default=7)
    ap.add_argument("--threads", type=positive_count, default=1, help="torch threads")
    ap.add_argument("--no-hf", action="store_true", help="leave out HF transformers")
    add_results_args(ap, "decode_cpu")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.new_tokens < 2:
        raise SystemExit("genomamba bench decode: error: --new-tokens must be at least 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab_size)
    model = MambaLM(cfg).eval()
    vocab, n_new = cfg.vocab_size, args.new_tokens
    prompt = torch.randint(0, vocab, (args.batch_size, args.prompt_len), generator=torch.Generator().manual_seed(1))

    impls = {
        "genomamba": lambda n: model.generate(prompt, n, temperature=0),
        "genomamba composed step": lambda n: composed_generate(model, prompt, n, vocab),
    }
    hf_note = None
    if not args.no_hf:
        try:
            hf = to_hf(model).eval()
        except ImportError:
            hf_note = "transformers is not installed: no HF row"
        else:
            impls["hf transformers"] = lambda n: hf.generate(prompt, max_new_tokens=n, min_new_tokens=n,
                                                             do_sample=False)
    print(f"greedy decoding on CPU: d_model={cfg.d_model} n_layer={cfg.n_layer} vocab={vocab}, b={args.batch_size} "
          f"prompt={args.prompt_len} new={n_new}, {args.threads} thread(s)")
    if hf_note:
        print(f"  {hf_note}")

    with torch.no_grad():
        outs = {name: fn(n_new) for name, fn in impls.items()}  # also the warm-up (kernel build, first calls)
        checks = {"greedy_equals_full_forward_argmax": greedy_matches_full_forward(
            model, outs["genomamba"], args.prompt_len, vocab)}
        checks["composed_equals_fused_tokens"] = bool(torch.equal(outs["genomamba composed step"], outs["genomamba"]))
        if "hf transformers" in outs:
            checks["hf_equals_genomamba_tokens"] = bool(torch.equal(outs["hf transformers"], outs["genomamba"]))
        full = {name: [] for name in impls}
        one = {name: [] for name in impls}
        for _ in range(args.repeats):
            for name, fn in impls.items():
                full[name].append(_timed(lambda: fn(n_new)))
                one[name].append(_timed(lambda: fn(1)))

    rows = []
    for name in impls:
        total = statistics.median(full[name])
        per_token = statistics.median(f - o for f, o in zip(full[name], one[name])) / (n_new - 1)
        rows.append({"impl": name, "prompt+decode_ms": round(total * 1e3, 2), "prompt_ms": round(
            statistics.median(one[name]) * 1e3, 2), "decode_ms_per_token": round(per_token * 1e3, 3),
            "decode_tokens_per_s": round(args.batch_size / per_token, 1)})
    hf_row = next((r for r in rows if r["impl"] == "hf transformers"), None)
    if hf_row:
        for r in rows:
            r["speedup_vs_hf_total"] = round(hf_row["prompt+decode_ms"] / r["prompt+decode_ms"], 2)
            r["speedup_vs_hf_decode"] = round(hf_row["decode_ms_per_token"] / r["decode_ms_per_token"], 2)
    print()
    print_table(rows, ["impl", "prompt+decode_ms", "prompt_ms", "decode_ms_per_token", "decode_tokens_per_s",
                       "speedup_vs_hf_total", "speedup_vs_hf_decode"])
    print()
    for name, ok in checks.items():
        print(f"  {name}: {ok}")
    facts = machine_facts("cpu")
    facts["loadavg_1min_at_start"] = round(os.getloadavg()[0], 2)
    results = {"bench": "decode", "machine": facts, "model": {"d_model": cfg.d_model, "n_layer": cfg.n_layer,
               "vocab_size": vocab, "d_inner": cfg.d_inner, "d_state": cfg.d_state},
               "batch_size": args.batch_size, "prompt_len": args.prompt_len, "new_tokens": n_new,
               "threads": args.threads, "repeats": args.repeats, "checks": checks, "rows": rows,
               "note": "medians; decode_ms_per_token = (generate(new) - generate(1)) / (new - 1), the sampling "
                       "loop included"}
    path = write_results(args.name or "decode_cpu", results, args.out)
    print(f"\nwrote {path}")
    return 0 if checks["greedy_equals_full_forward_argmax"] else 1
