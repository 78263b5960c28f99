"""``genomamba generate MODEL_DIR --prompt ACGT -n 1000 [--temperature 0.8 --top-k 4 --seed 0]``:
sample DNA after a prompt. Exit codes: 0 success, 1 bad input or model, 2 usage error.
"""

from __future__ import annotations

import argparse

from genomamba.commands.common import add_model_args, fail, load_model, model_files
from genomamba.errors import UserError
from genomamba.files import check_output, write_text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba generate",
                                description="Sample DNA after a prompt (only A/C/G/T are sampled).")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="DNA prompt (at least one base)")
    p.add_argument("-n", "--num-bases", type=int, default=1000, help="bases to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--include-prompt", action="store_true", help="print the prompt before the sample")
    p.add_argument("-o", "--output", default=None, help="write FASTA here instead of the bare sequence to stdout")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        if args.output:
            check_output(args.output, model_files(args.model), "--output", args.force)
        model = load_model(args)
        seq = model.generate(args.prompt, args.num_bases, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, include_prompt=args.include_prompt)
    except (UserError, ValueError, OSError) as exc:
        return fail("generate", exc)
    if args.output:
        header = (f">generated n={args.num_bases} temperature={args.temperature} top_k={args.top_k} "
                  f"top_p={args.top_p} seed={args.seed} prompt_len={len(args.prompt)}")
        body = "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80))
        write_text(args.output, header + "\n" + body + "\n", replace=args.force)
    else:
        print(seq)
    return 0
