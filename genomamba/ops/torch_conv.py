"""Depthwise causal conv1d as w shifted multiply-adds (w <= 4): the torch path for every device.

Faster than F.conv1d's depthwise kernels on CPU for these tiny widths, and its backward is plain
elementwise work (the mkldnn depthwise backward was seen taking 40 % of a training step, and slowing
10-100x on denormal inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_torch(x, weight, bias=None, initial_state=None, activation=None, return_final_state=False):
    """x: (b, d, l); weight: (d, w); bias: (d,); initial_state / final state: (b, d, w - 1)."""
    b, d, l = x.shape
    w = weight.shape[1]
    prev = x.new_zeros(b, d, w - 1) if initial_state is None else initial_state.to(x.dtype)
    xx = torch.cat([prev, x], dim=-1)  # (b, d, w - 1 + l)
    out = xx[..., w - 1:] * weight[:, w - 1, None]
    for k in range(w - 1):  # tap k sees the input w - 1 - k steps back
        out = out.addcmul(xx[..., k:k + l], weight[:, k, None])
    if bias is not None:
        out = out + bias[:, None]
    if activation == "silu":
        out = F.silu(out)
    if return_final_state:
        return out, xx[..., xx.shape[-1] - (w - 1):]
    return out
