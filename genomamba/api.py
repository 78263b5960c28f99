"""The Python API: use a trained model without Lightning.

    import genomamba
    model = genomamba.load("runs/demo/model")           # MambaLM + tokenizer (+ classifier head)
    X = model.embed(path="genome.fa", pooling="mean")  # (n_records, d_model) numpy; or Path("genome.fa")
    per_token = model.embed(["ACGT...", "GGCA..."], pooling=None)   # list of (l_i, d_model)
    model.classify(path="reads.fa")                    # labels + probabilities (needs a head)
    model.score("ACGTTGCA...")                         # log-likelihood, bits per base
    model.generate("ACGT", 100, temperature=0.8, seed=0)

**Inputs** (``seqs``) everywhere: a DNA ``str`` or ``bytes``; a list/tuple of them (or of records
with ``.name`` and ``.sequence``); or a FASTA / GenBank file given as a ``pathlib.Path`` (any
``os.PathLike``) or as ``path="genome.fa"``. A ``str`` is always a DNA sequence, never a file
name, even when a file of that name exists. Files are streamed record by record. Bad input raises
``ValueError`` naming the argument and the record.

**Any length, constant memory.** Sequences are processed in chunks of ``chunk_size`` tokens; the
recurrent state (conv + SSM state, a few KB per layer) is carried from one chunk to the next, so a
10 Mb chromosome needs the same working memory as a 64 kb one (per-token output aside, which is
``l * d_model`` floats by definition). Chunked results equal whole-sequence results up to float
rounding (tested); a smaller ``chunk_size`` lowers peak memory (``genomamba bench train --embed``
measures it).
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from genomamba.adapters import ADAPTER_FILE, Adapter, adapter_from_json
from genomamba.data.fasta import read_records
from genomamba.errors import InputFileError, InvalidArgument, MissingInputError, check_device, check_input_file
from genomamba.files import read_text
from genomamba.models import graphed
from genomamba.models.decode import check_seed
from genomamba.models.heads import POOLINGS, SequenceClassifier, has_head, pool
from genomamba.models.lm import MambaLM
from genomamba.tokenizers.dna import TOKENIZER_FILE, DNATokenizer

DEFAULT_CHUNK = 16384  # tokens per forward: bounds activation memory, whatever the record length
MIN_CLASSIFY_BASES = 32  # fewer A/C/G/T bases than this: a classification comes with a warning
PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------- results


@dataclass
class Classification:
    """``labels[i]`` is the predicted class of record i; ``probabilities[i, j]`` P(classes[j])."""

    labels: list[str]
    probabilities: np.ndarray  # (n, n_classes) float32
    classes: list[str]
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Scores:
    """Per-sequence log-likelihood (natural log, summed over scored bases) and bits per base.

    Only A/C/G/T targets are scored (N, other ambiguity codes and specials are context, never
    targets); ``n_scored[i]`` counts them. Without a BOS token the first base has no prediction.
    """

    log_likelihood: np.ndarray  # (n,) float64, nats
    bits_per_base: np.ndarray  # (n,) float64; nan where nothing was scored
    n_scored: np.ndarray  # (n,) int64
    lengths: np.ndarray  # (n,) int64, bases in the input
    names: list[str] = field(default_factory=list)
    unit: str = "base"  # what a token is: "base" (DNA), "byte" (text), "sample" (audio)

    def __len__(self) -> int:
        return len(self.log_likelihood)

    def __getattr__(self, name):
        # bits_per_byte / bits_per_sample: the modality's name of bits_per_base
        if name == f"bits_per_{self.__dict__.get('unit', 'base')}":
            return self.bits_per_base
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_records(self) -> list[dict]:
        return [{"name": n, "length": int(L), "n_scored": int(k), "log_likelihood": float(ll),
                 f"bits_per_{self.unit}": float(b)}
                for n, L, k, ll, b in zip(self.names, self.lengths, self.n_scored, self.log_likelihood,
                                          self.bits_per_base)]


# ----------------------------------------------------------------------------- inputs


def _describe(name: str, index: int) -> str:
    return f"record {index} ({name!r})"


def _input(seqs, path, arg: str = "seqs"):
    """``seqs``, or the file ``path=`` names as a ``Path``; exactly one of them."""
    if path is not None:
        if seqs is not None:
            raise InvalidArgument(f"{arg}: give sequences or path=, not both")
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidArgument(f"path: expected a file name, got {type(path).__name__}")
        return Path(path)
    if seqs is None:
        raise InvalidArgument(f"{arg}: no input; give DNA sequences, or a FASTA file as pathlib.Path or path=")
    return seqs


def _count(name: str, value) -> int:
    """A positive integer argument (NumPy integers too) as an int; anything else a ValueError naming it."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def iter_sequences(seqs=None, arg: str = "seqs", path: Optional[PathLike] = None, any_letter: bool = False
                   ) -> Iterator[tuple[str, Union[str, bytes]]]:
    """Normalise any accepted input to ``(name, sequence)`` pairs, streaming FASTA / GenBank files.

    A ``str`` is a sequence; a file is an ``os.PathLike`` or ``path=``. Raises ValueError (naming
    ``arg`` and the record) for empty sequences, wrong types, and format errors; FileNotFoundError
    (or another ``OSError``, one line) for a path that is missing, a directory or unreadable.
    ``any_letter``: FASTA lines may hold any printable letter (for a tokenizer with ``unknown="unk"``).
    """
    seqs = _input(seqs, path, arg)
    if isinstance(seqs, os.PathLike):
        path = Path(seqs)
        check_input_file(path, arg)
        n = 0
        for rec in read_records(path, any_letter=any_letter):
            if not rec.sequence:
                raise ValueError(f"{arg}: {path}: record {rec.name!r} has an empty sequence")
            n += 1
            yield rec.name, rec.sequence
        if n == 0:
            raise ValueError(f"{arg}: {path}: no sequence records")
        return
    if isinstance(seqs, (str, bytes, bytearray)):
        items: Iterable = [seqs]
        single = True
    elif isinstance(seqs, (list, tuple)):
        items, single = seqs, False
        if len(seqs) == 0:
            raise ValueError(f"{arg}: empty list of sequences")
    elif isinstance(seqs, np.ndarray) and seqs.dtype.kind in "US" and seqs.ndim == 1:
        items, single = [str(s) for s in seqs], False
    else:
        raise ValueError(f"{arg}: expected a DNA string, bytes, a list of them, or a FASTA path; "
                         f"got {type(seqs).__name__}")
    for i, s in enumerate(items):
        name = f"seq{i}"
        if hasattr(s, "sequence") and hasattr(s, "name"):
            name, s = str(s.name), s.sequence
        where = f"{arg}" if single else f"{arg}[{i}]"
        if not isinstance(s, (str, bytes, bytearray)):
            raise ValueError(f"{where}: expected a DNA string or bytes, got {type(s).__name__}")
        if len(s) == 0:
            raise ValueError(f"{where}: empty sequence")
        yield name, s


