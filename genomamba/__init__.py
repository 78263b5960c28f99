"""genomamba: long-sequence genomics on Mamba selective state space models."""

from genomamba.config import MambaConfig
from genomamba.models.lm import MambaLM

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a model saved with ``save_pretrained`` (``config.json`` + ``model.safetensors``)."""
    return MambaLM.from_pretrained(path, **kwargs)


def __getattr__(name):  # lazy: keeps `import genomamba` light
    if name == "DNATokenizer":
        from genomamba.tokenizers.dna import DNATokenizer

        return DNATokenizer
    raise AttributeError(f"module 'genomamba' has no attribute {name!r}")


__all__ = ["MambaConfig", "MambaLM", "DNATokenizer", "load", "__version__"]
