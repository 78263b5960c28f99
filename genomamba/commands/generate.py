"""``genomamba generate MODEL_DIR --prompt ACGT -n 1000 [--temperature 0.8 --top-k 4 --seed 0]``:
sample DNA after a prompt; for a text model, text after a text prompt; for an audio model, a waveform
(``--prompt clip.wav`` optional, ``--seconds 2``) written as WAV with ``-o out.wav`` (a spectrogram PNG
beside it).

``genomamba generate MODEL_DIR --prompts prompts.fa --num-samples K -n N -o out.fa``: K samples after
every record of a FASTA file, decoded ``--batch-size`` at a time, written as FASTA records
``>{record}_sample{k}`` (k = 1..K); ``--prompt ACGT --num-samples K`` (K > 1) the same for one prompt,
records ``>prompt_sample{k}``. With ``--seed S`` sample ``g`` (counting every sample of the run, in
output order) draws from its own generator seeded ``S + g``, whatever ``--batch-size``; its header
records both (``seed=``, ``sample_seed=``); seeds lie in [0, 2**32 - 1], the last sample's included.
``--include-prompt`` writes the prompt exactly as given (a record's sequence as read) before each
sample; ``prompt_len=`` in a header is its length. An output named ``.gz`` is gzip-compressed. Exit
codes: 0 success, 1 bad input or model, 2 usage error.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import warnings
from pathlib import Path

from tqdm import tqdm

from genomamba.commands.common import add_model_args, cli_error, fail, load_model, model_files, positive_int
from genomamba.data.fasta import read_fasta
from genomamba.errors import InvalidArgument, UserError, check_input_file
from genomamba.files import atomic_path, atomic_text, check_output, write_text
from genomamba.models.decode import SEED_MAX, check_seed

LINE = 80  # FASTA line width

# the Python parameters of ``model.generate`` that errors may name, as the options that set them
OPTIONS = {"n": "-n/--num-bases", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
           "seed": "--seed", "prompt": "--prompt", "batch_size": "--batch-size"}


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
    p.add_argument("--num-samples", type=int, default=1,
                   help="DNA models: samples per prompt (default 1); more than one are written as FASTA records "
                        ">{record}_sample{k} (--prompt: >prompt_sample{k}), to stdout or -o")
    p.add_argument("--batch-size", type=int, default=16,
                   help="DNA models: samples decoded together when there are several (--prompts, or "
                        "--num-samples > 1; default 16)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (shown, in tokens, when stderr is a terminal)")
    p.add_argument("-n", "--num-bases", type=int, default=None,
                   help="tokens to generate: bases, bytes or samples (default 1000; audio: --seconds)")
    p.add_argument("--seconds", type=float, default=None,
                   help="audio models only: seconds to generate (default 1), instead of -n")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="0 = greedy; a very large one samples the tokens (near-)uniformly")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample among the likeliest tokens that make up this probability, in (0, 1] (1 = off)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for reproducible samples: sample g of the run (in output order) draws from its own "
                        "generator seeded seed + g, so it does not depend on --batch-size (each FASTA header "
                        f"records seed and sample_seed); seeds lie in [0, {SEED_MAX}]")
    p.add_argument("--include-prompt", action="store_true",
                   help="write the prompt before the sample: DNA and text exactly as given (--prompts: each "
                        "record's sequence as read; case, N and IUPAC codes kept); audio: the clip as the model "
                        "reads it")
    p.add_argument("-o", "--output", default=None,
                   help="DNA: FASTA (else the bare sequence to stdout); text: a text file; audio: a WAV file "
                        "(required; its spectrogram goes to .png). A FASTA or text file named .gz is "
                        "gzip-compressed")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    return p


def check_options(args) -> None:
    """The numbers given, checked before the model loads; an error names the option."""
    if args.num_bases is not None and args.num_bases < 0:
        raise InvalidArgument(f"-n/--num-bases: expected an int >= 0, got {args.num_bases}")
    if args.seconds is not None:
        if not (math.isfinite(args.seconds) and args.seconds > 0):
            raise InvalidArgument(f"--seconds: expected a positive number, got {args.seconds}")
        if args.num_bases is not None:
            raise InvalidArgument("--seconds: give either --seconds or -n/--num-bases, not both")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise InvalidArgument(f"--temperature: expected a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k < 0:
        raise InvalidArgument(f"--top-k: expected an int >= 0 (0 = off), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise InvalidArgument(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    positive_int("--num-samples", args.num_samples)
    positive_int("--batch-size", args.batch_size)
    try:  # sample g draws from seed + g: the last sample's seed must lie in the range too
        check_seed(args.seed, count=args.num_samples)
    except ValueError as exc:
        raise InvalidArgument(f"--seed: {str(exc).partition(': ')[2]}") from None


def check_kind(args, kind: str) -> None:
    """The options that only one kind of model reads, refused for the others."""
    name = "DNA" if kind == "dna" else kind
    if args.seconds is not None and kind != "audio":
        raise InvalidArgument(f"--seconds: audio models only; this is a {name} model (use -n/--num-bases)")
    if args.num_samples > 1 and kind != "dna":
        raise InvalidArgument(f"--num-samples: several samples are for DNA models; this is a {name} model")
    if args.prompts is not None and kind != "dna":
        raise InvalidArgument(f"--prompts: reads DNA prompts from FASTA; this is a {name} model (use --prompt)")


def _audio(model, args) -> int:
    a = model.adapter
    if not args.output:
        raise ValueError("--output: an audio model writes a WAV file; give -o out.wav")
    out = Path(args.output)
    if out.suffix.lower() != ".wav":
        raise InvalidArgument(f"--output {out}: an audio model writes a WAV file; name it .wav")
    png = out.with_suffix(".png")  # checked like the WAV itself, before any work
    check_output(png, model_files(args.model), "--output (its spectrogram PNG)", args.force)
    n = args.num_bases if args.num_bases is not None else int(round((args.seconds or 1.0) * a.sample_rate))
    # fewer samples than one spectrogram window would write a clip too short to look at (or none)
    least = _spectrogram_window(a.sample_rate)
    if n < least and not (args.include_prompt and args.prompt is not None):
        what = f"-n {n}" if args.num_bases is not None else f"--seconds {args.seconds}"
        raise InvalidArgument(f"{what}: an audio model writes at least one spectrogram window, {least} samples "
                              f"({least / a.sample_rate:.3f} s at {a.sample_rate} Hz)")
    with _bar(n, "sample", args) as bar:
        wave = model.generate(args.prompt, n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              seed=args.seed, include_prompt=args.include_prompt, progress=bar.update)
    with atomic_path(out, replace=args.force) as tmp:
        a.write_wav(wave, tmp)
    with atomic_path(png, replace=args.force) as tmp:
        seconds = len(wave) / a.sample_rate
        save_spectrogram(wave, a.sample_rate, tmp, f"generated: {seconds:.2f} s at {a.sample_rate} Hz")
    print(f"wrote {out} ({len(wave) / a.sample_rate:.2f} s) and {png}")
    return 0


def _fasta_lines(header: str, seq: str) -> str:
    return ">" + header + "\n" + "".join(seq[i:i + LINE] + "\n" for i in range(0, len(seq), LINE))


def read_prompts(model, path) -> list[tuple[str, str]]:
    """Every record of a FASTA file as (name, sequence), each checked against the model's tokenizer;
    errors name the file and the record."""
    records = []
    for i, rec in enumerate(read_fasta(path, any_letter=getattr(model.tokenizer, "reads_any_letter", False))):
        ids = model.encode(rec.sequence, where=f"--prompts: {path}: record {i + 1} ({rec.name!r})")
        if len(ids) == 0:
            raise ValueError(f"--prompts: {path}: record {i + 1} ({rec.name!r}) is empty")
        records.append((rec.name, rec.sequence))
    if not records:
        raise ValueError(f"--prompts: {path}: no records")
    return records


def _names_file(text: str) -> bool:
    """Whether ``text`` is the name of an existing file (a long or multi-line prompt never is)."""
    if not text or len(text) > 4096 or "\n" in text:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def check_prompt(model, prompt: str) -> list[tuple[str, str]]:
    """``--prompt`` as the one record ``("prompt", prompt)``, checked against the model's tokenizer. A
    file name given to ``--prompt`` is read as a sequence: where it is no DNA, the error points at
    ``--prompts``; where the tokenizer takes it anyway (``<unk>`` for unknown characters), a warning does."""
    named_file = _names_file(prompt)
    try:
        ids = model.encode(prompt, where="--prompt")
    except ValueError:
        if not named_file:
            raise
        raise InvalidArgument(f"--prompt: {prompt!r} is the name of a file, not a DNA sequence (--prompt takes the "
                              f"sequence itself); to sample after every record of a FASTA file use --prompts "
                              f"{shlex.quote(prompt)}") from None
    if named_file:
        print(f"genomamba generate: warning: --prompt: {prompt!r} is also the name of a file; it is read as the "
              f"sequence itself (to sample after the file's records use --prompts {shlex.quote(prompt)})",
              file=sys.stderr)
    if len(ids) == 0:
        raise InvalidArgument("--prompt: empty; generation needs at least one base "
                              "(this model was trained without a <bos> token)")
    return [("prompt", prompt)]


def generate_fasta(model, records: list[tuple[str, str]], out, n: int, num_samples: int = 1,
                   batch_size: int = 16, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed=None, include_prompt: bool = False, progress: bool = False) -> int:
    """``num_samples`` samples of ``n`` bases after each record, ``batch_size`` sequences at a time,
    written as FASTA to the text stream ``out``. With a ``seed``, sample ``g`` (in output order) draws
    from its own generator seeded ``seed + g``, so the samples do not depend on ``batch_size``; each
    header records ``seed`` and its ``sample_seed`` (every one of them is checked to lie in [0,
    ``SEED_MAX``] before anything is written). With ``include_prompt`` each sample is preceded by its
    record's sequence exactly as given, ``prompt_len`` long. Returns the number of records written."""
    jobs = [(name, seq, k) for name, seq in records for k in range(1, num_samples + 1)]
    check_seed(seed, count=len(jobs))  # before anything is written: every sample's seed fits
    bar = tqdm(total=len(jobs) * n, desc="generate", unit="base", file=sys.stderr,
               disable=not progress)
    try:
        for start in range(0, len(jobs), batch_size):
            part = jobs[start:start + batch_size]
            texts = model.generate([seq for _, seq, _ in part], n, temperature=temperature, top_k=top_k,
                                   top_p=top_p, seed=None if seed is None else seed + start,
                                   include_prompt=include_prompt, progress=bar.update)
            for g, ((name, seq, k), text) in enumerate(zip(part, texts), start):
                out.write(_fasta_lines(f"{name}_sample{k} n={n} temperature={temperature} top_k={top_k} "
                                       f"top_p={top_p} seed={seed} sample_seed={None if seed is None else seed + g} "
                                       f"prompt_len={len(seq)}", text))
    finally:
        bar.close()
    return len(jobs)