def weak_input(n_bases: int, n_acgt: int, unit: Optional[str] = None) -> Optional[str]:
    """Why a label predicted from this little sequence is a guess (None if it is not). ``unit``: a
    text or audio model's unit (``byte``, ``sample``), whose data tokens ``n_acgt`` counts."""
    if unit is not None:
        if n_acgt >= MIN_CLASSIFY_BASES:
            return None
        return f"only {n_acgt} {unit}{'s' if n_acgt != 1 else ''}: a label from so little input is a guess"
    if n_acgt == 0:
        return f"no A/C/G/T base in {n_bases:,} bases (all N or ambiguity codes): the label is a guess"
    if n_acgt < MIN_CLASSIFY_BASES:
        return f"only {n_acgt} A/C/G/T base{'s' if n_acgt > 1 else ''}: a label from so little sequence is a guess"
    return None


def _is_file(s: str) -> bool:
    if "\n" in s or len(s) > 4096 or not s:
        return False
    try:
        return os.path.isfile(s)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- the model


class GenomeModel:
    """A trained DNA model ready for inference: ``MambaLM`` + tokenizer (+ optional classifier head).

    Build it with :func:`load`. ``lm`` is the plain ``nn.Module`` (for anything not covered here).
    """

    def __init__(self, lm: MambaLM, tokenizer=None, head: Optional[torch.nn.Linear] = None,
                 labels: Optional[list[str]] = None, head_pooling: str = "mean", add_bos: bool = False,
                 path: Optional[PathLike] = None):
        if not isinstance(lm, MambaLM):
            raise ValueError(f"lm: expected a genomamba.MambaLM, got {type(lm).__name__}")
        self.lm = lm.eval()
        self.tokenizer = tokenizer if tokenizer is not None else DNATokenizer()
        if self.tokenizer.vocab_size > lm.config.padded_vocab_size:
            raise ValueError(f"tokenizer: vocabulary of {self.tokenizer.vocab_size} tokens does not fit the "
                             f"model's embedding ({lm.config.padded_vocab_size} rows)")
        self.head = head.eval() if head is not None else None
        self.labels = list(labels) if labels is not None else None
        self.head_pooling = head_pooling
        self.add_bos = bool(add_bos)
        self.path = Path(path) if path is not None else None
        tok = self.tokenizer
        self._base_ids = torch.tensor([tok.a_id, tok.c_id, tok.g_id, tok.t_id])

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def d_model(self) -> int:
        return self.lm.config.d_model

    @property
    def config(self):
        return self.lm.config

    def to(self, device) -> "GenomeModel":
        self.lm.to(device)
        if self.head is not None:
            self.head.to(device)
        return self

    def __repr__(self) -> str:
        c = self.lm.config
        head = f", head={len(self.labels)} classes ({self.head_pooling} pooling)" if self.head is not None else ""
        where = f", path={str(self.path)!r}" if self.path else ""
        return (f"GenomeModel(d_model={c.d_model}, n_layer={c.n_layer}, params={self.lm.num_parameters():,}"
                f"{head}, device={self.device}{where})")

    def _iter_inputs(self, seqs, arg: str):
        """``(name, item)`` for every input (DNA: sequences and FASTA records); ``encode`` takes an item."""
        return iter_sequences(seqs, arg, any_letter=getattr(self.tokenizer, "reads_any_letter", False))

    def _where(self, arg: str, name: str, index: int, item) -> str:
        """How an error names input ``index`` (``name``) of ``arg``."""
        return f"{arg}: {_describe(name, index)}"

    def encode(self, seq: Union[str, bytes], where: str = "seq") -> np.ndarray:
        """DNA -> token ids (uint8), with ``<bos>`` first if the model was trained with it."""
        try:
            return self.tokenizer.encode(seq, add_bos=self.add_bos)
        except (ValueError, TypeError) as exc:
            hint = ""
            if isinstance(seq, str) and _is_file(seq):
                hint = (f"; a str is read as DNA, not as a file name: to read the file {seq!r} pass "
                        f"pathlib.Path({seq!r}) or path={seq!r}")
            raise ValueError(f"{where}: {exc}{hint}") from None

    # ------------------------------------------------------------------ the chunked engine
    @torch.inference_mode()
    def _chunks(self, ids: list[np.ndarray], chunk_size: int, logits: bool = False):
        """Run a batch of token arrays (any lengths) through the model ``chunk_size`` tokens at a time,
        carrying the recurrent state. Yields ``(start, out)`` with out (b, c, d_model) hidden states
        (or (b, c, vocab) logits). Sequences are right-padded: a causal model never lets padding
        influence earlier positions, and callers ignore positions past each sequence's end.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive int, got {chunk_size}")
        dev = self.device
        b = len(ids)
        longest = max(len(x) for x in ids)
        cache = self.lm.allocate_cache(b, device=dev) if longest > chunk_size else None
        pad = self.tokenizer.pad_id
        for start in range(0, longest, chunk_size):
            stop = min(start + chunk_size, longest)
            block = np.full((b, stop - start), pad, dtype=np.int64)
            for r, x in enumerate(ids):
                seg = x[start:stop]
                block[r, : len(seg)] = seg
            t = torch.from_numpy(block).to(dev)
            # a long record's full chunks share one shape: replayed from a CUDA graph from the first on
            full = cache is not None and stop - start == chunk_size
            with graphed.capture_policy("first" if full else "second"):
                out = self.lm(t, cache=cache) if logits else self.lm.hidden_states(t, cache=cache)
            yield start, out

    def _batches(self, seqs, arg: str, batch_size: int, chunk_size: int, buffer_factor: int = 8):
        """Group records: short ones (<= chunk_size) batched by similar length, long ones alone.
        Yields buffers, each a list of batches, each batch a list of ``(index, name, ids)``; the
        buffers come in input order (a caller restores input order by sorting one buffer's output)."""
        batch_size, chunk_size = _count("batch_size", batch_size), _count("chunk_size", chunk_size)
        buf: list = []
        for i, (name, s) in enumerate(self._iter_inputs(seqs, arg)):
            ids = self.encode(s, where=self._where(arg, name, i, s))
            if len(ids) > chunk_size:
                if buf:
                    yield list(_group(buf, batch_size))
                    buf = []
                yield [[(i, name, ids)]]
                continue
            buf.append((i, name, ids))
            if len(buf) >= batch_size * buffer_factor:
                yield list(_group(buf, batch_size))
                buf = []
        if buf:
            yield list(_group(buf, batch_size))

    # ------------------------------------------------------------------ embed
    def iter_embed(self, seqs=None, pooling: Optional[str] = "mean", batch_size: int = 8,
                   chunk_size: int = DEFAULT_CHUNK, dtype=np.float32, arg: str = "seqs",
                   path: Optional[PathLike] = None):
        """Like :meth:`embed` but streams ``(name, array)`` pairs (records in input order within
        each group of ``8 * batch_size``; the name lets the caller match them)."""
        for name, arr, _ in self._embedded(seqs, pooling, batch_size, chunk_size, dtype, arg, path):
            yield name, arr

    def _embedded(self, seqs, pooling, batch_size, chunk_size, dtype, arg, path=None):
        """``(name, array, tokens the model read)`` per record, as :meth:`iter_embed` streams them."""
        seqs = _input(seqs, path, arg)
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS} or None, got {pooling!r}")
        # per-token outputs are big: do not hold more than one batch of them for reordering
        factor = 8 if pooling is not None else 1
        for buffer in self._batches(seqs, arg, batch_size, chunk_size, factor):
            read = {i: len(ids) for group in buffer for i, _, ids in group}
            done = [r for group in buffer for r in self._embed_group(group, pooling, chunk_size, dtype)]
            for i, name, arr in sorted(done, key=lambda r: r[0]):
                yield name, arr, read[i]

    def _embed_group(self, group, pooling, chunk_size, dtype):
        ids = [g[2] for g in group]
        lens = torch.tensor([len(x) for x in ids])
        b, d = len(ids), self.d_model
        acc = last = per_tok = None
        if pooling is None:
            per_tok = [np.empty((len(x), d), dtype=dtype) for x in ids]
        elif pooling == "mean":
            acc = torch.zeros(b, d, dtype=torch.float64)
        elif pooling == "max":
            acc = torch.full((b, d), float("-inf"), dtype=torch.float64)
        else:
            last = torch.zeros(b, d, dtype=torch.float32)
        for start, h in self._chunks(ids, chunk_size):
            h = h.float().cpu()
            c = h.shape[1]
            valid = (torch.arange(start, start + c).unsqueeze(0) < lens.unsqueeze(1))  # (b, c)
            if pooling is None:
                for r in range(b):
                    n = int(valid[r].sum())
                    if n:
                        per_tok[r][start:start + n] = h[r, :n].numpy()
            elif pooling == "mean":
                acc += (h.double() * valid.unsqueeze(-1)).sum(1)
            elif pooling == "max":
                acc = torch.maximum(acc, h.double().masked_fill(~valid.unsqueeze(-1), float("-inf")).max(1).values)
            else:
                ends = lens - 1
                here = (ends >= start) & (ends < start + c)
                for r in torch.nonzero(here).flatten().tolist():
                    last[r] = h[r, int(ends[r]) - start]
        for r, (i, name, _) in enumerate(group):
            if pooling is None:
                out = per_tok[r]
            elif pooling == "mean":
                out = (acc[r] / float(lens[r])).numpy().astype(dtype)
            elif pooling == "max":
                out = acc[r].numpy().astype(dtype)
            else:
                out = last[r].numpy().astype(dtype)
            yield i, name, out

    def embed(self, seqs=None, pooling: Optional[str] = "mean", batch_size: int = 8,
              chunk_size: int = DEFAULT_CHUNK, dtype=np.float32, path: Optional[PathLike] = None):
        """Embeddings from the final-norm hidden states.

        Args:
            seqs: DNA string/bytes, a list of them, or a ``pathlib.Path`` (see the module docstring).
            pooling: ``"mean"`` (over all tokens), ``"last"`` (the last token: the only one that
                has seen the whole sequence), ``"max"``, or ``None`` for per-token embeddings.
            batch_size: sequences run together (short ones; longer than ``chunk_size`` run alone).
            chunk_size: tokens per forward pass; the recurrent state carries across chunks.

        Returns:
            pooled: ``np.ndarray`` (n, d_model); ``pooling=None``: a list of (l_i, d_model) arrays.
        """
        pairs = list(self.iter_embed(seqs, pooling, batch_size, chunk_size, dtype, path=path))
        if pooling is None:
            return [a for _, a in pairs]
        return np.stack([a for _, a in pairs]) if pairs else np.zeros((0, self.d_model), dtype=dtype)

    # ------------------------------------------------------------------ classify
    def classify(self, seqs=None, batch_size: int = 8, chunk_size: int = DEFAULT_CHUNK,
                 both_strands: bool = True, path: Optional[PathLike] = None) -> Classification:
        """Predicted label and class probabilities per sequence (needs a classifier head).

        ``both_strands``: average the class probabilities of the sequence and of its reverse
        complement (a record can come from either strand; fine-tuning evaluates the same way).
        A record with fewer than ``MIN_CLASSIFY_BASES`` A/C/G/T bases (all N, one base) still gets
        a label, with a ``UserWarning`` saying it is a guess.
        """
        seqs = _input(seqs, path)
        if self.head is None:
            where = f" {self.path}" if self.path else ""
            raise ValueError(f"classify: the model{where} has no classifier head (head.json + head.safetensors); "
                             "fine-tune one with `genomamba classify fit`, or use embed()/score()")
        names, probs = [], []
        pooling = self.head_pooling

        def head_probs(emb):
            x = torch.from_numpy(emb).to(self.device, self.head.weight.dtype).unsqueeze(0)
            return torch.softmax(self.head(x).float(), -1)[0].cpu().numpy()

        with torch.no_grad():
            for buffer in self._batches(seqs, "seqs", batch_size, chunk_size, 8):
                done = sorted((r for group in buffer for r in self._embed_group(group, pooling, chunk_size,
                                                                                  np.float32)), key=lambda r: r[0])
                p = {i: head_probs(emb) for i, _, emb in done}
                if both_strands:
                    rc = [[(i, name, self.tokenizer.reverse_complement(ids)) for i, name, ids in group]
                          for group in buffer]
                    for i, _, emb in (r for group in rc for r in self._embed_group(group, pooling, chunk_size,
                                                                                   np.float32)):
                        p[i] = (p[i] + head_probs(emb)) / 2
                for i, name, _ in done:
                    probs.append(p[i])
                    names.append(name)
                for i, name, ids in (g for group in buffer for g in group):
                    why = weak_input(len(ids) - int(self.add_bos), int(np.isin(ids, self._base_ids.numpy()).sum()),
                                     getattr(getattr(self, "adapter", None), "unit", None))
                    if why:
                        warnings.warn(f"seqs: {_describe(name, i)}: {why}", UserWarning, stacklevel=2)
        p = np.stack(probs).astype(np.float32) if probs else np.zeros((0, len(self.labels)), np.float32)
        return Classification([self.labels[j] for j in p.argmax(1)], p, list(self.labels), names)

    # ------------------------------------------------------------------ score
    def score(self, seqs=None, batch_size: int = 8, chunk_size: int = DEFAULT_CHUNK,
              path: Optional[PathLike] = None) -> Scores:
        """Log-likelihood of each sequence under the model and its bits per base.

        Every A/C/G/T target after the first token is scored given everything before it (N and
        other non-ACGT targets are skipped but stay in the context). Chunked like :meth:`embed`.
        A sequence with nothing to score (one base, all N) gets ``n_scored`` 0 and ``bits_per_base``
        NaN (``null`` in JSON), never 0.
        """
        seqs = _input(seqs, path)
        out: dict[int, tuple] = {}
        order = []
        for buffer in self._batches(seqs, "seqs", batch_size, chunk_size):
            for group in buffer:
                for (i, name, ids), res in zip(group, self._score_group([g[2] for g in group], chunk_size)):
                    out[i] = (name, len(ids) - int(self.add_bos), *res)
                    order.append(i)
        order.sort()
        names = [out[i][0] for i in order]
        lengths = np.array([out[i][1] for i in order], dtype=np.int64)
        n_scored = np.array([out[i][2] for i in order], dtype=np.int64)
        ll = np.array([out[i][3] for i in order], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            bpb = np.where(n_scored > 0, -ll / (np.maximum(n_scored, 1) * np.log(2.0)), np.nan)
        for i in np.flatnonzero(n_scored == 0):
            warnings.warn(f"seqs: {_describe(names[i], int(i))}: nothing to score (no target it scores after the "
                          "first token): n_scored is 0 and its bits per token NaN, not 0", UserWarning, stacklevel=2)
        return Scores(ll, bpb, n_scored, lengths, names)

    def _score_group(self, ids: list[np.ndarray], chunk_size: int):
        b = len(ids)
        lens = torch.tensor([len(x) for x in ids])
        ll = torch.zeros(b, dtype=torch.float64)
        cnt = torch.zeros(b, dtype=torch.int64)
        base_ids = self._base_ids
        prev = None  # (b, V) log-probs at the last position of the previous chunk
        for start, logits in self._chunks(ids, chunk_size, logits=True):
            logp = torch.log_softmax(logits.float(), -1).cpu()  # (b, c, V)
            c = logp.shape[1]
            # targets at positions start .. start + c - 1, predicted from position - 1
            tgt = np.zeros((b, c), dtype=np.int64)
            for r, x in enumerate(ids):
                seg = x[start:start + c]
                tgt[r, : len(seg)] = seg
            tgt = torch.from_numpy(tgt)
            preds = logp[:, :-1] if prev is None else torch.cat([prev.unsqueeze(1), logp[:, :-1]], 1)
            tpos = torch.arange(start, start + c) if prev is not None else torch.arange(start + 1, start + c)
            tt = tgt if prev is not None else tgt[:, 1:]
            ok = torch.isin(tt, base_ids) & (tpos.unsqueeze(0) < lens.unsqueeze(1))
            lp = preds.gather(-1, tt.unsqueeze(-1)).squeeze(-1).double()
            ll += (lp * ok).sum(1)
            cnt += ok.sum(1)
            prev = logp[:, -1]
        return [(int(cnt[r]), float(ll[r])) for r in range(b)]

    # ------------------------------------------------------------------ generate
    @staticmethod
    def _generate_settings(n, temperature, top_k, top_p, batch_size) -> tuple:
        """``generate``'s numbers (Python or NumPy ones) as Python ``(n, temperature, top_k, top_p,
        batch_size)``; InvalidArgument naming the argument for anything else."""
        def is_int(x) -> bool:
            return isinstance(x, numbers.Integral) and not isinstance(x, bool)

        def is_real(x) -> bool:
            return isinstance(x, numbers.Real) and not isinstance(x, bool)

        if not is_int(n) or n < 0:
            raise InvalidArgument(f"n: expected an int >= 0, got {n!r}")
        if not is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
            raise InvalidArgument(f"temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")
        if not is_int(top_k) or top_k < 0:
            raise InvalidArgument(f"top_k: expected an int >= 0 (0 = off), got {top_k!r}")
        if not is_real(top_p) or not 0 < top_p <= 1:
            raise InvalidArgument(f"top_p: expected a number in (0, 1], got {top_p!r}")
        if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
            raise InvalidArgument(f"batch_size: expected a positive int, got {batch_size!r}")
        return (int(n), float(temperature), int(top_k), float(top_p),
                None if batch_size is None else int(batch_size))

    @torch.no_grad()
    def generate(self, prompt: Union[str, bytes, Sequence[Union[str, bytes]]], n: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None, include_prompt: bool = False,
                 allow_n: bool = False, batch_size: Optional[int] = None,
                 progress: Optional[Callable[[int], object]] = None) -> Union[str, list[str]]:
        """Sample ``n`` bases after ``prompt``; returns them as an upper-case DNA string. Only A/C/G/T
        are sampled (and N if ``allow_n``). ``temperature=0`` is greedy; a very large one samples the
        bases (near-)uniformly. Memory does not grow with ``n``. Numbers may be Python or NumPy ones.

        ``include_prompt``: the sample is preceded by the prompt exactly as given (its case, ``N`` and
        IUPAC codes, characters the tokenizer reads as ``<unk>``: nothing is normalised; ``bytes`` are
        read one character per byte), so the prompt is the first ``len(prompt)`` characters.

        A list of prompts (any lengths) returns a list of strings, one per prompt, decoded together
        ``batch_size`` at a time (default: all at once); greedy results equal those of each prompt
        alone. With a ``seed``, prompt ``i`` draws from its own generator seeded ``seed + i``, so its
        sample does not depend on ``batch_size`` or on the prompts beside it (prompt ``i`` with seed
        ``s`` equals that prompt alone with seed ``s + i``). Seeds lie in [0, 2**32 - 1], so ``seed +
        len(prompt) - 1`` must too.

        ``progress``: called with the number of bases sampled since its last call (over all prompts)
        every few hundred steps, adding up to ``n`` per prompt; e.g. ``tqdm(total=n * len(prompts)).update``.
        """
        n, temperature, top_k, top_p, batch_size = self._generate_settings(n, temperature, top_k, top_p,
                                                                           batch_size)
        single = isinstance(prompt, (str, bytes, bytearray))
        if single:
            prompts = [prompt]
        elif isinstance(prompt, (list, tuple)):
            prompts = list(prompt)
            if not prompts:
                raise ValueError("prompt: empty list; give at least one DNA string")
        else:
            raise ValueError(f"prompt: expected a DNA string or a list of them, got {type(prompt).__name__}")
        encoded = []
        for i, p in enumerate(prompts):
            where = "prompt" if single else f"prompt[{i}]"
            if not isinstance(p, (str, bytes, bytearray)):
                raise ValueError(f"{where}: expected a DNA string, got {type(p).__name__}")
            ids = self.encode(p, where=where)
            if len(ids) == 0:
                raise ValueError(f"{where}: empty; generation needs at least one base "
                                 "(this model was trained without a <bos> token)")
            encoded.append(ids)
        check_seed(seed, count=len(encoded), unit="prompt")
        allowed = self._base_ids.tolist() + ([self.tokenizer.n_id] if allow_n else [])
        step = batch_size or len(encoded)
        texts = []
        for start in range(0, len(encoded), step):
            part = encoded[start:start + step]
            ts = [torch.from_numpy(ids.astype(np.int64)).to(self.device) for ids in part]
            outs = self.lm.generate(ts, n, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=None if seed is None else [int(seed) + start + i for i in range(len(part))],
                                    allowed_token_ids=allowed,
                                    prefill_chunk=DEFAULT_CHUNK, progress=progress)
            for i, (ids, out) in enumerate(zip(part, outs), start):
                text = self.tokenizer.decode(out[len(ids):].cpu().numpy().astype(np.uint8))
                if include_prompt:
                    given = prompts[i]
                    text = (given if isinstance(given, str) else bytes(given).decode("latin-1")) + text
                texts.append(text)
        return texts[0] if single else texts


def _group(buf, batch_size):
    """Sort a buffer by length and cut it into batches (little padding)."""
    ordered = sorted(buf, key=lambda g: len(g[2]))
    for s in range(0, len(ordered), batch_size):
        yield ordered[s:s + batch_size]


# ----------------------------------------------------------------------------- load


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def inference_dtype(device, dtype="auto") -> Optional[torch.dtype]:
    """The weights' dtype for inference: ``"auto"`` is bfloat16 on a CUDA device (half the bytes
    to read per token; recurrent states stay fp32) and float32 elsewhere (CPU kernels run fastest
    there); None is float32 too, whatever the checkpoint stores (as ``MambaLM.from_pretrained`` builds
    it); a torch dtype or its name ("float32", "bfloat16", ...) is taken as is."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else None
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise InvalidArgument(f"dtype: expected auto, {', '.join(DTYPES)} or a torch dtype, got {dtype!r}")


def check_model_dir(path: PathLike, name: str = "path") -> Path:
    """``path`` if it is a directory; else a one-line error naming ``name``: no such directory, or not one."""
    path = Path(path)
    if not path.is_dir():
        want = "expected a model directory (config.json + model.safetensors)"
        if path.exists():
            raise InputFileError(errno.ENOTDIR, f"{name} {path}: not a directory; {want}")
        raise MissingInputError(errno.ENOENT, f"{name} {path}: no such directory; {want}")
    return path


def load(path: PathLike, device=None, dtype="auto") -> GenomeModel:
    """Load a saved model directory: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``,
    + ``head.json``/``head.safetensors`` for a classifier) into a :class:`GenomeModel`.

    ``dtype="auto"`` runs bfloat16 weights on a CUDA device and fp32 on CPU (see
    :func:`inference_dtype`); pass ``dtype=torch.float32`` for fp32 on a GPU.
    A directory without ``tokenizer.json`` gets the default ``DNATokenizer()``. ``MambaLM.from_pretrained``
    remains the loader for the bare ``nn.Module``.
    """
    check_device(device)
    dtype = inference_dtype(device, dtype)
    path = check_model_dir(path)
    if (path / ADAPTER_FILE).exists():
        adapter = adapter_from_json(path)
        if adapter.name != "dna":
            return _load_adapter_model(path, adapter, device, dtype)
    tok = DNATokenizer.from_pretrained(path) if (path / TOKENIZER_FILE).exists() else DNATokenizer()
    head = labels = None
    pooling = "mean"
    add_bos = False
    if has_head(path):
        clf = SequenceClassifier.from_pretrained(path, device=device)
        lm, head, labels, pooling = clf.lm, clf.head, clf.labels, clf.pooling
        meta = json.loads(read_text(path / "head.json"))
        add_bos = bool(meta.get("add_bos", False))
    else:
        lm = MambaLM.from_pretrained(path, device=device)
    add_bos = bool(lm.config.extra.get("add_bos", add_bos)) if isinstance(lm.config.extra, dict) else add_bos
    if dtype is not None:
        lm.to(dtype)
        if head is not None:
            head.to(dtype)
    return GenomeModel(lm, tok, head=head, labels=labels, head_pooling=pooling, add_bos=add_bos, path=path)


class Ensemble:
    """Several classifiers trained for the same labels, their class probabilities averaged.

    Build it with :func:`load_ensemble`. ``classify`` takes what each member's ``classify`` takes
    (the inputs are read once and given to every member) and returns one :class:`Classification`
    whose probabilities are the members' mean. Members trained with different seeds make different
    mistakes on data unlike their training set, so the mean is steadier than any one of them.
    """

    def __init__(self, members: Sequence[GenomeModel]):
        members = list(members)
        if not members:
            raise ValueError("members: an ensemble needs at least one classifier")
        first = members[0]
        for i, m in enumerate(members):
            where = f"members[{i}]" + (f" ({m.path})" if m.path else "")
            if not isinstance(m, GenomeModel):
                raise ValueError(f"{where}: expected a loaded genomamba model, got {type(m).__name__}")
            if m.labels is None:
                raise ValueError(f"{where}: has no classifier head (head.json + head.safetensors)")
            if list(m.labels) != list(first.labels):
                raise ValueError(f"{where}: labels {list(m.labels)} differ from members[0]'s {list(first.labels)}")
            kind, want = _modality(m), _modality(first)
            if kind != want:
                raise ValueError(f"{where}: reads {kind!r} input, members[0] reads {want!r}")
        self.members = members
        self.labels = list(first.labels)
        # audio members may read at different rates: files are resampled for each, arrays cannot be
        self._rates = sorted({m.adapter.sample_rate for m in members
                              if getattr(getattr(m, "adapter", None), "sample_rate", None)})

    def __len__(self) -> int:
        return len(self.members)

    def classify(self, seqs=None, **kwargs) -> Classification:
        """Mean class probabilities of the members; the label of each input is the mean's argmax."""
        if seqs is not None and not isinstance(seqs, (str, bytes, os.PathLike, list, tuple, np.ndarray)):
            seqs = list(seqs)  # an iterator is read once, then given to every member
        if len(self._rates) > 1:
            items = seqs if isinstance(seqs, (list, tuple)) else [seqs]
            if any(isinstance(x, np.ndarray) or type(x).__module__.startswith("torch") for x in items):
                raise ValueError(f"seqs: a waveform array carries no sample rate and the members read "
                                 f"{self._rates} Hz; give audio files (each member resamples them) or members "
                                 "of one rate")
        results = [m.classify(seqs, **kwargs) for m in self.members]
        for i, r in enumerate(results[1:], 1):
            if r.names != results[0].names:
                raise RuntimeError(f"members[{i}] read different inputs than members[0]")
        p = np.mean([r.probabilities for r in results], axis=0).astype(np.float32)
        return Classification([self.labels[j] for j in p.argmax(1)], p, list(self.labels), list(results[0].names))


