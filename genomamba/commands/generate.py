"""``genomamba generate MODEL_DIR --prompt ACGT -n 1000 [--temperature 0.8 --top-k 4 --seed 0]``:
sample DNA after a prompt; for a text model, text after a text prompt; for an audio model, a waveform
(``--prompt clip.wav`` optional, ``--seconds 2``) written as WAV with ``-o out.wav`` (a spectrogram PNG
beside it).

``genomamba generate MODEL_DIR --prompts prompts.fa --num-samples K -n N -o out.fa``: K samples after
every record of a FASTA file, decoded ``--batch-size`` at a time, written as FASTA records
``>{record}_sample{k}`` (k = 1..K). Exit codes: 0 success, 1 bad input or model, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from genomamba.commands.common import add_model_args, fail, load_model, model_files, positive_int
from genomamba.data.fasta import read_fasta
from genomamba.errors import UserError, check_input_file
from genomamba.files import atomic_path, check_output, write_text

LINE = 80  # FASTA line width


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba generate",
                                description="Sample after a prompt: DNA (only A/C/G/T are sampled), text (bytes), "
                                            "or audio (mu-law samples, written as WAV).")
    add_model_args(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None,
                     help="DNA or text prompt (required for those); for audio a WAV/FLAC file (default: silence)")
    src.add_argument("--prompts", default=None, metavar="FASTA",
                     help="DNA models: sample after every record of this FASTA file")
    p.add_argument("--num-samples", type=int, default=1, help="--prompts: samples per record (default 1)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="--prompts: sequences decoded together (default 16)")
    p.add_argument("--no-progress", action="store_true", help="--prompts: no progress bar on stderr")
    p.add_argument("-n", "--num-bases", type=int, default=None,
                   help="tokens to generate: bases, bytes or samples (default 1000; audio: --seconds)")
    p.add_argument("--seconds", type=float, default=None, help="audio: seconds to generate (default 1)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--include-prompt", action="store_true", help="print the prompt before the sample")
    p.add_argument("-o", "--output", default=None,
                   help="DNA: FASTA (else the bare sequence to stdout); text: a text file; audio: a WAV file "
                        "(required; its spectrogram goes to .png)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def _audio(model, args) -> int:
    a = model.adapter
    if not args.output:
        raise ValueError("--output: an audio model writes a WAV file; give -o out.wav")
    n = args.num_bases if args.num_bases is not None else int(round((args.seconds or 1.0) * a.sample_rate))
    wave = model.generate(args.prompt, n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          seed=args.seed, include_prompt=args.include_prompt)
    out = a.write_wav(wave, args.output)
    png = save_spectrogram(wave, a.sample_rate, Path(out).with_suffix(".png"),
                           f"generated: {len(wave) / a.sample_rate:.2f} s at {a.sample_rate} Hz")
    print(f"wrote {out} ({len(wave) / a.sample_rate:.2f} s) and {png}")
    return 0


def _fasta_lines(header: str, seq: str) -> str:
    return ">" + header + "\n" + "".join(seq[i:i + LINE] + "\n" for i in range(0, len(seq), LINE))


def read_prompts(model, path) -> list[tuple[str, str]]:
    """Every record of a FASTA file as (name, sequence), each checked against the model's tokenizer;
    errors name the file and the record."""
    records = []
    for i, rec in enumerate(read_fasta(path)):
        ids = model.encode(rec.sequence, where=f"--prompts: {path}: record {i + 1} ({rec.name!r})")
        if len(ids) == 0:
            raise ValueError(f"--prompts: {path}: record {i + 1} ({rec.name!r}) is empty")
        records.append((rec.name, rec.sequence))
    if not records:
        raise ValueError(f"--prompts: {path}: no records")
    return records


def generate_fasta(model, records: list[tuple[str, str]], out, n: int, num_samples: int = 1,
                   batch_size: int = 16, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed=None, include_prompt: bool = False, progress: bool = False) -> int:
    """``num_samples`` samples of ``n`` bases after each record, ``batch_size`` sequences at a time
    (with a ``seed``, batch ``j`` draws from ``seed + j``), written as FASTA to the text stream
    ``out``. Returns the number of records written."""
    jobs = [(name, seq, k) for name, seq in records for k in range(1, num_samples + 1)]
    bar = tqdm(total=len(jobs), desc="generate", unit="seq", file=sys.stderr, disable=not progress)
    try:
        for j, start in enumerate(range(0, len(jobs), batch_size)):
            part = jobs[start:start + batch_size]
            texts = model.generate([seq for _, seq, _ in part], n, temperature=temperature, top_k=top_k,
                                   top_p=top_p, seed=None if seed is None else seed + j,
                                   include_prompt=include_prompt)
            for (name, seq, k), text in zip(part, texts):
                out.write(_fasta_lines(f"{name}_sample{k} n={n} temperature={temperature} top_k={top_k} "
                                       f"top_p={top_p} seed={seed} prompt_len={len(seq)}", text))
            bar.update(len(part))
    finally:
        bar.close()
    return len(jobs)


def _prompts(model, args, kind: str) -> int:
    if kind != "dna":
        raise ValueError(f"--prompts: reads DNA prompts from FASTA; this is a {kind} model (use --prompt)")
    positive_int("--num-samples", args.num_samples)
    positive_int("--batch-size", args.batch_size)
    records = read_prompts(model, args.prompts)
    n = args.num_bases if args.num_bases is not None else 1000
    kw = dict(n=n, num_samples=args.num_samples, batch_size=args.batch_size, temperature=args.temperature,
              top_k=args.top_k, top_p=args.top_p, seed=args.seed, include_prompt=args.include_prompt,
              progress=not args.no_progress and sys.stderr.isatty())
    if not args.output:
        generate_fasta(model, records, sys.stdout, **kw)
        return 0
    with atomic_path(args.output, replace=args.force) as tmp, open(tmp, "w") as fh:
        count = generate_fasta(model, records, fh, **kw)
    print(f"wrote {count} samples ({len(records)} prompts x {args.num_samples}) to {args.output}", file=sys.stderr)
    return 0


def save_spectrogram(wave, sample_rate: int, path, title: str = "") -> Path:
    """A log-magnitude spectrogram PNG of a waveform."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    nfft = max(64, int(0.025 * sample_rate))
    ax.specgram(wave, NFFT=nfft, Fs=sample_rate, noverlap=nfft // 2, cmap="magma")
    ax.set_xlabel("seconds")
    ax.set_ylabel("Hz")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        inputs = model_files(args.model)
        if args.prompts is not None:
            check_input_file(args.prompts, "--prompts")
            inputs.append(Path(args.prompts))
        if args.output:
            check_output(args.output, inputs, "--output", args.force)
        model = load_model(args)
        kind = getattr(getattr(model, "adapter", None), "name", "dna")
        if args.prompts is not None:
            return _prompts(model, args, kind)
        if kind == "audio":
            return _audio(model, args)
        if args.prompt is None:
            raise ValueError("--prompt: required for a DNA or text model")
        n = args.num_bases if args.num_bases is not None else 1000
        seq = model.generate(args.prompt, n, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, include_prompt=args.include_prompt)
    except (UserError, ValueError, OSError) as exc:
        return fail("generate", exc)
    if kind == "text":
        if args.output:
            write_text(args.output, seq)
        else:
            print(seq)
        return 0
    if args.output:
        header = (f">generated n={n} temperature={args.temperature} top_k={args.top_k} "
                  f"top_p={args.top_p} seed={args.seed} prompt_len={len(args.prompt)}")
        body = "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80))
        write_text(args.output, header + "\n" + body + "\n", replace=args.force)
    else:
        print(seq)
    return 0
