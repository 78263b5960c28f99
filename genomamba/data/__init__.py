"""Genome data pipeline: FASTA in, token store on disk, windows and species samplers out.

Light imports only here (no torch): the window and species datasets load on first access.
"""

import importlib

from genomamba.data.fasta import (
    FastaFormatError,
    FastaRecord,
    IndexedFasta,
    read_fasta,
    read_genbank,
    read_records,
)
from genomamba.data.store import MemoryStore, TokenStore

_LAZY = {
    "Region": "genomamba.data.windows",
    "Splits": "genomamba.data.windows",
    "RandomWindows": "genomamba.data.windows",
    "TiledWindows": "genomamba.data.windows",
    "DataLeakError": "genomamba.data.windows",
    "assert_no_overlap": "genomamba.data.windows",
    "split_by_contig": "genomamba.data.windows",
    "split_by_region": "genomamba.data.windows",
    "split_by_genome": "genomamba.data.windows",
    "split_from_file": "genomamba.data.windows",
    "SpeciesManifest": "genomamba.data.species",
    "SpeciesWindows": "genomamba.data.species",
    "SpeciesEvalWindows": "genomamba.data.species",
    "fetch": "genomamba.data.fetch",
    "default_assets": "genomamba.data.fetch",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genomamba.data' has no attribute {name!r}")


__all__ = [
    "FastaFormatError",
    "FastaRecord",
    "IndexedFasta",
    "MemoryStore",
    "TokenStore",
    "read_fasta",
    "read_genbank",
    "read_records",
    *_LAZY,
]
