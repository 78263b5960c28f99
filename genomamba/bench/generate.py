"""``genomamba bench generate``: decoding throughput (new tokens per second) of a Mamba LM.

genomamba's ``MambaLM.generate`` with random weights and random prompts, greedy, for each batch
size: eager steps, and on CUDA the step replayed from a CUDA graph (the default step, one kernel
for the whole model at batch <= 4; ``genomamba_graph_mma``: the same with the tensor-core kernel
for batches of 5 to 64, ``GENOMAMBA_DECODE_MMA=1``; and the layered step,
``genomamba_graph_layers``). Next to it, when the packages
import: mamba_ssm's ``MambaLMHeadModel.generate(cg=True)`` (CUDA only), an HF transformers Llama
of about the same parameter count with its KV cache (half the layers, MLP width 8/3 d_model: the
Transformer counterpart the Mamba paper pairs with a Mamba of twice the layers), and HF
``MambaForCausalLM`` (its own decode path). Every column decodes the same number of tokens after
the same prompt length. A column that fails records its error instead of a number.

``tokens_per_s`` counts the new tokens of the whole batch over the whole call (prefill included);
``ms_per_step`` is the time of one more token, from two calls of different lengths. Decoding is
greedy unless ``--temperature`` is above 0: then every column samples with that temperature and the
same top-k / top-p filters (genomamba seeded; on CUDA its captured sampler).

    genomamba bench generate                                   # small shape on CPU
    genomamba bench generate --device cuda                     # 130M shape (768 x 24), fp16, batch 1,16,64
    genomamba bench generate --device cuda --d-model 1024 --n-layer 48 --batch 1,8
    genomamba bench generate --device cuda --temperature 0.9 --top-p 0.95   # sampled decoding
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
from typing import Callable, Optional

import torch

from genomamba.bench.common import (
    add_results_args,
    cuda_requested,
    machine_facts,
    positive_count,
    print_table,
    write_results,
)
from genomamba.config import MambaConfig
from genomamba.models.decode import graphs_of
from genomamba.models.lm import MambaLM
from genomamba.ops.cuda.model_step import step_kind

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CUDA_DEFAULTS = dict(d_model=768, n_layer=24, vocab=50277, prompt_len=128, new_tokens=256, batch="1,16,64",
                     dtype="float16", repeats=3)
CPU_DEFAULTS = dict(d_model=128, n_layer=4, vocab=256, prompt_len=32, new_tokens=32, batch="1,4",
                    dtype="float32", repeats=3)


def _version(name: str) -> Optional[str]:
    try:
        return importlib.import_module(name).__version__
    except Exception:
        return None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[int], object], new_tokens: int, device: str, repeats: int) -> dict:
    """``fn(n)`` generates n new tokens. Warm up once, then the best of ``repeats`` calls for
    ``new_tokens`` and for half as many: their difference gives the time per step."""
    fn(new_tokens)
    fn(max(1, new_tokens // 2))
    best = {}
    for n in (new_tokens, max(1, new_tokens // 2)):
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn(n)
            _sync(device)
            best[n] = min(best.get(n, float("inf")), time.perf_counter() - t0)
    full, half = best[new_tokens], best[max(1, new_tokens // 2)]
    steps = new_tokens - max(1, new_tokens // 2)
    return {"seconds": full, "ms_per_step": 1e3 * (full - half) / steps if steps else float("nan")}


# ----------------------------------------------------------------------------- the columns

COLUMNS = ("genomamba_eager", "genomamba_graph", "genomamba_graph_mma", "genomamba_graph_layers", "mamba_ssm_cg",
           "hf_llama", "hf_mamba")


GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0)


@contextlib.contextmanager
def _environment(**values: str):
    """Set these variables for the block, then put back what was there."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def genomamba_column(cfg: MambaConfig, device, dtype, prompts, new_tokens, repeats, cuda_graph: bool,
                     step: str = "model", sampling: dict = GREEDY, mma: Optional[bool] = None):
    """``step``: "model" (the default decode step: one kernel for the whole model where it applies)
    or "layers" (the layered step, ``GENOMAMBA_DECODE_STEP=layers``); ``mma``: batches of 5 to 64 on
    the tensor-core kernel or not (``GENOMAMBA_DECODE_MMA``; None: as the environment says)."""
    torch.manual_seed(0)
    model = MambaLM(cfg, device=device, dtype=dtype).eval()
    switches = {"GENOMAMBA_DECODE_STEP": step}
    if mma is not None:
        switches["GENOMAMBA_DECODE_MMA"] = "1" if mma else "0"
    with _environment(**switches):
        res = timed(lambda n: model.generate(prompts, n, seed=0, cuda_graph=cuda_graph, **sampling), new_tokens,
                    device, repeats)
        graphs = [g for g in graphs_of(model).graphs.values() if g is not None]
        if graphs:  # which step the captured graph replays, and if not the kernel, why
            res["step"] = step_kind(graphs[-1].cache)
    return res, model.num_parameters()


