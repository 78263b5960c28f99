"""genomamba: long-sequence genomics on Mamba selective state space models."""

from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM

__version__ = "0.1.0"


def load(path, device=None, dtype="auto"):
    """Load a saved model directory into a :class:`genomamba.api.GenomeModel` (model + tokenizer +
    optional classifier head) with ``embed`` / ``classify`` / ``score`` / ``generate``.
    ``dtype="auto"``: bfloat16 weights on a CUDA device, the stored fp32 on CPU.

    ``MambaLM.from_pretrained(path)`` returns the bare ``nn.Module`` instead.
    """
    from genomamba.api import load as _load

    return _load(path, device=device, dtype=dtype)


def __getattr__(name):  # lazy: keeps `import genomamba` light
    if name == "DNATokenizer":
        from genomamba.tokenizers.dna import DNATokenizer

        return DNATokenizer
    if name in ("embed", "load_ensemble"):
        from genomamba import api

        return getattr(api, name)
    if name == "data":  # the data pipeline (read_fasta, TokenStore, windows, ...), imported on first use
        import importlib

        return importlib.import_module("genomamba.data")
    raise AttributeError(f"module 'genomamba' has no attribute {name!r}")


__all__ = ["MambaConfig", "MambaLM", "DNATokenizer", "load", "load_ensemble", "embed", "__version__"]