def _samples(model, args, records: list[tuple[str, str]]) -> int:
    """``--num-samples`` samples after every record, as FASTA to ``-o`` or stdout."""
    n = args.num_bases if args.num_bases is not None else 1000
    kw = dict(n=n, num_samples=args.num_samples, batch_size=args.batch_size, temperature=args.temperature,
              top_k=args.top_k, top_p=args.top_p, seed=args.seed, include_prompt=args.include_prompt,
              progress=not args.no_progress and sys.stderr.isatty())
    if not args.output:
        generate_fasta(model, records, sys.stdout, **kw)
        return 0
    with atomic_text(args.output, replace=args.force) as fh:
        count = generate_fasta(model, records, fh, **kw)
    what = f"{len(records)} prompts" if args.prompts is not None else "--prompt"
    print(f"wrote {count} samples ({what} x {args.num_samples}) to {args.output}", file=sys.stderr)
    return 0


def _spectrogram_window(sample_rate: int) -> int:
    """Samples of one window of the generated clip's spectrogram (25 ms, at least 64)."""
    return max(64, int(0.025 * sample_rate))


def save_spectrogram(wave, sample_rate: int, path, title: str = "") -> Path:
    """A log-magnitude spectrogram PNG of a waveform."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    nfft = _spectrogram_window(sample_rate)
    with warnings.catch_warnings():  # a clip shorter than one window is drawn as one column, as it should
        warnings.filterwarnings("ignore", message="Only one segment is calculated", category=UserWarning)
        ax.specgram(wave, NFFT=nfft, Fs=sample_rate, noverlap=nfft // 2, cmap="magma")
    ax.set_xlabel("seconds")
    ax.set_ylabel("Hz")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        check_options(args)
        inputs = model_files(args.model)
        if args.prompts is not None:
            check_input_file(args.prompts, "--prompts")
            inputs.append(Path(args.prompts))
        if args.output:
            check_output(args.output, inputs, "--output", args.force)
        model = load_model(args)
        kind = getattr(getattr(model, "adapter", None), "name", "dna")
        check_kind(args, kind)
        if args.prompts is not None:
            return _samples(model, args, read_prompts(model, args.prompts))
        if kind == "audio":
            return _audio(model, args)
        if args.prompt is None:
            raise ValueError("--prompt: required for a DNA or text model")
        records = check_prompt(model, args.prompt) if kind == "dna" else None
        if args.num_samples > 1:
            return _samples(model, args, records)
        return _one(model, args, kind)
    except BrokenPipeError:
        raise  # the reader of stdout went away (`| head`): the entry point stops quietly
    except (UserError, ValueError, OSError) as exc:
        return fail("generate", cli_error(exc, OPTIONS))


def _bar(total: int, unit: str, args):
    """The progress bar of a generation on stderr: shown when stderr is a terminal, unless --no-progress."""
    return tqdm(total=total, desc="generate", unit=unit, file=sys.stderr,
                disable=args.no_progress or not sys.stderr.isatty())


def _one(model, args, kind: str) -> int:
    """One sample after ``--prompt``: text as it is, DNA bare on stdout or as one FASTA record."""
    n = args.num_bases if args.num_bases is not None else 1000
    with _bar(n, "byte" if kind == "text" else "base", args) as bar:
        seq = model.generate(args.prompt, n, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, include_prompt=args.include_prompt,
                             progress=bar.update)
    if kind == "text":
        # a prompt's bytes that were not UTF-8 (escaped in the str) are written back as those bytes
        from genomamba.adapters.text import SURROGATE_BYTES

        if not args.output:
            sys.stdout.flush()
            sys.stdout.buffer.write(seq.encode("utf-8", SURROGATE_BYTES) + b"\n")
            sys.stdout.buffer.flush()
        else:
            write_text(args.output, seq, replace=args.force, errors=SURROGATE_BYTES)
    elif not args.output:
        print(seq)
    else:
        header = (f"generated n={n} temperature={args.temperature} top_k={args.top_k} "
                  f"top_p={args.top_p} seed={args.seed} prompt_len={len(args.prompt)}")
        write_text(args.output, _fasta_lines(header, seq), replace=args.force)
    return 0
