"""``genomamba generate MODEL_DIR --prompt ACGT -n 1000 [--temperature 0.8 --top-k 4 --seed 0]``:
sample DNA after a prompt; for a text model, text after a text prompt; for an audio model, a waveform
(``--prompt clip.wav`` optional, ``--seconds 2``) written as WAV with ``-o out.wav`` (a spectrogram PNG
beside it). Exit codes: 0 success, 1 bad input or model, 2 usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genomamba.commands.common import add_model_args, fail, load_model, model_files
from genomamba.errors import UserError
from genomamba.files import check_output, write_text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genomamba generate",
                                description="Sample after a prompt: DNA (only A/C/G/T are sampled), text (bytes), "
                                            "or audio (mu-law samples, written as WAV).")
    add_model_args(p)
    p.add_argument("--prompt", default=None,
                   help="DNA or text prompt (required for those); for audio a WAV/FLAC file (default: silence)")
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
        if args.output:
            check_output(args.output, model_files(args.model), "--output", args.force)
        model = load_model(args)
        kind = getattr(getattr(model, "adapter", None), "name", "dna")
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
