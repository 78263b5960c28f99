"""Inference cache: per-layer recurrent states; its size is independent of how many tokens were seen."""

from __future__ import annotations

from dataclasses import dataclass, field

from genomamba.models.mixer import LayerCache


@dataclass
class InferenceCache:
    layers: list[LayerCache]
    seqlen_offset: int = 0
    extra: dict = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(c.conv_state.nbytes + c.ssm_state.nbytes for c in self.layers)

    def clone(self) -> "InferenceCache":
        """Copies of the states (a reference run beside the real one, which leaves these untouched)."""
        return InferenceCache([LayerCache(c.conv_state.clone(), c.ssm_state.clone()) for c in self.layers],
                              self.seqlen_offset)

    def detach(self) -> "InferenceCache":
        """States cut from the autograd graph (truncated BPTT, or carrying state across chunks)."""
        for c in self.layers:
            c.conv_state = c.conv_state.detach()
            c.ssm_state = c.ssm_state.detach()
        return self