def mamba_ssm_column(cfg: MambaConfig, device, dtype, prompts, new_tokens, repeats, sampling: dict = GREEDY):
    from mamba_ssm.models.config_mamba import MambaConfig as SsmConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    torch.manual_seed(0)
    model = MambaLMHeadModel(SsmConfig(d_model=cfg.d_model, n_layer=cfg.n_layer, vocab_size=cfg.vocab_size),
                             device=device, dtype=dtype).eval()
    length = prompts.shape[1]
    if sampling["temperature"] > 0:  # its top_p 0 means no nucleus filter, top_k 0 no top-k
        kw = dict(temperature=sampling["temperature"], top_k=sampling["top_k"],
                  top_p=sampling["top_p"] if sampling["top_p"] < 1.0 else 0.0)
    else:
        kw = dict(top_k=1)
    res = timed(lambda n: model.generate(prompts, max_length=length + n, cg=True, **kw), new_tokens, device,
                repeats)
    return res, sum(p.numel() for p in model.parameters())


def hf_llama_column(cfg: MambaConfig, device, dtype, prompts, new_tokens, repeats, sampling: dict = GREEDY):
    import transformers

    d = cfg.d_model
    heads = max(1, d // 64)
    lc = transformers.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=d, num_hidden_layers=max(1, cfg.n_layer // 2),
                                  intermediate_size=max(64, (8 * d // 3 + 63) // 64 * 64), num_attention_heads=heads,
                                  num_key_value_heads=heads, max_position_embeddings=4096, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(lc).to(device=device, dtype=dtype).eval()
    return _hf_timed(model, prompts, new_tokens, device, repeats, sampling)


def hf_mamba_column(cfg: MambaConfig, device, dtype, prompts, new_tokens, repeats, sampling: dict = GREEDY):
    import transformers

    hc = transformers.MambaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                                  state_size=cfg.d_state, expand=cfg.expand, conv_kernel=cfg.d_conv)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(hc).to(device=device, dtype=dtype).eval()
    return _hf_timed(model, prompts, new_tokens, device, repeats, sampling)


def _hf_timed(model, prompts, new_tokens, device, repeats, sampling: dict = GREEDY):
    mask = torch.ones_like(prompts)
    kw = dict(do_sample=False)
    if sampling["temperature"] > 0:  # top_k 0 switches transformers' default top-k of 50 off
        kw = dict(do_sample=True, temperature=sampling["temperature"], top_k=sampling["top_k"],
                  top_p=sampling["top_p"])

    @torch.no_grad()
    def run(n):
        return model.generate(prompts, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, use_cache=True,
                              pad_token_id=0, **kw)

    return timed(run, new_tokens, device, repeats), model.num_parameters()


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba bench generate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--d-model", type=int, default=None, help="default 768 on cuda, 128 on cpu")
    p.add_argument("--n-layer", type=int, default=None, help="default 24 on cuda, 4 on cpu")
    p.add_argument("--vocab", type=int, default=None, help="default 50277 on cuda, 256 on cpu")
    p.add_argument("--prompt-len", type=int, default=None, help="default 128 on cuda, 32 on cpu")
    p.add_argument("--new-tokens", type=int, default=None, help="default 256 on cuda, 32 on cpu")
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default 1,16,64 on cuda, 1,4 on cpu)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default float16 on cuda, float32 on cpu")
    p.add_argument("--repeats", type=positive_count, default=None, help="timed calls per setting, best kept")
    p.add_argument("--temperature", type=float, default=0.0, help="above 0: sampled decoding (default 0: greedy)")
    p.add_argument("--top-k", type=int, default=0, help="sampled decoding: keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampled decoding: nucleus mass (1: off)")
    p.add_argument("--no-baselines", action="store_true", help="genomamba only (no mamba_ssm / transformers)")
    p.add_argument("--skip", action="append", default=[], choices=COLUMNS,
                   help="leave out this column (repeatable)")
    p.add_argument("--threads", type=positive_count, default=None)
    add_results_args(p, "generate_cuda / generate_cpu")
    return p


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cuda = cuda_requested("generate", args.device)
    if cuda is None:
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    dflt = CUDA_DEFAULTS if cuda else CPU_DEFAULTS
    opt = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in dflt.items()}
    try:
        for name in ("d_model", "n_layer", "vocab", "prompt_len", "new_tokens", "repeats"):
            _positive("--" + name.replace("_", "-"), opt[name])
        try:
            batches = [_positive("--batch", int(x)) for x in str(opt["batch"]).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--batch: expected comma-separated positive ints, got {opt['batch']!r}") from None
        if not batches:
            raise ValueError("--batch: give at least one batch size")
        if not args.temperature >= 0 or args.temperature == float("inf"):
            raise ValueError(f"--temperature: expected a number >= 0, got {args.temperature}")
        if args.top_k < 0:
            raise ValueError(f"--top-k: expected an int >= 0, got {args.top_k}")
        if not 0.0 < args.top_p <= 1.0:
            raise ValueError(f"--top-p: expected 0 < p <= 1, got {args.top_p}")
        if args.temperature == 0 and (args.top_k or args.top_p < 1.0):
            raise ValueError("--top-k / --top-p filter sampled decoding: give a --temperature above 0 too")
    except ValueError as exc:
        print(f"genomamba bench generate: {exc}", file=sys.stderr)
        return 2
    dtype = DTYPES[opt["dtype"]]
    cfg = MambaConfig(d_model=opt["d_model"], n_layer=opt["n_layer"], vocab_size=opt["vocab"])
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    columns = [("genomamba_eager", lambda *a: genomamba_column(*a, cuda_graph=False, sampling=sampling))]
    if cuda:
        columns.append(("genomamba_graph", lambda *a: genomamba_column(*a, cuda_graph=True, sampling=sampling)))
        columns.append(("genomamba_graph_mma", lambda *a: genomamba_column(*a, cuda_graph=True, sampling=sampling,
                                                                           mma=True)))
        columns.append(("genomamba_graph_layers", lambda *a: genomamba_column(*a, cuda_graph=True, step="layers",
                                                                              sampling=sampling)))
    versions = {"torch": torch.__version__, "transformers": _version("transformers"),
                "mamba_ssm": _version("mamba_ssm")}
    if not args.no_baselines:
        if cuda and versions["mamba_ssm"]:
            columns.append(("mamba_ssm_cg", lambda *a: mamba_ssm_column(*a, sampling=sampling)))
        if versions["transformers"]:
            columns.append(("hf_llama", lambda *a: hf_llama_column(*a, sampling=sampling)))
            columns.append(("hf_mamba", lambda *a: hf_mamba_column(*a, sampling=sampling)))
    shape = {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size, "d_state": cfg.d_state,
             "prompt_len": opt["prompt_len"], "new_tokens": opt["new_tokens"], "dtype": opt["dtype"],
             "device": args.device, "repeats": opt["repeats"],
             "decoding": "greedy" if args.temperature == 0 else
             f"sampled (temperature {args.temperature}, top_k {args.top_k}, top_p {args.top_p})"}
    columns = [(name, fn) for name, fn in columns if name not in args.skip]
    print(f"decoding {opt['new_tokens']} tokens after {opt['prompt_len']} (d_model {cfg.d_model} x {cfg.n_layer}, "
          f"vocab {cfg.vocab_size}, {opt['dtype']}, {args.device})", flush=True)
    rows, params = [], {}
    gen = torch.Generator().manual_seed(0)
    for b in batches:
        prompts = torch.randint(0, cfg.vocab_size, (b, opt["prompt_len"]), generator=gen).to(args.device)
        row = {"batch": b}
        for name, column in columns:
            try:
                res, n_params = column(cfg, args.device, dtype, prompts, opt["new_tokens"], opt["repeats"])
            except Exception as exc:  # a baseline that cannot run here: record why, keep the others
                row[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                print(f"  batch {b}: {name} failed: {row[f'{name}_error']}", flush=True)
                continue
            params[name] = n_params
            row[f"{name}_tok_s"] = round(b * opt["new_tokens"] / res["seconds"], 1)
            row[f"{name}_ms_step"] = round(res["ms_per_step"], 3)
            if "step" in res:
                row[f"{name}_step"] = res["step"]
            kind = f" [{res['step']}]" if "step" in res else ""
            print(f"  batch {b}: {name} {row[f'{name}_tok_s']:,.0f} tok/s, {row[f'{name}_ms_step']} ms/step{kind}",
                  flush=True)
        if "genomamba_graph_tok_s" in row and "genomamba_eager_tok_s" in row:
            row["graph_speedup"] = round(row["genomamba_graph_tok_s"] / row["genomamba_eager_tok_s"], 2)
        rows.append(row)
        if cuda:
            torch.cuda.empty_cache()
    print()
    cols = ["batch"] + [f"{name}_tok_s" for name, _ in columns] + (["graph_speedup"] if cuda else [])
    print_table(rows, cols)
    results = {"bench": "generate", "machine": machine_facts(args.device), "versions": versions, "shape": shape,
               "params": params, "columns": [name for name, _ in columns], "rows": rows}
    path = write_results(args.name or ("generate_cuda" if cuda else "generate_cpu"), results, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
