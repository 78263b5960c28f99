"""Classical species-classification baselines: k-mer naive Bayes and GC content.

These are the reference points the demo and the classifier are judged against (README.md, "Data",
has what they score on the held-out strains). Both work on token-id arrays from
:class:`genomamba.DNATokenizer`; any non-ACGT token (N, IUPAC, padding) breaks a k-mer and is ignored.

Both strands are counted when fitting (a window and its reverse complement carry the same label,
and training windows are reverse-complement augmented too), so a model of a strand is a model
of the genome, not of its annotation orientation.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from genomamba.data.species import SpeciesEvalWindows
from genomamba.tokenizers.dna import DNATokenizer


def _base_codes(ids: np.ndarray, tok: DNATokenizer) -> np.ndarray:
    """Token ids -> 0..3 for A, C, G, T and -1 for anything else."""
    lut = np.full(256, -1, dtype=np.int8)
    for code, tid in enumerate((tok.a_id, tok.c_id, tok.g_id, tok.t_id)):
        lut[tid] = code
    return lut[np.asarray(ids, dtype=np.int64).clip(0, 255)]


def kmer_indices(ids: np.ndarray, k: int, tok: Optional[DNATokenizer] = None) -> np.ndarray:
    """Index (0 .. 4**k - 1) of every k-mer made only of A/C/G/T in a token array; O(len * k)."""
    tok = tok or DNATokenizer()
    codes = _base_codes(ids, tok)
    n = codes.shape[0] - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.zeros(n, dtype=np.int64)
    valid = np.ones(n, dtype=bool)
    for j in range(k):
        c = codes[j : j + n]
        valid &= c >= 0
        idx = idx * 4 + np.maximum(c, 0)
    return idx[valid]


def _revcomp_codes(ids: np.ndarray, tok: DNATokenizer) -> np.ndarray:
    return tok.reverse_complement(np.asarray(ids))


class KmerNaiveBayes:
    """Multinomial naive Bayes over overlapping k-mers with Laplace smoothing.

    ``fit`` takes, per label, the token arrays of its training sequences (whole contigs are best:
    every k-mer counted once per strand). ``predict_log_proba`` sums log P(k-mer | class) over a
    window's k-mers (the usual NB independence assumption) with a uniform class prior.
    """

    def __init__(self, k: int = 4, alpha: float = 1.0, tokenizer: Optional[DNATokenizer] = None):
        if not 1 <= int(k) <= 12:
            raise ValueError(f"k: expected 1..12 (4**k table entries), got {k}")
        if alpha <= 0:
            raise ValueError(f"alpha: expected > 0, got {alpha}")
        self.k, self.alpha = int(k), float(alpha)
        self.tok = tokenizer or DNATokenizer()
        self.log_prob: Optional[np.ndarray] = None  # (num_labels, 4**k)

    def fit(self, sequences_per_label: Sequence[Iterable[np.ndarray]]) -> "KmerNaiveBayes":
        size = 4**self.k
        rows = []
        for label, seqs in enumerate(sequences_per_label):
            counts = np.zeros(size, dtype=np.float64)
            n = 0
            for ids in seqs:
                for strand in (ids, _revcomp_codes(ids, self.tok)):
                    counts += np.bincount(kmer_indices(strand, self.k, self.tok), minlength=size)
                n += 1
            if n == 0:
                raise ValueError(f"KmerNaiveBayes.fit: label {label} has no training sequences")
            rows.append(np.log((counts + self.alpha) / (counts.sum() + self.alpha * size)))
        self.log_prob = np.stack(rows)
        return self

    def predict_log_proba(self, windows: Iterable[np.ndarray]) -> np.ndarray:
        if self.log_prob is None:
            raise RuntimeError("KmerNaiveBayes: call fit() first")
        scores = []
        size = 4**self.k
        for ids in windows:
            hist = np.bincount(kmer_indices(ids, self.k, self.tok), minlength=size)
            s = self.log_prob @ hist
            scores.append(s - np.logaddexp.reduce(s))
        return np.stack(scores) if scores else np.zeros((0, self.log_prob.shape[0]))

    def predict(self, windows: Iterable[np.ndarray]) -> np.ndarray:
        return self.predict_log_proba(windows).argmax(1)


def gc_fraction(ids: np.ndarray, tok: Optional[DNATokenizer] = None) -> float:
    """G+C over A+C+G+T (N and padding excluded); 0.5 for a window without any base."""
    codes = _base_codes(ids, tok or DNATokenizer())
    acgt = int((codes >= 0).sum())
    return float(((codes == 1) | (codes == 2)).sum()) / acgt if acgt else 0.5


class GCClassifier:
    """One Gaussian over window GC content per class (fit on training windows), argmax likelihood."""

    def __init__(self, tokenizer: Optional[DNATokenizer] = None):
        self.tok = tokenizer or DNATokenizer()
        self.mean: Optional[np.ndarray] = None
        self.std: Optional[np.ndarray] = None

    def fit(self, windows_per_label: Sequence[Iterable[np.ndarray]]) -> "GCClassifier":
        means, stds = [], []
        for label, wins in enumerate(windows_per_label):
            gc = np.array([gc_fraction(w, self.tok) for w in wins])
            if gc.size < 2:
                raise ValueError(f"GCClassifier.fit: label {label} needs >= 2 training windows")
            means.append(gc.mean())
            stds.append(max(gc.std(), 1e-3))
        self.mean, self.std = np.array(means), np.array(stds)
        return self

    def predict(self, windows: Iterable[np.ndarray]) -> np.ndarray:
        if self.mean is None:
            raise RuntimeError("GCClassifier: call fit() first")
        gc = np.array([gc_fraction(w, self.tok) for w in windows])[:, None]
        loglik = -0.5 * ((gc - self.mean) / self.std) ** 2 - np.log(self.std)
        return loglik.argmax(1)


def species_baselines(manifest, length: int, per_label: int = 200, ks: Sequence[int] = (4,),
                      seed: int = 1234, eval_split: str = "test", train_split: str = "train",
                      eval_windows=None) -> dict:
    """Accuracy of the GC and k-mer NB baselines on held-out windows of a species manifest.

    NB is fit on every training contig (both strands); GC on ``per_label`` random training windows
    of the same length per class. ``eval_windows`` (a ``SpeciesEvalWindows``) lets a caller score the
    very windows its model is scored on; by default they are drawn here with ``seed``.
    """
    tok = DNATokenizer()
    train = manifest.load(train_split, tok)
    n_labels = manifest.num_labels
    per_label_contigs: list[list[np.ndarray]] = [[] for _ in range(n_labels)]
    wanted = {g.id: manifest.label_to_id[g.label] for g in manifest.entries(train_split)}
    for i, c in enumerate(train.contigs):
        per_label_contigs[wanted[train.genome_of(i)]].append(train.read(i, 0, c.length))
    if eval_windows is None:
        eval_windows = SpeciesEvalWindows(manifest, eval_split, length, per_label=per_label, seed=seed,
                                          return_mask=True, tokenizer=tok)
    wins, labels = [], []
    for i in range(len(eval_windows)):
        item = eval_windows[i]
        ids, mask, lab = item if len(item) == 3 else (item[0], None, item[1])
        ids = ids.numpy()
        wins.append(ids if mask is None else ids[mask.numpy()])
        labels.append(int(lab))
    labels = np.array(labels)
    out = {"length": int(length), "n_windows": int(len(labels)), "split": eval_split}
    gc_train = SpeciesEvalWindows(manifest, train_split, length, per_label=per_label, seed=seed + 1,
                                  return_mask=True, source=train, tokenizer=tok)
    gc_wins: list[list[np.ndarray]] = [[] for _ in range(n_labels)]
    for i in range(len(gc_train)):
        ids, mask, lab = gc_train[i]
        gc_wins[int(lab)].append(ids.numpy()[mask.numpy()])
    out["gc"] = float((GCClassifier(tok).fit(gc_wins).predict(wins) == labels).mean())
    for k in ks:
        nb = KmerNaiveBayes(k, tokenizer=tok).fit(per_label_contigs)
        out[f"nb{k}"] = float((nb.predict(wins) == labels).mean())
    return out