def _modality(model: GenomeModel) -> str:
    return model.adapter.name if isinstance(model, AdapterModel) else "dna"


def load_ensemble(paths: Sequence[PathLike], device=None, dtype="auto") -> Ensemble:
    """:func:`load` each classifier directory of ``paths`` into one :class:`Ensemble`."""
    if isinstance(paths, (str, os.PathLike)):
        raise ValueError("paths: expected a list of model directories, got one path")
    return Ensemble([load(p, device=device, dtype=dtype) for p in paths])


def embed(path_or_model, seqs, **kwargs):
    """Load and embed in one call: ``genomamba.embed(model_dir, Path("genome.fa"), pooling="mean")``."""
    model = path_or_model if isinstance(path_or_model, GenomeModel) else load(path_or_model)
    return model.embed(seqs, **kwargs)


# ----------------------------------------------------------------------------- text and audio


class AdapterModel(GenomeModel):
    """A trained text or audio model (its directory holds ``adapter.json``), built by :func:`load`.

    The same ``embed`` / ``score`` / ``classify`` / ``generate`` as :class:`GenomeModel`, on the
    modality's natural input:

    - **text**: a ``str`` (the text itself), a text file as ``pathlib.Path`` (its bytes; gzip / xz /
      bzip2 decompressed), ``bytes``, or a list of them. ``generate`` returns a ``str``.
    - **audio**: a WAV / FLAC / OGG file (``str`` or ``Path``: any rate and channel count, resampled
      to the adapter's), a float waveform array at the adapter's sample rate, or a list of them.
      ``generate`` returns a float32 waveform (``write_wav`` writes it).

    Scores are bits per byte / per sample (``Scores.bits_per_byte`` / ``bits_per_sample``).
    """

    def __init__(self, lm: MambaLM, adapter: Adapter, head: Optional[torch.nn.Linear] = None,
                 labels: Optional[list[str]] = None, head_pooling: str = "mean", path: Optional[PathLike] = None,
                 classifier: Optional[SequenceClassifier] = None):
        if not isinstance(lm, MambaLM):
            raise ValueError(f"lm: expected a genomamba.MambaLM, got {type(lm).__name__}")
        if adapter.vocab_size > lm.config.padded_vocab_size:
            raise ValueError(f"adapter: {adapter.vocab_size} tokens do not fit the model's embedding "
                             f"({lm.config.padded_vocab_size} rows)")
        self.lm = lm.eval()
        self.adapter = self.tokenizer = adapter
        self.head = head.eval() if head is not None else None
        self.labels = list(labels) if labels is not None else None
        self.head_pooling = head_pooling
        self.add_bos = False
        self.path = Path(path) if path is not None else None
        self._base_ids = torch.tensor(adapter.data_ids)
        # a classifier with a spectral front end classifies whole clips through its own forward
        self.classifier = classifier.eval() if classifier is not None and classifier.frontend is not None else None

    def __repr__(self) -> str:
        return super().__repr__().replace("GenomeModel(", f"AdapterModel(adapter={self.adapter!r}, ", 1)

    # ------------------------------------------------------------------ inputs
    def _iter_inputs(self, seqs, arg: str):
        text = self.adapter.name == "text"
        if isinstance(seqs, (list, tuple)):
            if not seqs:
                raise ValueError(f"{arg}: empty list of inputs")
            items, single = list(seqs), False
        else:
            items, single = [seqs], True
        for i, x in enumerate(items):
            where = arg if single else f"{arg}[{i}]"
            if isinstance(x, os.PathLike) or (not text and isinstance(x, str)):
                p = Path(x)
                yield p.name, p
            elif text and isinstance(x, (str, bytes, bytearray)):
                if len(x) == 0:
                    raise ValueError(f"{where}: empty text")
                yield f"text{i}", x
            elif not text and (isinstance(x, np.ndarray) or type(x).__module__.startswith("torch")):
                yield f"wave{i}", x
            else:
                want = ("a string, a text file (pathlib.Path) or bytes" if text else
                        "an audio file path (WAV, FLAC, ...) or a float waveform array")
                raise ValueError(f"{where}: expected {want}, or a list of them; got {type(x).__name__}")

    def _where(self, arg: str, name: str, index: int, item) -> str:
        # a file's errors name the file themselves
        return arg if isinstance(item, Path) else f"{arg}: {_describe(name, index)}"

    def encode(self, item, where: str = "seq") -> np.ndarray:
        """One input (see the class docstring) -> token ids; errors name ``where`` and the file."""
        a = self.adapter
        try:
            if isinstance(item, Path):
                ids = a.encode_file(item)
                if len(ids) == 0:
                    raise ValueError(f"{item}: empty file")
            elif isinstance(item, (bytes, bytearray)):
                ids = a.encode_bytes(item)
            else:
                ids = a.encode(item)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        return ids

    def _clip_ids(self, item, where: str) -> torch.Tensor:
        """One clip as (1, l) ids on the model's device for the front-end classifier; too short for
        one of its frames is a ValueError naming ``where``."""
        ids = self.encode(item, where).astype(np.int64)
        shortest = self.classifier.frontend.min_samples()
        if len(ids) < shortest:
            raise ValueError(f"{where}: {len(ids)} samples is shorter than the classifier's shortest clip "
                             f"({shortest} samples)")
        return torch.from_numpy(ids).unsqueeze(0).to(self.device)

    def iter_embed(self, seqs=None, pooling: Optional[str] = "mean", batch_size: int = 8,
                   chunk_size: int = DEFAULT_CHUNK, dtype=np.float32, arg: str = "seqs",
                   path: Optional[PathLike] = None):
        """As :meth:`GenomeModel.iter_embed`; a classifier with a spectral front end embeds what its
        backbone reads, the clip's frames (``pooling=None``: one vector per frame)."""
        if self.classifier is None:
            yield from super().iter_embed(seqs, pooling, batch_size, chunk_size, dtype, arg, path)
            return
        for name, out, _ in self._embed_clips(seqs if path is None else Path(path), pooling, dtype, arg):
            yield name, out

    def _embed_clips(self, seqs, pooling: Optional[str], dtype, arg: str):
        """(name, embedding, samples read) per clip through the classifier's spectral front end: each
        clip is decoded once, for the embedding and its length alike."""
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {POOLINGS} or None, got {pooling!r}")
        clf = self.classifier
        with torch.no_grad():
            for name, item in self._iter_inputs(seqs, arg):
                ids = self._clip_ids(item, f"{arg}: {name}")
                embeds, fmask = clf.frontend(ids)
                hidden = clf.lm.backbone(inputs_embeds=embeds)
                out = hidden[0] if pooling is None else pool(hidden, fmask, pooling)[0]
                yield name, out.float().cpu().numpy().astype(dtype), ids.shape[1]

    def _refuse_frontend(self, task: str) -> None:
        if self.classifier is not None:
            where = f" {self.path}" if self.path else ""
            raise ValueError(f"{task}: the classifier{where} reads spectrogram frames through its front end and "
                             "has no next-sample model; embed() and classify() take it, score and generate need a "
                             "language model")

    # ------------------------------------------------------------------ tasks
    def classify(self, seqs, batch_size: int = 8, chunk_size: int = DEFAULT_CHUNK,
                 both_strands: bool = False) -> Classification:
        """Predicted label and class probabilities per input (needs a classifier head)."""
        if both_strands:
            raise ValueError("both_strands: reverse complement is DNA-only")
        if self.classifier is None:
            return super().classify(seqs, batch_size, chunk_size, both_strands=False)
        clf, names, probs = self.classifier, [], []
        with torch.no_grad():
            for name, item in self._iter_inputs(seqs, "seqs"):
                logits = clf(self._clip_ids(item, f"seqs: {name}"))
                probs.append(torch.softmax(logits.float(), -1)[0].cpu().numpy())
                names.append(name)
        p = np.stack(probs).astype(np.float32)
        return Classification([self.labels[j] for j in p.argmax(1)], p, list(self.labels), names)

    def score(self, seqs, batch_size: int = 8, chunk_size: int = DEFAULT_CHUNK) -> Scores:
        """Log-likelihood of each input and its bits per byte (text) or per sample (audio)."""
        self._refuse_frontend("score")
        s = super().score(seqs, batch_size, chunk_size)
        s.unit = self.adapter.unit
        return s

    @torch.no_grad()
    def generate(self, prompt=None, n: int = 16000, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 seed: Optional[int] = None, include_prompt: bool = False, batch_size: Optional[int] = None,
                 progress: Optional[Callable[[int], object]] = None):
        """Sample ``n`` tokens after ``prompt``: text -> ``str`` (cut UTF-8 is replaced, never raises);
        audio -> float32 waveform at the adapter's rate (``prompt`` may be None: start from silence).
        ``temperature=0`` is greedy. Numbers may be Python or NumPy ones.

        A list of prompts (inputs as the class docstring lists them) returns a list, one result per
        prompt, decoded together ``batch_size`` at a time (default: all at once). With a ``seed``,
        prompt ``i`` draws from its own generator seeded ``seed + i`` (prompt ``i`` with seed ``s``
        equals that prompt alone with seed ``s + i``); seeds lie in [0, 2**32 - 1].

        ``include_prompt``: the sample is preceded by the prompt: a text prompt given as ``str``
        exactly as given; one given as bytes or a file, its bytes decoded together with the sample;
        an audio prompt as the model reads it (mu-law samples at the adapter's rate). Starting from
        silence (``prompt=None``) there is no prompt to include.

        ``progress``: called with the number of tokens sampled since its last call (over all prompts)
        every few hundred steps, adding up to ``n`` per prompt.
        """
        self._refuse_frontend("generate")
        n, temperature, top_k, top_p, batch_size = self._generate_settings(n, temperature, top_k, top_p,
                                                                           batch_size)
        a = self.adapter
        single = not isinstance(prompt, (list, tuple))
        if prompt is None:
            if a.name != "audio":
                raise ValueError("prompt: give the text to continue (at least one character)")
            items = [None]
        else:
            items = [item for _, item in self._iter_inputs(prompt, "prompt")]
        encoded = []
        for i, item in enumerate(items):
            where = "prompt" if single else f"prompt[{i}]"
            if item is None:
                ids = np.array([a.pad_id], dtype=np.int64)  # one sample of silence
            else:
                ids = self.encode(item, where).astype(np.int64)
                if len(ids) == 0:
                    raise ValueError(f"{where}: empty; generation needs at least one token")
            encoded.append(ids)
        check_seed(seed, count=len(encoded), unit="prompt")
        step = batch_size or len(encoded)
        results = []
        for start in range(0, len(encoded), step):
            part = encoded[start:start + step]
            ts = [torch.from_numpy(ids).to(self.device) for ids in part]
            outs = self.lm.generate(ts, n, temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=None if seed is None else [int(seed) + start + i for i in range(len(part))],
                                    allowed_token_ids=a.data_ids, prefill_chunk=DEFAULT_CHUNK,
                                    progress=progress)
            for i, (ids, out) in enumerate(zip(part, outs), start):
                new = out[len(ids):].cpu().numpy().astype(np.int64)
                results.append(self._sample_output(items[i], ids, new, include_prompt))
        return results[0] if single else results

    def _sample_output(self, item, ids: np.ndarray, new: np.ndarray, include_prompt: bool):
        """One generated sample as :meth:`generate` returns it (``item``: the prompt, None for silence)."""
        a = self.adapter
        if a.name == "text":
            if include_prompt and isinstance(item, str):
                return item + a.decode(new)
            return a.decode(np.concatenate([ids, new]) if include_prompt else new)
        keep = np.concatenate([ids, new]) if include_prompt and item is not None else new
        return a.decode(keep) if len(keep) else np.zeros(0, np.float32)


def _load_adapter_model(path: Path, adapter: Adapter, device=None, dtype=None) -> AdapterModel:
    head = labels = clf = None
    pooling = "mean"
    if has_head(path):
        clf = SequenceClassifier.from_pretrained(path, device=device)
        lm, head, labels, pooling = clf.lm, clf.head, clf.labels, clf.pooling
    else:
        lm = MambaLM.from_pretrained(path, device=device)
    if dtype is not None:
        (clf if clf is not None else lm).to(dtype)
    return AdapterModel(lm, adapter, head=head, labels=labels, head_pooling=pooling, path=path, classifier=clf)


__all__ = ["GenomeModel", "AdapterModel", "Classification", "Ensemble", "Scores", "load", "load_ensemble", "embed",
           "iter_sequences"]
