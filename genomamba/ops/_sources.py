"""Where the C++/CUDA sources live: ``csrc/`` in a source checkout, ``genomamba/_csrc`` in a wheel."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parents[1]


def csrc_dir(sub: str) -> Path:
    """``csrc/<sub>`` of the checkout if present, else the copy shipped inside the installed package."""
    for root in (_PKG.parent / "csrc", _PKG / "_csrc"):
        if (root / sub).is_dir():
            return root / sub
    return _PKG.parent / "csrc" / sub  # callers report it missing
